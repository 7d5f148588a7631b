"""Managing what the pipeline reads: your own tables into the lake, hub models into the model folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from anitrack.cli.common import Failure, UsageError, app, command_config, lake_app, models_app, open_lake
from anitrack.errors import first_line


@lake_app.command("import")
def lake_import(table: str = typer.Argument(..., help="Table name, e.g. detections, embeddings, references."),
                file: Path = typer.Argument(..., help="A Parquet file matching the table's schema."),
                lake: str = typer.Option(...), series: str = typer.Option(...),
                episode: Optional[str] = typer.Option(None, help="Episode (all tables but references).")):
    """Validate your own table (bring your own detections or embeddings) and commit it like a stage output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anitrack.lake import ImportKeyError, LakeError, import_table

    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    lk = open_lake(lake)
    try:
        data = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise Failure(f"{file}: not a readable Parquet file ({first_line(exc)})") from None
    try:
        keys = import_table(lk, table, data, file.name, series, episode)
    except ImportKeyError as exc:
        raise UsageError(str(exc)) from None
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
    from anitrack.models import models_dir, needed, pull_models

    config = command_config(set_, config_file, profile)
    if not needed(config):
        raise UsageError(f"profile {profile!r} with these settings runs no hub model: nothing to pull")
    try:
        for item in pull_models(config, to):
            print(item)
    except ConnectionError as exc:
        raise Failure(str(exc)) from None
    if to is not None and Path(to).resolve() != models_dir().resolve():
        print(f"on the machines that run it: ANITRACK_MODELS={Path(to).resolve()}")


@app.command("config")
def show_config(profile: str = typer.Option("offline", help="The profile whose choices fill auto values."),
                set_: list[str] = typer.Option([], "--set", help="stage.key=value, as for ingest."),
                config_file: Optional[Path] = typer.Option(None, "--config", help="An anitrack.toml file."),
                markdown: bool = typer.Option(False, "--markdown", help="Print the reference of every parameter "
                                                                        "(docs/config.md) instead.")):
    """Print the parameters a command would run with (defaults, anitrack.toml, environment, --set, profile)."""
    from anitrack.config import reference_markdown

    if markdown:
        print(reference_markdown(), end="")
        return
    for stage, keys in command_config(set_, config_file, profile).items():
        for key, value in keys.items():
            print(f"{stage}.{key} = {value!r}")
