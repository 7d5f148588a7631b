"""Prefect flows: they only wire tasks together."""
import tasks  # noqa: F401  (sets Prefect's environment defaults before any flow runs)


def artifact_key(kind: str, series: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return f"{kind}-{series.lower()}".replace("_", "-").replace(".", "-")[:60]
