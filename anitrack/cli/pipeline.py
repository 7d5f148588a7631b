"""The pipeline's commands: render a test series, ingest, identify with ingestion in one flow, serve on
a schedule, backfill after a parameter change, list identity runs."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional

import typer

from anitrack.cli.common import (PROFILE_HELP, Failure, UsageError, app, busy_is_one_line, check_device, check_format,
                                 command_config, err, identity_errors, open_lake, print_identity, print_results,
                                 print_table, run_flow)

RUNNER_HELP = "thread (one child process per episode) or dask (episodes on Dask workers)."


DASK_ADDRESS_HELP = "Scheduler of an existing Dask cluster, e.g. tcp://host:8786 (default: a local cluster)."


DASK_WORKERS_HELP = "Worker processes of the local Dask cluster (0: one per CPU core)."


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
          segments: bool = typer.Option(False, "--segments", help="Every episode also plays an opening and an "
                                        "ending; some open cold, recap the last episode or preview the next."),
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
                               width=width, height=height, transitions=transitions, segments=segments)
    print(folder)


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
    results = run_ingest(**ingest_args(source, lake, series, profile, set_, config_file, parallel, device,
                                       runner, dask_address, dask_workers))
    print_results(results, fmt)
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        err(f"episode {r['episode']} failed: {r['error']}")
    if failed:
        raise typer.Exit(1)


def ingest_args(source, lake, series, profile, sets, config_file, parallel, device, runner="thread",
                dask_address=None, dask_workers=0) -> dict:
    """The ingestion flows' arguments, checked before Prefect starts (a bad one is one line)."""
    from anitrack.ingest import SourceError, default_series, discover
    from anitrack.lake import check_name, LakeError

    config = command_config(sets, config_file, profile)
    if runner not in ("thread", "dask"):
        raise UsageError(f"--runner: choose thread or dask, got {runner!r}")
    if runner != "dask" and (dask_address or dask_workers):
        raise UsageError("--dask-address and --dask-workers need --runner dask")
    if runner == "dask":
        parallel = dask_workers
    if device not in ("cpu", "cuda", "auto"):
        raise UsageError(f"--device: choose cpu, cuda or auto, got {device!r}")
    device = check_device(device)
    open_lake(lake)
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


