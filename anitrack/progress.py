"""Per-episode progress bars on a terminal (Rich), shared by the CLI and the tasks."""
from __future__ import annotations

import sys
import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_current: "Board | None" = None


class Board:
    def __init__(self):
        self.progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=False)
        self.bars: dict[str, int] = {}
        self.lock = threading.Lock()

    def _bar(self, episode: str, total: int | None) -> int:
        with self.lock:
            if episode not in self.bars:
                self.bars[episode] = self.progress.add_task(episode, total=total or None, status="")
            return self.bars[episode]

    def update(self, episode: str, done: int, total: int) -> None:
        bar = self._bar(episode, total)
        self.progress.update(bar, completed=done, total=total or None)

    def finish(self, episode: str, status: str) -> None:
        bar = self._bar(episode, None)
        task = self.progress.tasks[[t.id for t in self.progress.tasks].index(bar)]
        self.progress.update(bar, completed=task.total or task.completed, status=status)

    def __enter__(self):
        global _current
        self.progress.start()
        _current = self
        return self

    def __exit__(self, *exc):
        global _current
        _current = None
        self.progress.stop()


def current() -> Board | None:
    return _current


def enabled() -> bool:
    return sys.stderr.isatty()
