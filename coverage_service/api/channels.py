"""One poll per live region: every stream of one region and filter shares a channel that reads the figures once a
poll and encodes them once, so a thousand dashboards open on one province cost the read model what one does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("lastmile.coverage.stream")

Fetch = Callable[[], Awaitable[Any]]  # the figures now, or None


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes  # the figures as JSON
    digest: str  # of ``data``: equal digests, equal figures


def frame_of(figures: Any) -> Frame:
    data = orjson.dumps(figures)
    return Frame(data, hashlib.sha256(data).hexdigest()[:16])


class Channel:
    """The latest frame of one region and filter, read every ``poll_s`` while anyone listens. Lapses change
    figures with time rather than events, so it polls rather than waits for the fold."""

    def __init__(self, name: str, fetch: Fetch, poll_s: float, first: Frame) -> None:
        self.name = name
        self.frame = first
        self.version = 0  # counts the frames after the first: a listener compares it with the one it sent
        self.listeners = 0
        self._fetch = fetch
        self._poll_s = poll_s
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"live {self.name}")

    async def wait(self, seen: int, within: float) -> None:
        """Return once :attr:`version` is past ``seen`` (at once if it is), on a wake, or after ``within``."""
        if self.version > seen:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within)

    def wake(self) -> None:
        """Wake every listener waiting now (on a change, and at shutdown: they look at why)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        self.stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                figures = await self._fetch()
            except (RedisConnectionError, RedisTimeoutError) as exc:  # streams stay open; the read model comes back
                if not self._down:  # once per outage, not once per poll
                    log.warning("live stream of %s: read model unavailable: %s", self.name, exc)
                self._down = True
                continue
            if self._down:
                log.info("live stream of %s: read model available again", self.name)
                self._down = False
            if figures is None:
                continue
            frame = frame_of(figures)
            if frame.digest != self.frame.digest:
                self.frame = frame
                self.version += 1
                self.wake()


class Channels:
    """The open channels by key; a channel is made by its first listener and closed with its last."""

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self._open: dict[Hashable, Channel] = {}

    def __len__(self) -> int:
        return len(self._open)

    def join(self, key: Hashable, name: str, fetch: Fetch, first: Frame) -> Channel:
        channel = self._open.get(key)
        if channel is None:
            channel = self._open[key] = Channel(name, fetch, self.poll_s, first)
            channel.start()
        channel.listeners += 1
        return channel

    def leave(self, key: Hashable) -> None:
        channel = self._open.get(key)
        if channel is None:
            return
        channel.listeners -= 1
        if channel.listeners <= 0:
            del self._open[key]
            channel.stop()

    def wake_all(self) -> None:
        for channel in self._open.values():
            channel.wake()

    async def close(self) -> None:
        channels, self._open = list(self._open.values()), {}
        for channel in channels:
            await channel.close()
