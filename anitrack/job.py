"""Child process that ingests one episode (see ``anitrack.ingest``).

Reads a JSON job on stdin, commits the episode's stage tables, then its
``episodes`` row (last), and prints a JSON summary on stdout. Progress goes to
stderr as ``@progress DONE TOTAL`` lines and a failure as one ``@error`` line.
"""
from __future__ import annotations

import json
import sys
import time


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        import torch

        torch.set_num_threads(max(1, int(job.get("threads", 1))))
        return _run(job)
    except Exception as exc:  # one line for the parent; the traceback only when debugging
        from anitrack.cli import debug_enabled

        if debug_enabled():
            import traceback

            traceback.print_exc()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"@error {text}", file=sys.stderr, flush=True)
        return 1


def _run(job: dict) -> int:
    import pyarrow as pa

    from anitrack.config import canonical
    from anitrack.episode import EpisodePipeline
    from anitrack.ingest import STAGE_TABLES, EpisodeSpec, _now, episode_row
    from anitrack.lake import Lake
    from anitrack.video import probe

    spec = EpisodeSpec(**{k: job[k] for k in EpisodeSpec.__dataclass_fields__})
    spec.uri = job["source_uri"]
    lake = Lake(spec.lake)
    info = probe(job["uri"])
    total = info.n_frames or int(info.duration_s * info.fps) or 0
    started_at = _now()
    pipeline = EpisodePipeline(spec.config, spec.device)
    try:
        out = pipeline.run(job["uri"], spec.series, spec.episode,
                           progress=lambda done: print(f"@progress {done} {total}", file=sys.stderr, flush=True))
    finally:
        pipeline.close()
    fps = job["fingerprints"]
    keys = {"series": spec.series, "episode": spec.episode}
    written = {}
    for table in STAGE_TABLES:
        t = time.perf_counter()
        reused = lake.fingerprint(table, **keys) == fps[table]
        if not reused:
            lake.commit(table, out.tables[table], fingerprint=fps[table], run_id=spec.run_id, **keys)
        written[table] = (reused, time.perf_counter() - t)
    finished_at = _now()
    # table -> (config section, which is also its clock key; the model it records)
    stage_of = {"shots": ("shots", "shots"), "detections": ("detect", "detect"), "tracklets": ("track", "detect"),
                "crops": ("crops", "detect"), "embeddings": ("embed", "embed")}
    runs = [{**keys, "run_id": spec.run_id, "stage": "decode", "parameters": "{}", "model": "pyav",
             "fingerprint": job["content_hash"], "reused": False, "seconds": out.clock.seconds["decode"],
             "frames_decoded": out.n_frames, "model_calls": 0, "rows": out.n_frames,
             "started_at": started_at, "finished_at": finished_at}]
    for table in STAGE_TABLES:
        clock_key, model_key = stage_of[table]
        reused, commit_s = written[table]
        runs.append({**keys, "run_id": spec.run_id, "stage": table,
                     "parameters": canonical(spec.config[clock_key]), "model": out.models.get(model_key, ""),
                     "fingerprint": fps[table], "reused": reused,
                     "seconds": out.clock.seconds[clock_key] + commit_s, "frames_decoded": 0,
                     "model_calls": out.clock.calls[clock_key], "rows": out.tables[table].num_rows,
                     "started_at": started_at, "finished_at": finished_at})
    lake.commit("stage_runs", pa.Table.from_pylist(runs), append=True, run_id=spec.run_id, **keys)
    row = episode_row(spec, job["content_hash"], job["size"], "ok", None, fps=out.fps, n_frames=out.n_frames,
                      duration=out.duration_s, width=info.width, height=info.height)
    lake.commit("episodes", pa.Table.from_pylist([row]), fingerprint=fps["episodes"], run_id=spec.run_id, **keys)
    summary = {"status": "ok", "error": None, "frames": out.n_frames, "duration_s": out.duration_s,
               "shots": out.tables["shots"].num_rows, "tracklets": out.tables["tracklets"].num_rows,
               "crops": out.tables["crops"].num_rows,
               "stage_seconds": {k: round(v, 3) for k, v in out.clock.seconds.items()}}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
