"""The ingestion flow: list a series' episodes and ingest them in parallel, one child process each."""
from __future__ import annotations

import os

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from anitrack.config import resolve_profile
from anitrack.ingest import EpisodeSpec, episode_name, new_run_id
from anitrack.lake import Lake
from tasks.ingest import discover_episodes, ingest_episode_task


def parallel_episodes(n_episodes: int, requested: int = 0) -> int:
    return max(1, min(n_episodes, requested or os.cpu_count() or 1))


def run_ingest(source: str, lake: str, series: str, config: dict, profile: str = "offline",
               parallel: int = 0, device: str = "cpu") -> list[dict]:
    """Run the flow with as many episode threads as episodes may run at once (each is a child process)."""
    workers = parallel or os.cpu_count() or 1
    runner = ThreadPoolTaskRunner(max_workers=workers)
    return ingest_series.with_options(task_runner=runner)(source, lake, series, config, profile, workers, device)


@flow(name="ingest-series", log_prints=True)
def ingest_series(source: str, lake: str, series: str, config: dict, profile: str = "offline",
                  parallel: int = 0, device: str = "cpu") -> list[dict]:
    """Ingest every episode of ``source`` into ``lake``; unchanged episodes are skipped."""
    logger = get_run_logger()
    config = resolve_profile(config, profile)
    Lake(lake).clean_staging()
    uris = discover_episodes(source)
    workers = parallel_episodes(len(uris), parallel)
    cores = os.cpu_count() or 1
    per_episode = max(1, cores // workers)
    if config["detect"]["workers"] == 0:
        config["detect"]["workers"] = per_episode
    run_id = new_run_id()
    specs = [EpisodeSpec(uri=u, series=series, episode=episode_name(u), lake=lake, config=config,
                         profile=profile, device=device, threads=per_episode, run_id=run_id) for u in uris]
    names = [s.episode for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("two source files map to the same episode name: " + ", ".join(sorted(names)))
    logger.info("ingesting %d episodes of %s, %d at a time", len(specs), series, workers)
    results = ingest_episode_task.map(specs).result()
    create_table_artifact(
        key=f"ingest-{series.lower()}".replace("_", "-").replace(".", "-")[:60],
        table=[{k: r.get(k) for k in ("episode", "status", "frames", "shots", "tracklets", "crops", "seconds",
                                      "error")} for r in results],
        description=f"ingestion of {series} into {lake} (run {run_id})")
    return results
