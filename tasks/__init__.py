"""Prefect tasks wrapping the plain-Python stages in ``anitrack``."""
