"""The scan event contract, version 1: what a carrier may send and what it means. Pure; no I/O.

One typed model, :class:`ScanEvent` (msgspec), is the contract: ingest and the worker decode with it, and the OpenAPI
schema is generated from it; :func:`rules` holds what a schema cannot say. The contract is on docs/contract.md.
"""

from __future__ import annotations

import re
import typing
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

EVENT_ID: Final = "event_id"
CARRIER: Final = "carrier"
WAYBILL: Final = "waybill"
EVENT_TYPE: Final = "event_type"
LOCATION_CODE: Final = "location_code"
OCCURRED_AT: Final = "occurred_at"
STATION_ID: Final = "station_id"
COOPERATION_MODEL: Final = "cooperation_model"
REASON: Final = "reason"

ARRIVED_AT_HUB: Final = "arrived_at_hub"
OUT_FOR_DELIVERY: Final = "out_for_delivery"
ARRIVED_AT_STATION: Final = "arrived_at_station"
DELIVERED: Final = "delivered"
PICKED_UP: Final = "picked_up"
DELIVERY_FAILED: Final = "delivery_failed"
COLLECTED: Final = "collected"
EventType = Literal[
    "arrived_at_hub", "out_for_delivery", "arrived_at_station", "delivered", "picked_up", "delivery_failed", "collected"
]
EVENT_TYPES: Final[tuple[str, ...]] = typing.get_args(EventType)
# An event of these types at a village means the last mile reached it.
REACH_TYPES: Final = frozenset({ARRIVED_AT_STATION, DELIVERED, PICKED_UP, COLLECTED})
VILLAGE_ONLY_TYPES: Final = REACH_TYPES
INBOUND: Final = "inbound"  # 下行: parcels coming into the village
OUTBOUND: Final = "outbound"  # 上行: parcels (farm produce) leaving it
# Parcel volume counts each parcel once at the end of its last mile: signed for, picked up from the
# station, or collected for sending out (arrived_at_station precedes picked_up for the same parcel).
VOLUME_TYPES: Final = frozenset({DELIVERED, PICKED_UP, COLLECTED})
DIRECTION: Final = {ARRIVED_AT_STATION: INBOUND, DELIVERED: INBOUND, PICKED_UP: INBOUND, COLLECTED: OUTBOUND}

CooperationModel = Literal[
    "postal_express",  # 邮快合作
    "transport_express",  # 交快合作
    "express_express",  # 快快合作
    "own_station",  # 驻村设点
    "express_commerce",  # 快商合作
    "supply_coop",  # 快销合作
    "other",  # 新业态 / other
]
COOPERATION_MODELS: Final[tuple[str, ...]] = typing.get_args(CooperationModel)

MAX_FUTURE: Final = timedelta(minutes=5)


def direction_counts(by_type: dict[str, int]) -> dict[str, int]:
    """Inbound and outbound counts from counts per event type (every directional type is village-only)."""
    out = {INBOUND: 0, OUTBOUND: 0}
    for event_type, direction in DIRECTION.items():
        out[direction] += by_type.get(event_type, 0)
    return out


# -- the model --------------------------------------------------------------------------------------------------
# Patterns end in `$(?!\n)`: Python's `$` also matches before a final newline; the lookahead refuses it in both
# Python's and ECMA-262's dialects, so the OpenAPI document says exactly what is checked. `invalid` is the message
# of a value the pattern refuses.


def _text(max_length: int, description: str = "") -> Any:
    return Meta(
        min_length=1,
        max_length=max_length,
        pattern=r"^[^\x00-\x1f\x7f]*$(?!\n)",
        description=description,
        extra={"invalid": "must not contain control characters"},
    )


