"""Cross-episode identity over the lake: cluster tracklets, apply corrections, name, measure.

Reads only lake tables (``tracklets``, ``embeddings``, ``references``,
``labels``), so it also works on vectors a user imported. Each run writes its
own partitions (``series=S/run=R``) of ``clusters``, ``characters``,
``appearances`` and ``quality``, then its ``identity_runs`` row last: the
views show the latest committed run, so a run that fails half-way leaves the
previous results in place and queryable.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from anitrack import calibration, identity, naming
from anitrack.config import canonical
from anitrack.intervals import union_length
from anitrack.lake import Lake
from schemas.tables import TABLES

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class IdentifyError(RuntimeError):
    """Input that identity cannot work with; one line for the user."""


def space_rule(data: dict) -> calibration.SpaceRule:
    from anitrack.embed import family

    return calibration.SPACE_RULES.get(family(data["model"], data["metric"]), calibration.SPACE_RULES[None])


def params_from(config: dict, rule: calibration.SpaceRule) -> identity.IdentityParams:
    """Clustering parameters; a threshold of 0 is the embedder's own (``calibration.SPACE_RULES``)."""
    c = config["cluster"]
    return identity.IdentityParams(
        min_cluster_size=c["min_cluster_size"], min_samples=c["min_samples"],
        merge_threshold=c["merge_threshold"] or rule.merge, reduce_dims=c["reduce_dims"],
        max_prototypes=c["max_prototypes"], assign_threshold=c["assign_threshold"] or rule.assign)


# -- references ----------------------------------------------------------------
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


def check_inputs(lake: Lake, series: str, references: str | Path | None) -> None:
    """Refuse bad input before anything runs (one line, nothing written)."""
    if series not in lake.series():
        known = ", ".join(lake.series()) or "none"
        raise IdentifyError(f"series {series!r} is not in the lake (series: {known})")
    if not lake.commits("embeddings", series):
        raise IdentifyError(f"series {series!r} has no tracklet embeddings to identify")
    if references is not None:
        gallery_images(references)


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


# -- inputs ----------------------------------------------------------------------
def load_inputs(lake: Lake, series: str) -> dict:
    """Tracklets of the series' good episodes with their pooled vectors (one model); see ``check_inputs``."""
    episodes = lake.read("episodes", series)
    good = {r["episode"] for r in episodes.to_pylist() if r["status"] == "ok"} | \
        {c["keys"]["episode"] for c in lake.commits("embeddings", series)}
    tracklets = [r for r in lake.read("tracklets", series).to_pylist() if r["episode"] in good]
    emb = lake.read("embeddings", series, columns=["episode", "tracklet_id", "kind", "model", "metric", "vector"])
    pooled = [r for r in emb.to_pylist() if r["kind"] == "tracklet" and r["episode"] in good]
    if not pooled:
        raise IdentifyError(f"series {series!r} has no tracklet embeddings to identify")
    models = Counter(r["model"] for r in pooled)
    model = models.most_common(1)[0][0]
    by_id = {r["tracklet_id"]: r["vector"] for r in pooled if r["model"] == model}
    dims = Counter(len(v) for v in by_id.values())
    if len(dims) > 1:
        raise IdentifyError(f"embeddings of model {model!r} have mixed dimensions {sorted(dims)}")
    known = {t["tracklet_id"]: t for t in tracklets}
    ids = sorted(i for i in by_id if i in known) or sorted(by_id)
    rows = [known.get(i) or {"tracklet_id": i, "episode": i.split(":")[0], "start_s": 0.0, "end_s": 0.0}
            for i in ids]
    metric = Counter(r["metric"] or "cosine" for r in pooled if r["model"] == model).most_common(1)[0][0]
    vectors = np.asarray([by_id[i] for i in ids], dtype=np.float32)
    raw = vectors.copy() if metric == "ccip" else None  # CCIP's metric model reads the unnormalised features
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    return {"ids": ids, "rows": rows, "vectors": vectors, "model": model, "metric": metric, "raw": raw,
            "episodes": np.array([r["episode"] for r in rows]),
            "starts": np.array([r["start_s"] for r in rows], dtype=np.float64),
            "ends": np.array([r["end_s"] for r in rows], dtype=np.float64)}


