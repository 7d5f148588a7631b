"""The ``anitrack`` command line. Data goes to stdout, messages to stderr.

Exit codes: 0 success, 1 failure (an episode, a query), 2 usage (bad flag,
unknown parameter, missing lake parent). Tracebacks only with ANITRACK_DEBUG=1.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from anitrack.errors import debug_enabled, first_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find, track, cluster and name anime characters across whole series.")
lake_app = typer.Typer(no_args_is_help=True, help="Manage the lake (import your own tables).")
models_app = typer.Typer(no_args_is_help=True, help="Manage full-profile models.")
app.add_typer(lake_app, name="lake")
app.add_typer(models_app, name="models")
query_app = typer.Typer(no_args_is_help=True, help="Named analytics queries (screen time, co-appearance, ...).")
export_app = typer.Typer(no_args_is_help=True, help="Export subtitles, face-crop datasets, clips and tables.")
app.add_typer(query_app, name="query")
app.add_typer(export_app, name="export")

FORMATS = ("table", "csv", "json")


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


class Failure(Exception):
    """The command ran but failed: exit code 1."""


def _err(message: str) -> None:
    print(f"anitrack: {message}", file=sys.stderr, flush=True)


def _open_lake(url: str, create: bool = True):
    from anitrack.lake import Lake, LakeError, LakeUnreachable

    try:
        return Lake(url, create=create)
    except LakeUnreachable as exc:
        raise Failure(str(exc)) from None
    except LakeError as exc:
        raise UsageError(str(exc)) from None


def _config(sets: list[str], config_file: Optional[Path], profile: str) -> dict:
    from anitrack.config import ConfigError, load_config, resolve_profile

    try:
        return resolve_profile(load_config(sets, config_file), profile)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


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


@app.command()
def synth(out: Path = typer.Argument(..., help="Folder to write the series and its reference gallery into."),
          series: str = typer.Option("synth", help="Series name (folder name)."),
          episodes: int = typer.Option(3, min=1), characters: int = typer.Option(5, min=2),
          seconds: float = typer.Option(90.0, min=2.0, help="Length of each episode."),
          seed: int = typer.Option(7), lookalikes: int = typer.Option(1, min=0),
          grading: float = typer.Option(0.5, min=0.0, max=1.0, help="Strength of per-shot colour grading."),
          shot_seconds: float = typer.Option(3.0, min=0.5, help="Mean shot length."),
          transitions: float = typer.Option(0.3, min=0.0, max=1.0,
                                            help="Share of scene changes drawn as a fade or a dissolve."),
          width: int = typer.Option(854), height: int = typer.Option(480),
          drawings: Optional[Path] = typer.Option(
              None, help="Make the shots from these labelled drawings instead (a folder per character): "
                         "measure naming on your own art."),
          references: int = typer.Option(6, min=1, help="With --drawings: gallery images per character."),
          leave_out: float = typer.Option(0.25, min=0.0, max=0.9,
                                          help="With --drawings: share of characters left out of the gallery.")):
    """Render a synthetic anime mini-series with ground truth (truth.json) and a reference gallery."""
    if drawings is not None:
        from anitrack.artseries import synthesize_art_series

        if not drawings.is_dir():
            raise UsageError(f"--drawings: {drawings} is not a folder")
        try:
            folder = synthesize_art_series(drawings, out, series=series, episodes=episodes, seconds=seconds,
                                           seed=seed, references=references, leave_out=leave_out, width=width,
                                           height=height)
        except ValueError as exc:
            raise Failure(str(exc)) from None
        print(folder)
        return
    from anitrack.synth import synthesize_series

    folder = synthesize_series(out, series=series, episodes=episodes, characters=characters, seconds=seconds,
                               seed=seed, lookalikes=lookalikes, grading=grading, mean_shot_seconds=shot_seconds,
                               width=width, height=height, transitions=transitions)
    print(folder)


PROFILE_HELP = ("offline (models in wheels), hub-cpu (pulled hub models, faces first, for CPUs) or full "
                "(pulled hub models, persons first, for GPUs).")
RUNNER_HELP = "thread (one child process per episode) or dask (episodes on Dask workers)."
DASK_ADDRESS_HELP = "Scheduler of an existing Dask cluster, e.g. tcp://host:8786 (default: a local cluster)."
DASK_WORKERS_HELP = "Worker processes of the local Dask cluster (0: one per CPU core)."


@app.command()
def ingest(source: str = typer.Argument(..., help="A video file, a folder, a glob or an fsspec URL."),
           lake: str = typer.Option(..., help="Lake folder or URL."),
           series: Optional[str] = typer.Option(None, help="Series name (default: the source folder's name)."),
           profile: str = typer.Option("offline", help=PROFILE_HELP),
           set_: list[str] = typer.Option([], "--set", help="Override a parameter: stage.key=value."),
           config_file: Optional[Path] = typer.Option(None, "--config", help="An anitrack.toml file."),
           parallel: int = typer.Option(0, min=0, help="Episodes at once (0: one per CPU core)."),
           device: str = typer.Option("cpu", help="cpu or cuda."),
           fmt: str = typer.Option("table", "--format", help="table, csv or json."),
           runner: str = typer.Option("thread", help=RUNNER_HELP),
           dask_address: Optional[str] = typer.Option(None, help=DASK_ADDRESS_HELP),
           dask_workers: int = typer.Option(0, min=0, help=DASK_WORKERS_HELP)):
    """Ingest every episode of a series: shots, tracklets, crops and embeddings into the lake."""
    results = _ingest(**_ingest_args(source, lake, series, profile, set_, config_file, parallel, device,
                                     runner, dask_address, dask_workers))
    _print_results(results, fmt)
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        _err(f"episode {r['episode']} failed: {r['error']}")
    if failed:
        raise typer.Exit(1)


def _ingest_args(source, lake, series, profile, sets, config_file, parallel, device, runner="thread",
                 dask_address=None, dask_workers=0) -> dict:
    """The ingestion flows' arguments, checked before Prefect starts (a bad one is one line)."""
    from anitrack.ingest import SourceError, default_series, discover
    from anitrack.lake import check_name, LakeError

    config = _config(sets, config_file, profile)
    if runner not in ("thread", "dask"):
        raise UsageError(f"--runner: choose thread or dask, got {runner!r}")
    if runner != "dask" and (dask_address or dask_workers):
        raise UsageError("--dask-address and --dask-workers need --runner dask")
    if runner == "dask":
        parallel = dask_workers
    if device not in ("cpu", "cuda", "auto"):
        raise UsageError(f"--device: choose cpu, cuda or auto, got {device!r}")
    device = _device(device)
    _open_lake(lake)
    try:
        series = series or default_series(source)
        check_name("series", series)
    except LakeError as exc:
        raise UsageError(str(exc)) from None
    try:
        discover(source)  # fail fast, before starting Prefect, on a source that is not there
    except SourceError as exc:
        raise Failure(str(exc)) from None
    from anitrack.models import check_models

    check_models(config, device)  # a missing hub model, or a device that cannot run it, fails here at once
    return {"source": source, "lake": lake, "series": series, "config": config, "profile": profile,
            "parallel": parallel, "device": device, "runner": runner, "dask_address": dask_address}


