"""The ingest API's HTTP server: uvicorn, with a deadline for reading each request.

Every request must arrive whole within LASTMILE_INGEST_REQUEST_READ_TIMEOUT_SECONDS, else it is answered 408 and its
connection closed, so a slow client (slowloris) cannot hold a socket for as long as it likes (docs/contract.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import h11
import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lastmile import problem

log = logging.getLogger("lastmile.ingest")

TIMED_OUT_TYPE: Final = "request-timeout"


def timed_out_body(seconds: float) -> bytes:
    return orjson.dumps(
        {
            "type": problem.TYPE_BASE + TIMED_OUT_TYPE,
            "title": "Request Timeout",
            "status": 408,
            "detail": f"the request did not arrive whole within {seconds:g} s of its first byte; send it again",
            "timeout_seconds": seconds,
        }
    )


# uvicorn (with h11) closes idle keep-alive connections but does not limit how long a request may take to arrive:
# a client sending nothing, or its headers or body a byte at a time, would hold a socket and its buffers. The app
# behind sees the client go (``http.disconnect``), so nothing is published for a request that timed out.
class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request does not arrive within ``read_timeout``."""

    read_timeout: float = 30.0  # set per server by :func:`protocol_with`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._between_requests():
            self._arm()  # the first byte of a keep-alive connection's next request
        super().data_received(data)
        if self._deadline is not None and self._request_read():
            self._deadline.cancel()
            self._deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.conn.their_state in (h11.IDLE, h11.DONE)

    def _request_read(self) -> bool:
        """The current request has arrived whole (and none has begun after it)."""
        return self.cycle is not None and not self.cycle.more_body and self.conn.their_state is not h11.IDLE

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.read_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if self.cycle is not None and not self.cycle.response_complete else None
        if cycle is not None and self._request_read():
            return  # read whole after all (a pipelined request is parsed outside data_received): being answered
        if (cycle is None or not cycle.response_started) and (
            self.conn.their_state is h11.SEND_BODY or self._buffered() > 0
        ):
            log.warning("request not read in time; answering 408", extra={"client": _client(self.client)})
            self._answer_408()
        if cycle is not None:
            cycle.disconnected = True  # the app reads http.disconnect, publishes nothing and sends nothing more
            cycle.message_event.set()
        self.transport.close()

    def _buffered(self) -> int:
        return len(self.conn.trailing_data[0])

    def _answer_408(self) -> None:
        body = timed_out_body(self.read_timeout)
        head = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: "
            + problem.MEDIA_TYPE.encode()
            + b"\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head + body)


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def protocol_with(read_timeout: float) -> type[DeadlineH11Protocol]:
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"read_timeout": read_timeout})


def config(app: Any, *, host: str, port: int, read_timeout: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_with(read_timeout),
        log_config=None,
        access_log=False,
        server_header=False,
    )
