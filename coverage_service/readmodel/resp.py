"""A small Redis client for the coverage API's hot reads: one connection, commands pipelined, replies in order.

redis-py spends some 100 µs of the API's CPU per command, most of a request's cost; here concurrent requests share
one connection and a call costs some 15 µs. It speaks ``redis://`` only (:func:`supports`); the API reads other URLs
through redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from redis import exceptions

Arg = bytes | str | int | float

_CRLF: Final = b"\r\n"


def pack(args: Sequence[Arg]) -> bytes:
    """A command as RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int] | None:
    """The reply starting at ``pos`` and the position after it, or None when the buffer ends before it does.

    Bulk strings are bytes; nil is None; an error reply is a :class:`~redis.exceptions.ResponseError`
    (returned, not raised: it answers one command only).
    """
    end = buf.find(_CRLF, pos)
    if end < 0:
        return None
    kind, line = buf[pos], bytes(buf[pos + 1 : end])
    after = end + 2
    if kind == 0x24:  # $ bulk string
        n = int(line)
        if n < 0:
            return None, after
        if len(buf) < after + n + 2:
            return None
        return bytes(buf[after : after + n]), after + n + 2
    if kind == 0x3A:  # : integer
        return int(line), after
    if kind == 0x2B:  # + simple string
        return line, after
    if kind == 0x2D:  # - error
        text = line.decode(errors="replace")
        error = exceptions.NoScriptError if text.startswith("NOSCRIPT") else exceptions.ResponseError
        return error(text), after
    if kind == 0x2A:  # * array
        n = int(line)
        if n < 0:
            return None, after
        items: list[Any] = []
        for _ in range(n):
            found = parse(buf, after)
            if found is None:
                return None
            items.append(found[0])
            after = found[1]
        return items, after
    raise exceptions.InvalidResponse(f"unexpected reply type {chr(kind)!r}")


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None