@contextlib.contextmanager
def _busy_is_one_line():
    """A series another process holds: its one-line message and exit code 1 (no traceback)."""
    from anitrack.lake import LakeBusy

    try:
        yield
    except LakeBusy as exc:
        _err(str(exc))
        raise typer.Exit(1) from None


def _flow(flow_fn, command: str, lake: str, series: str, **params):
    """Run a flow through the executor (it takes the series lock); a busy series is one line, exit 1.
    Episode progress shows as bars on a terminal."""
    from anitrack import progress
    from flows.executor import execute

    with _busy_is_one_line():
        if sys.stderr.isatty():
            with TerminalBoard() as board, progress.showing(board):
                return execute(flow_fn, lake, series, command, **params)
        return execute(flow_fn, lake, series, command, **params)


def _ingest(**args) -> list[dict]:
    from flows.ingest import ingest_series

    return _flow(ingest_series, "ingest", **args)


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


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible on this machine")
    return device


def _print_results(results: list[dict], fmt: str) -> None:
    import pyarrow as pa

    cols = ("episode", "status", "frames", "shots", "tracklets", "crops", "seconds", "error", "note")
    print_table(pa.Table.from_pylist([{k: r.get(k) for k in cols} for r in results]), fmt)


def _identify_summary(summary: dict, fmt: str = "table") -> None:
    import pyarrow as pa

    cols = ("cluster_id", "character", "named", "source", "closest", "similarity", "confidence", "margin",
            "threshold", "n_tracklets")
    chars = sorted(summary["characters"], key=lambda c: (not c["named"], c["character"]))
    print_table(pa.Table.from_pylist([{k: c[k] for k in cols} for c in chars]), fmt)
    q = [r for r in summary["quality"] if r["character"] is None]
    print_table(pa.Table.from_pylist([{"metric": r["metric"], "value": r["value"]} for r in q]), fmt)
    _err(f"identity run {summary['run_id']} ({summary['mode']}): {summary['tracklets']} tracklets, "
         f"{len(summary['characters'])} characters in {summary['seconds']:.1f} s")
    _err(summary["naming"])
    if summary["calibration"]["calibration_warning"]:
        _err(f"warning: {summary['calibration']['calibration_warning']}")


