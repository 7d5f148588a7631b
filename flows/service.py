"""The deployments ``anitrack serve`` runs in one process (``deployments/prefect.yaml`` declares the same ones).

``ingest-series`` runs on a schedule; ``identify-series`` is started by the server when an ingest-series run
completes (a deployment trigger: the server's automation copies lake, series, profile and sets from the
finished run); ``backfill`` runs only when asked.
"""
from __future__ import annotations

from prefect.events import DeploymentEventTrigger

from anitrack.flows.backfill import backfill_series
from anitrack.flows.identify import identify_series
from anitrack.flows.ingest import ingest_series

INGEST, IDENTIFY, BACKFILL = "ingest-series", "identify-series", "backfill"
FROM_INGEST = ("lake", "series", "profile", "sets")


def identify_trigger(ingest_deployment: str = INGEST) -> DeploymentEventTrigger:
    """Fire when a run of the ingest deployment completes, passing its parameters on."""
    return DeploymentEventTrigger(
        name=f"identify after {ingest_deployment}",
        expect={"prefect.flow-run.Completed"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "deployment", "prefect.resource.name": ingest_deployment},
        parameters={k: "{{ flow_run.parameters.%s }}" % k for k in FROM_INGEST},
    )


def deployments(source: str, lake: str, series: str, references: str | None = None, profile: str = "offline",
                sets: list[str] | None = None, cron: str | None = None, interval: float | None = None) -> list:
    """The runner deployments; one ingest and one identify run at a time, so runs never race on the lake."""
    common = {"lake": lake, "series": series, "profile": profile, "sets": list(sets or [])}
    out = [
        ingest_series.to_deployment(name=INGEST, cron=cron, interval=interval, concurrency_limit=1,
                             parameters={"source": source, **common},
                             description="Ingest new or changed episodes of the source folder."),
        identify_series.to_deployment(name=IDENTIFY, concurrency_limit=1, triggers=[identify_trigger()],
                                      parameters={**common, "references": references},
                                      description="Cluster and name the series; runs after each ingest."),
    ]
    out.append(backfill_series.to_deployment(name=BACKFILL, concurrency_limit=1,
                                             parameters={"lake": lake, "series": series, "sets": []},
                                             description="Re-run stages whose parameters changed."))
    return out


def serve(*args, **kwargs) -> None:
    """Register the deployments with the server in PREFECT_API_URL and run their flow runs until stopped."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(*args, **kwargs))
