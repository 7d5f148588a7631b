"""TransNetV2 shot options side by side: accuracy against the truth and the network's cost.

Renders synthetic episodes with every kind of boundary the generator draws (jump cuts, exits,
very short shots, fades, dissolves), decodes each once to the 48x27 frames TransNetV2 sees, and
feeds the same frames to one detector per option. Prints, per option: boundaries found within
one frame, false boundaries, wrong kinds, TransNetV2 windows run, seconds in the detector and
its ratio to the reference (fp32, every window); then the real clips in ../shared/data/real.

    python benchmarks/shots_bench.py --seeds 8 21 44 --episodes 2 --seconds 120
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from anitrack.shots import TransNetV2ShotDetector, tiny_frame
from anitrack.synth import synthesize_series
from anitrack.video import iter_frames

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
REAL_TRUTH = {"onepiece_demo.mp4": [100], "anidoc_sample1.mp4": []}

OPTIONS = {  # option -> TransNetV2ShotDetector arguments
    "reference": {"gate": False, "precision": "fp32"},
    "gate": {"precision": "fp32"},
    "gate+bf16": {"precision": "bf16"},
    "gate+bf16+context-12": {"precision": "bf16", "context": 12},
}


def tiny_frames(path: Path) -> list[np.ndarray]:
    """The 48x27 frames, resized exactly as the detector resizes them (a second resize is a copy)."""
    return [tiny_frame(f.rgb) for f in iter_frames(str(path))]


def detect(option: str, frames: list[np.ndarray]) -> tuple[TransNetV2ShotDetector, float]:
    det = TransNetV2ShotDetector(**OPTIONS[option])
    started = time.perf_counter()
    for i, frame in enumerate(frames):
        det.push(i, frame)
    det.finish()
    return det, time.perf_counter() - started


def score(truth_shots: list[dict], det: TransNetV2ShotDetector) -> dict:
    expected = {s["start_frame"]: s["transition"] for s in truth_shots[1:]}
    found = det.boundaries
    hits = wrong = 0
    for frame, kind in expected.items():
        near = [b for b in found if abs(b.frame - frame) <= 1]
        hits += bool(near)
        wrong += bool(near) and near[0].transition != kind
    false = sum(not any(abs(b.frame - f) <= 1 for f in expected) for b in found)
    return {"boundaries": len(expected), "found": hits, "false": false, "wrong_kind": wrong,
            "shots": len(truth_shots)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[8, 21, 44])
    parser.add_argument("--episodes", type=int, default=2, help="episodes per seed")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    totals = {o: {"boundaries": 0, "found": 0, "false": 0, "wrong_kind": 0, "shots": 0, "windows": 0,
                  "seconds": 0.0, "drift": 0.0} for o in args.options}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            folder = synthesize_series(Path(tmp) / f"s{seed}", series=f"s{seed}", episodes=args.episodes,
                                       seconds=args.seconds, seed=seed, transitions=0.3)
            truth = json.loads((folder / "truth.json").read_text())
            for ep in truth["episodes"]:
                frames = tiny_frames(folder / f"{ep['episode']}.mp4")
                ref = detect("reference", frames)
                reference = ref[0].probabilities
                for option in args.options:
                    det, seconds = ref if option == "reference" else detect(option, frames)
                    ran = det.probabilities > 0  # frames of windows the gate let run
                    totals[option]["drift"] = max(totals[option]["drift"], float(
                        np.abs(det.probabilities[ran] - reference[ran]).max(initial=0.0)))
                    for k, v in score(ep["shots"], det).items():
                        totals[option][k] += v
                    totals[option]["windows"] += det.windows_run
                    totals[option]["seconds"] += seconds
                print(f"seed {seed} {ep['episode']}: {len(frames)} frames", flush=True)
    n_eps = len(args.seeds) * args.episodes
    print(f"\n{n_eps} synthetic episodes x {args.seconds:g} s (seeds {args.seeds}, fades/dissolves 0.3):")
    base = totals.get("reference", {}).get("seconds")
    for option, t in totals.items():
        ratio = f"{t['seconds'] / base:5.2f}x" if base else "  -  "
        print(f"  {option:22s} found {t['found']}/{t['boundaries']}  false {t['false']} (in {t['shots']} shots)  "
              f"wrong kind {t['wrong_kind']}  windows {t['windows']}  {t['seconds']:7.1f} s  {ratio} reference"
              f"  {t['seconds'] / max(t['windows'], 1):.3f} s/window  max |p - p_reference| {t['drift']:.4f}")
    print("\nreal clips (cuts found; truth):")
    for name, cuts in REAL_TRUTH.items():
        if not (REAL / name).exists():
            print(f"  {name}: not found in {REAL}")
            continue
        frames = tiny_frames(REAL / name)
        dets = {o: detect(o, frames)[0] for o in args.options}
        found = {o: [b.frame for b in d.boundaries] for o, d in dets.items()}
        peak = {o: float(d.probabilities.max(initial=0.0)) for o, d in dets.items()}
        print(f"  {name}: truth {cuts}; " + "; ".join(f"{o} {c}{'' if c == cuts else ' WRONG'} (peak p {peak[o]:.3f})"
                                                    for o, c in found.items()))


if __name__ == "__main__":
    main()
