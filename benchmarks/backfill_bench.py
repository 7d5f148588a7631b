"""What a backfill costs next to a full run, measured through the real command line.

On a synthetic series it times: a full ``anitrack run`` (ingest + identify), a
clustering-threshold backfill, and a detection-confidence backfill of one
episode; for each backfill it prints the seconds, the ratio to the full run and
the frames it decoded (from ``stage_runs``). Targets: the clustering backfill
decodes nothing and takes under 5% of the full run; the one-episode detection
backfill costs about one episode's ingestion plus identity.

    python benchmarks/backfill_bench.py --episodes 6 --seconds 20
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anitrack.lake import Lake
from anitrack.synth import synthesize_series


def timed(*args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "anitrack", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"anitrack {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def current_run(lake: Path) -> str:
    runs = Lake(str(lake), create=False).read("identity_runs", "bench").to_pylist()
    return max(runs, key=lambda r: (r["created_at"], r["run_id"]))["run_id"]


def frames_decoded(lake: Path, run_id: str) -> int:
    rows = Lake(str(lake), create=False).read("stage_runs", "bench").to_pylist()
    return sum(r["frames_decoded"] or 0 for r in rows if r["run_id"] == run_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each episode")
    parser.add_argument("--work", help="folder to keep the series and lake in (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="backfill-bench-"))
    folder = synthesize_series(work / "data", series="bench", episodes=args.episodes, characters=5,
                               seconds=args.seconds, seed=7)
    lake = work / "lake"
    print(f"{args.episodes} synthetic episodes of {args.seconds:.0f} s; {os.cpu_count()} cores, "
          f"{platform.machine()}, Python {platform.python_version()}; lake {lake}")
    full = timed("run", str(folder), "--lake", str(lake), "--series", "bench",
                 "--references", str(work / "data" / "references"))
    n_frames = sum(r["n_frames"] for r in Lake(str(lake)).read("episodes", "bench").to_pylist())
    print(f"full run (ingest + identify): {full:.1f} s, {n_frames} frames decoded "
          f"({full / args.episodes:.1f} s per episode)")
    cases = [("cluster.merge_threshold=0.88 (all episodes)", ["--set", "cluster.merge_threshold=0.88"]),
             ("detect.conf=0.6, one episode", ["--set", "detect.conf=0.6", "--episodes", "1"])]
    for name, extra in cases:
        seconds = timed("backfill", "--lake", str(lake), "--series", "bench", *extra)
        run_id = current_run(lake)
        print(f"backfill {name}: {seconds:.1f} s, {seconds / full:.1%} of the full run, "
              f"{frames_decoded(lake, run_id)} frames decoded")


if __name__ == "__main__":
    main()
