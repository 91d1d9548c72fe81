"""Serving the coverage API: uvicorn (httptools and uvloop), ending the live streams first when it stops."""

from __future__ import annotations

import logging
import socket
import sys

import uvicorn
from fastapi import FastAPI

from coverage_service.api.app import create_app
from coverage_service.api.routes import stream
from lastmile import logs
from lastmile.settings import Settings, SettingsError

log = logging.getLogger("lastmile.coverage")


class Server(uvicorn.Server):
    """uvicorn, ending the live streams first when it shuts down: it waits for open responses to finish."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        config = uvicorn.Config(
            app,
            host=settings.coverage_host,
            port=settings.coverage_port,
            log_config=None,
            access_log=settings.coverage_access_log,
        )
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stream.stop(self.app)
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    """Run the API on LASTMILE_COVERAGE_HOST:LASTMILE_COVERAGE_PORT until interrupted."""
    logs.configure("coverage", settings.log_level, settings.log_format)
    log.info("starting", extra=settings.describe())
    try:
        app = create_app(settings)
    except SettingsError as exc:
        print(f"lastmile coverage: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    Server(app, settings).run()