def current_run(lake: Lake, series: str) -> dict | None:
    runs = lake.read("identity_runs", series).to_pylist()
    return max(runs, key=lambda r: (r["created_at"], r["run_id"])) if runs else None


# -- corrections (rows written by anitrack.corrections) ------------------------------
def apply_corrections(labels: np.ndarray, ids: list[str], corrections: list[dict]) -> np.ndarray:
    """Splits, then merges, then noise, keyed by tracklets so they survive re-clustering.

    Per tracklet the latest correction of each kind counts, and a later one overrides an earlier one of
    another kind: a split undoes an earlier merge for the tracklets it takes out, a split or merge (a
    move) takes a tracklet out of the noise.
    """
    labels = labels.copy()
    index = {t: i for i, t in enumerate(ids)}
    latest = latest_by_tracklet(corrections)
    when = lambda tid, action: latest[(tid, action)][1] if (tid, action) in latest else None  # noqa: E731
    next_id = int(labels.max()) + 1 if len(labels) else 0
    groups = defaultdict(list)
    for (tid, action), (value, _) in latest.items():
        if tid in index and action == "split":
            groups[value].append(index[tid])
    for members in groups.values():  # a split group becomes its own cluster
        labels[members] = next_id
        next_id += 1
    merges = defaultdict(set)
    for (tid, action), (value, at) in latest.items():
        split_at = when(tid, "split")
        if tid in index and action == "merge" and labels[index[tid]] >= 0 and (split_at is None or at >= split_at):
            merges[value].add(int(labels[index[tid]]))
    for clusters in merges.values():  # clusters holding one merge group become one
        labels[np.isin(labels, list(clusters))] = min(clusters)
    labels[noise_mask(ids, corrections)] = -1
    return labels


def latest_by_tracklet(corrections: list[dict]) -> dict[tuple[str, str], tuple[str, object]]:
    """(tracklet, action) -> (value, created_at) of its latest correction of that kind."""
    latest: dict[tuple[str, str], tuple[str, object]] = {}
    for row in sorted(corrections, key=lambda r: r["created_at"]):
        latest[(row["tracklet_id"], row["action"])] = (row["value"], row["created_at"])
    return latest


def noise_mask(ids: list[str], corrections: list[dict]) -> np.ndarray:
    """Tracklets a user marked as extras (and did not move since): they stay out of every cluster, and
    naming does not place them."""
    latest = latest_by_tracklet(corrections)
    marked = set()
    for (t, action), (value, at) in latest.items():
        later = [latest[(t, a)][1] for a in ("split", "merge") if (t, a) in latest]
        if action == "noise" and value == "1" and all(at > x for x in later):
            marked.add(t)
    return np.array([t in marked for t in ids], dtype=bool)


# -- CCIP space -------------------------------------------------------------------------
def ccip_centroid(features: np.ndarray) -> np.ndarray:
    """A cluster's representative as ``imgutils.metrics.ccip_merge`` forms it.

    Mean of the unit features, rescaled to the members' mean length.
    """
    f = np.asarray(features, np.float32)
    lengths = np.linalg.norm(f, axis=-1)
    mean = (f / np.maximum(lengths, 1e-9)[:, None]).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-9) * lengths.mean()).astype(np.float32)


