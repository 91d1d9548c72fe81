"""Publishing accepted events: one record per partition per request, acknowledged by all replicas."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from lastmile import correction, logs, names, scan
from lastmile.settings import Settings
from lastmile.topics import Partitioner

log = logging.getLogger("lastmile.ingest.publisher")


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time; nothing of the request may be reported as accepted."""


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.scan_topic
        self.timeout = settings.ingest_publish_timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._partition_of: Partitioner | None = None
        self._starting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect in the background, retrying, so the API is up (and says 503) while the broker is not."""
        self._starting = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        delay = 0.5
        while self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                acks="all",
                enable_idempotence=self.settings.kafka_enable_idempotence,
                linger_ms=2,
                max_request_size=16 * 1024 * 1024,
                request_timeout_ms=int(self.timeout * 1000),
                client_id="lastmile-ingest",
            )
            try:
                await producer.start()
                partitions = await asyncio.wait_for(producer.partitions_for(self.topic), self.timeout)
                self._partition_of = Partitioner(len(partitions))
                self._producer = producer
                log.info("connected to the broker", extra={"topic": self.topic, "partitions": len(partitions)})
            except (KafkaError, OSError, TimeoutError) as exc:
                await producer.stop()
                log.warning("broker not reachable yet", extra={"error": logs.describe(exc), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
        if self._producer is not None:
            await self._producer.stop()

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def ready(self) -> bool:
        """The broker answers a metadata request now."""
        if self._producer is None:
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), 2.0)
        except (KafkaError, OSError, TimeoutError):
            return False
        return True

    async def publish(self, carrier: str, request_id: str, events: Sequence[scan.ScanEvent]) -> None:
        """Return once every event is acknowledged by the broker, or raise BrokerUnavailable."""
        await self.publish_corrections(carrier, request_id, [], events)

    async def publish_corrections(
        self,
        carrier: str,
        request_id: str,
        corrections: Sequence[correction.Correction],
        events: Sequence[scan.ScanEvent] = (),
    ) -> None:
        """Publish corrections, each to its withdrawn event's partition (where the worker that counted it reads it),
        and events (replacements); return once all are acknowledged, or raise BrokerUnavailable."""
        producer, partition_of = self._producer, self._partition_of
        if producer is None or partition_of is None:
            raise BrokerUnavailable("not connected to the broker")
        received_at = scan.format_time(datetime.now(UTC))
        events_of: dict[int, list[scan.ScanEvent]] = defaultdict(list)
        for event in events:
            events_of[partition_of(event.location_code)].append(event)
        corrections_of: dict[int, list[correction.Correction]] = defaultdict(list)
        for c in corrections:
            corrections_of[partition_of(c.event.location_code)].append(c)
        bodies = [(p, msgspec.json.encode(scan.Batch(batch, received_at))) for p, batch in events_of.items()]
        bodies += [(p, msgspec.json.encode(correction.Batch(b, received_at))) for p, b in corrections_of.items()]
        headers = [
            (names.HEADER_SCHEMA, names.SCHEMA_BATCH_V1.encode()),
            (names.HEADER_CARRIER, carrier.encode()),
            (names.HEADER_REQUEST_ID, request_id.encode()),
        ]

        async def send_all() -> None:
            futures = [
                await producer.send(self.topic, body, key=request_id.encode(), partition=partition, headers=headers)
                for partition, body in bodies
            ]
            await asyncio.gather(*futures)

        # The whole send is bounded: with the broker frozen, even queueing can block.
        try:
            await asyncio.wait_for(send_all(), self.timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(logs.describe(exc)) from exc
