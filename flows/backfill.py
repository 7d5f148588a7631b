"""The backfill flow: plan what a parameter change touches, then recompute only that (``anitrack backfill``)."""
from __future__ import annotations

import contextlib

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from anitrack import backfill
from anitrack.lake import Lake
from flows import artifact_key


@flow(name="backfill", log_prints=True)
def backfill_series(lake: str, series: str, sets: list[str], episodes: str | None = None,
                    dry_run: bool = False) -> dict:
    """Backfill ``series`` with ``sets`` (``stage.key=value``) over the last parameters; returns the plan and,
    unless ``dry_run`` or there is nothing to do, the episodes recomputed and the new identity run."""
    logger = get_run_logger()
    lk = Lake(lake, create=False)
    with contextlib.nullcontext() if dry_run else lk.lock(series, "backfill"):  # held from planning to the end
        plan = backfill.plan(lk, series, sets, episodes)
        rows = plan.rows()
        create_table_artifact(key=artifact_key("backfill", series),
                              table=rows, description=f"backfill plan of {series}: {' '.join(sets)}")
        if dry_run or not plan.identity:
            logger.info("backfill of %s: %s", series, "dry run" if dry_run else "nothing to do")
            return {"plan": rows, "run_id": None, "episodes": [], "identity": None, "frames_decoded": 0}
        result = backfill.run(plan)
    logger.info("backfill run %s of %s: %d episodes recomputed, %d frames decoded", result["run_id"], series,
                len(result["episodes"]), result["frames_decoded"])
    return {"plan": rows, **result}
