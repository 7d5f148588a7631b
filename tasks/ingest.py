"""Prefect tasks around ``anitrack.ingest``: small values in, small values out (lake URIs, summaries)."""
from __future__ import annotations

from prefect import get_run_logger, task

from anitrack import progress
from anitrack.ingest import discover, ingest_episode
from anitrack.lake import Lake
from anitrack.segments import segment_series
from anitrack.worker import EpisodeSpec


@task(name="discover-episodes", retries=2, retry_delay_seconds=2,
      retry_condition_fn=lambda task, run, state: _transient(state))
def discover_episodes(source: str) -> list[str]:
    """List the source's video files (retried: listing a bucket can fail transiently)."""
    return discover(source)


@task(name="ingest-episode", task_run_name="ingest-{spec.episode}")
def ingest_episode_task(spec: EpisodeSpec) -> dict:
    """One episode in a child process; failures are data (an ``episodes`` row), not exceptions."""
    logger = get_run_logger()
    board = progress.current()
    result = ingest_episode(spec, progress=(lambda done, total: board.update(spec.episode, done, total))
                            if board else None)
    if board:
        board.finish(spec.episode, result["status"])
    if result["status"] == "failed":
        logger.warning("episode %s failed: %s", spec.episode, result["error"])
    else:
        logger.info("episode %s %s in %.1f s", spec.episode, result["status"], result.get("seconds", 0.0))
    if spec.in_process and result.get("worker"):  # Dask: each worker process loads the models once
        logger.info("episode %s ran on worker %s (%s)", spec.episode, result["worker"],
                    "models loaded" if result["models_loaded"] else "models reused")
    return result


def _transient(state) -> bool:
    try:
        state.result()
    except (OSError, TimeoutError, ConnectionError):
        return True
    except Exception:
        return False
    return False


@task(name="find-segments", task_run_name="segments-{series}")
def segments_task(lake: str, series: str, config: dict, run_id: str = "") -> dict:
    """Openings, endings, recaps and previews of the whole series, from the stored hashes (no decoding)."""
    summary = segment_series(Lake(lake), series, config, run_id)
    logger = get_run_logger()
    if summary["alone"]:
        logger.info("segments of %s: one episode only, nothing to compare it with; no segment found", series)
    elif summary["reused"]:
        logger.info("segments of %s: unchanged (%d episodes)", series, summary["episodes"])
    else:
        logger.info("segments of %s: %d found in %d episodes", series, summary["segments"], summary["episodes"])
    return summary
