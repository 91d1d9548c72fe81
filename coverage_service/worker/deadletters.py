"""`lastmile dead-letters`: what the worker could not use, read back from the dead-letter topic.

A carrier with direct Kafka access (or a bug upstream) can put anything on the scan topic. The worker sends each
record or event it cannot use to the dead-letter topic with the reason and the source position, and goes on;
this command lists them, newest last, so ops can see what was refused and tell the carrier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from lastmile.settings import Settings

FETCH_TIMEOUT_MS = 1_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    offset: int  # in the dead-letter topic
    body: dict[str, Any]

    @property
    def line(self) -> str:
        source = self.body.get("source") or {}
        at = f"{source.get('topic')}[{source.get('partition')}]@{source.get('offset')}"
        if source.get("index") is not None:
            at += f" event {source['index']}"
        return f"{self.body.get('dead_lettered_at', '?')}  {at}  {self.body.get('reason', '?')}"


async def read_dead_letters(settings: Settings, limit: int | None = None) -> tuple[int, list[DeadLetter]]:
    """The topic's total count and its last ``limit`` dead letters (all when None), oldest first."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(settings.dead_letter_topic) or set()
        tps = [TopicPartition(settings.dead_letter_topic, p) for p in sorted(partitions)]
        if not tps:
            return 0, []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        beginnings = await consumer.beginning_offsets(tps)
        total = sum(ends[tp] - beginnings[tp] for tp in tps)
        todo = {}
        for tp in tps:
            start = beginnings[tp] if limit is None else max(beginnings[tp], ends[tp] - limit)
            if start < ends[tp]:
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
        letters: list[DeadLetter] = []
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=FETCH_TIMEOUT_MS)
            for tp, messages in fetched.items():
                for msg in messages:
                    if msg.offset < todo.get(tp, -1):
                        letters.append(DeadLetter(msg.offset, _body(msg.value)))
                if messages and messages[-1].offset + 1 >= todo[tp]:
                    del todo[tp]
        letters.sort(key=lambda d: d.offset)
        return total, letters if limit is None else letters[-limit:]
    finally:
        await consumer.stop()


def _body(value: bytes | None) -> dict[str, Any]:
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return {
            "reason": "(not a dead letter written by lastmile)",
            "raw": (value or b"")[:200].decode(errors="replace"),
        }
    return body if isinstance(body, dict) else {"reason": "(not a dead letter written by lastmile)", "raw": body}
