"""The coverage API's ASGI middleware: the path guard, HEAD as GET, and request metrics.

The path guard refuses, before routing, authentication and any Redis read, request paths that only a trick produces
(dot segments, encoded slashes or backslashes, controls); codes are validated by :mod:`coverage_service.api.params`.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Final

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coverage_service.api.access import AUTHENTICATED
from coverage_service.api.metrics import HttpMetrics
from lastmile import names, problem

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
    """ASGI middleware answering 400 (problem+json) to the paths :func:`refusal` names.

    Without it, ``/v1/coverage/..%2F14`` would be decoded into a path no route matches (a 404 that invites guessing)
    or, behind a proxy that normalises differently, into another region's URL.
    """

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


class HeadAsGet:
    """ASGI middleware: HEAD runs the GET route and sends its status and headers without the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def headers_only(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                scope["method"] = "HEAD"  # the server reads it to know no body follows
            elif message["type"] == "http.response.body":
                if finished:
                    return
                finished = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        # The scope itself, not a copy: the server and the outer middleware (metrics) read it afterwards.
        scope["method"] = "GET"
        scope[HEAD_KEY] = True
        try:
            await self.app(scope, receive, headers_only)
        finally:
            scope["method"] = "HEAD"


HEAD_KEY: Final = "lastmile.head"


def is_head(request: Request) -> bool:
    """Whether the request came as HEAD (routes see GET): a streaming route answers it without streaming."""
    return bool(request.scope.get(HEAD_KEY))


class RequestMetrics:
    """ASGI middleware counting requests and their latency by route template and status."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.record(scope["method"], route, status, time.perf_counter() - start)


audit_log = logging.getLogger("lastmile.audit")


class AuditLog:
    """ASGI middleware writing one line per regulator API request (``/v1/``) to the ``lastmile.audit`` logger: the
    token's name (its region and a fingerprint, never the token), its region, the request and the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            who = scope.get(AUTHENTICATED)
            audit_log.info(
                "read",
                extra={
                    "token": getattr(who, "name", None),
                    "region": (getattr(who, "region", "") or names.NATIONAL) if who is not None else None,
                    "method": scope["method"],
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode("latin-1"),
                    "status": status,
                    "ms": round((time.perf_counter() - start) * 1000, 1),
                },
            )