def run_ingest(**args) -> list[dict]:
    from anitrack.flows.ingest import ingest_series

    return run_flow(ingest_series, "ingest", **args)


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
    from anitrack.identity.gallery import gallery_images
    from anitrack.ingest import default_series

    series = series or default_series(source)
    if truth is not None and not truth.is_file():
        raise UsageError(f"--truth: {truth} does not exist")
    if references is not None:
        try:
            gallery_images(references)
        except identity_errors() as exc:
            raise Failure(str(exc)) from None
    from anitrack.flows.ingest import run_series

    args = ingest_args(source, lake, series, profile, set_, config_file, parallel, device, runner,
                       dask_address, dask_workers)
    done = run_flow(run_series, "run", references=str(references) if references else None,
                    truth=str(truth) if truth else None, **args)
    results = done["episodes"]
    print_results(results, "table")
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        err(f"episode {r['episode']} failed: {r['error']}")
    if done["identity"] is None:
        raise typer.Exit(1)
    print_identity(done["identity"])
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
    from anitrack.identity.gallery import gallery_images
    from anitrack.ingest import default_series
    from anitrack.lake import LakeError, check_name

    if cron and interval:
        raise UsageError("give --cron or --interval, not both")
    command_config(set_, None, profile)  # a bad --set fails here, not in every scheduled run
    source, lake = _absolute(source), _absolute(lake)
    try:
        series = series or default_series(source)
        check_name("series", series)
    except LakeError as exc:
        raise UsageError(str(exc)) from None
    if references is not None:
        try:
            gallery_images(references)
        except identity_errors() as exc:
            raise Failure(str(exc)) from None
    _prefect_server()
    open_lake(lake)
    from anitrack.flows.service import serve as serve_flows

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

    check_format(fmt)
    lk = open_lake(lake, create=False)
    from anitrack.flows.backfill import backfill_series
    from anitrack.flows.executor import series_lock

    try:  # the plan is printed first, and what runs is planned again under the same hold of the lock
        locked = contextlib.nullcontext() if dry_run else series_lock(lake, series, "backfill")
        with busy_is_one_line(), locked as token:
            plan = make_plan(lk, series, set_, episodes)
            print_table(pa.Table.from_pylist(plan.rows()), fmt)
            sys.stdout.flush()
            if not plan.todo:
                err("nothing to do: every partition already matches these parameters")
                return
            err(f"plan: {len(plan.recompute)} of {plan.n_episodes} episodes recomputed, "
                 f"{plan.frames_to_decode} frames to decode, about {plan.estimate_s():.0f} s"
                 + (" (dry run)" if dry_run else ""))
            if dry_run:
                return
            result = run_flow(backfill_series, "backfill", lake, series, held=token, sets=set_, episodes=episodes)
    except (BackfillError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    if result["episodes"]:
        print_results(result["episodes"], fmt)
    if result["identity"]:
        print_identity(result["identity"], fmt)
    failed = [r for r in result["episodes"] if r["status"] == "failed"]
    for r in failed:
        err(f"episode {r['episode']} failed (its partitions are unchanged): {r['error']}")
    err(f"backfill {result['run_id']}: {len(result['episodes']) - len(failed)} episodes recomputed, "
         f"{result['frames_decoded']} frames decoded in {result['seconds']:.1f} s")
    if failed:
        raise typer.Exit(1)


@app.command()
def segments(lake: str = typer.Option(..., help="Lake folder or URL."),
             series: str = typer.Option(..., help="Series whose segments to list or correct."),
             episode: Optional[str] = typer.Option(None, help="Only this episode (with --mark: the episode)."),
             mark: Optional[str] = typer.Option(None, help="Correct: opening, ending, recap, preview, repeat, or "
                                                          "none (not a segment) from --start to --end seconds."),
             start: Optional[float] = typer.Option(None, min=0.0), end: Optional[float] = typer.Option(None, min=0.0),
             fmt: str = typer.Option("table", "--format", help="table, csv or json.")):
    """List the openings, endings, recaps and previews found across the series (left out of screen time), or
    correct one; a correction is kept and applied again by every later run."""
    import datetime as dt

    import pyarrow as pa

    from anitrack.schemas.tables import TABLES
    from anitrack.segments import KINDS, segment_series, segments_config

    check_format(fmt)
    lk = open_lake(lake, create=False)
    if series not in lk.series():
        raise Failure(f"series {series!r} is not in the lake (series: {', '.join(lk.series()) or 'none'})")
    episodes = {r["episode"] for r in lk.read("episodes", series).to_pylist() if r["status"] == "ok"}
    if episode is not None and episode not in episodes:
        raise UsageError(f"--episode: no episode {episode!r} in series {series} (episodes: "
                         f"{', '.join(sorted(episodes)) or 'none'})")
    if mark is not None:
        if mark not in (*KINDS, "none"):
            raise UsageError(f"--mark: choose from {', '.join((*KINDS, 'none'))}, got {mark!r}")
        if episode is None or start is None or end is None or end <= start:
            raise UsageError("--mark needs --episode, --start and --end (end after start), in seconds")
        from anitrack.flows.executor import series_lock

        with busy_is_one_line(), series_lock(lake, series, "segments"):
            labels = lk.read("segment_labels", series).to_pylist()
            labels.append({"series": series, "episode": episode, "kind": mark, "start_s": start, "end_s": end,
                           "created_at": dt.datetime.now(dt.timezone.utc)})
            lk.commit("segment_labels", pa.Table.from_pylist(labels, schema=TABLES["segment_labels"]), series=series)
            segment_series(lk, series, {"segments": segments_config(lk, series)})
    rows = [r for r in lk.read("segments", series).to_pylist() if episode is None or r["episode"] == episode]
    runs_ = [r for r in lk.read("stage_runs", series).to_pylist() if r["stage"] == "segments"]
    if len(episodes) == 1 or runs_ and all('"compared_with":0' in (r["parameters"] or "") for r in runs_):
        err(f"series {series} has one episode: there is no other episode to compare it with, so no segment "
            "can be found yet")
    rows.sort(key=lambda r: (r["episode"], r["start_s"]))
    columns = {"episode": [r["episode"] for r in rows], "kind": [r["kind"] for r in rows],
               "start_s": [round(r["start_s"], 2) for r in rows], "end_s": [round(r["end_s"], 2) for r in rows],
               "seconds": [round(r["end_s"] - r["start_s"], 2) for r in rows],
               "matched_in": [",".join(r["matched_in"] or []) for r in rows], "score": [r["score"] for r in rows],
               "source": [r["source"] for r in rows]}
    print_table(pa.table({k: pa.array(v, pa.float64() if k in ("start_s", "end_s", "seconds", "score")
                                       else pa.string()) for k, v in columns.items()}), fmt)


@app.command()
def runs(lake: str = typer.Option(..., help="Lake folder or URL."),
         series: str = typer.Option(..., help="Series whose identity runs to list."),
         fmt: str = typer.Option("table", "--format", help="table, csv or json.")):
    """List a series' identity runs with their parameters; * marks the current one."""
    from anitrack.backfill import runs_table

    check_format(fmt)
    table = runs_table(open_lake(lake, create=False), series)
    if table.num_rows == 0:
        raise Failure(f"series {series!r} has no identity runs (run anitrack identify or backfill first)")
    print_table(table, fmt)
