"""The episode worker: the child process that ingests one episode (see ``anitrack.ingest``).

Reads a JSON job on stdin, commits the episode's stage tables, then its
``episodes`` row (last), and prints a JSON summary on stdout. Progress goes to
stderr as ``@progress DONE TOTAL`` lines and a failure as one ``@error`` line.
Dask workers call ``run_episode`` in their own process instead, with cached models.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

from anitrack.stages import STAGE_TABLES, STAGES, needs_frames, recorded_model
from anitrack.video import release_numbering


@dataclass
class EpisodeSpec:
    """One episode's ingestion job: where it is, which lake and series, and how to run it."""

    uri: str
    series: str
    episode: str
    lake: str
    config: dict
    profile: str
    device: str = "cpu"
    threads: int = 1
    run_id: str = ""
    in_process: bool = False  # Dask workers: run here with cached models; the worker is the crash boundary
    expect_hash: str | None = None  # backfill: the content the episode was ingested with (see ingest_episode)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def episode_row(spec: EpisodeSpec, content_hash: str, size: int, status: str, error: str | None,
                fps=None, n_frames=None, duration=None, width=None, height=None) -> dict:
    numbering = release_numbering(PurePosixPath(spec.uri.rstrip("/")).name or spec.episode)
    return {"series": spec.series, "episode": spec.episode, "episode_number": numbering.episode,
            "season": numbering.season, "numbering": numbering.label,
            "uri": spec.uri, "content_hash": content_hash, "size_bytes": size, "fps": fps, "n_frames": n_frames,
            "duration_s": duration, "width": width, "height": height, "status": status, "error": error,
            "profile": spec.profile, "ingested_at": utc_now()}


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        import torch

        torch.set_num_threads(max(1, int(job.get("threads", 1))))
        summary = run_episode(job, lambda done, total: print(f"@progress {done} {total}", file=sys.stderr,
                                                             flush=True))
        print(json.dumps(summary), flush=True)
        return 0
    except Exception as exc:  # one line for the parent; the traceback only when debugging
        from anitrack.errors import debug_enabled, first_line

        if debug_enabled():
            import traceback

            traceback.print_exc()
        print(f"@error {first_line(exc)}", file=sys.stderr, flush=True)
        return 1


_PIPELINES: dict = {}  # (config, device) -> this process's models, when ``cached``
_PIPELINES_LOCK = threading.Lock()


def worker_pipeline(config: dict, device: str) -> tuple[object, bool]:
    """This process's models for ``config``: built by the first episode, reused by the next (Dask workers).

    Returns the pipeline and whether this call loaded it."""
    from anitrack.config import canonical
    from anitrack.episode import EpisodePipeline

    key = (canonical(config), device)
    with _PIPELINES_LOCK:
        loaded = key not in _PIPELINES
        if loaded:
            _PIPELINES[key] = EpisodePipeline(config, device)
        return _PIPELINES[key], loaded