def ccip_centroids(raw: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted cluster ids (labels >= 0) and their ``ccip_centroid`` rows."""
    cids = np.unique(labels[labels >= 0]).astype(np.int64)
    reps = [ccip_centroid(raw[labels == k]) for k in cids]
    return cids, np.stack(reps) if reps else np.zeros((0, raw.shape[1]), np.float32)


def ccip_merge_clusters(labels: np.ndarray, data: dict, embedder) -> np.ndarray:
    """Merge pre-clusters whose CCIP difference is <= the model's threshold, most similar pair first.

    Representatives are fixed before merging (as ``ccip_merge`` would form them);
    two clusters holding tracklets that share a frame are never merged, and a
    merged cluster keeps both sides' cannot-links. A merged group takes its
    smallest cluster id.
    """
    cids, reps = ccip_centroids(data["raw"], labels)
    if len(cids) < 2:
        return labels
    diff = embedder.differences(reps, reps)
    diff = (diff + diff.T) / 2
    pos = {int(k): i for i, k in enumerate(cids)}
    cannot: dict[int, set[int]] = {}
    for a, b in zip(*identity.overlap_pairs(data["episodes"], data["starts"], data["ends"])):
        la, lb = int(labels[a]), int(labels[b])
        if la >= 0 and lb >= 0 and la != lb:
            cannot.setdefault(pos[la], set()).add(pos[lb])
            cannot.setdefault(pos[lb], set()).add(pos[la])
    iu, ju = np.triu_indices(len(cids), 1)
    d = diff[iu, ju]
    order = np.argsort(d, kind="stable")
    order = order[d[order] <= embedder.threshold()]
    root = identity.constrained_union(len(cids), iu[order], ju[order], cannot)
    out = labels.copy()
    for i, k in enumerate(cids):
        out[labels == k] = cids[root[i]]
    return out


# -- the run -------------------------------------------------------------------------
SERIES_EPISODE = "all"  # the stage_runs partition of series-wide stages (identity)


def _record_run(lake: Lake, series: str, run_id: str, config: dict, model: str, n_tracklets: int,
                seconds: float) -> None:
    """A ``stage_runs`` row per identity run with its cluster and name parameters, so a backfill knows
    what the current run was made with."""
    now = dt.datetime.now(dt.timezone.utc)
    row = {"series": series, "episode": SERIES_EPISODE, "run_id": run_id, "stage": "identity",
           "parameters": canonical({s: config[s] for s in ("cluster", "name")}), "model": model,
           "fingerprint": run_id, "reused": False, "seconds": seconds, "frames_decoded": 0, "model_calls": 0,
           "rows": n_tracklets, "started_at": now - dt.timedelta(seconds=seconds), "finished_at": now}
    lake.commit("stage_runs", pa.Table.from_pylist([row]), append=True, run_id=run_id, series=series,
                episode=SERIES_EPISODE)


def identify(lake: Lake, series: str, config: dict, references: str | Path | None = None,
             truth: str | Path | None = None, full: bool = False, run_id: str | None = None) -> dict:
    """One identity run; returns a summary with the quality figures."""
    from anitrack.lake import new_run_id

    started = time.perf_counter()
    check_inputs(lake, series, references)
    run_id = run_id or new_run_id()
    data = load_inputs(lake, series)
    params = params_from(config, space_rule(data))
    faceless: list[str] = []
    if references is not None:
        ref_rows, ref_model, faceless = embed_gallery(references, embedder_config(config, data))
        if ref_model != data["model"]:
            raise IdentifyError(f"references embed with {ref_model!r} but the series' tracklets use "
                                f"{data['model']!r}; run with the same --profile")
    else:
        ref_rows = [r for r in lake.read("references", series).to_pylist() if r["model"] == data["model"]]
    corrections = lake.read("labels", series).to_pylist()
    ref_rows = ref_rows + series_references(lake, series, corrections, embedder_config(config, data))
    ref_dims = {len(r["vector"]) for r in ref_rows}
    if ref_dims and ref_dims != {data["vectors"].shape[1]}:
        raise IdentifyError(f"reference vectors have dimension {sorted(ref_dims)}, the model "
                            f"{data['model']!r} has {data['vectors'].shape[1]}")

    embedder = None
    key = {"cluster": config["cluster"], "model": data["model"], "metric": data["metric"],
           "gallery": gallery_fingerprint(ref_rows)}
    if data["metric"] == "ccip":  # CCIP's own difference metric and calibrated threshold, not 0.92 cosine
        from anitrack.models import CcipEmbedder

        embedder = CcipEmbedder(model=data["model"])
        key["ccip_threshold"] = embedder.threshold()
    data["embedder"] = embedder
    previous = current_run(lake, series)
    param_key = canonical(key)
    reuse = previous is not None and not full and previous["parameters"] == param_key
    space, cal = _space_and_calibration(lake, series, previous if reuse else None, data, ref_rows, config)
    if references is not None:  # this gallery's images without a face, in place of any a reused run listed
        kept = [w for w in (cal.warning or "").split("; ") if w and FACELESS not in w]
        if faceless:
            shown = ", ".join(faceless[:5]) + (", ..." if len(faceless) > 5 else "")
            kept.append(f"{len(faceless)} {FACELESS} (crop them closer to the face or replace them): {shown}")
        cal.warning = calibration.joined_warnings(*kept)
    if space is not None:  # cluster and merge in the series' cluster view, judge names in its naming view
        data["naming"] = space.name(data["vectors"])
        data["vectors"] = space.cluster(data["vectors"])
    else:
        data["naming"] = data["vectors"]
    mode = "full"
    if reuse:
        # tracklets placed by their own verdict were noise to the clustering; naming decides them afresh
        old = {r["tracklet_id"]: r["cluster_id"] for r in lake.read("clusters", series).to_pylist()
               if r["run_id"] == previous["run_id"] and not r["rescued"]}
        known = np.array([i in old for i in data["ids"]])
        if known.any():
            mode = "incremental"
            labels = np.full(len(data["ids"]), -1, dtype=np.int64)
            labels[known] = [old[i] for i, k in zip(data["ids"], known) if k]
            if (~known).any():
                labels[~known] = identity.assign_incremental(
                    data["vectors"][known], labels[known], data["episodes"][known], data["starts"][known],
                    data["ends"][known], data["vectors"][~known], data["episodes"][~known],
                    data["starts"][~known], data["ends"][~known], params)
    if mode == "full":
        labels = identity.cluster_tracklets(data["vectors"], data["episodes"], data["starts"], data["ends"], params)
    if embedder is not None:
        labels = ccip_merge_clusters(labels, data, embedder)
    labels = apply_corrections(labels, data["ids"], corrections)

    characters, registry, labels, rescued, verdicts = _name(lake, series, data, labels, ref_rows, corrections,
                                                            cal, space, config)
    tables = _tables(series, run_id, data, labels, characters, rescued, verdicts)
    data["characters"] = characters
    if truth is not None:
        cols = ["episode", "frame", "x1", "y1", "x2", "y2", "tracklet_id"]
        data["detections"] = [d for d in lake.read("detections", series, columns=cols).to_pylist()
                              if d["tracklet_id"] is not None]
    quality_rows = _quality(series, run_id, data, labels, tables["appearances"], truth)
    tables["quality"] = pa.Table.from_pylist(quality_rows)
    seconds = time.perf_counter() - started
    if references is not None:
        lake.commit("references", pa.Table.from_pylist([dict(r, series=series) for r in ref_rows]),
                    fingerprint="gallery", series=series)
    keys = {"series": series, "run": run_id}
    for name in ("clusters", "characters", "appearances", "quality"):
        lake.commit(name, tables[name], run_id=run_id, **keys)
    if space is not None:
        lake.commit("identity_spaces", pa.Table.from_pylist([{"series": series, "run_id": run_id,
                                                               "model": data["model"], **space.to_row()}]),
                    run_id=run_id, **keys)
    lake.commit("unknown_registry", pa.Table.from_pylist(
        [{"series": series, "tracklet_id": t, "n": n} for t, n in sorted(registry.items())],
        schema=pa.schema([("series", pa.string()), ("tracklet_id", pa.string()), ("n", pa.int64())])),
        series=series)
    _record_run(lake, series, run_id, config, data["model"], len(data["ids"]), seconds)
    lake.commit("identity_runs", pa.Table.from_pylist([{
        "series": series, "run_id": run_id, "parameters": param_key, "model": data["model"], "mode": mode,
        "n_tracklets": len(data["ids"]), "n_clusters": int(len(set(labels.tolist()) - {-1})), "seconds": seconds,
        "created_at": dt.datetime.now(dt.timezone.utc), **_calibration_columns(cal, space)}]),
        run_id=run_id, **keys)  # last: the run is visible
    return {"run_id": run_id, "mode": mode, "tracklets": len(data["ids"]), "seconds": seconds,
            "characters": tables["characters"].to_pylist(), "quality": quality_rows,
            "calibration": _calibration_columns(cal, space), "naming": cal.describe()}


def gallery_fingerprint(ref_rows: list[dict]) -> str:
    """Which reference images (and vectors) a run used: a new gallery means a new space and calibration."""
    import hashlib

    digest = hashlib.sha256()
    for r in sorted(ref_rows, key=lambda r: (r["character"], r["image_id"])):
        digest.update(f"{r['character']}\0{r['image_id']}\0".encode())
        digest.update(np.asarray(r["vector"], np.float32).tobytes())
    return digest.hexdigest()[:16]


def _space_and_calibration(lake, series, previous, data, ref_rows, config):
    """The run's space (None for CCIP) and naming rule: the previous run's when this one is incremental
    (vectors stay comparable), otherwise fitted and calibrated afresh from the series and its gallery."""
    name = config["name"]
    refs = _ref_matrix(ref_rows, data)
    labels = [r["character"] for r in ref_rows]
    embedder = data["embedder"]
    if previous is not None and previous.get("name_threshold") is not None:
        space = None
        if embedder is None:
            rows = [r for r in lake.read("identity_spaces", series).to_pylist() if r["run_id"] == previous["run_id"]]
            space = calibration.Space.from_row(rows[0]) if rows else None
        if space is not None or embedder is not None:
            per = json.loads(previous["character_thresholds"] or "{}")
            cal = calibration.Calibration(
                previous["name_threshold"], name["margin"], name["max_false_rate"], previous["calibration"],
                thresholds=per.get("threshold", {}), support=per.get("support", {}), anchor=per.get("anchor", {}),
                n_genuine=previous["n_genuine"] or 0, n_impostor=previous["n_impostor"] or 0,
                genuine_accept=previous["genuine_accept"], false_rate=previous["calibrated_false_rate"],
                genuine_pair_low=previous["genuine_pair_low"], published_threshold=previous["published_threshold"],
                warning=previous["calibration_warning"])
            return space, _fixed(cal, name)
    if embedder is not None:
        raw = _ref_matrix(ref_rows, data)
        cal = calibration.calibrate_scores(lambda test, train: 1.0 - embedder.differences(raw[test], raw[train]),
                                           labels, name["max_false_rate"], name["margin"], name["support_rate"],
                                           1.0 - embedder.threshold())
        return None, _fixed(cal, name)
    space, cal = calibration.calibrate_cosine(data["vectors"], refs, labels, space_rule(data), name["max_false_rate"],
                                              name["margin"], name["support_rate"], config["cluster"]["space_dims"])
    return space, _fixed(cal, name)


def _fixed(cal: "calibration.Calibration", name: dict) -> "calibration.Calibration":
    """``name.threshold`` > 0 overrides the calibrated threshold (recorded as the source "fixed")."""
    if name["threshold"] > 0:
        cal.extra["calibrated_threshold"] = cal.threshold
        cal.threshold, cal.source = float(name["threshold"]), "fixed"
        cal.thresholds, cal.support, cal.anchor = {}, {}, {}
    cal.margin = float(name["margin"])
    return cal


def _calibration_columns(cal, space) -> dict:
    return {"space": space.kind if space is not None else "ccip", "name_threshold": cal.threshold,
            "character_thresholds": canonical({"threshold": cal.thresholds, "support": cal.support,
                                               "anchor": cal.anchor}),
            "name_margin": cal.margin, "max_false_rate": cal.max_false_rate, "calibration": cal.source,
            "n_genuine": cal.n_genuine, "n_impostor": cal.n_impostor, "genuine_accept": cal.genuine_accept,
            "calibrated_false_rate": cal.false_rate, "genuine_pair_low": cal.genuine_pair_low,
            "published_threshold": cal.published_threshold, "calibration_warning": cal.warning}


def _ref_matrix(ref_rows: list[dict], data: dict) -> np.ndarray:
    """References as a (R, D) matrix (R may be 0)."""
    return np.asarray([r["vector"] for r in ref_rows], np.float32).reshape(len(ref_rows), data["vectors"].shape[1])


def _verdicts(data, ref_rows, cal, space) -> "calibration.Verdicts":
    """Each tracklet judged on its own by the run's calibrated test."""
    labels = [r["character"] for r in ref_rows]
    refs = _ref_matrix(ref_rows, data)
    if data["embedder"] is not None:
        sims = 1.0 - data["embedder"].differences(data["raw"], refs) if len(refs) else \
            np.zeros((len(data["ids"]), 0), np.float32)
    else:
        sims = data["naming"] @ space.name(refs).T if len(refs) else np.zeros((len(data["ids"]), 0), np.float32)
    return cal.judge(sims, labels)


def _name(lake, series, data, labels, ref_rows, corrections, cal, space, config):
    """Name clusters by their members' verdicts (see ``anitrack.naming``); returns the characters rows,
    the unknown registry, the final labels, the mask of tracklets placed by their own verdict and the
    verdicts."""
    ids = data["ids"]
    touched = {r["tracklet_id"] for r in corrections}
    frozen = {int(k) for k, t in zip(labels, ids) if t in touched and k >= 0}
    verdicts = _verdicts(data, ref_rows, cal, space)
    name = config["name"]
    low = cal.genuine_pair_low if space is not None else None
    labels, namings, placed = naming.name_clusters(
        data["vectors"], labels, verdicts, cal.threshold_of, data["episodes"], data["starts"], data["ends"], frozen,
        agreement=name["agreement"], rescue=name["rescue"], genuine_low=low,
        keep_out=noise_mask(ids, corrections),
        min_cluster_size=config["cluster"]["min_cluster_size"])
    cids, _, best = _best_members(data["vectors"], labels)
    named_by = {}  # a tracklet's latest name label ("" clears it: the tracklet moved to another cluster)
    for (tid, action), (value, _) in latest_by_tracklet(corrections).items():
        if action == "name" and value:
            named_by[tid] = value
    members = {int(k): [ids[i] for i in np.flatnonzero(labels == k)] for k in cids}
    registry = {r["tracklet_id"]: r["n"] for r in lake.read("unknown_registry", series).to_pylist()}
    unnamed = {int(k): members[int(k)] for k in cids if namings[int(k)].character is None}
    unknown, registry = identity.stable_unknown_labels(unnamed, registry)
    out = []
    for k, b in zip(cids, best):
        n = namings[int(k)]
        votes = Counter(named_by[t] for t in members[int(k)] if t in named_by)
        confidence = float(n.confidence)
        if votes:  # a user's correction wins over the reference match (and the user is sure)
            character, source, named, confidence = votes.most_common(1)[0][0], "label", True, 1.0
        elif n.character is not None:
            character, source, named = n.character, "reference", True
        else:
            character, source, named = unknown[int(k)], "unknown", False
        out.append({"cluster_id": int(k), "character": character, "named": named, "source": source,
                    "closest": n.closest or None,
                    "similarity": None if np.isnan(n.similarity) else float(n.similarity),
                    "confidence": confidence, "margin": float(n.margin), "threshold": float(cal.threshold_of(n.closest)),
                    "n_passed": int(n.n_passed), "n_tracklets": len(members[int(k)]), "best_tracklet_id": ids[b]})
    return out, registry, labels, placed, verdicts


def _best_members(vectors, labels) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Cluster ids, centroids and, per cluster, the member closest to its centroid: the cluster's best crop."""
    cids, cvecs = identity.centroids(vectors, labels)
    best = []
    for k, c in zip(cids, cvecs):
        members = np.flatnonzero(labels == k)
        best.append(int(members[int(np.argmax(vectors[members] @ c))]))
    return cids, cvecs, best


def _tables(series, run_id, data, labels, characters, rescued, verdicts):
    name_of = {c["cluster_id"]: c["character"] for c in characters}
    base = {"series": series, "run_id": run_id}
    finite = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731 (one reference: no runner-up)
    clusters = [{**base, "episode": r["episode"], "tracklet_id": r["tracklet_id"], "cluster_id": int(k),
                 "rescued": bool(x), "best": str(verdicts.best[i]) or None, "score": finite(verdicts.score[i]),
                 "lead": finite(verdicts.margin[i]), "passed": bool(verdicts.passed[i])}
                for i, (r, k, x) in enumerate(zip(data["rows"], labels, rescued))]
    appearances = [{**base, "episode": r["episode"], "character": name_of[int(k)], "cluster_id": int(k),
                    "tracklet_id": r["tracklet_id"], "start_s": r["start_s"], "end_s": r["end_s"]}
                   for r, k in zip(data["rows"], labels) if k >= 0]
    # with the schemas: a run that finds no character still writes (empty) tables
    return {"clusters": pa.Table.from_pylist(clusters, schema=TABLES["clusters"]),
            "characters": pa.Table.from_pylist([{**base, **c} for c in characters], schema=TABLES["characters"]),
            "appearances": pa.Table.from_pylist(appearances, schema=TABLES["appearances"])}


def _quality(series, run_id, data, labels, appearances: pa.Table, truth) -> list[dict]:
    q = identity.quality(data["vectors"], labels)
    rows = [{"metric": k, "value": float(v) if v is not None else None}
            for k, v in q.items() if k != "cluster_sizes"]
    if truth is not None:
        rows += truth_rows(data, labels, appearances, Path(truth))
    return [{"series": series, "run_id": run_id, "character": r.get("character"), **r} for r in rows]


def truth_rows(data, labels, appearances: pa.Table, truth_path: Path) -> list[dict]:
    """Adjusted Rand, B-cubed, naming accuracy and per-character screen-time error against truth.json."""
    if not truth_path.is_file():
        raise IdentifyError(f"truth file {truth_path} does not exist")
    truth = json.loads(truth_path.read_text())
    true_char = true_characters(data, truth, truth_path.parent / "face_boxes.csv")
    names = sorted(set(true_char.values()))
    code = {n: i for i, n in enumerate(names)}
    true_labels = np.array([code[true_char[t]] if true_char[t] in truth["characters"] else -1
                            for t in data["ids"]])
    rows = [{"metric": k, "value": float(v)} for k, v in identity.truth_metrics(labels, true_labels).items()]
    predicted = {r["tracklet_id"]: r["character"] for r in appearances.to_pylist()}
    cast = set(truth["characters"])
    correct = [predicted.get(t) == true_char[t] if true_char[t] in cast else t not in predicted
               or predicted[t].startswith("unknown_") for t in data["ids"]]
    rows.append({"metric": "naming_accuracy", "value": float(np.mean(correct)) if correct else None})
    pred_time = defaultdict(list)
    for r in appearances.to_pylist():
        pred_time[(r["episode"], r["character"])].append((r["start_s"], r["end_s"]))
    errors = []
    for character in truth["characters"]:
        true_s = sum(e["screen_time_s"].get(character, 0.0) for e in truth["episodes"])
        pred_s = sum(union_length(v) for (ep, c), v in pred_time.items() if c == character)
        err = abs(pred_s - true_s) / true_s if true_s > 0 else None
        if err is not None:
            errors.append(err)
        rows.append({"metric": "screen_time_error", "value": err, "character": character})
    rows.append({"metric": "mean_screen_time_error", "value": float(np.mean(errors)) if errors else None})
    rows += naming_truth_rows(data, appearances, truth, true_char)
    return rows


def naming_truth_rows(data, appearances: pa.Table, truth: dict, true_char: dict[str, str]) -> list[dict]:
    """What a wiki editor would publish: the share of named screen time that carries a wrong name,
    and the share of the gallery characters' true screen time credited to the right name.

    ``truth["gallery"]`` lists the characters the reference gallery holds (all of them when
    absent); naming anyone else is an error.
    """
    gallery = set(truth.get("gallery", truth["characters"]))
    named_s = wrong_s = 0.0
    right = defaultdict(list)
    named = {c["cluster_id"] for c in data.get("characters", []) if c["named"]}
    for r in appearances.to_pylist():
        if r["cluster_id"] not in named:
            continue
        span = r["end_s"] - r["start_s"]
        named_s += span
        if r["character"] != true_char.get(r["tracklet_id"]):
            wrong_s += span
        elif r["character"] in gallery:
            right[(r["episode"], r["character"])].append((r["start_s"], r["end_s"]))
    true_s = sum(e["screen_time_s"].get(c, 0.0) for e in truth["episodes"] for c in gallery)
    credited = sum(union_length(v) for v in right.values())
    return [{"metric": "named_wrong_share", "value": wrong_s / named_s if named_s else None},
            {"metric": "named_seconds", "value": named_s},
            {"metric": "gallery_credited_share", "value": credited / true_s if true_s else None}]


def true_characters(data, truth: dict, face_boxes: Path) -> dict[str, str]:
    """Each tracklet's true character: by face boxes when the generator wrote them, else by time overlap."""
    out = {}
    fps = truth["fps"]
    by_episode = {e["episode"]: e for e in truth["episodes"]}
    for tid, row in zip(data["ids"], data["rows"]):
        ep = by_episode.get(row["episode"])
        best, best_overlap = "_none", 0.0
        for app in (ep or {}).get("appearances", []):
            overlap = min(row["end_s"], app["end_frame"] / fps) - max(row["start_s"], app["start_frame"] / fps)
            if overlap > best_overlap:
                best, best_overlap = app["character"], overlap
        out[tid] = best
    if face_boxes.is_file():
        _refine_by_boxes(out, data, face_boxes)
    return out


def _refine_by_boxes(out: dict, data, face_boxes: Path) -> None:
    import csv

    wanted = {r["episode"] for r in data["rows"]}
    boxes = defaultdict(list)
    with open(face_boxes) as fh:
        for b in csv.DictReader(fh):
            if b["episode"] in wanted:
                boxes[(b["episode"], int(b["frame"]))].append(b)
    dets = data.get("detections")
    if dets is None:
        return
    votes = defaultdict(Counter)
    for d in dets:
        cx, cy = (d["x1"] + d["x2"]) / 2, (d["y1"] + d["y2"]) / 2
        for b in boxes.get((d["episode"], d["frame"]), []):
            x, y, w, h = (float(b[k]) for k in "xywh")
            if x <= cx <= x + w and y <= cy <= y + h:
                votes[d["tracklet_id"]][b["character"]] += 1
    for tid, counter in votes.items():
        if tid in out:
            out[tid] = counter.most_common(1)[0][0]


__all__ = ["IdentifyError", "identify", "embed_gallery"]
