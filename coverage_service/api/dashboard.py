"""Serves the regulators' dashboard (coverage_service/dashboard/) at /dashboard/: static files, compressed.

The page holds no figures and needs no token to load; it reads the /v1 API with the token the user enters.
Boundaries and vendored libraries are files of the package: nothing comes from a CDN (docs/dashboard.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.middleware.gzip import GZipMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coverage_service import dashboard

PATH: Final = "/dashboard"
HOME: Final = Path(dashboard.__file__).parent
# The page's own scripts and the vendored ones only; data only from this origin. Styles set from scripts go
# through the CSSOM, which the policy allows.
POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
VERSIONED: Final = "/vendor/"  # file names carry the library's version: cacheable for good


class _Headers:
    """Security headers on every answer, and how long a browser may keep it (revalidated by ETag otherwise)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keep = "public, max-age=31536000, immutable" if VERSIONED in scope["path"] else "no-cache"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = POLICY
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Cache-Control"] = keep
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI) -> None:
    """Mount the page, its scripts and the boundary files under /dashboard/, and send /dashboard there."""
    boundaries = StaticFiles(directory=HOME / "boundaries")
    page = StaticFiles(directory=HOME / "static", html=True)
    app.mount(f"{PATH}/boundaries", _Headers(GZipMiddleware(boundaries, minimum_size=512)), name="boundaries")
    app.mount(PATH, _Headers(GZipMiddleware(page, minimum_size=512)), name="dashboard")

    @app.get(PATH, include_in_schema=False)
    async def to_dashboard() -> RedirectResponse:
        return RedirectResponse(f"{PATH}/", status_code=308)