def run_episode(job: dict, progress=None, cached: bool = False) -> dict:
    """Ingest one episode here and return its summary; the child process and Dask workers both call this.

    ``cached``: keep the models for the next episode of this process instead of building and closing them."""
    import pyarrow as pa

    from anitrack.episode import EpisodePipeline
    from anitrack.lake import Lake
    from anitrack.video import probe

    spec = EpisodeSpec(**{k: job[k] for k in EpisodeSpec.__dataclass_fields__})
    lake = Lake(spec.lake)
    prints = job["fingerprints"]
    keys = {"series": spec.series, "episode": spec.episode}
    stale = job["stale"]  # the stage tables the parent found out of date
    previous = lake.read("episodes", spec.series, spec.episode).to_pylist()
    if not needs_frames(stale) and previous and previous[0]["status"] == "ok" \
            and previous[0]["content_hash"] == job["content_hash"]:  # nothing upstream of the vectors changed
        return _reembed(job, spec, lake, stale, previous[0])
    if stale == ["frame_hashes"] and previous and previous[0]["status"] == "ok" \
            and previous[0]["content_hash"] == job["content_hash"]:  # a lake from before the segments stage
        return _hash_only(job, spec, lake, previous[0], progress)
    info = probe(job["video"])
    total = info.n_frames or int(info.duration_s * info.fps) or 0
    started_at = utc_now()
    pipeline, loaded = worker_pipeline(spec.config, spec.device) if cached else \
        (EpisodePipeline(spec.config, spec.device), True)
    shots = None
    if "shots" not in stale:  # still valid: cut tracklets at the stored shots instead of re-detecting them
        stored = sorted(lake.read("shots", spec.series, spec.episode).to_pylist(), key=lambda r: r["shot_id"])
        shots = stored or None
    try:
        out = pipeline.run(job["video"], spec.series, spec.episode, shots=shots,
                           progress=(lambda done: progress(done, total)) if progress else None)
    finally:
        if not cached:
            pipeline.close()
    timing = {}
    for stage in STAGES:
        table, t = stage.table, time.perf_counter()
        if table in stale:
            lake.commit(table, out.tables[table], fingerprint=prints[table], run_id=spec.run_id, **keys)
        timing[table] = (out.clock.seconds[stage.section] + time.perf_counter() - t, out.clock.calls[stage.section],
                         out.tables[table].num_rows)
    decode = (out.clock.seconds["decode"], out.n_frames)
    _record(lake, job, spec, keys, stale, timing, decode, out.models, started_at)
    row = episode_row(spec, job["content_hash"], job["size"], "ok", None, fps=out.fps, n_frames=out.n_frames,
                      duration=out.duration_s, width=info.width, height=info.height)
    lake.commit("episodes", pa.Table.from_pylist([row]), fingerprint=prints["episodes"], run_id=spec.run_id, **keys)
    summary = {"status": "ok", "error": None, "frames": out.n_frames, "duration_s": out.duration_s,
               "shots": out.tables["shots"].num_rows, "tracklets": out.tables["tracklets"].num_rows,
               "crops": out.tables["crops"].num_rows, "frames_decoded": out.n_frames,
               "stage_seconds": {k: round(v, 3) for k, v in out.clock.seconds.items()}}
    summary.update(models_loaded=loaded, worker=f"{socket.gethostname()}:{os.getpid()}")
    return summary


def _reembed(job: dict, spec, lake, stale: list[str], previous: dict) -> dict:
    """Recompute the vectors from the committed crops (their images are stored), decoding no video."""
    import pyarrow as pa

    from anitrack.config import batch_size
    from anitrack.embed import make_embedder
    from anitrack.episode import StageClock, embed_rows
    from anitrack.lake import conform
    from anitrack.schemas.tables import TABLES

    keys = {"series": spec.series, "episode": spec.episode}
    prints = job["fingerprints"]
    started_at = utc_now()
    embedder = make_embedder(spec.config, spec.device)
    clock = StageClock()
    rows = {t: (lake.read_commit(lake.partition(t, **keys)) or {}).get("rows", 0) for t in STAGE_TABLES}
    if "embeddings" in stale:
        crops = lake.read("crops", spec.series, spec.episode).to_pylist()
        data = embed_rows(embedder, batch_size(spec.config, "embed", spec.device), crops, clock)
        table = conform("embeddings", pa.Table.from_pylist(data, schema=TABLES["embeddings"]))
        lake.commit("embeddings", table, fingerprint=prints["embeddings"], run_id=spec.run_id, **keys)
        rows["embeddings"] = table.num_rows
    timing = {s.table: (clock.seconds[s.section] if s.table in stale else 0.0, clock.calls[s.section], rows[s.table])
              for s in STAGES}
    _record(lake, job, spec, keys, stale, timing, (0.0, 0), {"embed": embedder.model_id}, started_at)
    row = dict(previous, uri=spec.uri, profile=spec.profile, ingested_at=utc_now())
    lake.commit("episodes", pa.Table.from_pylist([row]), fingerprint=prints["episodes"], run_id=spec.run_id, **keys)
    return {"status": "ok", "error": None, "frames": row["n_frames"], "duration_s": row["duration_s"],
            "shots": rows["shots"], "tracklets": rows["tracklets"], "crops": rows["crops"], "frames_decoded": 0}


