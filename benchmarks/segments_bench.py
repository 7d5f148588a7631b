"""Openings, endings, recaps and previews: what finding them costs beside ingestion, and how exact they are.

Renders a synthetic series with segments (``anitrack synth --segments``), ingests it with ``anitrack ingest``
(offline profile), then prints, side by side from that one run:

* ingestion's seconds (every stage and the decode, from ``stage_runs``);
* the segments' cost: the frame hashes of every decoded frame (timed here on the episodes' own tiny frames,
  as the shot stage hands them over) plus the series step (``stage_runs``), and its share of ingestion;
* per segment kind: found / true, and the largest boundary error in seconds.

    python benchmarks/segments_bench.py --episodes 4 --seconds 60
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from anitrack.lake import Lake
from anitrack.segments import frame_hash
from anitrack.shots import tiny_frame
from anitrack.sql import connect, run_query
from anitrack.synth import synthesize_series
from anitrack.video import iter_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0, help="story seconds per episode")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthesize_series(Path(tmp) / "data", series="bench", episodes=args.episodes, characters=4,
                                   seconds=args.seconds, seed=args.seed, segments=True)
        truth = json.loads((folder / "truth.json").read_text())
        lake = Path(tmp) / "lake"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "anitrack", "ingest", str(folder), "--lake", str(lake), "--series",
                        "bench"], check=True, capture_output=True)
        wall = time.perf_counter() - started
        con = connect(Lake(str(lake), create=False))
        runs = run_query(con, "SELECT stage, sum(seconds) AS s FROM stage_runs GROUP BY 1").to_pylist()
        stage = {r["stage"]: r["s"] or 0.0 for r in runs}
        tiny = [tiny_frame(f.rgb) for ep in truth["episodes"] for f in iter_frames(str(folder / ep["file"]))]
        t = time.perf_counter()
        for frame in tiny:
            frame_hash(frame)
        hashing = time.perf_counter() - t
        found = run_query(con, "SELECT episode, kind, start_s, end_s FROM segments").to_pylist()
    ingestion = sum(v for k, v in stage.items() if k != "segments")
    cost = hashing + stage.get("segments", 0.0)
    print(f"# {args.episodes} episodes, {args.seconds:.0f} s of story each, {len(tiny)} frames; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"ingestion: {ingestion:.1f} s of stage time ({wall:.1f} s wall, command included)")
    print(f"segments:  {hashing:.2f} s hashing ({1e6 * hashing / len(tiny):.0f} us a frame) + "
          f"{stage.get('segments', 0.0):.2f} s series step = {cost:.2f} s, {100 * cost / ingestion:.2f}% of ingestion")
    errors: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    for ep in truth["episodes"]:
        mine = [r for r in found if r["episode"] == ep["episode"]]
        for s in ep["segments"]:
            near = [r for r in mine if r["kind"] == s["kind"] and r["start_s"] < s["end_s"] and r["end_s"] > s["start_s"]]
            counts.setdefault(s["kind"], [0, 0])[1] += 1
            if near:
                counts[s["kind"]][0] += 1
                errors.setdefault(s["kind"], []).append(max(abs(near[0]["start_s"] - s["start_s"]),
                                                            abs(near[0]["end_s"] - s["end_s"])))
    invented = sum(1 for r in found if not any(
        r["start_s"] < s["end_s"] and r["end_s"] > s["start_s"]
        for ep in truth["episodes"] if ep["episode"] == r["episode"] for s in ep["segments"]))
    print(f"{'kind':8s} {'found':>7s} {'max error s':>12s}")
    for kind, (hit, total) in sorted(counts.items()):
        worst = max(errors.get(kind, [np.nan]))
        print(f"{kind:8s} {hit:3d}/{total:<3d} {worst:12.3f}")
    print(f"segments found where the truth has none: {invented}")


if __name__ == "__main__":
    main()