def address(url: str) -> Address | None:
    """Where a ``redis://`` URL points; None for a URL this client does not speak (``rediss://``, ``unix://``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        return None
    query = urllib.parse.parse_qs(parts.query)
    path = parts.path.strip("/")
    db = path or (query.get("db") or ["0"])[0]
    if not db.isdigit() or set(query) - {"db"}:
        return None  # options only redis-py knows: let it have the URL
    unquote = urllib.parse.unquote
    return Address(
        parts.hostname,
        parts.port or 6379,
        int(db),
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def supports(url: str) -> bool:
    return address(url) is not None


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.outgoing: list[bytes] = []
        self.buffer = bytearray()
        self.lost: exceptions.RedisError | None = None
        self.timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def send(self, data: bytes, future: asyncio.Future[Any], now: float) -> None:
        """Queue a command; the commands queued in one turn of the event loop go out in one write."""
        self.waiting.append((future, now))
        self.outgoing.append(data)
        if len(self.outgoing) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        data, self.outgoing = b"".join(self.outgoing), []
        if self.transport is not None and self.lost is None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        try:
            while self.waiting and pos < len(buf):
                found = parse(buf, pos)
                if found is None:
                    break
                reply, pos = found
                future, _ = self.waiting.popleft()
                if not future.done():  # its caller may have gone: the reply is dropped, the order kept
                    if isinstance(reply, exceptions.ResponseError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except (ValueError, exceptions.InvalidResponse) as exc:
            self.close(exceptions.ConnectionError(f"unreadable reply from Redis: {exc}"))
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            text = f"connection to Redis lost: {exc}" if exc else "connection to Redis closed"
            self.lost = (
                exceptions.TimeoutError("Redis did not answer in time")
                if self.timed_out
                else (exceptions.ConnectionError(text))
            )
        self._fail(self.lost)

    def close(self, error: exceptions.RedisError) -> None:
        if self.lost is None:
            self.lost = error
        if self.transport is not None:
            self.transport.abort()
        self._fail(error)

    def _fail(self, error: exceptions.RedisError) -> None:
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    @property
    def usable(self) -> bool:
        return self.lost is None and self.transport is not None and not self.transport.is_closing()


class RespClient:
    """One pipelined connection, opened on first use and again after it is lost.

    Failures are redis-py's exceptions, so the API's handlers treat them as they treat redis-py's: a lost or
    unreachable server is a ConnectionError, a reply slower than ``timeout_s`` a TimeoutError (the connection is then
    dropped: later replies would be out of step), an error reply a ResponseError.
    """

    def __init__(self, addr: Address, *, timeout_s: float = 2.0, connect_timeout_s: float = 2.0) -> None:
        self.addr = addr
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: float) -> RespClient:
        addr = address(url)
        if addr is None:
            raise ValueError("only redis:// URLs are supported")
        return cls(addr, **options)

    async def execute(self, *args: Arg) -> Any:
        """Send one command and wait for its reply; a dropped connection is retried once on a new one (the API
        only reads, and reads are idempotent)."""
        data = pack(args)
        try:
            return await self._send(data)
        except exceptions.ConnectionError:
            if self._closed:
                raise
            return await self._send(data)

    async def _send(self, data: bytes) -> Any:
        conn = self._conn
        if conn is None or not conn.usable:
            conn = await self._connection()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.send(data, future, time.monotonic())
        return await future

    async def _connection(self) -> _Connection:
        if self._closed:
            raise exceptions.ConnectionError("the client is closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        addr = self.addr
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, addr.host, addr.port), self.connect_timeout_s
            )
        except (TimeoutError, OSError) as exc:
            raise exceptions.ConnectionError(f"cannot connect to Redis at {addr.host}:{addr.port}: {exc}") from exc
        setup: list[list[Arg]] = []
        if addr.password is not None:
            setup.append(["AUTH", addr.username, addr.password] if addr.username else ["AUTH", addr.password])
        if addr.db:
            setup.append(["SELECT", addr.db])
        try:
            for command in setup:
                future: asyncio.Future[Any] = loop.create_future()
                conn.send(pack(command), future, time.monotonic())
                await asyncio.wait_for(future, self.connect_timeout_s)
        except exceptions.ResponseError as exc:
            conn.close(exceptions.AuthenticationError(str(exc)))
            raise exceptions.AuthenticationError(f"Redis refused the connection setup: {exc}") from exc
        except TimeoutError as exc:
            conn.close(exceptions.TimeoutError("Redis did not answer the connection setup"))
            raise exceptions.TimeoutError("Redis did not answer the connection setup") from exc
        self._conn = conn
        self._arm_watchdog()
        return conn

    def _arm_watchdog(self) -> None:
        if self._watchdog is None and not self._closed:
            self._watchdog = asyncio.get_running_loop().call_later(self.timeout_s / 4, self._check)

    def _check(self) -> None:
        """Drop the connection when its oldest command has waited longer than the timeout."""
        self._watchdog = None
        conn = self._conn
        if conn is None or not conn.usable:
            return
        if conn.waiting and time.monotonic() - conn.waiting[0][1] > self.timeout_s:
            conn.timed_out = True
            conn.close(exceptions.TimeoutError("Redis did not answer in time"))
            return
        self._arm_watchdog()

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.close(exceptions.ConnectionError("the client is closed"))
            self._conn = None


class Script:
    """A Lua script run with EVALSHA on the client, one key and the arguments; ``load`` puts it into Redis
    (SCRIPT LOAD) before its first call and again when Redis has lost it (a restart, SCRIPT FLUSH)."""

    def __init__(self, client: RespClient, text: str, *, load: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.client = client
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self._load = load or (lambda: client.execute("SCRIPT", "LOAD", text))
        self._loading: asyncio.Task[Any] | None = None
        self._loaded = False

    async def __call__(self, key: Arg, *args: Arg) -> Any:
        if not self._loaded:
            await self.load()
        try:
            return await self.client.execute("EVALSHA", self.sha, 1, key, *args)
        except exceptions.NoScriptError:
            await self.load()
            return await self.client.execute("EVALSHA", self.sha, 1, key, *args)

    async def load(self) -> None:
        """Load the script, once for all the calls waiting for it."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
        task = self._loading
        try:
            await asyncio.shield(task)
            self._loaded = True
        finally:
            if task.done() and self._loading is task:
                self._loading = None