def _identity_errors():
    from anitrack.identify import IdentifyError

    return IdentifyError


@app.command()
def identify(lake: str = typer.Option(..., help="Lake folder or URL."),
             series: str = typer.Option(..., help="Series to identify."),
             references: Optional[Path] = typer.Option(None, help="Reference gallery: one folder per character."),
             truth: Optional[Path] = typer.Option(None, help="truth.json to score the result against."),
             profile: str = typer.Option("offline", help="Must match the profile the series was ingested with."),
             set_: list[str] = typer.Option([], "--set", help="Override a parameter: stage.key=value."),
             config_file: Optional[Path] = typer.Option(None, "--config"),
             full: bool = typer.Option(False, "--full", help="Re-cluster from scratch instead of incrementally."),
             fmt: str = typer.Option("table", "--format")):
    """Cluster the series' tracklets into characters, name them from references, and report quality."""
    from anitrack.identify import check_inputs

    config = _config(set_, config_file, profile)
    if truth is not None and not truth.is_file():
        raise UsageError(f"--truth: {truth} does not exist")
    try:
        check_inputs(_open_lake(lake, create=False), series, references)
    except _identity_errors() as exc:
        raise Failure(str(exc)) from None
    from flows.identify import identify_series

    summary = _flow(identify_series, "identify", lake, series, config=config,
                    references=str(references) if references else None, truth=str(truth) if truth else None,
                    full=full)
    _identify_summary(summary, fmt)


@app.command()
def run(source: str = typer.Argument(..., help="A video file, a folder, a glob or an fsspec URL."),
        lake: str = typer.Option(...), series: Optional[str] = typer.Option(None),
        references: Optional[Path] = typer.Option(None, help="Reference gallery: one folder per character."),
        truth: Optional[Path] = typer.Option(None, help="truth.json to score the result against."),
        profile: str = typer.Option("offline"),
        set_: list[str] = typer.Option([], "--set", help="Override a parameter: stage.key=value."),
        config_file: Optional[Path] = typer.Option(None, "--config"),
        parallel: int = typer.Option(0, min=0), device: str = typer.Option("cpu"),
        runner: str = typer.Option("thread", help=RUNNER_HELP),
        dask_address: Optional[str] = typer.Option(None, help=DASK_ADDRESS_HELP),
        dask_workers: int = typer.Option(0, min=0, help=DASK_WORKERS_HELP)):
    """Ingest a series and identify its characters in one flow."""
    from anitrack.identify import gallery_images
    from anitrack.ingest import default_series

    series = series or default_series(source)
    if truth is not None and not truth.is_file():
        raise UsageError(f"--truth: {truth} does not exist")
    if references is not None:
        try:
            gallery_images(references)
        except _identity_errors() as exc:
            raise Failure(str(exc)) from None
    from flows.ingest import run_series

    args = _ingest_args(source, lake, series, profile, set_, config_file, parallel, device, runner,
                        dask_address, dask_workers)
    done = _flow(run_series, "run", references=str(references) if references else None,
                 truth=str(truth) if truth else None, **args)
    results = done["episodes"]
    _print_results(results, "table")
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        _err(f"episode {r['episode']} failed: {r['error']}")
    if done["identity"] is None:
        raise typer.Exit(1)
    _identify_summary(done["identity"])
    if failed:
        raise typer.Exit(1)


