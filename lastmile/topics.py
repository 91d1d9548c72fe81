"""The Kafka topics: creating them, and where each scan event goes.

Records are partitioned by the event's location code with Kafka's own murmur2 partitioner, so all
events of one village (or township) share a partition and keep their order, whether ingest packed
them or a carrier with direct Kafka access produced them keyed by location code.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from lastmile import backlog, names, redis_client
from lastmile.settings import Settings

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36


class PartitionsMismatch(RuntimeError):
    """The scan topic has another partition count than LASTMILE_SCAN_TOPIC_PARTITIONS: events would be misplaced."""


def partition_for(location_code: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for this key (positive murmur2, modulo)."""
    return int(murmur2(location_code.encode()) & 0x7FFFFFFF) % partitions


class Partitioner:
    """``partition_for`` remembered per code: murmur2 in Python costs microseconds, and codes repeat."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._known: dict[str, int] = {}

    def __call__(self, code: str) -> int:
        p = self._known.get(code)
        if p is None:
            p = self._known[code] = partition_for(code, self.partitions)
        return p


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the scan and dead-letter topics when missing; return the names created.

    A scan topic created now starts at offset 0, so offsets stored in Redis for an earlier topic of
    the same name (a broker with memory storage restarted, a topic deleted and recreated) are
    cleared: otherwise the worker would take the new records for replays and skip them.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        # Kept forever: the topic is the system of record the read model is rebuilt from.
        keep = {"retention.ms": "-1", "retention.bytes": "-1"}
        wanted = [
            NewTopic(
                settings.scan_topic, settings.scan_topic_partitions, settings.kafka_replication_factor, None, keep
            ),
            NewTopic(settings.dead_letter_topic, 1, settings.kafka_replication_factor, None, keep),
        ]
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(missing)
            for topic, code, message in response.topic_errors:
                if code == 0:
                    created.append(topic)
                elif code != TOPIC_ALREADY_EXISTS:
                    raise KafkaError(f"cannot create topic {topic}: error {code} {message}")
        [described] = [
            t for t in await admin.describe_topics([settings.scan_topic]) if t["topic"] == settings.scan_topic
        ]
        count = len(described["partitions"])
        if count != settings.scan_topic_partitions:
            raise PartitionsMismatch(
                f"topic {settings.scan_topic} has {count} partitions, LASTMILE_SCAN_TOPIC_PARTITIONS says "
                f"{settings.scan_topic_partitions}: set it to {count} (events are keyed by location code over them)"
            )
    finally:
        await admin.close()
    if settings.scan_topic in created:
        await _forget_offsets(settings)
    for topic in created:
        log.info("created topic", extra={"topic": topic})
    return created


async def _forget_offsets(settings: Settings) -> None:
    client = redis_client.connect(settings)
    try:
        cleared = False
        for shard in await backlog.shards(client, settings.redis_key_prefix):
            key = names.shard_key(settings.redis_key_prefix, shard, names.OFFSETS)
            stale = [f for f in map(str, await client.hkeys(key)) if f.rsplit(":", 1)[0] == settings.scan_topic]
            if stale:
                await client.hdel(key, *stale)
                cleared = True
        if cleared:
            log.warning("cleared offsets of an earlier scan topic", extra={"topic": settings.scan_topic})
    finally:
        await client.aclose()
