"""The coverage API served by aiohttp's HTTP server, the ASGI app driven through a thin bridge.

Why not uvicorn: this project's lock has uvicorn with its pure-Python HTTP parser (h11) and neither httptools
nor uvloop, and on one core h11 answers some 5,000 trivial requests a second: its per-request cost alone would
use up the API's latency budget under a regulator's dashboard load (README, Performance). aiohttp (locked
already: faust-streaming depends on it) parses HTTP in C (llhttp) and answers some 20,000 a second here.
``COVERAGE_SERVER=uvicorn`` runs uvicorn instead (:class:`coverage_service.api.Server`).

The bridge (:class:`AsgiBridge`) turns each aiohttp request into an ASGI ``http`` scope as uvicorn would make it
(path percent-decoded, ``raw_path`` and ``query_string`` as sent, headers lower-cased) and the app's messages
into an aiohttp response: a whole body goes out in one write with its headers; a body sent in parts
(``more_body``, the live streams) as a chunked stream. A client that leaves cancels its request's handler,
which is how a live stream learns it is no longer read. The app's lifespan runs around the server (the ASGI
protocol, as uvicorn runs it). On SIGINT or SIGTERM the server stops accepting connections, ``on_shutdown``
runs (it ends the live streams), and the requests in progress get ``SHUTDOWN_TIMEOUT_S`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDict
from starlette.types import ASGIApp, Message

log = logging.getLogger("lastmile.coverage.server")

KEEPALIVE_TIMEOUT_S: Final = 5.0  # uvicorn's default: idle keep-alive connections close after this
SHUTDOWN_TIMEOUT_S: Final = 10.0
BACKLOG: Final = 2048
READ_CHUNK: Final = 65536
ASGI: Final = {"version": "3.0", "spec_version": "2.3"}


Front = Callable[[web.BaseRequest, str, str], Awaitable[web.StreamResponse | dict[str, Any] | None]]
"""Looks at a request before it becomes an ASGI request: (request, raw path, query) -> a response to send
instead, or entries to add to the ASGI scope, or None."""


class AsgiBridge:
    """An aiohttp low-level request handler running an ASGI app (after ``front``, when given)."""

    def __init__(self, app: ASGIApp, state: Mapping[str, Any] | None = None, front: Front | None = None) -> None:
        self.app = app
        self.state = dict(state or {})
        self.front = front
        self._never: asyncio.Future[None] | None = None

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        if target.startswith(("http://", "https://")):  # absolute-form (RFC 9112 §3.2.2)
            parts = urllib.parse.urlsplit(target)
            raw, query = parts.path or "/", parts.query
        else:
            raw, _, query = target.partition("?")
        try:
            raw_path, query_string = raw.encode("ascii"), query.encode("ascii")
        except UnicodeEncodeError:
            return web.Response(status=400, text="the request target must be ASCII")
        extra: dict[str, Any] | None = None
        if self.front is not None:
            found = await self.front(request, raw, query)
            if isinstance(found, web.StreamResponse):
                return found
            extra = found
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        sock = transport.get_extra_info("sockname") if transport is not None else None
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI,
            "http_version": f"{request.version.major}.{request.version.minor}",
            "method": request.method,
            "scheme": "http",
            "path": urllib.parse.unquote(raw),
            "raw_path": raw_path,
            "query_string": query_string,
            "root_path": "",
            "headers": [(name.lower(), value) for name, value in request.raw_headers],
            "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
            "server": tuple(sock[:2]) if isinstance(sock, tuple) else None,
        }
        if self.state:
            scope["state"] = self.state.copy()
        if extra:
            scope.update(extra)
        return await _Exchange(request, self._wait_forever).run(self.app, scope)

    async def _wait_forever(self) -> None:
        """What ``receive`` does once the body is read: the handler is cancelled when the client leaves."""
        if self._never is None:
            self._never = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._never)


class _Exchange:
    """One request's ASGI receive and send."""

    __slots__ = ("body_done", "request", "response", "start", "wait")

    def __init__(self, request: web.BaseRequest, wait: Callable[[], Any]) -> None:
        self.request = request
        self.wait = wait
        self.start: Message | None = None
        self.response: web.StreamResponse | None = None
        self.body_done = False

    async def run(self, app: ASGIApp, scope: dict[str, Any]) -> web.StreamResponse:
        await app(scope, self.receive, self.send)
        if self.response is None:
            if self.start is None:
                raise RuntimeError("the app sent no response")
            # A start with no body message: an empty body.
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        assert self.response is not None
        return self.response

    async def receive(self) -> Message:
        if not self.body_done:
            content = self.request.content
            chunk = await content.read(READ_CHUNK)
            more = not content.at_eof()
            self.body_done = not more
            return {"type": "http.request", "body": chunk, "more_body": more}
        await self.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.start is not None:
                raise RuntimeError("http.response.start sent twice")
            self.start = message
            return
        if kind != "http.response.body":
            return  # extensions this bridge does not offer (trailers, pathsend ...)
        start = self.start
        if start is None:
            raise RuntimeError("http.response.body before http.response.start")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        response = self.response
        if response is None:
            headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", ()))
            status = start["status"]
            if not more:  # the whole body at once: aiohttp writes it with the headers
                self.response = web.Response(status=status, body=body, headers=headers)
                return
            response = self.response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(self.request)
        elif isinstance(response, web.Response):
            raise RuntimeError("http.response.body after the last one")
        if body:
            await response.write(body)
        if not more:
            await response.write_eof()


