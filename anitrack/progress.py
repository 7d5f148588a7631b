"""Where per-episode progress goes: the one board a command shows (the CLI's terminal bars), if any.

The library and the tasks report to ``current()``; only the command line draws it, so
nothing below the CLI depends on a terminal library.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Protocol


class Board(Protocol):
    def update(self, episode: str, done: int, total: int) -> None: ...

    def finish(self, episode: str, status: str) -> None: ...


_current: Board | None = None


def current() -> Board | None:
    return _current


@contextlib.contextmanager
def showing(board: Board) -> Iterator[Board]:
    """Make ``board`` the one that episode progress goes to while the block runs."""
    global _current
    _current = board
    try:
        yield board
    finally:
        _current = None
