"""The identity flow: ``identify-series`` (the CLI's ``run`` ingests, then calls it)."""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from anitrack.config import load_config, resolve_profile
from anitrack.flows import artifact_key
from anitrack.flows.executor import series_lock
from anitrack.tasks.identify import identify_task


def _artifact(series: str, summary: dict) -> None:
    create_table_artifact(
        key=artifact_key("identity", series),
        table=[{k: c[k] for k in ("cluster_id", "character", "named", "closest", "similarity", "n_tracklets")}
               for c in summary["characters"]],
        description=f"identity run {summary['run_id']} of {series}")


@flow(name="identify-series", log_prints=True)
def identify_series(lake: str, series: str, config: dict | None = None, references: str | None = None,
                    truth: str | None = None, full: bool = False, profile: str = "offline",
                    sets: list[str] | None = None, lock: str | None = None) -> dict:
    """Identify one series; deployments pass ``profile`` and ``sets`` (plain JSON) instead of ``config``."""
    if config is None:
        config = resolve_profile(load_config(sets), profile)
    with series_lock(lake, series, "identify", lock):
        summary = identify_task(lake, series, config, references, truth, full)
    _artifact(series, summary)
    return summary