@app.command()
def serve(source: str = typer.Option(..., help="Folder (or fsspec URL) the series' episodes arrive in."),
          lake: str = typer.Option(..., help="Lake folder or URL."),
          series: Optional[str] = typer.Option(None, help="Series name (default: the source folder's name)."),
          references: Optional[Path] = typer.Option(None, help="Reference gallery: one folder per character."),
          profile: str = typer.Option("offline"),
          set_: list[str] = typer.Option([], "--set", help="Override a parameter: stage.key=value."),
          cron: Optional[str] = typer.Option(None, help="Ingest schedule (default: hourly, \"0 * * * *\")."),
          interval: Optional[float] = typer.Option(None, min=1, help="Ingest every N seconds instead of --cron.")):
    """Serve ingest-series (scheduled), identify-series (after each ingest) and backfill on a Prefect server."""
    from anitrack.identify import gallery_images
    from anitrack.ingest import default_series
    from anitrack.lake import LakeError, check_name

    if cron and interval:
        raise UsageError("give --cron or --interval, not both")
    _config(set_, None, profile)  # a bad --set fails here, not in every scheduled run
    source, lake = _absolute(source), _absolute(lake)
    try:
        series = series or default_series(source)
        check_name("series", series)
    except LakeError as exc:
        raise UsageError(str(exc)) from None
    if references is not None:
        try:
            gallery_images(references)
        except _identity_errors() as exc:
            raise Failure(str(exc)) from None
    _prefect_server()
    _open_lake(lake)
    from flows.service import serve as serve_flows

    serve_flows(source, lake, series, _absolute(references) if references else None, profile, set_,
                cron=None if interval else (cron or "0 * * * *"), interval=interval)


def _absolute(path) -> str:
    """Flow runs may start in another folder, so local paths are stored absolute."""
    return str(path) if "://" in str(path) else str(Path(path).resolve())


def _prefect_server() -> None:
    """Schedules and triggers never fire on Prefect's ephemeral server, so insist on a real one."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    hint = "start one with `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api"
    if not url:
        raise UsageError(f"serve needs a running Prefect server (schedules do not fire without one): {hint}")
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise Failure(f"no Prefect server answers at PREFECT_API_URL={url} ({type(problem).__name__}): {hint}")


@app.command()
def label(lake: str = typer.Option(...), series: str = typer.Option(...),
          cluster: Optional[int] = typer.Option(None, help="Cluster id from the characters view."),
          name: Optional[str] = typer.Option(None, help="Name every tracklet of the cluster."),
          split: Optional[str] = typer.Option(None, help="Comma-separated tracklet ids to split off."),
          merge: Optional[int] = typer.Option(None, help="Another cluster id to merge with."),
          noise: bool = typer.Option(False, "--noise", help="The cluster is extras: on screen for nobody."),
          undo: bool = typer.Option(False, "--undo", help="Remove the latest correction."),
          profile: str = typer.Option("offline")):
    """Correct the current identity (name, split, merge, noise, undo); corrections are kept by tracklet and
    survive re-runs."""
    from anitrack import corrections
    from flows.corrections import correct_series

    chosen = {"name": name is not None, "split": split is not None, "merge": merge is not None, "noise": noise}
    if sum(chosen.values()) + undo != 1:
        raise UsageError("give exactly one of --name, --split, --merge, --noise or --undo")
    if not undo and cluster is None:
        raise UsageError("--cluster is required (ids are in the characters view)")
    lk = _open_lake(lake, create=False)
    config = _config([], None, profile)
    rows = None
    if not undo:
        kind = next(k for k, v in chosen.items() if v)
        try:
            rows = corrections.correction_rows(lk, series, kind, cluster, name=name, other=merge,
                                               tracklets=split.split(",") if split else None)
        except corrections.CorrectionError as exc:
            raise Failure(str(exc)) from None
        _err(f"recording {len(rows)} corrections; re-identifying {series}")
    summary = _flow(correct_series, "label", lake, series, config=config, rows=rows, undo=undo)
    if summary is None:
        raise Failure(f"series {series!r} has no corrections to undo")
    _identify_summary(summary)


@app.command()
def review(lake: str = typer.Option(..., help="Lake folder or URL."), series: str = typer.Option(...),
           port: int = typer.Option(0, help="Port on 127.0.0.1 (0: a free one)."),
           browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the page in the browser."),
           profile: str = typer.Option("offline"), sets: list[str] = typer.Option([], "--set"),
           config_file: Optional[Path] = typer.Option(None, "--config")):
    """Review and correct the series' identity in the browser (Ctrl-C stops it)."""
    from anitrack import review as reviewing
    from anitrack.corrections import CorrectionError

    lk = _open_lake(lake, create=False)
    config = _config(sets, config_file, profile)
    try:
        reviewing.check_reviewable(lk, series)
    except CorrectionError as exc:
        raise Failure(str(exc)) from None

    def announce(url: str) -> None:
        _err(f"reviewing {series} at {url}  (Ctrl-C stops)")
        if browser:
            import webbrowser

            webbrowser.open(url)

    from flows.corrections import review_writes

    reviewing.serve(lk, series, review_writes(lake, series, config), port=port, announce=announce)


