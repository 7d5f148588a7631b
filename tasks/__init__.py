"""Prefect tasks wrapping the plain-Python stages in ``anitrack``."""
import os

# Air-gapped machines: Prefect's server would otherwise try to phone home at start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
