"""Identity commands: identify a series, correct it from the command line, review it in the browser."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from anitrack.cli.common import (Failure, UsageError, app, command_config, err, identity_errors, open_lake,
                                 print_identity, run_flow)


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
    from anitrack.identity.run import check_inputs

    config = command_config(set_, config_file, profile)
    if truth is not None and not truth.is_file():
        raise UsageError(f"--truth: {truth} does not exist")
    try:
        check_inputs(open_lake(lake, create=False), series, references)
    except identity_errors() as exc:
        raise Failure(str(exc)) from None
    from anitrack.flows.identify import identify_series

    summary = run_flow(identify_series, "identify", lake, series, config=config,
                       references=str(references) if references else None, truth=str(truth) if truth else None,
                       full=full)
    print_identity(summary, fmt)


@app.command()
def label(lake: str = typer.Option(...), series: str = typer.Option(...),
          cluster: Optional[int] = typer.Option(None, help="Cluster id from the characters view (-1: the noise)."),
          name: Optional[str] = typer.Option(None, help="Name every tracklet of the cluster (or --tracklets)."),
          tracklets: Optional[str] = typer.Option(None, help="Comma-separated tracklet ids that --name or --noise "
                                                  "applies to (they leave the cluster; noise ones too)."),
          split: Optional[str] = typer.Option(None, help="Comma-separated tracklet ids to split off."),
          merge: Optional[int] = typer.Option(None, help="Another cluster id to merge with."),
          noise: bool = typer.Option(False, "--noise", help="The cluster is extras: on screen for nobody."),
          undo: bool = typer.Option(False, "--undo", help="Remove the latest correction."),
          profile: str = typer.Option("offline")):
    """Correct the current identity (name, split, merge, noise, undo); corrections are kept by tracklet and
    survive re-runs."""
    from anitrack.identity import corrections
    from anitrack.flows.corrections import correct_series

    chosen = {"name": name is not None, "split": split is not None, "merge": merge is not None, "noise": noise}
    if sum(chosen.values()) + undo != 1:
        raise UsageError("give exactly one of --name, --split, --merge, --noise or --undo")
    if not undo and cluster is None:
        raise UsageError("--cluster is required (ids are in the characters view)")
    if tracklets is not None and not (name is not None or noise):
        raise UsageError("--tracklets goes with --name or --noise (--split takes its own list)")
    lk = open_lake(lake, create=False)
    config = command_config([], None, profile)
    rows = None
    if not undo:
        kind = next(k for k, v in chosen.items() if v)
        try:
            rows = corrections.correction_rows(lk, series, kind, cluster, name=name, other=merge,
                                               tracklets=(split or tracklets or "").split(","))
        except corrections.CorrectionError as exc:
            raise Failure(str(exc)) from None
        err(f"recording {len(rows)} corrections; re-identifying {series}")
    summary = run_flow(correct_series, "label", lake, series, config=config, rows=rows, undo=undo)
    if summary is None:
        raise Failure(f"series {series!r} has no corrections to undo")
    print_identity(summary)


@app.command()
def review(lake: str = typer.Option(..., help="Lake folder or URL."), series: str = typer.Option(...),
           port: int = typer.Option(0, help="Port on 127.0.0.1 (0: a free one)."),
           browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the page in the browser."),
           profile: str = typer.Option("offline"), sets: list[str] = typer.Option([], "--set"),
           config_file: Optional[Path] = typer.Option(None, "--config")):
    """Review and correct the series' identity in the browser (Ctrl-C stops it)."""
    from anitrack.identity.corrections import CorrectionError
    from anitrack.identity.review import check_reviewable
    from anitrack.web.review import serve

    lk = open_lake(lake, create=False)
    config = command_config(sets, config_file, profile)
    try:
        check_reviewable(lk, series)
    except CorrectionError as exc:
        raise Failure(str(exc)) from None

    def announce(url: str) -> None:
        err(f"reviewing {series} at {url}  (Ctrl-C stops)")
        if browser:
            import webbrowser

            webbrowser.open(url)

    from anitrack.flows.corrections import review_writes

    serve(lk, series, review_writes(lake, series, config), port=port, announce=announce)
