"""Live figures: a region's coverage as Server-Sent Events, pushed when it changes, resumable.

``GET /v1/stream`` (the nation) and ``GET /v1/stream/{code}`` poll the read model and send the region's figures when
they change; what a client receives, and how it resumes, is on docs/reports.md.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Request, Response
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from coverage_service.api import documents
from coverage_service.api.access import Regulator, ensure_in_scope, regulator
from coverage_service.api.channels import Channel, Channels, frame_of
from coverage_service.api.middleware import is_head
from coverage_service.api.params import (
    CODE_DOC,
    REGION_PATTERN,
    RETRY_AFTER_S,
    FilterParams,
    documented_pattern,
    now_ms,
    region_code,
    settings_of,
    unknown,
)
from coverage_service.readmodel import queries
from coverage_service.readmodel.filters import Filter
from lastmile import names, problem
from lastmile.problem import Problem
from lastmile.settings import Settings, SettingsError

router = APIRouter(tags=["live"])
Caller = Annotated[Regulator, Depends(regulator)]

MEDIA_TYPE: Final = "text/event-stream"
RETRY_MS: Final = 3000  # the reconnection delay suggested to clients
_EVENT_ID: Final = re.compile(r"([0-9]{1,15})-([0-9a-f]{16})")
_HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy may hold events back
_DESCRIPTION: Final = (
    "Server-Sent Events (text/event-stream). Each `event: coverage` carries an `id:` and, as `data:`, the "
    "region's figures (the /v1/coverage object without `children` and `definition`, with the same filters); "
    "one is sent at once, then one whenever the figures change (polled every LASTMILE_COVERAGE_STREAM_POLL_SECONDS). "
    "A `: keep-alive` comment comes after LASTMILE_COVERAGE_STREAM_KEEPALIVE_SECONDS without an event. Reconnect with "
    "`Last-Event-ID` to be sent only figures newer than the ones you saw."
)
_RESPONSES: Final = {
    200: {"description": "An endless event stream", "content": {MEDIA_TYPE: {"schema": {"type": "string"}}}},
    **problem.openapi_responses(400, 401, 403, 404, 429, 503),
}


class Streams:
    """Open streams per token (the limit), the channels they listen to, and the signal that ends them all at
    shutdown."""

    def __init__(self, per_token: int, poll_s: float) -> None:
        self.per_token = per_token
        self.stopping = asyncio.Event()
        self.channels = Channels(poll_s)
        self._open: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Streams:
        if settings.coverage_streams_per_token < 1:
            raise SettingsError("LASTMILE_COVERAGE_STREAMS_PER_TOKEN: must be at least 1")
        if not settings.coverage_stream_poll_seconds > 0:
            raise SettingsError("LASTMILE_COVERAGE_STREAM_POLL_SECONDS: must be more than 0")
        if not settings.coverage_stream_keepalive_seconds > 0:
            raise SettingsError("LASTMILE_COVERAGE_STREAM_KEEPALIVE_SECONDS: must be more than 0")
        return cls(settings.coverage_streams_per_token, settings.coverage_stream_poll_seconds)

    def acquire(self, who: str) -> None:
        if self._open.get(who, 0) >= self.per_token:
            raise Problem(
                429,
                f"this token already has {self.per_token} live streams open "
                "(LASTMILE_COVERAGE_STREAMS_PER_TOKEN); close one first",
                type_="too-many-streams",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        self._open[who] = self._open.get(who, 0) + 1

    def release(self, who: str) -> None:
        left = self._open.get(who, 0) - 1
        if left > 0:
            self._open[who] = left
        else:
            self._open.pop(who, None)

    def open(self, who: str) -> int:
        return self._open.get(who, 0)


def stop(app: FastAPI) -> None:
    """Ends every open stream cleanly (at shutdown: the server waits for open responses to finish)."""
    streams: Streams = app.state.streams
    streams.stopping.set()
    streams.channels.wake_all()


class EventStream(StreamingResponse):
    """A streaming response that runs ``on_close`` however it ends, so a stream's slot is always given back."""

    media_type = MEDIA_TYPE

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, headers=_HEADERS, media_type=MEDIA_TYPE)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def event_id(ms: int, figures_digest: str) -> str:
    """``<ms>-<digest>``: the digest tells whether a reconnecting client has the current figures; ``ms`` (server
    time, never going back on one stream) orders the ids."""
    return f"{ms}-{figures_digest}"


