"""Offline-profile ingestion speed and memory, measured side by side in one run.

For a synthetic 480p episode of each length and each option it prints: decode-only
seconds (PyAV, the same decode the pipeline does; the median of three, shared by the options),
pipeline seconds (one episode through the real child process), their ratio, the real-time factor, the shot stage's seconds and
TransNetV2 windows run, shot boundaries against the episode's truth (found within one frame,
false), frames decoded per frame of video (target 1.0), model calls per minute of video and
the peak memory of the episode's process tree (target < 3 GiB). With ``--identity`` it then
identifies the episode against the generator's gallery and prints what the option costs in
identity: B-cubed F1, naming accuracy, wrong-name share of named time, credited screen time.

    python benchmarks/ingest_bench.py --minutes 10 --options transnetv2 keyframes-2 detect-all --identity
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

from anitrack.config import load_config, resolve_profile
from anitrack.identity.run import identify
from anitrack.ingest import ingest_episode
from anitrack.worker import EpisodeSpec
from anitrack.lake import Lake
from anitrack.synth import synthesize_series
from anitrack.video import iter_frames


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakMemory:
    """Polls this process tree's RSS (the episode runs in child processes)."""

    def __init__(self, interval: float = 0.2):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)

    def _poll(self, interval):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()) - self.base)
            time.sleep(interval)

    def __enter__(self):
        self.base = tree_rss_bytes(os.getpid())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# options: --set values over the offline profile ("transnetv2" is the default, nothing changed)
OPTIONS = {
    "transnetv2": [],  # gated windows, precision auto (bf16 on CPUs with bf16 instructions)
    "detect-all": ["detect.keyframe_every=1"],  # the detector on every sampled frame, none interpolated
    "keyframes-2": ["detect.keyframe_every=2"],  # keyframes every 2nd sampled frame (default: every 4th)
    "jpeg": ["crops.format=jpeg"],  # crops stored as JPEG: 25x faster to write than WebP
    "fp32": ["shots.precision=fp32"],  # gated windows in the reference arithmetic
    "every-window": ["shots.gate=false", "shots.precision=fp32"],  # TransNetV2 as the reference runs it
    "context-12": ["shots.context=12"],  # 76 predictions per 100-frame window instead of 50
    "content": ["shots.backend=content"],  # PySceneDetect ContentDetector
    "max-side-480": ["detect.max_side=480"],  # animeface on smaller frames (its cost grows with pixels)
    "best-8-crops": ["crops.select=best", "crops.per_tracklet=8"],  # 8 best crops per tracklet, not 20 spread
    "stride-4": ["detect.stride=4"],  # faces looked for on every 4th frame, not every 3rd
    "lean": ["detect.max_side=480", "crops.select=best", "crops.per_tracklet=8"],  # the two levers together
}


def boundary_accuracy(truth: dict, shots: list[dict]) -> tuple[int, int, int]:
    """(true boundaries found within one frame, true boundaries, false boundaries)."""
    expected = [s["start_frame"] for s in truth["shots"][1:]]
    found = [r["start_frame"] for r in shots if r["shot_id"] > 0]
    hits = sum(any(abs(f - e) <= 1 for f in found) for e in expected)
    return hits, len(expected), sum(not any(abs(f - e) <= 1 for e in expected) for f in found)


IDENTITY_METRICS = ("bcubed_f1", "naming_accuracy", "named_wrong_share", "gallery_credited_share",
                    "mean_screen_time_error")


def episode_video(minutes: float, work: Path) -> Path:
    src = work / f"src{minutes:g}"
    if not src.exists():
        synthesize_series(src, series="bench", episodes=1, characters=5, seconds=minutes * 60, seed=3,
                          transitions=0.3)
    return sorted((src / "bench").glob("*.mp4"))[0]


def decode_seconds(video: Path, repeats: int = 3) -> tuple[int, list[float]]:
    """Frames, and the seconds of each of ``repeats`` plain decodes (PyAV to RGB, as the pipeline decodes).
    A single decode of one file varied by up to 40% on a shared VM, so ratios use their median."""
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = sum(1 for _ in iter_frames(str(video)))
        seconds.append(time.perf_counter() - t)
    return n, seconds