@app.command()
def sql(query: Optional[str] = typer.Argument(None, help="SQL; omit for an interactive prompt."),
        lake: str = typer.Option(..., help="Lake folder or URL."),
        fmt: str = typer.Option("table", "--format", help="table, csv, json or parquet (parquet needs --out)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write the result to this file."),
        force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
        timeout: float = typer.Option(120.0, help="Seconds before a query is cancelled."),
        run: Optional[str] = typer.Option(None, "--run", help="Identity views show this run (see anitrack runs).")):
    """Query the lake with DuckDB (read-only views: episodes, shots, tracklets, ...)."""
    from anitrack.sql import QueryError, connect, run_query

    _check_out(fmt, out, force)
    if out is not None and query is None:
        raise UsageError("--out needs a query (the interactive prompt prints to the terminal)")
    try:
        con = connect(_open_lake(lake, create=False), run=run)
    except QueryError as exc:
        raise UsageError(f"--run: {exc}") from None
    if query is not None:
        try:
            _emit(run_query(con, query, timeout), fmt, out, allow_empty=True)
        except QueryError as exc:
            raise Failure(str(exc)) from None
        return
    _err("read-only SQL over the lake; end statements with ';', quit with .quit or Ctrl-D")
    buffer = ""
    while True:
        try:
            line = input("anitrack> " if not buffer else "     ...> ")
        except EOFError:
            break
        if line.strip() in (".quit", ".exit", "\\q") and not buffer:
            break
        buffer += line + "\n"
        if buffer.strip().endswith(";"):
            try:
                print_table(run_query(con, buffer, timeout), fmt)
            except QueryError as exc:
                _err(str(exc))
            buffer = ""


def _check_format(fmt: str, formats=FORMATS) -> None:
    if fmt not in formats:
        raise UsageError(f"--format: choose from {', '.join(formats)}")


def _check_out(fmt: str, out: Optional[Path], force: bool, formats=FORMATS + ("parquet",)) -> None:
    """Refuse a bad --format / --out pair before any work is done."""
    _check_format(fmt, formats)
    if out is None and fmt == "parquet":
        raise UsageError("--format parquet needs --out FILE")
    if out is not None and fmt == "table":
        raise UsageError("--out: choose --format csv, json or parquet for a file")
    if out is not None:
        _refuse_existing(out, force)


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UsageError(f"--out: {out} exists (add --force to replace it)")
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")


def _emit(table, fmt: str, out: Optional[Path], allow_empty: bool = False) -> None:
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
    _err(f"wrote {table.num_rows} rows to {out}")


def _query_command(name: str):
    def command(lake: str = typer.Option(..., help="Lake folder or URL."),
                series: str = typer.Option(..., help="Series to query."),
                episode: Optional[str] = typer.Option(None, help="Only this episode."),
                character: Optional[str] = typer.Option(None, help="Only this character."),
                min_confidence: Optional[float] = typer.Option(
                    None, min=0.0, max=1.0, help="Only names at least this sure (screen-time queries)."),
                fmt: str = typer.Option("table", "--format", help="table, csv, json or parquet (parquet needs --out)."),
                out: Optional[Path] = typer.Option(None, "--out", help="Write the result to this file."),
                force: bool = typer.Option(False, "--force", help="Replace an existing --out file.")):
        from anitrack.queries import QUERIES, run_named
        from anitrack.sql import QueryError, connect

        _check_out(fmt, out, force)
        if "character" in QUERIES[name].params and character is None:
            raise UsageError(f"{name} needs --character")
        con = connect(_open_lake(lake, create=False))
        try:
            table = run_named(con, name, series=series, episode=episode, character=character,
                              min_confidence=min_confidence)
        except QueryError as exc:
            raise Failure(str(exc)) from None
        _emit(table, fmt, out)
    return command


def _add_query_commands() -> None:
    from anitrack.queries import QUERIES

    for name, named in QUERIES.items():
        query_app.command(name, help=named.help)(_query_command(name))


_add_query_commands()


def _export_errors():
    from anitrack.export import ExportError
    from anitrack.sql import QueryError

    return ExportError, QueryError


