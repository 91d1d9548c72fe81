"""`lastmile`: one command for every role and tool (docs/operations.md lists them).

The core adds ``topics``; each package adds its own subcommands through the ``lastmile.commands`` entry points
(pyproject.toml), so the core imports no service.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Final

from lastmile import __version__
from lastmile import settings as settings_module
from lastmile.settings import Settings, SettingsError

ENTRY_POINTS: Final = "lastmile.commands"
# Written by `lastmile run` (make run) while its stack is up: the broker and Redis it started.
STACK_FILE: Final = Path(".run") / "lastmile.env"

Handler = Callable[[argparse.Namespace, Settings], int]
# What a subcommand is: a service (settings from the environment only), a tool (the running stack's
# broker and Redis when the environment names none, announced), or a stack runner (starts its own).
SERVICE: Final = "service"
TOOL: Final = "tool"
STACK: Final = "stack"


def command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler, kind: str, **kwargs: str
) -> argparse.ArgumentParser:
    """Add a subcommand; ``handler(args, settings)`` runs it and returns the exit status."""
    parser = sub.add_parser(name, **kwargs)  # type: ignore[arg-type]
    parser.set_defaults(handler=handler, kind=kind)
    return parser


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lastmile",
        description="Express-to-villages coverage from carriers' last-mile scans. Settings come from the "
        "environment (docs/settings.md).",
    )
    top.add_argument("--version", action="version", version=f"lastmile-coverage {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    topics = command(sub, "topics", _topics, TOOL, help="manage the Kafka topics")
    topics.add_argument("action", choices=["create"], help="create the scan and dead-letter topics if missing")
    for found in sorted(entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
        found.load()(sub)
    return top


def settings_for(kind: str, environ: dict[str, str] | None = None) -> tuple[Settings, str]:
    """The settings a subcommand of ``kind`` runs with, and where its broker and Redis came from."""
    env = dict(os.environ if environ is None else environ)
    named = settings_module.lookup(env, "KAFKA_BOOTSTRAP_SERVERS") or settings_module.lookup(env, "REDIS_URL")
    if kind == TOOL and not named and STACK_FILE.is_file():
        return Settings.from_env(env, env_file=STACK_FILE), f"{STACK_FILE}, the stack `make run` started"
    return Settings.from_env(env), "the environment" if named else "the defaults"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings, origin = settings_for(args.kind)
    except SettingsError as exc:
        print(f"lastmile: {exc}", file=sys.stderr)
        return 2
    for notice in settings_module.resolve(os.environ)[2]:
        print(f"lastmile: warning: {notice}", file=sys.stderr)
    if args.kind == TOOL:
        print(
            f"lastmile {args.command}: Redis {settings.redis_url_shown}, broker {settings.kafka_bootstrap_servers} "
            f"(from {origin}), key prefix {settings.redis_key_prefix!r}",
            file=sys.stderr,
        )
    status: int = args.handler(args, settings)
    return status


def _topics(_: argparse.Namespace, settings: Settings) -> int:
    from lastmile.topics import ensure_topics

    created = asyncio.run(ensure_topics(settings))
    print(f"created: {', '.join(created)}" if created else "topics already exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