def bench(minutes: float, work: Path, workers: int, option: str, with_identity: bool,
          decoded: tuple[int, list[float]]) -> dict:
    video = episode_video(minutes, work)
    src, folder = video.parent.parent, video.parent
    n, decodes = decoded
    decode_s = statistics.median(decodes)
    config = resolve_profile(load_config(OPTIONS[option], environ={}), "offline")
    config["detect"]["workers"] = workers
    lake = work / f"lake{minutes:g}-{option}"
    spec = EpisodeSpec(uri=str(video), series="bench", episode=video.stem, lake=str(lake), config=config,
                       profile="offline", threads=workers)
    with PeakMemory() as mem:
        t = time.perf_counter()
        result = ingest_episode(spec)
        pipeline_s = time.perf_counter() - t
    if result["status"] != "ok":
        raise SystemExit(f"ingest failed: {result['error']}")
    runs = Lake(str(lake)).read("stage_runs").to_pylist()
    truth = json.loads((folder / "truth.json").read_text())["episodes"][0]
    found = boundary_accuracy(truth, Lake(str(lake)).read("shots").to_pylist())
    decoded = sum(r["frames_decoded"] for r in runs)
    calls = {r["stage"]: r["model_calls"] for r in runs}
    video_s = result["duration_s"]
    quality = {}
    if with_identity:
        summary = identify(Lake(str(lake)), "bench", config, references=src / "references",
                           truth=folder / "truth.json")
        quality = {q["metric"]: q["value"] for q in summary["quality"] if q["metric"] in IDENTITY_METRICS}
    return {"identity": quality, "minutes": minutes, "frames": n, "video_s": video_s, "decode_s": decode_s,
            "decodes": decodes, "pipeline_s": pipeline_s,
            "ratio": pipeline_s / decode_s, "realtime": video_s / pipeline_s, "decoded_per_frame": decoded / n,
            "calls_per_min": {k: round(v / (video_s / 60), 1) for k, v in calls.items() if v},
            "peak_gib": mem.peak / 2**30, "stages": result["stage_seconds"], "tracklets": result["tracklets"],
            "boundaries": found, "windows": calls.get("shots", 0), "crops": result["crops"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.0, 10.0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--options", nargs="+", default=["transnetv2"], choices=list(OPTIONS),
                        help="options to compare (each a few settings over the offline profile)")
    parser.add_argument("--identity", action="store_true",
                        help="also identify each episode against its gallery and truth")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(m, option) for m in args.minutes for option in args.options]
        shot_seconds = {}
        pipeline_seconds = {}
        decoded = {}
        for minutes, option in runs:
            if minutes not in decoded:
                decoded[minutes] = decode_seconds(episode_video(minutes, Path(tmp)))
            r = bench(minutes, Path(tmp), args.workers, option, args.identity, decoded[minutes])
            shot_seconds[(minutes, option)] = r["stages"].get("shots", 0.0)
            pipeline_seconds[(minutes, option)] = r["pipeline_s"]
            hits, total, false = r["boundaries"]
            print(f"\n{minutes:g}-minute 854x480 episode, {option} ({' '.join(OPTIONS[option]) or 'defaults'}), "
                  f"{r['frames']} frames, {r['tracklets']} tracklets, {r['crops']} crops")
            print(f"  decode only     {r['decode_s']:8.1f} s   (median of {', '.join(f'{d:.1f}' for d in r['decodes'])})")
            print(f"  pipeline        {r['pipeline_s']:8.1f} s   ratio to decode {r['ratio']:.1f}x (target <= 15)")
            print(f"  real-time factor {r['realtime']:7.2f}x  (video {r['video_s']:.0f} s; target > 1)")
            print(f"  shot stage      {shot_seconds[(minutes, option)]:8.1f} s   TransNetV2 windows run {r['windows']}")
            print(f"  boundaries      {hits}/{total} found within one frame, {false} false")
            print(f"  frames decoded per frame {r['decoded_per_frame']:.2f} (target 1.0)")
            print(f"  model calls per minute   {r['calls_per_min']}")
            print(f"  peak memory     {r['peak_gib']:8.2f} GiB (target < 3)")
            print(f"  stage seconds   {r['stages']}")
            if r["identity"]:
                print("  identity        " + ", ".join(f"{k} {v:.3f}" for k, v in r["identity"].items()
                                                       if v is not None))
        for (minutes, option), seconds in shot_seconds.items():
            base = shot_seconds.get((minutes, "every-window"))
            if base and option != "every-window":
                print(f"{minutes:g} min: shot stage of {option} = {seconds / base:.2f}x every-window's")
            base = pipeline_seconds.get((minutes, "transnetv2"))
            if base and option != "transnetv2":
                print(f"{minutes:g} min: pipeline of {option} = {pipeline_seconds[(minutes, option)] / base:.2f}x "
                      f"the default's")


if __name__ == "__main__":
    main()
