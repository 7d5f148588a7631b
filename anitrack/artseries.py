"""A test series made of real drawings, with ground truth: how well does identity name *your* art?

Synthetic renders separate characters by flat colours; real drawings do not. Given
labelled drawings (a folder per character, as a reference gallery is laid out), this
writes a series in the layout of :func:`anitrack.synth.synthesize_series`: episodes of
shots, each showing one or two drawings of different characters on a plain backdrop,
drifting slowly (a tight face crop gets its edges extended, in the shots and the gallery alike); a reference gallery of other drawings of most characters (some are
left out on purpose: naming them is an error); ``truth.json`` (with ``gallery``, the
characters the gallery holds) and ``face_boxes.csv`` (where each drawing is).

Every drawing is used once: a shot never repeats an image of the gallery or of another
shot, so naming is measured on drawings the gallery has not seen.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from anitrack.synth import _encode, _vgrad, _write_png

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def character_folders(root: str | Path) -> dict[str, list[Path]]:
    """Character -> drawings: every folder holding images is a character (``show/character/`` nests)."""
    out: dict[str, list[Path]] = {}
    for folder in sorted(p for p in [Path(root), *Path(root).rglob("*")] if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            if folder.name in out:
                raise ValueError(f"two character folders are named {folder.name!r}")
            out[folder.name] = files
    if len(out) < 2:
        raise ValueError(f"{root}: needs at least two character folders of images")
    return out


def _read(path: Path) -> np.ndarray:
    """A drawing with room around its face: tight face crops get their edges extended (replicated),
    so the face-anchored crop of a shot and the reference cut of the gallery both stay inside it."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: unreadable image")
    pad = int(0.35 * bgr.shape[0])
    return cv2.cvtColor(cv2.copyMakeBorder(bgr, pad, pad // 2, pad, pad, cv2.BORDER_REPLICATE), cv2.COLOR_BGR2RGB)


def _placed(rng, image: np.ndarray, slot: tuple[int, int], width: int, height: int, n_frames: int):
    """Scale a drawing to a random height and give it a start and end position (a slow drift)."""
    h = int(rng.integers(int(height * 0.45), int(height * 0.8)))
    w = max(8, int(round(image.shape[1] * h / image.shape[0])))
    w = min(w, slot[1] - slot[0] - 8)
    h = int(round(image.shape[0] * w / image.shape[1]))
    sprite = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if h < image.shape[0] else cv2.INTER_CUBIC)
    x0 = int(rng.integers(slot[0], max(slot[0] + 1, slot[1] - w)))
    y0 = int(rng.integers(int(height * 0.08), max(int(height * 0.08) + 1, height - h - int(height * 0.05))))
    drift = rng.integers(-12, 13, 2) * n_frames / 72.0
    x1 = int(np.clip(x0 + drift[0], slot[0], slot[1] - w))
    y1 = int(np.clip(y0 + drift[1], 0, height - h))
    return sprite, (x0, y0), (x1, y1)


def synthesize_art_series(drawings: str | Path, out_dir: str | Path, series: str = "art", episodes: int = 2,
                          seconds: float = 60.0, seed: int = 7, references: int = 6, leave_out: float = 0.25,
                          fps: float = 24.0, width: int = 854, height: int = 480) -> Path:
    """Render the series; returns ``<out_dir>/<series>`` (the gallery is ``<out_dir>/references``)."""
    if width % 2 or height % 2:
        raise ValueError("width and height must be even for yuv420p")
    rng = np.random.default_rng(seed)
    chars = character_folders(drawings)
    names = sorted(chars)
    n_out = int(round(len(names) * leave_out))
    left_out = set(rng.choice(names, size=min(n_out, len(names) - 1), replace=False).tolist()) if n_out else set()
    pools: dict[str, list[Path]] = {}
    out_dir = Path(out_dir)
    for name in names:
        files = [chars[name][i] for i in rng.permutation(len(chars[name]))]
        if name not in left_out:
            if len(files) <= references:
                raise ValueError(f"{name}: {len(files)} drawings; needs more than {references} "
                                 "(the gallery's and at least one for the shots)")
            for k, path in enumerate(files[:references]):
                _write_png(out_dir / "references" / name / f"ref_{k + 1:02d}.png", _read(path))
            files = files[references:]
        pools[name] = files
    rate = Fraction(fps).limit_denominator(1001)
    n_frames = int(round(seconds * float(rate)))
    folder = out_dir / series
    folder.mkdir(parents=True, exist_ok=True)
    truth = {"series": series, "fps": float(rate), "width": width, "height": height, "characters": names,
             "gallery": [n for n in names if n not in left_out], "lookalikes": [], "never_together": [],
             "together": [], "episodes": []}
    with open(folder / "face_boxes.csv", "w", newline="\n") as boxes_file:
        boxes_file.write("episode,frame,character,x,y,w,h\n")
        for e in range(episodes):
            stem = f"episode_{e + 1:02d}"
            shots, start = [], 0
            while start < n_frames:
                length = int(min(n_frames - start, rng.integers(int(1.5 * fps), int(4 * fps))))
                if n_frames - start - length < fps:  # no sliver of a shot at the end
                    length = n_frames - start
                available = [n for n in names if pools[n]]
                k = 1 if rng.random() < 0.6 or len(available) < 2 else 2
                who = rng.choice(available, size=k, replace=False).tolist()
                slots = [(0, width)] if k == 1 else [(0, width // 2), (width // 2, width)]
                actors = []
                for name, slot in zip(who, slots):
                    image = _read(pools[name].pop())
                    actors.append((name, *_placed(rng, image, slot, width, height, length)))
                top, bottom = (tuple(int(v) for v in rng.integers(60, 240, 3)) for _ in range(2))
                shots.append({"start": start, "end": start + length, "actors": actors, "colors": (top, bottom)})
                start += length

            def frames(shots=shots):
                for shot in shots:
                    backdrop = np.empty((height, width, 3), np.uint8)
                    _vgrad(backdrop, 0, height, *shot["colors"])
                    span = max(1, shot["end"] - shot["start"] - 1)
                    for i in range(shot["start"], shot["end"]):
                        frame = backdrop.copy()
                        boxes = []
                        t = (i - shot["start"]) / span
                        for name, sprite, (x0, y0), (x1, y1) in shot["actors"]:
                            x, y = int(round(x0 + (x1 - x0) * t)), int(round(y0 + (y1 - y0) * t))
                            h, w = sprite.shape[:2]
                            frame[y:y + h, x:x + w] = sprite
                            boxes.append((name, x, y, w, h))
                        yield i, frame, boxes

            def on_frame(i, boxes, stem=stem):
                for name, x, y, w, h in boxes:
                    boxes_file.write(f"{stem},{i},{name},{x},{y},{w},{h}\n")

            _encode(folder / f"{stem}.mp4", frames(), rate, width, height, on_frame)
            apps = [{"character": a[0], "start_frame": s["start"], "end_frame": s["end"]}
                    for s in shots for a in s["actors"]]
            screen = {n: round(sum(a["end_frame"] - a["start_frame"] for a in apps if a["character"] == n)
                               / float(rate), 6) for n in names}
            truth["episodes"].append({"episode": stem, "file": f"{stem}.mp4", "n_frames": n_frames,
                                      "shots": [{"start_frame": s["start"], "end_frame": s["end"],
                                                 "transition": "cut" if i else "none"} for i, s in enumerate(shots)],
                                      "appearances": apps, "screen_time_s": screen})
    (folder / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return folder
