"""Reading the lake: SQL, the named queries, exports and the HTML report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from anitrack.cli.common import (Failure, UsageError, app, check_format, check_out, emit, err, export_app, open_lake,
                                 print_table, query_app, refuse_existing)


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

    check_out(fmt, out, force)
    if out is not None and query is None:
        raise UsageError("--out needs a query (the interactive prompt prints to the terminal)")
    try:
        con = connect(open_lake(lake, create=False), run=run)
    except QueryError as exc:
        raise UsageError(f"--run: {exc}") from None
    if query is not None:
        try:
            emit(run_query(con, query, timeout), fmt, out, allow_empty=True)
        except QueryError as exc:
            raise Failure(str(exc)) from None
        return
    err("read-only SQL over the lake; end statements with ';', quit with .quit or Ctrl-D")
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
                err(str(exc))
            buffer = ""


def _query_command(name: str):
    def command(lake: str = typer.Option(..., help="Lake folder or URL."),
                series: str = typer.Option(..., help="Series to query."),
                episode: Optional[str] = typer.Option(None, help="Only this episode."),
                character: Optional[str] = typer.Option(None, help="Only this character."),
                min_confidence: Optional[float] = typer.Option(
                    None, min=0.0, max=1.0, help="Only names at least this sure (screen-time queries)."),
                fmt: str = typer.Option("table", "--format", help="table, csv, json or parquet (parquet needs --out)."),
                out: Optional[Path] = typer.Option(None, "--out", help="Write the result to this file."),
                force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
                include: str = typer.Option("", help="Count these segments as story after all: openings,"
                                                     "endings,recaps,previews,repeats (default: none of them).")):
        from anitrack.queries import QUERIES, run_named
        from anitrack.sql import QueryError, connect

        check_out(fmt, out, force)
        if "character" in QUERIES[name].params and character is None:
            raise UsageError(f"{name} needs --character")
        kinds = tuple(k.strip().removesuffix("s") for k in include.split(",") if k.strip())
        try:
            con = connect(open_lake(lake, create=False), include=kinds)
        except QueryError as exc:
            raise UsageError(str(exc)) from None
        try:
            table = run_named(con, name, series=series, episode=episode, character=character,
                              min_confidence=min_confidence)
        except QueryError as exc:
            raise Failure(str(exc)) from None
        emit(table, fmt, out)
    return command


def _add_query_commands() -> None:
    from anitrack.queries import QUERIES

    for name, named in QUERIES.items():
        query_app.command(name, help=named.help)(_query_command(name))


_add_query_commands()


def export_errors():
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

    check_format(fmt, ("ass", "srt"))
    refuse_existing(out, force)
    try:
        n = write_subtitles(connect(open_lake(lake, create=False)), series, episode, fmt, out)
    except export_errors() as exc:
        raise Failure(str(exc)) from None
    err(f"wrote {n} events to {out}")


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

    check_format(fmt, ("imagefolder", "parquet"))
    refuse_existing(out, force)
    try:
        counts = write_dataset(connect(open_lake(lake, create=False)), series, out, fmt, character, min_size,
                               per_tracklet)
    except export_errors() as exc:
        raise Failure(str(exc)) from None
    err(f"wrote {sum(counts.values())} crops of {len(counts)} characters to {out}")


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

    check_format(fmt, ("csv", "parquet"))
    refuse_existing(out, force)
    try:
        n = write_clips(connect(open_lake(lake, create=False)), series, out, fmt, character, min_coverage, cut)
    except export_errors() as exc:
        raise Failure(str(exc)) from None
    err(f"wrote {n} clips to {out}")


@export_app.command("table")
def export_table(name: str = typer.Argument(..., help="A table or view, e.g. screen_time, appearances."),
                 lake: str = typer.Option(...), series: Optional[str] = typer.Option(None, help="Only this series."),
                 fmt: str = typer.Option("csv", "--format", help="csv or parquet."),
                 out: Path = typer.Option(..., "--out", help="File to write."),
                 force: bool = typer.Option(False, "--force", help="Replace an existing file.")):
    """Any view of the lake as one CSV or Parquet file."""
    from anitrack.export import table_rows
    from anitrack.sql import connect

    check_out(fmt, out, force, formats=("csv", "parquet"))
    try:
        table = table_rows(connect(open_lake(lake, create=False)), name, series)
    except export_errors() as exc:
        raise Failure(str(exc)) from None
    emit(table, fmt, out)


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
        page = write_report(open_lake(lake, create=False), series, out)
    except ReportError as exc:
        raise Failure(str(exc)) from None
    print(page)