EventId = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9._:-]{1,128}$(?!\n)",
        description="Unique per carrier: (carrier, event_id) identifies an event; a repeat is counted once.",
        extra={"invalid": "must be 1-128 characters of A-Z a-z 0-9 . _ : -"},
    ),
]
CarrierName = Annotated[
    str,
    Meta(
        pattern=r"^[a-z0-9_-]{2,32}$(?!\n)",
        description="Must be the carrier the token belongs to.",
        extra={"invalid": "must be 2-32 characters of a-z 0-9 _ -"},
    ),
]
LocationCode = Annotated[
    str,
    Meta(
        pattern=r"^([0-9]{9}|[0-9]{12})$(?!\n)",
        description="Registry division code: 9-digit township or 12-digit village; "
        + ", ".join(sorted(VILLAGE_ONLY_TYPES))
        + " need a village.",
        extra={"invalid": "must be a 9-digit township or 12-digit village division code"},
    ),
]
OccurredAt = Annotated[
    datetime,
    Meta(
        tz=True,
        description="RFC 3339 with an explicit offset (Z or +08:00; -00:00, 'offset unknown', is refused); at "
        "most 5 minutes in the future.",
        examples=["2024-05-01T08:30:00+08:00"],
    ),
]


class ScanEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One last-mile scan event (contract v1). Optional fields may be omitted or null."""

    event_id: EventId
    carrier: CarrierName
    waybill: Annotated[str, _text(64)]
    event_type: EventType
    location_code: LocationCode
    occurred_at: OccurredAt
    station_id: Annotated[str, _text(64)] | None = None
    cooperation_model: CooperationModel | None = None
    reason: Annotated[str, _text(200, f"Required for {DELIVERY_FAILED}.")] | None = None

    @property
    def occurred_ms(self) -> int:
        return int(self.occurred_at.timestamp() * 1000)

    @property
    def is_village(self) -> bool:
        return len(self.location_code) == 12

    @property
    def reaches(self) -> bool:
        """True when this event, at an administrative village, counts that village as reached."""
        return self.event_type in REACH_TYPES and self.is_village

    def to_json(self) -> dict[str, Any]:
        """The JSON form published to the topic; optional fields only when present."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


class Batch(msgspec.Struct, forbid_unknown_fields=True):
    """What ``POST /v1/scans`` takes, and what a scan-topic record holds (with the time ingest received it)."""

    events: Annotated[list[ScanEvent], Meta(min_length=1)]
    received_at: str | None = None


FIELDS: Final = ScanEvent.__struct_fields__
_INFO: Final = {f.name: f for f in msgspec.structs.fields(ScanEvent)}
_UNKNOWN_OFFSET: Final = b'-00:00"'


# -- checking ----------------------------------------------------------------------------------------------------


def rules(event: ScanEvent, *, now: datetime, carrier: str | None = None) -> list[str]:
    """What the model cannot say: the token's carrier, village-only types, a failed delivery's reason, the time."""
    errors: list[str] = []
    if carrier is not None and event.carrier != carrier:
        errors.append(f"{CARRIER}: {event.carrier!r} is not the carrier this token belongs to ({carrier!r})")
    if event.event_type in VILLAGE_ONLY_TYPES and len(event.location_code) != 12:
        errors.append(f"{LOCATION_CODE}: {event.event_type} needs a 12-digit village code")
    if event.event_type == DELIVERY_FAILED and event.reason is None:
        errors.append(f"{REASON}: required for {DELIVERY_FAILED}")
    try:
        moment = event.occurred_at.astimezone(UTC)  # 0001-01-01T00:00:00+08:00 is in year 0 in UTC
    except OverflowError:
        errors.append(f"{OCCURRED_AT}: {format_time_raw(event.occurred_at)} is before 0001-01-01T00:00:00Z")
    else:
        if moment - now > MAX_FUTURE:
            errors.append(f"{OCCURRED_AT}: {format_time_raw(event.occurred_at)} is more than 5 minutes in the future")
    return errors