class Lifespan:
    """The ASGI lifespan protocol, as uvicorn runs it: startup before serving, shutdown after; a failure stops."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._receive: asyncio.Queue[Message] = asyncio.Queue()
        self._sent: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> dict[str, Any]:
        scope = {"type": "lifespan", "asgi": ASGI, "state": self.state}
        self._task = asyncio.ensure_future(self.app(scope, self._receive.get, self._sent.put))
        await self._step("startup")
        return self.state

    async def __aexit__(self, *exc_info: object) -> None:
        await self._step("shutdown")
        if self._task is not None:
            await self._task

    async def _step(self, phase: str) -> None:
        assert self._task is not None
        await self._receive.put({"type": f"lifespan.{phase}"})
        answer = asyncio.ensure_future(self._sent.get())
        await asyncio.wait([answer, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self._task.result()  # the app raised: that is the error
            raise RuntimeError(f"the app ended without answering lifespan.{phase}")
        message = answer.result()
        if message["type"] != f"lifespan.{phase}.complete":
            with contextlib.suppress(BaseException):  # the app re-raises what failed: that is in the message
                await self._task
            raise RuntimeError(f"lifespan {phase} failed: {message.get('message', '')}")


class AioServer:
    """Runs an ASGI app (with its lifespan) on aiohttp's server until :meth:`stop` or a signal."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        on_shutdown: Callable[[], None] = lambda: None,
        access_log: bool = False,
        front: Front | None = None,
    ) -> None:
        self.app, self.host, self.port = app, host, port
        self.front = front
        self.on_shutdown = on_shutdown
        self.access_log = access_log
        self.started = False
        self._stop: asyncio.Event | None = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def serve(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        async with Lifespan(self.app) as state:
            bridge = AsgiBridge(self.app, state, self.front)
            web_server = web.Server(
                bridge,
                handler_cancellation=True,
                keepalive_timeout=KEEPALIVE_TIMEOUT_S,
                access_log=logging.getLogger("lastmile.coverage.access") if self.access_log else None,
            )
            server = await loop.create_server(web_server, self.host, self.port, reuse_address=True, backlog=BACKLOG)
            # What the app made to start (routes, schemas, clients) lives as long as the process: moved out of
            # the collector's way, a full collection no longer stops the server for tens of milliseconds.
            gc.collect()
            gc.freeze()
            log.info("coverage API listening on http://%s:%d", self.host, self.port)
            self.started = True
            try:
                await self._stop.wait()
            finally:
                server.close()  # no new connections
                self.on_shutdown()  # ends the live streams
                await web_server.shutdown(SHUTDOWN_TIMEOUT_S)
                await server.wait_closed()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
            await self.serve()

        asyncio.run(main())
