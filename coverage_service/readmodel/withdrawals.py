"""Carriers' corrections in the read model: each decided from its location's ledger (:mod:`coverage_service.retract`)
and written with ``withdraw.lua``; the upkeep of withdrawals waiting for their original and of days leaving the
correction window (``settle.lua``). docs/corrections.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

import msgspec
import msgspec.msgpack as msgpack
import orjson
from redis.client import NEVER_DECODE
from redis.exceptions import ResponseError

from coverage_service import retract
from coverage_service.fold import Record, Withdrawal, cst_day, entry
from coverage_service.ledger import Ledger, Outcome
from coverage_service.readmodel import scripts
from coverage_service.readmodel.writer import READ_MODEL_AHEAD, ReadModelWriter
from lastmile import backlog, names, scan
from lastmile.correction import b64
from lastmile.divisions import KIND_REMOVED

log = logging.getLogger("lastmile.worker.corrections")
R = names.restated

WITHDRAWN: Final = "withdrawn"
PENDING: Final = "pending"
REJECTED: Final = "rejected"
SETTLE_CHUNK: Final = 200


def position(record: Record, w: Withdrawal) -> str:
    """A correction's place in the topic: its identity (a replay of it finds its own withdrawal in the ledger)."""
    return f"{record.offset_field}:{record.offset}:{w.index}"


