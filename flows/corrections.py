"""The correction flow: record a user's correction (``anitrack label``, the review page) or undo the latest,
then re-identify as the current run was made; both under one hold of the series lock."""
from __future__ import annotations

from prefect import flow

from anitrack.identity import corrections
from anitrack.lake import Lake
from anitrack.flows.executor import series_lock
from anitrack.tasks.identify import identify_task


@flow(name="correct-series", log_prints=True)
def correct_series(lake: str, series: str, config: dict, rows: list[dict] | None = None, undo: bool = False,
                   lock: str | None = None) -> dict | None:
    """Append ``rows`` (from ``corrections.correction_rows``), or with ``undo`` remove the latest correction,
    and re-identify; returns the identity summary, or None when there was nothing to undo."""
    with series_lock(lake, series, "correct", lock):
        lk = Lake(lake, create=False)
        if undo:
            if not corrections.drop_latest(lk, series):
                return None
        else:
            corrections.record(lk, series, rows or [])
        return identify_task(lake, series, corrections.reidentify_config(lk, series, config), full=undo)


def review_writes(lake: str, series: str, config: dict):
    """The review page's writes, each a flow run through the executor (``anitrack.identity.review.Writes``)."""
    from anitrack.identity.review import Writes
    from anitrack.flows.backfill import backfill_series
    from anitrack.flows.executor import execute

    return Writes(
        correct=lambda rows: execute(correct_series, lake, series, "review", config=config, rows=rows),
        undo=lambda: execute(correct_series, lake, series, "review", config=config, undo=True),
        backfill=lambda sets: execute(backfill_series, lake, series, "review", sets=sets))
