"""The one home of every shared name: Kafka topics and headers, Redis keys, counter fields.

The Lua scripts name keys and fields through ``${...}`` placeholders that :func:`lua_names` fills when a script is
loaded, so each name is spelled here and nowhere else. The Redis layout is documented in docs/read-model.md.
"""

from __future__ import annotations

from typing import Final

from lastmile.divisions import KIND_REMOVED, KIND_VILLAGE

# -- Kafka -----------------------------------------------------------------------------------------

SCAN_TOPIC: Final = "lastmile.scans.v1"
DEAD_LETTER_TOPIC: Final = "lastmile.scans.v1.deadletter"
CONSUMER_GROUP: Final = "lastmile-coverage"

# Record headers written by ingest and read by the worker and by people debugging the topic.
HEADER_SCHEMA: Final = "lastmile-schema"
HEADER_CARRIER: Final = "lastmile-carrier"
HEADER_REQUEST_ID: Final = "lastmile-request-id"
HEADER_DEAD_LETTER_REASON: Final = "lastmile-deadletter-reason"
SCHEMA_BATCH_V1: Final = "scan-batch/1"

# -- Redis ----------------------------------------------------------------------------------------

NATIONAL: Final = "CN"

REG_KIND: Final = "reg:kind"
REG_UNIT: Final = "reg:unit:"
REG_CHILDREN: Final = "reg:children:"
REG_META: Final = "reg:meta"
# A token every registry write replaces: the worker decides a batch on the registry of one generation. Each shard
# holds a copy ("{37}:reg:generation"), which its apply calls check.
REG_GENERATION: Final = "reg:generation"
# Per shard, the units of the edition loaded last, as a compressed list ("{37}:reg:edition"): what the next
# edition is compared with before it is applied (lastmile.editions).
REG_EDITION: Final = "reg:edition"
# The read model's key layout, written with the registry: 2 since keys carry their province's hash tag.
LAYOUT: Final = "layout"
LAYOUT_VERSION: Final = "4"  # 3: the per-day counts of last reaches (LAPSE); 4: the withdrawal ledger (LEDGER)
REGION: Final = "region:"
LOCATION: Final = "loc:"
# Per shard, the write path's own keys (shard_key): dedup digests per partition (offset field) and hour,
# "{37}:dedup:<topic>:<partition>:<hour>" holding how many bytes of digests there are, in fixed-size strings
# "...:<hour>:0", ":1" ...; the offsets applied ("{37}:offsets") and the worker's counters ("{37}:stats").
DEDUP: Final = "dedup:"
REACH_INDEX: Final = "reach:"
# Per city and province and CST day, its reached villages whose last reach is on that day, per reach flag and tier
# ("{37}:lapse:3701:20500", field "villages_reached|carrier:sf@p2500"): active villages are the window's days summed.
LAPSE: Final = "lapse:"
STATIONS: Final = "stations:"
# Per location, what withdrawals need (docs/corrections.md): its withdrawable events, the floor its settled events
# left, and its withdrawals (fields in the ``ledger`` class). Per shard, partition and CST day of acceptance, the
# locations with events accepted that day ("{37}:ledger-day:<topic>:<partition>:20500"), settled by the partition's
# worker once the day leaves the correction window; and the list of those sets ("{37}:ledger-days").
LEDGER: Final = "ledger:"
TRACES: Final = "trace:"  # per location, its withdrawable events' traces, packed (coverage_service.ledger)
LEDGER_DAY: Final = "ledger-day:"
LEDGER_DAYS: Final = (
    "ledger-days"  # Per region, how corrections changed its past daily snapshots ("{37}:restated:140322", field
)
# "2024-05-01|villages_reached" -> the change, "2024-05-01|corrections" -> how many): shown beside the published one.
RESTATED: Final = "restated:"
# Per shard, every correction as the worker decided it ("{37}:corrections", field: its position in the topic ->
# JSON), and those waiting for their original ("{37}:corrections-pending", position -> location code).
CORRECTIONS: Final = "corrections"
CORRECTIONS_PENDING: Final = "corrections-pending"
OFFSETS: Final = "offsets"
STATS: Final = "stats"
WORKER_HEARTBEAT: Final = "worker:"
HISTORY: Final = "history:"
HISTORY_DAYS: Final = "history-days"