@export_app.command("subtitles")
def export_subtitles(lake: str = typer.Option(...), series: str = typer.Option(...),
                     episode: str = typer.Option(..., help="Episode to subtitle."),
                     fmt: str = typer.Option("ass", "--format", help="ass (a coloured style per character) or srt."),
                     out: Path = typer.Option(..., "--out", help="Subtitle file to write."),
                     force: bool = typer.Option(False, "--force", help="Replace an existing file.")):
    """Subtitles naming who is on screen: one event per appearance."""
    from anitrack.export import write_subtitles
    from anitrack.sql import connect

    _check_format(fmt, ("ass", "srt"))
    _refuse_existing(out, force)
    try:
        n = write_subtitles(connect(_open_lake(lake, create=False)), series, episode, fmt, out)
    except _export_errors() as exc:
        raise Failure(str(exc)) from None
    _err(f"wrote {n} events to {out}")


@export_app.command("dataset")
def export_dataset(lake: str = typer.Option(...), series: str = typer.Option(...),
                   character: Optional[str] = typer.Option(None, help="Only this character."),
                   out: Path = typer.Option(..., "--out", help="Folder (imagefolder) or .parquet file."),
                   fmt: str = typer.Option("imagefolder", "--format", help="imagefolder or parquet."),
                   min_size: int = typer.Option(0, min=0, help="Leave out crops whose smaller side is below this."),
                   per_tracklet: Optional[int] = typer.Option(None, min=1, help="At most N crops per tracklet "
                                                              "(the best face scores)."),
                   force: bool = typer.Option(False, "--force", help="Replace an existing export.")):
    """Face-anchored crops per character: an image folder per character, or one labelled Parquet file."""
    from anitrack.export import export_dataset as write_dataset
    from anitrack.sql import connect

    _check_format(fmt, ("imagefolder", "parquet"))
    _refuse_existing(out, force)
    try:
        counts = write_dataset(connect(_open_lake(lake, create=False)), series, out, fmt, character, min_size,
                               per_tracklet)
    except _export_errors() as exc:
        raise Failure(str(exc)) from None
    _err(f"wrote {sum(counts.values())} crops of {len(counts)} characters to {out}")


@export_app.command("clips")
def export_clips(lake: str = typer.Option(...), series: str = typer.Option(...),
                 character: Optional[str] = typer.Option(None, help="Only this character."),
                 out: Path = typer.Option(..., "--out", help="Table file; with --cut, a folder."),
                 fmt: str = typer.Option("csv", "--format", help="csv or parquet."),
                 min_coverage: float = typer.Option(0.5, min=0.0, max=1.0,
                                                    help="Share of the shot the character must be on screen."),
                 cut: bool = typer.Option(False, "--cut", help="Also cut each clip from the source video."),
                 force: bool = typer.Option(False, "--force", help="Replace an existing export.")):
    """Single-character shots (talking-head clips): one row per shot, optionally cut from the video."""
    from anitrack.export import export_clips as write_clips
    from anitrack.sql import connect

    _check_format(fmt, ("csv", "parquet"))
    _refuse_existing(out, force)
    try:
        n = write_clips(connect(_open_lake(lake, create=False)), series, out, fmt, character, min_coverage, cut)
    except _export_errors() as exc:
        raise Failure(str(exc)) from None
    _err(f"wrote {n} clips to {out}")


@export_app.command("table")
def export_table(name: str = typer.Argument(..., help="A table or view, e.g. screen_time, appearances."),
                 lake: str = typer.Option(...), series: Optional[str] = typer.Option(None, help="Only this series."),
                 fmt: str = typer.Option("csv", "--format", help="csv or parquet."),
                 out: Path = typer.Option(..., "--out", help="File to write."),
                 force: bool = typer.Option(False, "--force", help="Replace an existing file.")):
    """Any view of the lake as one CSV or Parquet file."""
    from anitrack.export import table_rows
    from anitrack.sql import connect

    _check_out(fmt, out, force, formats=("csv", "parquet"))
    try:
        table = table_rows(connect(_open_lake(lake, create=False)), name, series)
    except _export_errors() as exc:
        raise Failure(str(exc)) from None
    _emit(table, fmt, out)


