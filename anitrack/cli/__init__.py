"""The ``anitrack`` command line, the application layer: it parses, calls flows or the library, prints.
Data goes to stdout, messages to stderr.

Exit codes: 0 success, 1 failure (an episode, a query), 2 usage (bad flag,
unknown parameter, missing lake parent). Tracebacks only with ANITRACK_DEBUG=1.

One module per group of commands (``pipeline``, ``identity``, ``analytics``, ``manage``, ``demo``), each
registering its commands on the apps in ``common``; importing them here builds the command tree.
"""
from __future__ import annotations

import sys

import typer

from anitrack.cli import pipeline, identity, analytics, manage, demo  # in the order --help lists them
from anitrack.cli.common import Failure, UsageError, app, err
from anitrack.errors import debug_enabled, first_line

COMMAND_MODULES = (pipeline, identity, analytics, manage, demo)  # importing each registers its commands


def main() -> None:
    """Entry point: map errors to one line and an exit code."""
    from anitrack.flows import configure_prefect

    configure_prefect()
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
        err("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug_enabled():
            raise
        code = next((c for kind, c in known if isinstance(exc, kind)), 1)
        err(f"error: {first_line(exc)}")
        sys.exit(code)
