"""Kafka as the services watch it: reachable or not, and the scan topic's end offsets (lag, backlog)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

CHECK_TIMEOUT_S: Final = 2.0


class Broker:
    """Kafka as a service watches it: reachable or not, and a topic's end offsets. Connects lazily, and
    again after a failed connect, so a service starts and serves while the broker is down."""

    def __init__(self, bootstrap_servers: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self._servers = bootstrap_servers
        self._timeout = timeout_s
        self._lock = asyncio.Lock()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        async with self._lock:
            if self._admin is None or self._consumer is None:
                ms = int(self._timeout * 1000)
                admin = AIOKafkaAdminClient(bootstrap_servers=self._servers, request_timeout_ms=ms)
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self._servers, enable_auto_commit=False, request_timeout_ms=ms
                )
                try:
                    await asyncio.wait_for(admin.start(), self._timeout)  # one at a time: one error when down
                    await asyncio.wait_for(consumer.start(), self._timeout)
                except BaseException:
                    await self._close_both(admin, consumer)
                    raise
                self._admin, self._consumer = admin, consumer
            return self._admin, self._consumer

    async def ping(self) -> None:
        admin, _ = await self._clients()
        await asyncio.wait_for(admin.describe_cluster(), self._timeout)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Partition -> offset of the next record; empty when the topic does not exist."""
        admin, consumer = await self._clients()
        # All topics: naming the topic would let a broker with auto-creation create it.
        described = await asyncio.wait_for(admin.describe_topics(None), self._timeout)
        parts = [
            TopicPartition(topic, p["partition"]) for t in described if t["topic"] == topic for p in t["partitions"]
        ]
        if not parts:
            return {}
        ends = await asyncio.wait_for(consumer.end_offsets(parts), self._timeout)
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        if admin is not None and consumer is not None:
            await self._close_both(admin, consumer)

    async def _close_both(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> None:
        # Bounded: stopping clients that were cancelled half-started can wait for ever (seen in a test's shutdown).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(admin.close(), consumer.stop(), return_exceptions=True), self._timeout
            )
