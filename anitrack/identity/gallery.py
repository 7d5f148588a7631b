"""The reference gallery: one folder per character, found and cut as tracklet crops are, embedded
with the series' own embedder."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from anitrack.identity.inputs import IdentifyError
from anitrack.lake import Lake

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FACELESS = "reference image(s) show no face the face finder can find and were left out"


def gallery_images(folder: str | Path) -> dict[str, list[Path]]:
    """Character -> image files of a reference gallery; refuses empty folders and non-images."""
    from anitrack.crops import decode

    root = Path(folder)
    if not root.is_dir():
        raise IdentifyError(f"reference gallery {root} is not a folder")
    characters = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not characters:
        raise IdentifyError(f"reference gallery {root} has no character folders")
    out = {}
    for folder_ in characters:
        files = sorted(p for p in folder_.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise IdentifyError(f"reference folder {folder_} is empty")
        for path in files:
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise IdentifyError(f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)})")
            try:
                decode(path.read_bytes())
            except (ValueError, OSError):
                raise IdentifyError(f"{path}: unreadable image") from None
        out[folder_.name] = files
    return out


def embed_gallery(folder: str | Path, config: dict) -> tuple[list[dict], str, list[str]]:
    """Embed a reference gallery (one subfolder per character) with the series' embedder; returns the
    rows, the model id and the images left out.

    The face is found by the finder that cut the series' crops (``gallery_face_finder``) and
    cropped exactly as tracklet crops are, in every profile, so reference and tracklet vectors
    describe the same region. An image in which no face is
    found would be embedded whole, unlike any tracklet crop: it is left out when its character
    has an image with a face (on real art drawn into frames this doubled the drawings named
    right, 0.03 to 0.06 at the same false-name rate; benchmarks/realart_bench.py --frames).
    """
    from anitrack import crops as cropping
    from anitrack.embed import make_embedder

    embedder = make_embedder(config)
    finder = gallery_face_finder(config)
    rows, faceless = [], []
    for character, files in gallery_images(folder).items():
        cut = [(path, *reference_crop(cropping.decode(path.read_bytes()), finder, config)) for path in files]
        if any(face is not None for _, _, face in cut):
            faceless += [f"{character}/{path.name}" for path, _, face in cut if face is None]
            cut = [c for c in cut if c[2] is not None]
        for path, rgb, face in cut:
            vec = embedder.embed([rgb], [face])[0]
            rows.append({"character": character, "image_id": f"{character}/{path.name}",
                         "model": embedder.model_id, "vector": vec.tolist()})
    finder.close()
    return rows, embedder.model_id, faceless


def gallery_face_finder(config: dict):
    """The finder that cut the series' faces: imgutils' detector beside CCIP (hub-cpu finds faces with it,
    full inside person boxes), animeface otherwise (conf 0.3: a reference is one face, worth a lower bar)."""
    from anitrack.detect import AnimeFaceDetector

    if config["embed"]["model"] == "ccip" and config["detect"]["detector"] != "animeface":
        from anitrack.models import ImgutilsFaceFinder

        return ImgutilsFaceFinder(model_name=config["detect"]["face_model"])
    return AnimeFaceDetector(conf=0.3, workers=1)


def embedder_config(config: dict, data: dict) -> dict:
    """The config with the embedder that made the series' vectors (the gallery must be embedded alike)."""
    from anitrack.embed import family

    name = family(data["model"], data["metric"]) or config["embed"]["model"]
    out = {**config, "embed": dict(config["embed"], model=name)}
    if name == "ccip":
        out["embed"]["ccip_model"] = data["model"]
    return out


def series_references(lake: Lake, series: str, corrections: list[dict], config: dict) -> list[dict]:
    """Reference rows for the crops a user added to the gallery from the series itself (few-shot naming).

    Embedded as tracklet crops are (the stored face box), so they describe the same region."""
    from anitrack import crops as cropping
    from anitrack.embed import make_embedder

    chosen = {r["crop_id"]: r["value"] for r in sorted(corrections, key=lambda r: r["created_at"])
              if r["action"] == "reference" and r["crop_id"]}
    if not chosen:
        return []
    episodes = {r["episode"] for r in lake.read("crops", series, columns=["episode", "crop_id"]).to_pylist()
                if r["crop_id"] in chosen}  # read the images of those episodes only
    rows = [r for e in sorted(episodes) for r in lake.read("crops", series, episode=e).to_pylist()
            if r["crop_id"] in chosen]
    embedder = make_embedder(config)
    out = []
    for r in rows:
        face = None if r["face_x1"] is None else np.array([r["face_x1"], r["face_y1"], r["face_x2"], r["face_y2"]])
        vec = embedder.embed([cropping.decode(r["image"])], [face])[0]
        out.append({"character": chosen[r["crop_id"]], "image_id": f"{series}/{r['crop_id']}",
                    "model": embedder.model_id, "vector": vec.tolist()})
    return out


def reference_crop(rgb: np.ndarray, finder, config: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """A reference image cut as tracklet crops are: face-anchored, re-encoded in the crop format; the
    whole image (face None) when no face is found or no finder is given."""
    from anitrack import crops as cropping

    found = finder.find_face_in_still(rgb) if finder is not None else None
    if found is None:
        return rgb, None
    h, w = rgb.shape[:2]
    box = cropping.face_anchored_box(found[0], w, h, config["crops"]["up_ratio"], config["crops"]["pad"])
    face = np.round(found[0] - np.array([box[0], box[1], box[0], box[1]])).astype(int)
    crop = np.ascontiguousarray(rgb[box[1]:box[3], box[0]:box[2]])
    return cropping.decode(cropping.encode(crop, config["crops"]["format"])), face


def gallery_fingerprint(ref_rows: list[dict]) -> str:
    """Which reference images (and vectors) a run used: a new gallery means a new space and calibration."""
    digest = hashlib.sha256()
    for r in sorted(ref_rows, key=lambda r: (r["character"], r["image_id"])):
        digest.update(f"{r['character']}\0{r['image_id']}\0".encode())
        digest.update(np.asarray(r["vector"], np.float32).tobytes())
    return digest.hexdigest()[:16]
