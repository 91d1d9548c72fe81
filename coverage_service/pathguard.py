"""Refuses request paths that only a trick produces: dot segments, encoded slashes or backslashes, controls.

Without this, ``/v1/coverage/..%2F14`` would be decoded into a path no route matches (a 404 that invites
guessing) or, behind a proxy that normalises differently, into another region's URL. Codes themselves
are validated by :mod:`coverage_service.routing` (7 digits, full-width digits, spaces: 400); this guard
runs before routing, authentication and any Redis read.
"""

from __future__ import annotations

import re
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lastmile import problem

_ENCODED_SEPARATOR: Final = re.compile(rb"%(2f|5c|00)", re.IGNORECASE)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f\\]")


def refusal(raw_path: bytes, path: str) -> str | None:
    """Why the path is refused, or None when it is an ordinary path."""
    if _ENCODED_SEPARATOR.search(raw_path):
        return "the path holds an encoded slash, backslash or NUL"
    if _CONTROL.search(path):
        return "the path holds a backslash or a control character"
    if any(segment in (".", "..") for segment in path.split("/")):
        return "the path holds a '.' or '..' segment"
    return None


class PathGuard:
    """ASGI middleware answering 400 (problem+json) to the paths :func:`refusal` names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            raw: bytes = scope.get("raw_path") or path.encode("utf-8", "surrogateescape")
            reason = refusal(raw.split(b"?", 1)[0], path)
            if reason is not None:
                detail = f"{reason}; division codes are plain ASCII digits"
                answer = send if scope["method"] != "HEAD" else _without_body(send)
                await problem.response(400, detail, type_="invalid-path")(scope, receive, answer)
                return
        await self.app(scope, receive, send)


def _without_body(send: Send) -> Send:
    """The answer to HEAD: the GET's status and headers (Content-Length included), no body (RFC 9110 §9.3.2).
    This middleware runs outside the app's own HEAD handling, so it drops the body itself."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head