def _hash_only(job: dict, spec, lake, previous: dict, progress=None) -> dict:
    """Decode once for the video fingerprint alone; every other stage stays as it was committed."""
    import pyarrow as pa

    from anitrack.episode import hash_row
    from anitrack.lake import conform
    from anitrack.schemas.tables import TABLES
    from anitrack.segments import HASH, frame_hash
    from anitrack.shots import tiny_frame
    from anitrack.video import iter_frames

    keys = {"series": spec.series, "episode": spec.episode}
    prints = job["fingerprints"]
    started_at, t = utc_now(), time.perf_counter()
    hashes = []
    for frame in iter_frames(job["video"]):
        hashes.append(frame_hash(tiny_frame(frame.rgb)))
        if progress and frame.index % 50 == 0:
            progress(frame.index, previous["n_frames"] or 0)
    seconds = time.perf_counter() - t
    table = conform("frame_hashes", pa.Table.from_pylist(
        [hash_row(spec.series, spec.episode, previous["fps"] or 24.0, hashes)], schema=TABLES["frame_hashes"]))
    lake.commit("frame_hashes", table, fingerprint=prints["frame_hashes"], run_id=spec.run_id, **keys)
    rows = {t: (lake.read_commit(lake.partition(t, **keys)) or {}).get("rows", 0) for t in STAGE_TABLES}
    timing = {s.table: (0.0, 0, rows[s.table]) for s in STAGES}
    _record(lake, job, spec, keys, ["frame_hashes"], timing, (seconds, len(hashes)), {"hashes": HASH}, started_at)
    row = dict(previous, uri=spec.uri, profile=spec.profile, ingested_at=utc_now())
    lake.commit("episodes", pa.Table.from_pylist([row]), fingerprint=prints["episodes"], run_id=spec.run_id, **keys)
    return {"status": "ok", "error": None, "frames": row["n_frames"], "duration_s": row["duration_s"],
            "shots": rows["shots"], "tracklets": rows["tracklets"], "crops": rows["crops"],
            "frames_decoded": len(hashes)}


def _record(lake, job, spec, keys, stale, timing, decode, models, started_at) -> None:
    """One stage_runs row per stage (and the decode), saying whether it was reused and what it decoded."""
    import pyarrow as pa

    from anitrack.config import canonical

    finished_at = utc_now()
    prints = job["fingerprints"]
    seconds, frames = decode
    runs = [{**keys, "run_id": spec.run_id, "stage": "decode", "parameters": "{}", "model": "pyav",
             "fingerprint": job["content_hash"], "reused": frames == 0, "seconds": seconds,
             "frames_decoded": frames, "model_calls": 0, "rows": frames,
             "started_at": started_at, "finished_at": finished_at}]
    for stage in STAGES:
        table = stage.table
        stage_seconds, calls, n_rows = timing[table]
        runs.append({**keys, "run_id": spec.run_id, "stage": table,
                     "parameters": canonical(spec.config[stage.section]), "model": recorded_model(stage, models),
                     "fingerprint": prints[table], "reused": table not in stale, "seconds": stage_seconds,
                     "frames_decoded": 0, "model_calls": calls, "rows": n_rows,
                     "started_at": started_at, "finished_at": finished_at})
    lake.commit("stage_runs", pa.Table.from_pylist(runs), append=True, run_id=spec.run_id, **keys)


if __name__ == "__main__":
    sys.exit(main())
