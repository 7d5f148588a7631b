"""The ingestion flows: list a series' episodes and ingest them in parallel, one child process each (or one
task per episode on Dask worker processes that keep their models); ``run-series`` identifies after."""
from __future__ import annotations

import os

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from anitrack.config import load_config, resolve_profile
from anitrack.ingest import episode_name
from anitrack.worker import EpisodeSpec
from anitrack.lake import Lake, new_run_id
from anitrack.flows import artifact_key
from anitrack.flows.executor import episode_workers, map_episodes, series_lock
from anitrack.tasks.identify import identify_task
from anitrack.tasks.ingest import discover_episodes, segments_task


def ingest_episodes(source: str, lake: str, series: str, config: dict, profile: str, parallel: int, device: str,
                    runner: str) -> list[dict]:
    """Inside a flow that holds the series lock: every episode of ``source``, unchanged ones skipped."""
    logger = get_run_logger()
    Lake(lake).clean_staging()
    uris = discover_episodes(source)
    workers, per_episode = episode_workers(len(uris), parallel)
    dask = runner == "dask"
    config = dict(config, detect=dict(config["detect"]))
    if dask:  # one episode per worker thread; daemonic worker processes cannot start a detector pool
        per_episode = config["detect"]["workers"] = 1
    if config["detect"]["workers"] == 0:
        config["detect"]["workers"] = per_episode
    run_id = new_run_id()
    specs = [EpisodeSpec(uri=u, series=series, episode=episode_name(u), lake=lake, config=config,
                         profile=profile, device=device, threads=per_episode, run_id=run_id, in_process=dask)
             for u in uris]
    names = [s.episode for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("two source files map to the same episode name: " + ", ".join(sorted(names)))
    logger.info("ingesting %d episodes of %s, %d at a time", len(specs), series, workers)
    results = map_episodes(specs)
    if any(r["status"] != "failed" for r in results):
        segments_task(lake, series, config, run_id)
    create_table_artifact(
        key=artifact_key("ingest", series),
        table=[{k: r.get(k) for k in ("episode", "status", "frames", "shots", "tracklets", "crops", "seconds",
                                      "error")} for r in results],
        description=f"ingestion of {series} into {lake} (run {run_id})")
    return results


@flow(name="ingest-series", log_prints=True,  # deployment runs: one episode per core, not all at once
      task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1))
def ingest_series(source: str, lake: str, series: str, config: dict | None = None, profile: str = "offline",
                  parallel: int = 0, device: str = "cpu", sets: list[str] | None = None,
                  runner: str = "thread", lock: str | None = None) -> list[dict]:
    """Ingest every episode of ``source`` into ``lake``; unchanged episodes are skipped.

    Deployments pass ``sets`` (``stage.key=value`` strings, plain JSON) instead of a full ``config``.
    """
    config = resolve_profile(config if config is not None else load_config(sets), profile)
    with series_lock(lake, series, "ingest", lock):
        return ingest_episodes(source, lake, series, config, profile, parallel, device, runner)


@flow(name="run-series", log_prints=True)
def run_series(source: str, lake: str, series: str, config: dict, profile: str = "offline", parallel: int = 0,
               device: str = "cpu", references: str | None = None, truth: str | None = None,
               runner: str = "thread", lock: str | None = None) -> dict:
    """Ingest, then identify, under one hold of the series lock (nothing writes the series in between);
    no identity run when every episode failed."""
    with series_lock(lake, series, "run", lock):
        results = ingest_episodes(source, lake, series, config, profile, parallel, device, runner)
        if all(r["status"] == "failed" for r in results):
            return {"episodes": results, "identity": None}
        return {"episodes": results, "identity": identify_task(lake, series, config, references, truth)}