def validate(raw: Any, *, now: datetime, carrier: str | None = None) -> ScanEvent | list[str]:
    """The event, or every rule it breaks (each message starts with the field it is about).

    ``carrier`` is the carrier the request authenticated as; when given, the event must name it.
    """
    if not isinstance(raw, dict):
        return [f"event: must be a JSON object, not {_json_type(raw)}"]
    errors = [f"{name}: unknown field" for name in raw if name not in _INFO]
    for name, info in _INFO.items():
        value = raw.get(name)
        if value is None:
            if info.required:
                errors.append(f"{name}: required")
            continue
        problem = _field_problem(name, value, info.type)
        if problem is not None:
            errors.append(f"{name}: {problem}")
    if errors:
        return errors
    event = msgspec.convert(raw, ScanEvent)
    return rules(event, now=now, carrier=carrier) or event


def decode_batch(body: bytes) -> Batch | None:
    """A batch whose every event is well formed, decoded in one compiled pass; None when any is not (then
    :func:`validate` each, to learn which and why: each error message names its field)."""
    if _UNKNOWN_OFFSET in body:  # a time with offset -00:00, which msgspec reads as UTC: checked event by event
        return None
    try:
        return msgspec.json.decode(body, type=Batch)
    except msgspec.DecodeError:
        return None


def _field_problem(name: str, value: Any, type_: Any) -> str | None:
    """What is wrong with one field's value, in the words of its metadata; None when the model takes it."""
    if name == OCCURRED_AT:
        return _time_problem(value)
    try:
        msgspec.convert(value, type_, strict=True)
    except msgspec.ValidationError:
        pass
    else:
        return None
    if not isinstance(value, str):
        return f"must be a string, not {_json_type(value)}"
    choices = _choices(type_)
    if choices:
        return f"{value!r} is not one of {', '.join(choices)}"
    meta = _meta(type_)
    if (
        meta.min_length is not None
        and meta.max_length is not None
        and not meta.min_length <= len(value) <= meta.max_length
    ):
        return f"must be {meta.min_length}-{meta.max_length} characters, got {len(value)}"
    return str((meta.extra or {}).get("invalid", "is not valid"))


_RFC3339_SHAPE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def _time_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_json_type(value)}"
    shape = _RFC3339_SHAPE.fullmatch(value)
    if shape is None:
        return f"{value!r} is not an RFC 3339 date-time such as 2024-05-01T08:30:00+08:00"
    if shape.group(1) is None:
        return "needs an explicit UTC offset (Z or +08:00); local times are ambiguous"
    if shape.group(1) == "-00:00":
        return "offset -00:00 means the offset is unknown (RFC 3339); send the real offset"
    try:
        msgspec.convert(value, OccurredAt)
    except msgspec.ValidationError:
        return f"{value!r} is not a valid date-time"
    return None


def _meta(type_: Any) -> Meta:
    for arg in typing.get_args(type_):
        if isinstance(arg, Meta):
            return arg
        if typing.get_origin(arg) is Annotated:
            return _meta(arg)
    return Meta()


def _choices(type_: Any) -> tuple[str, ...]:
    if typing.get_origin(type_) is Literal:
        return typing.get_args(type_)
    return next((_choices(a) for a in typing.get_args(type_) if typing.get_origin(a) is Literal), ())


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return "a string"


# -- times and the schema ----------------------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision, the form every response uses."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_time_raw(moment: datetime) -> str:
    """A time as it was sent (its own offset), for messages about it."""
    return moment.isoformat()


def format_ms(ms: int) -> str:
    return format_time(datetime.fromtimestamp(ms / 1000, UTC))


def json_schema(max_events: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON Schema of a ``POST /v1/scans`` body, and the component schemas it refers to (``#/components/schemas``)."""
    (batch,), components = msgspec.json.schema_components([Batch], ref_template="#/components/schemas/{name}")
    body = components.pop("Batch")
    body["properties"]["events"]["maxItems"] = max_events
    del body["properties"]["received_at"]  # set by ingest on the topic, never by a carrier
    del batch
    return body, components
