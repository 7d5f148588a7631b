"""How an error reaches the user: one line, and the traceback only when debugging."""
from __future__ import annotations

import os


def debug_enabled() -> bool:
    """``ANITRACK_DEBUG`` set (and not 0/false): show tracebacks instead of one-line errors."""
    return os.environ.get("ANITRACK_DEBUG", "") not in ("", "0", "false")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
