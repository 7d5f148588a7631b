"""Prefect task around ``anitrack.identity.run``: the cross-episode identity run of one series."""
from __future__ import annotations

from prefect import get_run_logger, task

from anitrack.identity.run import identify
from anitrack.lake import Lake


@task(name="identify-series", task_run_name="identify-{series}")
def identify_task(lake: str, series: str, config: dict, references: str | None = None, truth: str | None = None,
                  full: bool = False, run_id: str | None = None) -> dict:
    """Cluster, name and measure one series; returns a small summary (no tables)."""
    summary = identify(Lake(lake), series, config, references=references, truth=truth, full=full, run_id=run_id)
    named = sum(1 for c in summary["characters"] if c["named"])
    get_run_logger().info("identity run %s (%s): %d tracklets, %d clusters, %d named", summary["run_id"],
                          summary["mode"], summary["tracklets"], len(summary["characters"]), named)
    return summary
