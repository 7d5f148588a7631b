"""Prefect flows: they only wire tasks together."""
import os
import socket


def artifact_key(kind: str, series: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return f"{kind}-{series.lower()}".replace("_", "-").replace(".", "-")[:60]


def claim_local_api_port() -> None:
    """Give Prefect's temporary server (used when no PREFECT_API_URL is set) a port the kernel picked.

    Prefect picks a random free port in 8000-8999 and then health-checks it: two anitrack commands
    starting together can pick the same one, and the loser then talks to the winner's server until it
    exits ("Connection refused"); a machine with that range busy cannot start at all. The kernel
    hands out ports no socket holds, from a range of ~28,000. Called just before a flow runs: it imports
    Prefect's server (3 s), which commands that run no flow (query, export, report) never need.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    server = SubprocessASGIServer()  # the instance Prefect's clients start in ephemeral mode
    if server.port is None and not server.running:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            server.port = probe.getsockname()[1]


def configure_prefect() -> None:
    """Prefect settings anitrack's commands run with; the entry points call it before any flow is imported,
    so that importing a module changes nothing (a library user keeps their own Prefect settings)."""
    # Air-gapped machines: Prefect's server would otherwise try to phone home at start.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server (no PREFECT_API_URL) gets 20 s to start by default; on a busy 2-core machine it
    # can take longer (Prefect issues #15075, #20248), and the command then fails before any work.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