def parse_event_id(value: str | None) -> tuple[int, str] | None:
    """(ms, digest) of a Last-Event-ID this server made; None for anything else (the client gets the figures)."""
    match = _EVENT_ID.fullmatch(value.strip()) if value else None
    return None if match is None else (int(match.group(1)), match.group(2))


async def _figures(app: FastAPI, code: str, flt: Filter) -> dict[str, Any] | None:
    """The region's figures, with ``stale`` as in its coverage document (a change of either is an event)."""
    settings: Settings = app.state.settings
    reader: queries.Reader = app.state.documents.reader
    many = await reader.figures([code], flt, now_ms=now_ms(), lapse_days=settings.lapse_window_days)
    figures = many.get(code)
    return None if figures is None else documents.marked(figures, app.state.documents.stale())


async def _events(request: Request, channel: Channel, seen: tuple[int, str] | None) -> AsyncIterator[bytes]:
    settings = settings_of(request)
    stopping: asyncio.Event = request.app.state.streams.stopping
    loop = asyncio.get_running_loop()
    last_ms, last_digest = seen if seen is not None else (0, "")
    yield f"retry: {RETRY_MS}\n\n".encode()
    quiet_since = loop.time()
    while not stopping.is_set():
        version, frame = channel.version, channel.frame
        if frame.digest != last_digest:  # changed; lapses change figures too, with time rather than events
            last_ms, last_digest = max(last_ms + 1, now_ms()), frame.digest
            yield b"id: %s\nevent: coverage\ndata: %s\n\n" % (event_id(last_ms, frame.digest).encode(), frame.data)
            quiet_since = loop.time()
        if loop.time() - quiet_since >= settings.coverage_stream_keepalive_seconds:
            yield b": keep-alive\n\n"
            quiet_since = loop.time()
        idle = settings.coverage_stream_keepalive_seconds - (loop.time() - quiet_since)
        await channel.wait(version, max(0.0, idle))


async def _stream(request: Request, who: Regulator, code: str, flt: Filter, last_event_id: str | None) -> Response:
    ensure_in_scope(who, code)
    first = await _figures(request.app, code, flt)
    if first is None:
        raise unknown(code)
    if is_head(request):
        return Response(headers=_HEADERS, media_type=MEDIA_TYPE)
    streams: Streams = request.app.state.streams
    streams.acquire(who.name)  # given back when the response ends, however it ends
    # Every stream of this region and filter shares one channel: the scope was checked above, and the figures
    # of a region and filter are the same for every token allowed to see them.
    key = (code, flt)
    channel = streams.channels.join(key, code, lambda: _figures(request.app, code, flt), frame_of(first))

    def close() -> None:
        streams.release(who.name)
        streams.channels.leave(key)

    return EventStream(_events(request, channel, parse_event_id(last_event_id)), on_close=close)


LastEventId = Annotated[
    str | None, Header(alias="Last-Event-ID", description="The id of the last event received, to resume")
]


@router.get("/v1/stream", status_code=200, response_class=EventStream, responses=_RESPONSES, description=_DESCRIPTION)
async def national_stream(
    request: Request, who: Caller, flt: FilterParams, last_event_id: LastEventId = None
) -> Response:
    """The whole country's coverage, live."""
    return await _stream(request, who, names.NATIONAL, flt, last_event_id)


@router.get(
    "/v1/stream/{code}", status_code=200, response_class=EventStream, responses=_RESPONSES, description=_DESCRIPTION
)
async def region_stream(
    request: Request,
    who: Caller,
    flt: FilterParams,
    code: Annotated[
        str,
        Path(
            description=CODE_DOC, examples=["140322", "140322100"], json_schema_extra=documented_pattern(REGION_PATTERN)
        ),
    ],
    last_event_id: LastEventId = None,
) -> Response:
    """One region's coverage, live."""
    return await _stream(request, who, region_code(code), flt, last_event_id)
