"""The ``anitrack`` command line. Data goes to stdout, messages to stderr.

Exit codes: 0 success, 1 failure (an episode, a query), 2 usage (bad flag,
unknown parameter, missing lake parent). Tracebacks only with ANITRACK_DEBUG=1.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find, track, cluster and name anime characters across whole series.")
lake_app = typer.Typer(no_args_is_help=True, help="Manage the lake (import your own tables).")
models_app = typer.Typer(no_args_is_help=True, help="Manage full-profile models.")
app.add_typer(lake_app, name="lake")
app.add_typer(models_app, name="models")

FORMATS = ("table", "csv", "json")


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


class Failure(Exception):
    """The command ran but failed: exit code 1."""


def debug_enabled() -> bool:
    return os.environ.get("ANITRACK_DEBUG", "") not in ("", "0", "false")


def _err(message: str) -> None:
    print(f"anitrack: {message}", file=sys.stderr, flush=True)


def _open_lake(url: str, create: bool = True):
    from anitrack.lake import Lake, LakeError

    try:
        return Lake(url, create=create)
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
          width: int = typer.Option(854), height: int = typer.Option(480)):
    """Render a synthetic anime mini-series with ground truth (truth.json) and a reference gallery."""
    from anitrack.synth import synthesize_series

    folder = synthesize_series(out, series=series, episodes=episodes, characters=characters, seconds=seconds,
                               seed=seed, lookalikes=lookalikes, grading=grading, mean_shot_seconds=shot_seconds,
                               width=width, height=height)
    print(folder)


@app.command()
def ingest(source: str = typer.Argument(..., help="A video file, a folder, a glob or an fsspec URL."),
           lake: str = typer.Option(..., help="Lake folder or URL."),
           series: Optional[str] = typer.Option(None, help="Series name (default: the source folder's name)."),
           profile: str = typer.Option("offline", help="offline (models in wheels) or full (hub models)."),
           set_: list[str] = typer.Option([], "--set", help="Override a parameter: stage.key=value."),
           config_file: Optional[Path] = typer.Option(None, "--config", help="An anitrack.toml file."),
           parallel: int = typer.Option(0, min=0, help="Episodes at once (0: one per CPU core)."),
           device: str = typer.Option("cpu", help="cpu or cuda."),
           fmt: str = typer.Option("table", "--format", help="table, csv or json.")):
    """Ingest every episode of a series: shots, tracklets, crops and embeddings into the lake."""
    results = _ingest(source, lake, series, profile, set_, config_file, parallel, device)
    _print_results(results, fmt)
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        _err(f"episode {r['episode']} failed: {r['error']}")
    if failed:
        raise typer.Exit(1)


def _ingest(source, lake, series, profile, sets, config_file, parallel, device) -> list[dict]:
    from anitrack.ingest import SourceError, default_series, discover
    from anitrack.lake import check_name, LakeError

    config = _config(sets, config_file, profile)
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
    if profile == "full" or config["detect"]["detector"] == "yolo" or config["embed"]["model"] == "ccip":
        from anitrack.models import check_full_profile

        check_full_profile(config)  # a missing model fails here, at once
    from anitrack import progress
    from flows.ingest import run_ingest

    if progress.enabled():
        with progress.Board():
            return run_ingest(source, lake, series, config, profile, parallel, device)
    return run_ingest(source, lake, series, config, profile, parallel, device)


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible on this machine")
    return device


def _print_results(results: list[dict], fmt: str) -> None:
    import pyarrow as pa

    cols = ("episode", "status", "frames", "shots", "tracklets", "crops", "seconds", "error")
    print_table(pa.Table.from_pylist([{k: r.get(k) for k in cols} for r in results]), fmt)


def _identify_summary(summary: dict, fmt: str = "table") -> None:
    import pyarrow as pa

    cols = ("cluster_id", "character", "named", "source", "closest", "similarity", "n_tracklets")
    chars = sorted(summary["characters"], key=lambda c: (not c["named"], c["character"]))
    print_table(pa.Table.from_pylist([{k: c[k] for k in cols} for c in chars]), fmt)
    q = [r for r in summary["quality"] if r["character"] is None]
    print_table(pa.Table.from_pylist([{"metric": r["metric"], "value": r["value"]} for r in q]), fmt)
    _err(f"identity run {summary['run_id']} ({summary['mode']}): {summary['tracklets']} tracklets, "
         f"{len(summary['characters'])} characters in {summary['seconds']:.1f} s")


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

    summary = identify_series(lake, series, config, str(references) if references else None,
                              str(truth) if truth else None, full)
    _identify_summary(summary, fmt)


@app.command()
def run(source: str = typer.Argument(..., help="A video file, a folder, a glob or an fsspec URL."),
        lake: str = typer.Option(...), series: Optional[str] = typer.Option(None),
        references: Optional[Path] = typer.Option(None, help="Reference gallery: one folder per character."),
        truth: Optional[Path] = typer.Option(None, help="truth.json to score the result against."),
        profile: str = typer.Option("offline"),
        set_: list[str] = typer.Option([], "--set", help="Override a parameter: stage.key=value."),
        config_file: Optional[Path] = typer.Option(None, "--config"),
        parallel: int = typer.Option(0, min=0), device: str = typer.Option("cpu")):
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
    results = _ingest(source, lake, series, profile, set_, config_file, parallel, device)
    _print_results(results, "table")
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        _err(f"episode {r['episode']} failed: {r['error']}")
    if len(failed) == len(results):
        raise typer.Exit(1)
    from flows.identify import identify_series

    summary = identify_series(lake, series, _config(set_, config_file, profile),
                              str(references) if references else None, str(truth) if truth else None)
    _identify_summary(summary)
    if failed:
        raise typer.Exit(1)


@app.command()
def label(lake: str = typer.Option(...), series: str = typer.Option(...),
          cluster: int = typer.Option(..., help="Cluster id from the characters view."),
          name: Optional[str] = typer.Option(None, help="Name every tracklet of the cluster."),
          split: Optional[str] = typer.Option(None, help="Comma-separated tracklet ids to split off."),
          merge: Optional[int] = typer.Option(None, help="Another cluster id to merge with."),
          profile: str = typer.Option("offline")):
    """Correct the current identity (name, split, merge); corrections are kept by tracklet and survive re-runs."""
    import datetime as dt
    import uuid

    import pyarrow as pa

    from anitrack.identify import current_run

    if sum(x is not None for x in (name, split, merge)) != 1:
        raise UsageError("give exactly one of --name, --split or --merge")
    lk = _open_lake(lake, create=False)
    run_ = current_run(lk, series)
    if run_ is None:
        raise Failure(f"series {series!r} has no identity run yet (run anitrack identify first)")
    members = {}
    for r in lk.read("clusters", series).to_pylist():
        if r["run_id"] == run_["run_id"]:
            members.setdefault(r["cluster_id"], []).append(r["tracklet_id"])
    for c in [cluster] + ([merge] if merge is not None else []):
        if c not in members or c < 0:
            raise Failure(f"cluster {c} does not exist in the current run of {series} "
                          f"(clusters: {', '.join(map(str, sorted(k for k in members if k >= 0)))})")
    now = dt.datetime.now(dt.timezone.utc)
    if name is not None:
        rows = [(t, "name", name) for t in members[cluster]]
    elif split is not None:
        chosen = [t.strip() for t in split.split(",") if t.strip()]
        stray = [t for t in chosen if t not in members[cluster]]
        if not chosen or stray:
            raise Failure(f"tracklet {stray[0] if stray else '(none)'} is not in cluster {cluster}")
        group = uuid.uuid4().hex[:12]
        rows = [(t, "split", group) for t in chosen]
    else:
        group = uuid.uuid4().hex[:12]
        rows = [(t, "merge", group) for t in members[cluster] + members[merge]]
    lk.commit("labels", pa.Table.from_pylist([{"series": series, "tracklet_id": t, "action": a, "value": v,
                                               "created_at": now} for t, a, v in rows]),
              append=True, series=series)
    _err(f"recorded {len(rows)} corrections; re-identifying {series}")
    from anitrack.identify import identify as identify_now

    _identify_summary(identify_now(lk, series, _config([], None, profile)))


@app.command()
def sql(query: Optional[str] = typer.Argument(None, help="SQL; omit for an interactive prompt."),
        lake: str = typer.Option(..., help="Lake folder or URL."),
        fmt: str = typer.Option("table", "--format", help="table, csv or json."),
        timeout: float = typer.Option(120.0, help="Seconds before a query is cancelled.")):
    """Query the lake with DuckDB (read-only views: episodes, shots, tracklets, ...)."""
    from anitrack.sql import QueryError, connect, run_query

    if fmt not in FORMATS:
        raise UsageError(f"--format: choose from {', '.join(FORMATS)}")
    con = connect(_open_lake(lake, create=False))
    if query is not None:
        try:
            print_table(run_query(con, query, timeout), fmt)
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


@lake_app.command("import")
def lake_import(table: str = typer.Argument(..., help="Table name, e.g. detections, embeddings, references."),
                file: Path = typer.Argument(..., help="A Parquet file matching the table's schema."),
                lake: str = typer.Option(...), series: str = typer.Option(...),
                episode: Optional[str] = typer.Option(None, help="Episode (all tables but references).")):
    """Validate your own table (bring your own detections or embeddings) and commit it like a stage output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anitrack.lake import LakeError
    from schemas.tables import PARTITIONS

    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    lk = _open_lake(lake)
    try:
        data = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise Failure(f"{file}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    keys = {"series": series, "episode": episode}
    try:
        if table not in PARTITIONS:
            raise UsageError(f"unknown table {table!r}; tables: {', '.join(PARTITIONS)}")
        keys = {k: keys[k] for k in PARTITIONS[table]}
        if any(v is None for v in keys.values()):
            raise UsageError(f"table {table} needs --{' --'.join(k for k, v in keys.items() if v is None)}")
        for k, v in keys.items():
            if k not in data.column_names:
                data = data.append_column(k, pa.array([v] * data.num_rows, pa.string()))
        lk.commit(table, data, fingerprint="import:" + file.name, **keys)
    except LakeError as exc:
        raise Failure(f"{file}: {exc}") from None
    print(f"imported {data.num_rows} rows into {table} ({', '.join(f'{k}={v}' for k, v in keys.items())})")


@models_app.command("pull")
def models_pull(to: Optional[Path] = typer.Option(None, help="Shared model directory (default: the cache)."),
                weights: str = typer.Option("yolov8m.pt", help="YOLO weights to fetch.")):
    """Download the full profile's models on a connected machine (workers then use HF_HUB_OFFLINE=1)."""
    from anitrack.models import pull_models

    for item in pull_models(to, yolo_weights=weights):
        print(item)


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
    results = _ingest(str(folder), lake, "demo", "offline", [], None, 0, "cpu")
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

    identity = identify_series(lake, "demo", _config([], None, "offline"), str(out / "data" / "references"),
                               str(folder / "truth.json"))
    _identify_summary(identity)
    screen = run_query(connect(_open_lake(lake)), """
        SELECT character, round(sum(seconds), 1) AS seconds, count(DISTINCT episode) AS episodes
        FROM screen_time WHERE series = 'demo' GROUP BY 1 ORDER BY 2 DESC""")
    print_table(screen)
    print(f"lake: {lake}  (try: anitrack sql --lake {lake} \"SELECT * FROM screen_time\")")


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
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _err(f"error: {text}")
        sys.exit(code)
