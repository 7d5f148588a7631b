"""Identity flows: ``identify-series`` alone, and ``run-series`` = ingest then identify."""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from anitrack.config import load_config, resolve_profile
from anitrack.lake import Lake
from flows import artifact_key
from flows.ingest import run_ingest
from tasks.identify import identify_task


def _artifact(series: str, summary: dict) -> None:
    create_table_artifact(
        key=artifact_key("identity", series),
        table=[{k: c[k] for k in ("cluster_id", "character", "named", "closest", "similarity", "n_tracklets")}
               for c in summary["characters"]],
        description=f"identity run {summary['run_id']} of {series}")


@flow(name="identify-series", log_prints=True)
def identify_series(lake: str, series: str, config: dict | None = None, references: str | None = None,
                    truth: str | None = None, full: bool = False, profile: str = "offline",
                    sets: list[str] | None = None) -> dict:
    """Identify one series; deployments pass ``profile`` and ``sets`` (plain JSON) instead of ``config``."""
    if config is None:
        config = resolve_profile(load_config(sets), profile)
    with Lake(lake).lock(series, "identify"):  # re-entered when the CLI already holds it
        summary = identify_task(lake, series, config, references, truth, full)
    _artifact(series, summary)
    return summary


@flow(name="run-series", log_prints=True)
def run_series(source: str, lake: str, series: str, config: dict, profile: str = "offline",
               references: str | None = None, truth: str | None = None, parallel: int = 0,
               device: str = "cpu", runner: str = "thread", dask_address: str | None = None) -> dict:
    """Ingest every episode (``runner``: thread or dask, see ``run_ingest``), then identify the whole series."""
    results = run_ingest(source, lake, series, config, profile, parallel, device, runner, dask_address)
    with Lake(lake).lock(series, "identify"):
        summary = identify_task(lake, series, config, references, truth)
    _artifact(series, summary)
    return {"episodes": results, "identity": summary}
