"""``anitrack demo``: the whole product on a small synthetic series, offline, in a few minutes."""
from __future__ import annotations

from pathlib import Path

import typer

from anitrack.cli.common import app, command_config, err, open_lake, print_identity, print_results, print_table, run_flow
from anitrack.cli.pipeline import ingest_args, run_ingest


@app.command()
def demo(out: Path = typer.Option(Path("demo"), help="Folder for the synthetic series and the lake."),
         episodes: int = typer.Option(3, min=1), characters: int = typer.Option(5, min=2),
         seconds: float = typer.Option(30.0, min=5.0), seed: int = typer.Option(7)):
    """Synthesize a small series, ingest it offline, identify its characters, print summaries."""
    from anitrack.synth import synthesize_series

    out.mkdir(parents=True, exist_ok=True)
    err(f"rendering {episodes} synthetic episodes of {seconds:.0f} s into {out}/data ...")
    folder = synthesize_series(out / "data", series="demo", episodes=episodes, characters=characters,
                               seconds=seconds, seed=seed)
    lake = str(out / "lake")
    results = run_ingest(**ingest_args(str(folder), lake, "demo", "offline", [], None, 0, "cpu"))
    print_results(results, "table")
    from anitrack.queries import run_named
    from anitrack.sql import connect

    summary = run_named(connect(open_lake(lake)), "episodes", series="demo")
    print_table(summary)
    if any(r["status"] == "failed" for r in results):
        raise typer.Exit(1)
    from anitrack.flows.identify import identify_series

    identity = run_flow(identify_series, "identify", lake, "demo", config=command_config([], None, "offline"),
                        references=str(out / "data" / "references"), truth=str(folder / "truth.json"))
    print_identity(identity)
    screen = run_named(connect(open_lake(lake)), "screen-time-series", series="demo")
    print_table(screen)
    from anitrack.report import write_report

    page = write_report(open_lake(lake), "demo", out / "report")
    print(f"lake: {lake}  (try: anitrack sql --lake {lake} \"SELECT * FROM screen_time\")")
    print(f"correct it in the browser: anitrack review --lake {lake} --series demo")
    print(f"report: {page}")