@lake_app.command("import")
def lake_import(table: str = typer.Argument(..., help="Table name, e.g. detections, embeddings, references."),
                file: Path = typer.Argument(..., help="A Parquet file matching the table's schema."),
                lake: str = typer.Option(...), series: str = typer.Option(...),
                episode: Optional[str] = typer.Option(None, help="Episode (all tables but references).")):
    """Validate your own table (bring your own detections or embeddings) and commit it like a stage output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anitrack.lake import LakeError, with_derived_columns
    from schemas.tables import PARTITIONS

    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    lk = _open_lake(lake)
    try:
        data = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise Failure(f"{file}: not a readable Parquet file ({first_line(exc)})") from None
    keys = {"series": series, "episode": episode}
    try:
        if table not in PARTITIONS:
            raise UsageError(f"unknown table {table!r}; tables: {', '.join(PARTITIONS)}")
        keys = {k: keys[k] for k in PARTITIONS[table]}
        if any(v is None for v in keys.values()):
            raise UsageError(f"table {table} needs --{' --'.join(k for k, v in keys.items() if v is None)}")
        lk.commit(table, with_derived_columns(table, data, keys), fingerprint="import:" + file.name, **keys)
    except LakeError as exc:
        raise Failure(f"{file}: {exc}") from None
    print(f"imported {data.num_rows} rows into {table} ({', '.join(f'{k}={v}' for k, v in keys.items())})")


@models_app.command("pull")
def models_pull(to: Optional[Path] = typer.Option(None, help="Folder to pull into (default: the models folder "
                                                              "ingest reads, $ANITRACK_MODELS or ~/.cache/anitrack/models)."),
                profile: str = typer.Option("full", help="Pull what this profile runs: full or hub-cpu."),
                set_: list[str] = typer.Option([], "--set", help="As for ingest, e.g. embed.ccip_model=NAME."),
                config_file: Optional[Path] = typer.Option(None, "--config", help="An anitrack.toml file.")):
    """Download the hub models a profile runs (on a connected machine); ingest then finds them offline."""
    from anitrack.config import load_config, resolve_profile
    from anitrack.models import models_dir, needed, pull_models

    config = resolve_profile(load_config(set_, config_file), profile)
    if not needed(config):
        raise UsageError(f"profile {profile!r} with these settings runs no hub model: nothing to pull")
    try:
        for item in pull_models(config, to):
            print(item)
    except ConnectionError as exc:
        raise Failure(str(exc)) from None
    if to is not None and Path(to).resolve() != models_dir().resolve():
        print(f"on the machines that run it: ANITRACK_MODELS={Path(to).resolve()}")


@app.command()
def report(lake: str = typer.Option(..., help="Lake folder or URL."),
           series: str = typer.Option(..., help="Series to report on (its current identity run)."),
           out: Path = typer.Option(..., help="Folder for index.html and its PNGs."),
           force: bool = typer.Option(False, "--force", help="Write into a non-empty --out.")):
    """Write a static HTML report: timelines, characters, co-appearance, quality, run metadata."""
    from anitrack.report import ReportError, write_report

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out: {out} is not empty (use --force to write into it)")
    try:
        page = write_report(_open_lake(lake, create=False), series, out)
    except ReportError as exc:
        raise Failure(str(exc)) from None
    print(page)


@app.command()
def demo(out: Path = typer.Option(Path("demo"), help="Folder for the synthetic series and the lake."),
         episodes: int = typer.Option(3, min=1), characters: int = typer.Option(5, min=2),
         seconds: float = typer.Option(30.0, min=5.0), seed: int = typer.Option(7)):
    """Synthesize a small series, ingest it offline, identify its characters, print summaries."""
    from anitrack.synth import synthesize_series

    out.mkdir(parents=True, exist_ok=True)
    _err(f"rendering {episodes} synthetic episodes of {seconds:.0f} s into {out}/data ...")
    folder = synthesize_series(out / "data", series="demo", episodes=episodes, characters=characters,
                               seconds=seconds, seed=seed)
    lake = str(out / "lake")
    results = _ingest(**_ingest_args(str(folder), lake, "demo", "offline", [], None, 0, "cpu"))
    _print_results(results, "table")
    from anitrack.sql import connect, run_query

    summary = run_query(connect(_open_lake(lake)), """
        SELECT e.episode, e.status, round(e.duration_s, 1) AS seconds, count(DISTINCT s.shot_id) AS shots,
               count(DISTINCT t.tracklet_id) AS tracklets
        FROM episodes e LEFT JOIN shots s USING (series, episode) LEFT JOIN tracklets t USING (series, episode)
        WHERE e.series = 'demo' GROUP BY ALL ORDER BY e.episode""")
    print_table(summary)
    if any(r["status"] == "failed" for r in results):
        raise typer.Exit(1)
    from flows.identify import identify_series

    identity = _flow(identify_series, "identify", lake, "demo", config=_config([], None, "offline"),
                     references=str(out / "data" / "references"), truth=str(folder / "truth.json"))
    _identify_summary(identity)
    screen = run_query(connect(_open_lake(lake)), """
        SELECT character, round(sum(seconds), 1) AS seconds, count(DISTINCT episode) AS episodes
        FROM screen_time WHERE series = 'demo' GROUP BY 1 ORDER BY 2 DESC""")
    print_table(screen)
    from anitrack.report import write_report

    page = write_report(_open_lake(lake), "demo", out / "report")
    print(f"lake: {lake}  (try: anitrack sql --lake {lake} \"SELECT * FROM screen_time\")")
    print(f"correct it in the browser: anitrack review --lake {lake} --series demo")
    print(f"report: {page}")


@app.command()
def backfill(lake: str = typer.Option(..., help="Lake folder or URL."),
             series: str = typer.Option(..., help="Series to backfill."),
             set_: list[str] = typer.Option([], "--set", help="Change a parameter: stage.key=value "
                                                              "(over the parameters the series last ran with)."),
             episodes: Optional[str] = typer.Option(None, help="Only these episodes: 1-12, 3, episode_03,episode_05."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
             fmt: str = typer.Option("table", "--format", help="table, csv or json.")):
    """Re-run a series with changed parameters, recomputing only what they touch; prints the plan first."""
    import pyarrow as pa

    from anitrack.backfill import BackfillError, plan as make_plan
    from anitrack.config import ConfigError

    _check_format(fmt)
    lk = _open_lake(lake, create=False)
    from flows.backfill import backfill_series
    from flows.executor import series_lock

    try:  # the plan is printed first, and what runs is planned again under the same hold of the lock
        locked = contextlib.nullcontext() if dry_run else series_lock(lake, series, "backfill")
        with _busy_is_one_line(), locked as token:
            plan = make_plan(lk, series, set_, episodes)
            print_table(pa.Table.from_pylist(plan.rows()), fmt)
            sys.stdout.flush()
            if not plan.identity:
                _err("nothing to do: every partition already matches these parameters")
                return
            _err(f"plan: {len(plan.recompute)} of {plan.n_episodes} episodes recomputed, "
                 f"{plan.frames_to_decode} frames to decode, about {plan.estimate_s():.0f} s"
                 + (" (dry run)" if dry_run else ""))
            if dry_run:
                return
            result = _flow(backfill_series, "backfill", lake, series, held=token, sets=set_, episodes=episodes)
    except (BackfillError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    if result["episodes"]:
        _print_results(result["episodes"], fmt)
    if result["identity"]:
        _identify_summary(result["identity"], fmt)
    failed = [r for r in result["episodes"] if r["status"] == "failed"]
    for r in failed:
        _err(f"episode {r['episode']} failed (its partitions are unchanged): {r['error']}")
    _err(f"backfill {result['run_id']}: {len(result['episodes']) - len(failed)} episodes recomputed, "
         f"{result['frames_decoded']} frames decoded in {result['seconds']:.1f} s")
    if failed:
        raise typer.Exit(1)


@app.command()
def runs(lake: str = typer.Option(..., help="Lake folder or URL."),
         series: str = typer.Option(..., help="Series whose identity runs to list."),
         fmt: str = typer.Option("table", "--format", help="table, csv or json.")):
    """List a series' identity runs with their parameters; * marks the current one."""
    from anitrack.backfill import runs_table

    _check_format(fmt)
    table = runs_table(_open_lake(lake, create=False), series)
    if table.num_rows == 0:
        raise Failure(f"series {series!r} has no identity runs (run anitrack identify or backfill first)")
    print_table(table, fmt)


def main() -> None:
    """Entry point: map errors to one line and an exit code."""
    from anitrack.config import ConfigError
    from anitrack.ingest import SourceError
    from anitrack.lake import LakeError

    known = [(UsageError, 2), (ConfigError, 2), (Failure, 1), (SourceError, 1), (LakeError, 1)]
    try:
        from anitrack.models import ModelMissingError

        known.append((ModelMissingError, 1))
    except ImportError:
        pass
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _err("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug_enabled():
            raise
        code = next((c for kind, c in known if isinstance(exc, kind)), 1)
        _err(f"error: {first_line(exc)}")
        sys.exit(code)