class Withdrawals:
    """Applies records of corrections through the writer that applies the events (its positions and registry)."""

    def __init__(
        self, writer: ReadModelWriter, partition_of: Callable[[str], int] | None = None, lapse_days: int = 30
    ) -> None:
        self.writer = writer
        self.lapse_days = lapse_days
        self.redis = writer.redis
        self.prefix = writer.prefix
        self.partition_of = partition_of
        self._withdraw = self.redis.register_script(scripts.source("withdraw.lua", self.prefix, prelude=True))
        self._settle = self.redis.register_script(scripts.source("settle.lua", self.prefix, prelude=True))

    async def apply(self, record: Record) -> dict[str, int]:
        """Decide and write each correction of ``record`` not yet applied; the caller stores the record's offset
        afterwards (a crash in between replays it, and each correction finds itself already decided)."""
        ofield = record.offset_field
        if ofield not in self.writer.positions:
            await self.writer.sync([ofield])
        counts: dict[str, int] = {}
        for w in record.withdrawals:
            status = await self._decide(ofield, record.offset, w, position(record, w), record.received_ms)
            if status is not None:
                counts[status] = counts.get(status, 0) + 1
        return counts

    async def _decide(
        self,
        ofield: str,
        offset: int | None,
        w: Withdrawal,
        at: str,
        received_ms: int | None,
        clock_ms: int | None = None,
    ) -> str | None:
        """Decide and write one correction of partition ``ofield`` (``offset``: its record's, skipped when the shard
        applied it; None: a waiting correction decided again). ``clock_ms``: now, by the log's clock in a rebuild."""
        code = w.entry.location_code
        shard = code[:2]
        partition = names.topic_partition(ofield)[1]
        now = int(time.time() * 1000) if clock_ms is None else clock_ms
        while True:
            if ofield not in self.writer.positions:
                await self.writer.sync([ofield])
            if offset is not None and offset <= self.writer.positions[ofield].get(shard, -1):
                return None  # this shard applied the record already
            units = await self.writer.units({code})
            unit = units.get(code)
            doc = _document(w, at, received_ms, now)
            if unit is None or unit.kind == KIND_REMOVED:
                return await self._write(ofield, shard, code, doc, REJECTED, "location_code is not in the registry")
            if self.partition_of is not None and self.partition_of(code) != partition:
                detail = f"published to partition {partition}, not its location's ({self.partition_of(code)})"
                return await self._write(ofield, shard, code, doc, REJECTED, detail)
            ledger = (await self._ledgers([code]))[0]
            before = ledger.reach()
            day = cst_day(received_ms if received_ms is not None else now)
            outcome, trace = ledger.withdraw(w.entry.digest, w.entry.fingerprint, day, at)
            # Withdrawable: accepted within the window before the correction came (a rebuild decides the same).
            first_day = self.writer.correction_window(received_ms if received_ms is not None else now)[0]
            today = cst_day(now)
            try:
                if outcome is Outcome.WITHDRAWN:
                    assert trace is not None
                    if trace.day < first_day:
                        detail = (
                            f"accepted on {_day(trace.day)}: past the {self.writer.correction_window_days}-day window"
                        )
                        return await self._write(ofield, shard, code, doc, REJECTED, detail)
                    trace = replace(trace, counters=w.entry.counters, station_id=w.entry.station_id)
                    taken = retract.retraction(code, unit, trace, before, ledger.reach())
                    # The snapshots taken between the event's acceptance and the correction's counted it.
                    until = max(received_ms if received_ms is not None else now, trace.accepted_s * 1000)
                    snapshots = await self._snapshots(trace.accepted_s * 1000, until)
                    restated = retract.restatement(code, unit, ledger, trace, snapshots, self.lapse_days)
                    tomb = ledger.withdrawn[w.entry.digest]
                    return await self._write(
                        ofield,
                        shard,
                        code,
                        doc,
                        WITHDRAWN,
                        "",
                        taken,
                        ledger.packed(),
                        (w.entry.digest, tomb),
                        restated=restated,
                    )
                if outcome is Outcome.PENDING:
                    detail = "no such event applied yet: waiting for it within the correction window"
                    return await self._write(
                        ofield, shard, code, doc, PENDING, detail, tomb=(w.entry.digest, (day, at))
                    )
                if outcome is Outcome.UNCHANGED:
                    # Decided before: a replay of a decided correction changes nothing; a waiting one is given up
                    # once the window since it came has passed.
                    tomb_day = ledger.withdrawn[w.entry.digest][0]
                    waiting = await self.redis.hexists(
                        names.shard_key(self.prefix, shard, names.CORRECTIONS_PENDING), at
                    )
                    if not waiting or today - tomb_day < self.writer.correction_window_days:
                        return None
                    days = self.writer.correction_window_days
                    detail = f"no event {w.event.event_id} of {w.event.carrier} was accepted within {days} days"
                    return await self._write(ofield, shard, code, doc, REJECTED, detail, untomb=w.entry.digest)
                if outcome is Outcome.ALREADY_WITHDRAWN:
                    by = ledger.withdrawn[w.entry.digest][1]
                    return await self._write(ofield, shard, code, doc, REJECTED, f"already withdrawn by {by}")
                detail = "the event sent differs from the one accepted under this event_id in what counted"
                return await self._write(ofield, shard, code, doc, REJECTED, detail)
            except ResponseError as exc:
                if not str(exc).startswith(READ_MODEL_AHEAD):
                    raise
                await self.writer.sync([ofield])  # another writer moved on: decide again on what it wrote

    async def _write(
        self,
        ofield: str,
        shard: str,
        code: str,
        doc: dict[str, Any],
        status: str,
        detail: str,
        taken: retract.Retraction | None = None,
        traces: bytes | None = None,
        tomb: tuple[bytes, tuple[int, str]] | None = None,
        untomb: bytes | None = None,
        restated: dict[str, dict[str, int]] | None = None,
    ) -> str:
        doc = {**doc, "status": status, "detail": detail}
        t = taken or retract.Retraction()
        tomb_fields: list[str] = []
        if tomb is not None:
            digest, (day, at) = tomb
            tomb_fields = [names.ledger.WITHDRAWN + b64(digest), f"{day}|{at}"]
        deleted = [] if untomb is None else [names.ledger.WITHDRAWN + b64(untomb)]
        payload = {
            "shard": shard,
            "expect": {ofield: self.writer.positions[ofield].get(shard, -1)},
            "code": code,
            "loc_increments": t.loc_increments,
            "loc_set": t.loc_set,
            "loc_delete": t.loc_delete,
            "regions": [x for r, counts in t.regions.items() for x in (r, counts)],
            "lapses": [x for (r, day), counts in t.lapses.items() for x in (r, day, counts)],
            "index_set": [x for name, members in t.index_set.items() for x in (name, members)],
            "index_remove": [x for name, members in t.index_remove.items() for x in (name, members)],
            "stations_remove": t.stations_remove,
            "ledger_delete": deleted,
            "ledger_set": tomb_fields,
            "set_traces": int(traces is not None),
            "position": doc["position"],
            "record": orjson.dumps(doc).decode(),
            "pending": int(status == PENDING),
            "withdrawn": int(status == WITHDRAWN),
            "restated": _restated(code, restated or {}),
        }
        routing = names.shard_key(self.prefix, shard, names.REG_GENERATION)
        await self._withdraw(keys=[routing], args=[msgpack.encode(payload), traces or b""])
        if taken is not None:
            self.writer.villages.drop([code])
        log.info("correction decided", extra={"position": doc["position"], "status": status, "detail": detail})
        return status

    async def _ledgers(self, codes: list[str]) -> list[Ledger]:
        """The locations' ledgers: each one's hash and its packed traces (binary, whatever the client decodes)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for code in codes:
                pipe.hgetall(names.key(self.prefix, names.LEDGER, code))
                pipe.execute_command("GET", names.key(self.prefix, names.TRACES, code), **{NEVER_DECODE: True})
            replies = await pipe.execute()
        return [
            Ledger.of({str(k): str(v) for k, v in held.items()}, packed or b"")
            for held, packed in zip(replies[::2], replies[1::2], strict=True)
        ]

    async def _snapshots(self, from_ms: int, until_ms: int) -> list[retract.Snapshot]:
        """The daily snapshots taken from ``from_ms`` (included) until ``until_ms`` (excluded)."""
        first, last = cst_day(from_ms), cst_day(until_ms)
        labels = [_day(d) for d in range(first, last + 1)]
        markers = await self.redis.hmget(names.key(self.prefix, names.HISTORY_DAYS), labels)
        out = []
        for label, marker in zip(labels, markers, strict=True):
            if marker is not None:
                taken = int(orjson.loads(marker).get("taken_at_ms", 0))
                if from_ms <= taken < until_ms:
                    out.append(retract.Snapshot(label, taken))
        return out

    async def resolve_pending(
        self, owned: Iterable[str] | None = None, clocks: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """Decide again the corrections waiting for their original, of the partitions in ``owned`` (None: every
        one): withdrawn once it has been applied, rejected once the window has passed by the partition's clock
        (``clocks``: when the newest record applied in each partition was accepted; None: the wall clock). A
        partition without a clock gives up none: its log has not moved on since."""
        wanted = None if owned is None else set(owned)
        counts: dict[str, int] = {}
        for shard in await backlog.shards(self.redis, self.prefix):
            waiting = await self.redis.hgetall(names.shard_key(self.prefix, shard, names.CORRECTIONS_PENDING))
            for at in sorted(str(k) for k in waiting):
                ofield, _, index = at.rsplit(":", 2)
                if wanted is not None and ofield not in wanted:
                    continue
                raw = await self.redis.hget(names.shard_key(self.prefix, shard, names.CORRECTIONS), at)
                if raw is None:
                    continue
                doc = orjson.loads(raw)
                event = msgspec.convert(doc["event"], scan.ScanEvent)
                w = Withdrawal(int(index), event, entry(event), doc["reason"], doc.get("replacement_event_id"))
                received = doc.get("received_at")
                received_ms = None if received is None else _ms(received)
                clock = None if clocks is None else clocks.get(ofield, received_ms or 0)
                status = await self._decide(ofield, None, w, at, received_ms, clock)
                if status is not None:
                    counts[status] = counts.get(status, 0) + 1
        return counts

    async def settle(self, clocks: Mapping[str, int]) -> int:
        """Move into the floor every trace of these partitions accepted before the window's margin day, by each
        partition's clock (``clocks``: offset field -> now, by the log's clock in a rebuild); return how many
        locations were settled. The partition's worker alone settles it: the log of another may be behind."""
        settled = 0
        for shard in await backlog.shards(self.redis, self.prefix):
            listed = await self.redis.smembers(names.shard_key(self.prefix, shard, names.LEDGER_DAYS))
            for member in sorted(str(m) for m in listed):
                ofield, day = member.rsplit(":", 1)
                clock = clocks.get(ofield)
                if clock is None:
                    continue
                first_day, _ = self.writer.correction_window(clock)
                before = first_day - 1  # the margin day stays: no withdrawal reaches what is before it
                if int(day) < before:
                    settled += await self._settle_day(shard, member, before)
        return settled

    async def _settle_day(self, shard: str, member: str, before_day: int) -> int:
        day_key = names.shard_key(self.prefix, shard, names.LEDGER_DAY) + member
        codes = sorted(str(c) for c in await self.redis.smembers(day_key))
        routing = names.shard_key(self.prefix, shard, names.REG_GENERATION)
        start = 0
        while start < max(1, len(codes)):
            chunk = codes[start : start + SETTLE_CHUNK]
            flat: list[Any] = []
            packed: list[bytes] = []
            for code, ledger in zip(chunk, await self._ledgers(chunk), strict=True):
                gone = ledger.settle(before_day)
                flat += (code, [x for kv in ledger.floor.fields().items() for x in kv], gone)
                packed.append(ledger.packed())
            last_chunk = start + SETTLE_CHUNK >= len(codes)
            ofield = member.rsplit(":", 1)[0]
            if ofield not in self.writer.positions:
                await self.writer.sync([ofield])
            expect = {ofield: self.writer.positions[ofield].get(shard, -1)}
            payload = {"shard": shard, "expect": expect, "codes": flat, "done": member if last_chunk else ""}
            try:
                await self._settle(keys=[routing], args=[msgpack.encode(payload), *packed])
            except ResponseError as exc:
                if not str(exc).startswith(READ_MODEL_AHEAD):
                    raise
                await self.writer.sync([ofield])  # another writer moved on: read this chunk again
                continue
            start += SETTLE_CHUNK
        return len(codes)


def _document(w: Withdrawal, at: str, received_ms: int | None, now_ms: int) -> dict[str, Any]:
    """A correction as the corrections list shows it (docs/corrections.md)."""
    e = w.event
    return {
        "position": at,
        "carrier": e.carrier,
        "event_id": e.event_id,
        "location_code": e.location_code,
        "event_type": e.event_type,
        "occurred_at": scan.format_time(e.occurred_at),
        "reason": w.reason,
        "replacement_event_id": w.replacement_id,
        "received_at": None if received_ms is None else scan.format_ms(received_ms),
        "decided_at": scan.format_ms(now_ms),
        "event": e.to_json(),
    }


def _restated(code: str, by_day: dict[str, dict[str, int]]) -> list[Any]:
    """The restatement's increments, for each region above the village (the nation sums its provinces')."""
    fields: dict[str, int] = {}
    for label, changes in by_day.items():
        for figure, n in changes.items():
            fields[label + R.SEP + figure] = n
        fields[label + R.SEP + R.CORRECTIONS] = 1
    return [x for region in (code[:9], code[:6], code[:4], code[:2]) for x in (region, fields)] if fields else []


def _day(day: int) -> str:
    return scan.format_ms(day * 86_400_000)[:10]


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)