# The keys of a province's units carry its code as a Redis Cluster hash tag, "lastmile:{37}:loc:370102001001", so
# that one province's keys share a hash slot (docs/sharding.md); the registry's too (the nation's stay untagged).
SHARDED: Final = frozenset(
    {REGION, LOCATION, REACH_INDEX, LAPSE, STATIONS, LEDGER, TRACES, RESTATED, REG_UNIT, REG_CHILDREN}
)


def key(prefix: str, suffix: str, code: str = "") -> str:
    if code and suffix in SHARDED and code != NATIONAL:
        return f"{prefix}:{shard_tag(code)}:{suffix}{code}"
    return f"{prefix}:{suffix}{code}"


def lapse_key(prefix: str, code: str, day: int) -> str:
    """The per-day counts of a city or province (``LAPSE``) on a CST day (days since 1970-01-01)."""
    return f"{key(prefix, LAPSE, code)}:{day}"


def pattern(prefix: str, suffix: str) -> str:
    """The SCAN pattern of every key of one kind (``REGION`` ...), in any hash slot."""
    return f"{prefix}:*{suffix}*" if suffix in SHARDED or suffix in PER_SHARD else f"{prefix}:{suffix}*"


def shard_tag(code: str) -> str:
    """The hash tag of a unit's keys: its province's two digits in braces."""
    return "{" + code[:2] + "}"


def offset_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def topic_partition(offset_field: str) -> tuple[str, int]:
    """The topic and partition an offset field names (the inverse of :func:`offset_field`)."""
    topic, _, partition = offset_field.rpartition(":")
    return topic, int(partition)


PER_SHARD: Final = frozenset(
    {
        DEDUP,
        OFFSETS,
        STATS,
        REG_GENERATION,
        REG_KIND,
        REG_EDITION,
        LEDGER_DAY,
        LEDGER_DAYS,
        CORRECTIONS,
        CORRECTIONS_PENDING,
    }
)


def shard_key(prefix: str, shard: str, suffix: str) -> str:
    """A key of one shard's write path (``OFFSETS``, ``STATS``, ``REG_GENERATION``), or its part of the registry
    index (``REG_KIND``: code -> kind of its units); a shard is a province."""
    return f"{prefix}:{shard_tag(shard)}:{suffix}"


def dedup_key(prefix: str, shard: str, offset_field: str, hour: int, chunk: int | None = None) -> str:
    base = shard_key(prefix, shard, f"{DEDUP}{offset_field}:{hour}")
    return base if chunk is None else f"{base}:{chunk}"


# -- Hash fields ----------------------------------------------------------------------------------


class field:
    """Hash fields of the ``region:`` and ``loc:`` hashes."""

    VILLAGES_TOTAL: Final = "villages_total"
    VILLAGES_REACHED: Final = "villages_reached"
    AS_OF_MS: Final = "as_of_ms"
    # Per location (village): "reached" plus one flag per dimension, e.g. "reached|carrier:sf".
    REACHED: Final = "reached"
    FIRST_REACH_MS: Final = "first_reach_ms"
    LAST_REACH_MS: Final = "last_reach_ms"
    # Counter families: "type:delivered", "carrier:sf", "model:postal_express" (inbound and outbound are
    # sums of type counters, see lastmile.scan.direction_counts).
    TYPE: Final = "type:"
    CARRIER: Final = "carrier:"
    MODEL: Final = "model:"
    VILLAGES_WITH_STATION: Final = "villages_with_station"
    # Parcel volume by year: "vol:2024" (delivered + picked_up + collected, by China Standard Time year).
    VOLUME: Final = "vol:"
    # Dimension separator for per-carrier / per-model reach flags and counts.
    DIM_SEP: Final = "|"
    # Population tier suffix: "villages_total@p2500" counts villages of 2,500 people or more.
    TIER_SEP: Final = "@p"


class ledger:
    """Fields of the ``ledger:`` hashes: ``w:<digest>`` a withdrawal ("<day>|<position>"); the floor: ``f`` first
    reach, ``l<suffix>`` last reach per reach flag, ``s:<station key>`` a station."""

    WITHDRAWN: Final = "w:"
    FIRST_REACH: Final = "f"
    LAST_REACH: Final = "l"
    STATION: Final = "s:"


