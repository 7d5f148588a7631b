"""Identity on real anime art: every offline embedder side by side, at the calibrated threshold.

Reads the labelled face crops in ``../shared/data/realart`` (1,050 drawings of 26 characters
by many artists) and, for several draws of a gallery (``--refs`` drawings per character, a
quarter of the characters left out on purpose), prints per embedder:

* nearest-character accuracy of the other drawings of gallery characters;
* at the run's calibrated naming rule (``anitrack.identity.calibration``, exactly as identity runs
  use it): the share of gallery characters' drawings named right, the share of all drawings
  named wrong (a left-out character named at all counts as wrong), and the wrong share of
  the names given; the calibrated median threshold and the gallery's own genuine accept.

Two views of each drawing:

* ``crops``: the image as it is (the face fills it);
* ``frames`` (``--frames``): as ingestion sees it: the drawing, its edges extended, drawn
  into a 854x480 frame on a plain backdrop, found by animeface at ``detect.max_side``, cut
  face-anchored and stored as WebP; the gallery is cut by ``anitrack.identity.gallery.reference_crop``.
  Drawings animeface misses in the frame count as unnamed (detection recall is shown).

    python benchmarks/realart_bench.py            # crops
    python benchmarks/realart_bench.py --frames   # also the pipeline's view (slower: animeface)
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anitrack.identity.evaluation import embed_views, gallery_naming_figures, load_labelled_art  # noqa: E402

REALART = Path(__file__).resolve().parents[2] / "shared" / "data" / "realart"


def frame_views(images: list[np.ndarray], config: dict, seed: int = 0):
    """Each drawing as ingestion and the gallery see it: (crop, face) in a frame (None when animeface
    misses it there) and the reference cut (crop, face) of the drawing itself."""
    from anitrack import crops as cropping
    from anitrack.detect import AnimeFaceDetector
    from anitrack.identity.gallery import reference_crop

    rng = np.random.default_rng(seed)
    detector = AnimeFaceDetector(conf=config["detect"]["conf"], workers=0, max_side=config["detect"]["max_side"])
    finder = AnimeFaceDetector(conf=0.3, workers=1)
    width, height = 854, 480
    frames, boxes = [], []
    for img in images:
        pad = int(0.35 * img.shape[0])
        drawing = cv2.copyMakeBorder(img, pad, pad // 2, pad, pad, cv2.BORDER_REPLICATE)
        h = int(rng.integers(int(height * 0.45), int(height * 0.8)))
        w = int(round(drawing.shape[1] * h / drawing.shape[0]))
        sprite = cv2.resize(drawing, (w, h), interpolation=cv2.INTER_AREA if h < drawing.shape[0]
                            else cv2.INTER_CUBIC)
        frame = np.empty((height, width, 3), np.uint8)
        top, bottom = rng.integers(60, 240, 3), rng.integers(60, 240, 3)
        t = np.linspace(0, 1, height)[:, None]
        frame[:] = (top[None] * (1 - t) + bottom[None] * t).astype(np.uint8)[:, None, :]
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        frame[y:y + h, x:x + w] = sprite
        frames.append(frame)
        boxes.append(drawing)
    found = detector.detect(frames)
    detector.close()
    shots, refs = [], []
    for frame, drawing, dets in zip(frames, boxes, found):
        if len(dets):
            face = dets.by_score().xyxy[0]
            box = cropping.face_anchored_box(face, width, height, config["crops"]["up_ratio"], config["crops"]["pad"])
            crop = np.ascontiguousarray(frame[box[1]:box[3], box[0]:box[2]])
            shots.append((cropping.decode(cropping.encode(crop, config["crops"]["format"])),
                          np.round(face - np.array([box[0], box[1], box[0], box[1]])).astype(int)))
        else:
            shots.append(None)
        refs.append(reference_crop(drawing, finder, config))
    finder.close()
    return shots, refs


def main() -> None:
    from anitrack.identity import calibration
    from anitrack.config import load_config, resolve_profile
    from anitrack.embed import ColorShapeDescriptor, HybridEmbedder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REALART)
    parser.add_argument("--frames", action="store_true", help="also measure the pipeline's view (animeface)")
    parser.add_argument("--refs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    if not (args.root / "manifest.json").is_file():
        sys.exit(f"realart_bench: {args.root} has no manifest.json (expected ../shared/data/realart)")
    config = resolve_profile(load_config(environ={}), "offline")
    images, labels = load_labelled_art(args.root)
    print(f"# {len(images)} drawings of {len(set(labels))} characters; {args.refs} references per gallery "
          f"character, a quarter of the characters left out; mean of {args.seeds} galleries; "
          f"max_false_rate {config['name']['max_false_rate']}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    embedders = {"descriptor": ColorShapeDescriptor(), "hybrid": HybridEmbedder()}
    as_given = [(img, None) for img in images]
    views = {"crops": (as_given, as_given, None, None)}
    if args.frames:
        t = time.perf_counter()
        shots, refs = frame_views(images, config)
        detected = np.array([s is not None for s in shots])
        views["frames"] = ([s if s is not None else (img, None) for s, img in zip(shots, images)], refs, detected,
                           np.array([r[1] is not None for r in refs]))
        print(f"# frames: animeface found {detected.mean():.0%} of the drawings in frames, a face in "
              f"{np.mean([r[1] is not None for r in refs]):.0%} of the reference cuts ({time.perf_counter() - t:.0f} s)")
    print(f"{'view':7s} {'embedder':11s} {'nearest':>8s} {'right':>7s} {'wrong':>7s} {'wrong/named':>11s} "
          f"{'threshold':>9s} {'gal.accept':>10s} {'s/img':>7s}")
    for view, (probe_views, ref_views, detected, with_face) in views.items():
        for name, embedder in embedders.items():
            t = time.perf_counter()
            probes = embed_views(embedder, probe_views)
            gallery = probes if ref_views is probe_views else embed_views(embedder, ref_views)
            per_image = (time.perf_counter() - t) / (len(probe_views) + (0 if ref_views is probe_views else
                                                                         len(ref_views)))
            r = gallery_naming_figures(probes, gallery, labels, calibration.SPACE_RULES[name], config, range(args.seeds),
                         args.refs, detected=detected, eligible=with_face)
            print(f"{view:7s} {name:11s} {r['nearest']:8.3f} {r['named_right']:7.3f} {r['named_wrong']:7.3f} "
                  f"{r['wrong_of_named']:11.3f} {r['threshold']:9.3f} {r['genuine_accept']:10.3f} "
                  f"{per_image * 1000:6.1f}ms", flush=True)


if __name__ == "__main__":
    main()
