"""Prefect flows: they only wire tasks together."""
import tasks  # noqa: F401  (sets Prefect's environment defaults before any flow runs)
