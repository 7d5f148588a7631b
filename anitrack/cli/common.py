"""What every command shares: the Typer apps, the two errors that become exit codes, argument checks,
output (data to stdout, messages to stderr) and running a flow."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find, track, cluster and name anime characters across whole series.")
lake_app = typer.Typer(no_args_is_help=True, help="Manage the lake (import your own tables).")
models_app = typer.Typer(no_args_is_help=True, help="Manage full-profile models.")
query_app = typer.Typer(no_args_is_help=True, help="Named analytics queries (screen time, co-appearance, ...).")
export_app = typer.Typer(no_args_is_help=True, help="Export subtitles, face-crop datasets, clips and tables.")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"anitrack {version('anitrack')}")
        raise typer.Exit(0)


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the installed version and exit.")) -> None:
    """Find, track, cluster and name anime characters across whole series."""


app.add_typer(lake_app, name="lake")
app.add_typer(models_app, name="models")
app.add_typer(query_app, name="query")
app.add_typer(export_app, name="export")

FORMATS = ("table", "csv", "json")
PROFILE_HELP = ("offline (models in wheels), hub-cpu (pulled hub models, faces first, for CPUs) or full "
                "(pulled hub models, persons first, for GPUs).")


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


class Failure(Exception):
    """The command ran but failed: exit code 1."""


def err(message: str) -> None:
    print(f"anitrack: {message}", file=sys.stderr, flush=True)


def open_lake(url: str, create: bool = True):
    from anitrack.lake import Lake, LakeError, LakeUnreachable

    try:
        return Lake(url, create=create)
    except LakeUnreachable as exc:
        raise Failure(str(exc)) from None
    except LakeError as exc:
        raise UsageError(str(exc)) from None


def command_config(sets: list[str], config_file: Optional[Path], profile: str) -> dict:
    from anitrack.config import ConfigError, load_config, resolve_profile

    try:
        return resolve_profile(load_config(sets, config_file), profile)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def check_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible on this machine")
    return device


def check_format(fmt: str, formats=FORMATS) -> None:
    if fmt not in formats:
        raise UsageError(f"--format: choose from {', '.join(formats)}")


def check_out(fmt: str, out: Optional[Path], force: bool, formats=FORMATS + ("parquet",)) -> None:
    """Refuse a bad --format / --out pair before any work is done."""
    check_format(fmt, formats)
    if out is None and fmt == "parquet":
        raise UsageError("--format parquet needs --out FILE")
    if out is not None and fmt == "table":
        raise UsageError("--out: choose --format csv, json or parquet for a file")
    if out is not None:
        refuse_existing(out, force)


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UsageError(f"--out: {out} exists (add --force to replace it)")
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")


def print_table(table, fmt: str = "table", out=None) -> None:
    """Print an Arrow table as a Rich table, CSV or JSON lines."""
    import pyarrow.csv as pacsv

    out = out or sys.stdout
    rows = table.to_pylist()
    if fmt == "json":
        for row in rows:
            out.write(json.dumps(row, default=str) + "\n")
    elif fmt == "csv":
        import io

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        out.write(buf.getvalue().decode())
    else:
        from rich.console import Console
        from rich.table import Table

        view = Table(show_header=True, header_style="bold")
        for name in table.column_names:
            view.add_column(name)
        for row in rows:
            view.add_row(*["" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
                           for v in row.values()])
        Console(file=out, width=max(100, Console().width)).print(view)


def emit(table, fmt: str, out: Optional[Path], allow_empty: bool = False) -> None:
    """Print a result, or write it to --out; an empty named result is a failure (exit 1)."""
    from anitrack.export import ExportError, save_table

    if table.num_rows == 0 and not allow_empty:
        raise Failure("no rows: the result is empty")
    if out is None:
        print_table(table, fmt)
        return
    try:
        save_table(table, out, fmt)
    except ExportError as exc:
        raise Failure(str(exc)) from None
    err(f"wrote {table.num_rows} rows to {out}")


def print_results(results: list[dict], fmt: str) -> None:
    import pyarrow as pa

    cols = ("episode", "status", "frames", "shots", "tracklets", "crops", "seconds", "error", "note")
    print_table(pa.Table.from_pylist([{k: r.get(k) for k in cols} for r in results]), fmt)


def print_identity(summary: dict, fmt: str = "table") -> None:
    import pyarrow as pa

    cols = ("cluster_id", "character", "named", "source", "closest", "similarity", "confidence", "margin",
            "threshold", "n_tracklets")
    chars = sorted(summary["characters"], key=lambda c: (not c["named"], c["character"]))
    print_table(pa.Table.from_pylist([{k: c[k] for k in cols} for c in chars]), fmt)
    q = [r for r in summary["quality"] if r["character"] is None]
    print_table(pa.Table.from_pylist([{"metric": r["metric"], "value": r["value"]} for r in q]), fmt)
    err(f"identity run {summary['run_id']} ({summary['mode']}): {summary['tracklets']} tracklets, "
         f"{len(summary['characters'])} characters in {summary['seconds']:.1f} s")
    err(summary["naming"])
    if summary["calibration"]["calibration_warning"]:
        err(f"warning: {summary['calibration']['calibration_warning']}")


def identity_errors():
    from anitrack.identity.inputs import IdentifyError

    return IdentifyError


@contextlib.contextmanager
def busy_is_one_line():
    """A series another process holds: its one-line message and exit code 1 (no traceback)."""
    from anitrack.lake import LakeBusy

    try:
        yield
    except LakeBusy as exc:
        err(str(exc))
        raise typer.Exit(1) from None


def run_flow(flow_fn, command: str, lake: str, series: str, **params):
    """Run a flow through the executor (it takes the series lock); a busy series is one line, exit 1.
    Episode progress shows as bars on a terminal."""
    from anitrack import progress
    from anitrack.flows.executor import execute

    with busy_is_one_line():
        if sys.stderr.isatty():
            with TerminalBoard() as board, progress.showing(board):
                return execute(flow_fn, lake, series, command, **params)
        return execute(flow_fn, lake, series, command, **params)


class TerminalBoard:
    """Per-episode progress bars on a terminal (Rich): an ``anitrack.progress.Board``."""

    def __init__(self):
        import threading

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
        self.progress.update(self._bar(episode, total), completed=done, total=total or None)

    def finish(self, episode: str, status: str) -> None:
        bar = self._bar(episode, None)
        task = next(t for t in self.progress.tasks if t.id == bar)
        self.progress.update(bar, completed=task.total or task.completed, status=status)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
