"""Prefect tasks wrapping the plain-Python stages in ``anitrack``."""
import os

# Air-gapped machines: Prefect's server would otherwise try to phone home at start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary server (no PREFECT_API_URL) gets 20 s to start by default; on a busy 2-core machine it
# can take longer (Prefect issues #15075, #20248), and the command then fails before any work.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
