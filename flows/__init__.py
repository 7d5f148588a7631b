"""Prefect flows: they only wire tasks together."""
import os
import socket

import tasks  # noqa: F401  (sets Prefect's environment defaults before any flow runs)


def artifact_key(kind: str, series: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return f"{kind}-{series.lower()}".replace("_", "-").replace(".", "-")[:60]


def _claim_local_api_port() -> None:
    """Give Prefect's temporary server (used when no PREFECT_API_URL is set) a port the kernel picked.

    Prefect picks a random free port in 8000-8999 and then health-checks it: two anitrack commands
    starting together can pick the same one, and the loser then talks to the winner's server until it
    exits ("Connection refused"); a machine with that range busy cannot start at all. The kernel
    hands out ports no socket holds, from a range of ~28,000.
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


_claim_local_api_port()