class restated:
    """Fields of the ``restated:`` hashes, "<day>|<figure>": the snapshot figures a withdrawal changes (the history
    entry's names), and how many corrections changed the day."""

    SEP: Final = "|"
    VILLAGES_REACHED: Final = "villages_reached"
    VILLAGES_ACTIVE: Final = "villages_active"
    VILLAGES_WITH_STATION: Final = "villages_with_station"
    CORRECTIONS: Final = "corrections"


class stat:
    """Fields of the ``stats`` hash, kept by the apply script."""

    EVENTS_APPLIED: Final = "events_applied"
    EVENTS_DUPLICATE: Final = "events_duplicate"
    EVENTS_UNKNOWN_LOCATION: Final = "events_unknown_location"
    RECORDS_APPLIED: Final = "records_applied"
    RECORDS_REPLAYED: Final = "records_replayed"
    VILLAGES_NEWLY_REACHED: Final = "villages_newly_reached"
    EVENTS_WITHDRAWN: Final = "events_withdrawn"
    APPLIED_AT_MS: Final = "applied_at_ms"
    DEAD_LETTERS: Final = "dead_letters"


class unit:
    """Fields of the ``reg:unit:`` hashes."""

    NAME: Final = "name"
    POPULATION: Final = "population"


class meta:
    """Fields of the ``reg:meta`` hash, besides one count per kind as in ``reg:kind`` (``county``, ``village`` ...)."""

    LOADED_AT: Final = "loaded_at"
    SOURCE: Final = "source"
    EDITION: Final = "edition"  # the name `lastmile registry load --edition` gave, e.g. "2023"
    # Comma-separated population thresholds the tier counters are kept for (e.g. "2500").
    POPULATION_TIERS: Final = "population_tiers"


def lua_names(prefix: str) -> dict[str, str]:
    """The values of the ``${...}`` placeholders in the Lua scripts."""
    return {
        "reg_kind": REG_KIND,
        "reg_unit": REG_UNIT,
        "reg_children": REG_CHILDREN,
        "prefix": prefix,
        "region": REGION,
        "loc": LOCATION,
        "dedup": DEDUP,
        "reach_index": REACH_INDEX,
        "lapse": LAPSE,
        "stations": STATIONS,
        "ledger": LEDGER,
        "traces": TRACES,
        "ledger_day": LEDGER_DAY,
        "ledger_days": LEDGER_DAYS,
        "restated": RESTATED,
        "corrections": CORRECTIONS,
        "corrections_pending": CORRECTIONS_PENDING,
        "ledger_first": ledger.FIRST_REACH,
        "ledger_last": ledger.LAST_REACH,
        "ledger_station": ledger.STATION,
        "ledger_withdrawn": ledger.WITHDRAWN,
        "reg_meta": key(prefix, REG_META),
        "reg_generation": key(prefix, REG_GENERATION),
        "shard_generation": REG_GENERATION,
        "layout": key(prefix, LAYOUT),
        "meta_population_tiers": meta.POPULATION_TIERS,
        "meta_loaded_at": meta.LOADED_AT,
        "villages_with_station": field.VILLAGES_WITH_STATION,
        "tier_sep": field.TIER_SEP,
        "offsets": OFFSETS,
        "stats": STATS,
        "national": NATIONAL,
        "kind_village": KIND_VILLAGE,
        "kind_removed": KIND_REMOVED,
        "villages_total": field.VILLAGES_TOTAL,
        "villages_reached": field.VILLAGES_REACHED,
        "as_of_ms": field.AS_OF_MS,
        "reached": field.REACHED,
        "first_reach_ms": field.FIRST_REACH_MS,
        "last_reach_ms": field.LAST_REACH_MS,
        "dim_sep": field.DIM_SEP,
        "type_prefix": field.TYPE,
        "unit_name": unit.NAME,
        "unit_population": unit.POPULATION,
        **{f"stat_{name.lower()}": value for name, value in vars(stat).items() if name.isupper()},
    }
