"""The ingest service's subcommand of `lastmile`."""

from __future__ import annotations

import argparse

from lastmile.cli import SERVICE, command
from lastmile.settings import Settings


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command(
        sub,
        "ingest",
        _ingest,
        SERVICE,
        help="run the carrier-facing ingest API (LASTMILE_INGEST_HOST:LASTMILE_INGEST_PORT)",
    )


def _ingest(_: argparse.Namespace, settings: Settings) -> int:
    from ingest_service.app import serve

    serve(settings)
    return 0
