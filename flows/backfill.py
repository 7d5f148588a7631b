"""The backfill flow: plan what a parameter change touches, then recompute only that (``anitrack backfill``):
the episodes through the same task runner as ingestion, then a new identity run."""
from __future__ import annotations

import contextlib
import os
import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from anitrack import backfill
from anitrack.lake import Lake
from anitrack.flows import artifact_key
from anitrack.flows.executor import episode_workers, map_episodes, series_lock
from anitrack.tasks.identify import identify_task
from anitrack.tasks.ingest import segments_task


@flow(name="backfill", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1))
def backfill_series(lake: str, series: str, sets: list[str], episodes: str | None = None,
                    dry_run: bool = False, parallel: int = 0, device: str = "cpu", lock: str | None = None) -> dict:
    """Backfill ``series`` with ``sets`` (``stage.key=value``) over the last parameters; returns the plan and,
    unless ``dry_run`` or there is nothing to do, the episodes recomputed and the new identity run."""
    logger = get_run_logger()
    started = time.perf_counter()
    lk = Lake(lake, create=False)
    with contextlib.nullcontext() if dry_run else series_lock(lake, series, "backfill", lock):  # planning to end
        plan = backfill.plan(lk, series, sets, episodes)
        rows = plan.rows()
        create_table_artifact(key=artifact_key("backfill", series),
                              table=rows, description=f"backfill plan of {series}: {' '.join(sets)}")
        if dry_run or not plan.todo:
            logger.info("backfill of %s: %s", series, "dry run" if dry_run else "nothing to do")
            return {"plan": rows, "run_id": None, "episodes": [], "identity": None, "frames_decoded": 0}
        _, threads = episode_workers(len(plan.recompute), parallel)
        results = map_episodes(backfill.episode_specs(plan, threads, device)) if plan.recompute else []
        segments_task(lake, series, {"segments": plan.segments_config}, plan.run_id)  # reused when unchanged
        summary = None
        if backfill.needs_identity(plan, results):
            summary = identify_task(lake, series, plan.identity_config, full=plan.full, run_id=plan.run_id)
    frames = backfill.frames_decoded(lk, plan)
    logger.info("backfill run %s of %s: %d episodes recomputed, %d frames decoded", plan.run_id, series,
                len(results), frames)
    return {"plan": rows, "run_id": plan.run_id, "episodes": results, "identity": summary,
            "frames_decoded": frames, "seconds": time.perf_counter() - started}
