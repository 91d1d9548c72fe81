"""The scan event contract, version 1: what a carrier may send and what it means. Pure; no I/O.

Both services call :func:`validate`: ingest before publishing, the worker again on every record it
reads (anything with write access to the topic can publish), so the rules live here only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

EVENT_ID: Final = "event_id"
CARRIER: Final = "carrier"
WAYBILL: Final = "waybill"
EVENT_TYPE: Final = "event_type"
LOCATION_CODE: Final = "location_code"
OCCURRED_AT: Final = "occurred_at"
STATION_ID: Final = "station_id"
COOPERATION_MODEL: Final = "cooperation_model"
REASON: Final = "reason"
FIELDS: Final = (
    EVENT_ID,
    CARRIER,
    WAYBILL,
    EVENT_TYPE,
    LOCATION_CODE,
    OCCURRED_AT,
    STATION_ID,
    COOPERATION_MODEL,
    REASON,
)

ARRIVED_AT_HUB: Final = "arrived_at_hub"
OUT_FOR_DELIVERY: Final = "out_for_delivery"
ARRIVED_AT_STATION: Final = "arrived_at_station"
DELIVERED: Final = "delivered"
PICKED_UP: Final = "picked_up"
DELIVERY_FAILED: Final = "delivery_failed"
COLLECTED: Final = "collected"
EVENT_TYPES: Final = (
    ARRIVED_AT_HUB,
    OUT_FOR_DELIVERY,
    ARRIVED_AT_STATION,
    DELIVERED,
    PICKED_UP,
    DELIVERY_FAILED,
    COLLECTED,
)
# An event of these types at a village means the last mile reached it.
REACH_TYPES: Final = frozenset({ARRIVED_AT_STATION, DELIVERED, PICKED_UP, COLLECTED})
VILLAGE_ONLY_TYPES: Final = REACH_TYPES
INBOUND: Final = "inbound"  # 下行: parcels coming into the village
OUTBOUND: Final = "outbound"  # 上行: parcels (farm produce) leaving it
# Parcel volume counts each parcel once at the end of its last mile: signed for, picked up from the
# station, or collected for sending out (arrived_at_station precedes picked_up for the same parcel).
VOLUME_TYPES: Final = frozenset({DELIVERED, PICKED_UP, COLLECTED})
DIRECTION: Final = {ARRIVED_AT_STATION: INBOUND, DELIVERED: INBOUND, PICKED_UP: INBOUND, COLLECTED: OUTBOUND}


def direction_counts(by_type: dict[str, int]) -> dict[str, int]:
    """Inbound and outbound counts from counts per event type (every directional type is village-only)."""
    out = {INBOUND: 0, OUTBOUND: 0}
    for event_type, direction in DIRECTION.items():
        out[direction] += by_type.get(event_type, 0)
    return out


COOPERATION_MODELS: Final = (
    "postal_express",  # 邮快合作
    "transport_express",  # 交快合作
    "express_express",  # 快快合作
    "own_station",  # 驻村设点
    "express_commerce",  # 快商合作
    "supply_coop",  # 快销合作
    "other",  # 新业态 / other
)

MAX_FUTURE: Final = timedelta(minutes=5)

_EVENT_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CARRIER_RE: Final = re.compile(r"[a-z0-9_-]{2,32}")
_CODE_RE: Final = re.compile(r"[0-9]{9}|[0-9]{12}")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
# ASCII digits only: ``\d`` would also take full-width or Arabic-Indic digits, which RFC 3339 does not allow.
_RFC3339_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))?",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class ScanEvent:
    event_id: str
    carrier: str
    waybill: str
    event_type: str
    location_code: str
    occurred_at: datetime  # timezone-aware
    station_id: str | None = None
    cooperation_model: str | None = None
    reason: str | None = None

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
        """The canonical JSON form published to the topic; optional fields only when present."""
        out: dict[str, Any] = {
            EVENT_ID: self.event_id,
            CARRIER: self.carrier,
            WAYBILL: self.waybill,
            EVENT_TYPE: self.event_type,
            LOCATION_CODE: self.location_code,
            OCCURRED_AT: format_time(self.occurred_at),
        }
        if self.station_id is not None:
            out[STATION_ID] = self.station_id
        if self.cooperation_model is not None:
            out[COOPERATION_MODEL] = self.cooperation_model
        if self.reason is not None:
            out[REASON] = self.reason
        return out


def validate(raw: Any, *, now: datetime, carrier: str | None = None) -> ScanEvent | list[str]:
    """The event, or every rule it breaks (each message starts with the field it is about).

    ``carrier`` is the carrier the request authenticated as; when given, the event must name it.
    """
    if not isinstance(raw, dict):
        return [f"event: must be a JSON object, not {_json_type(raw)}"]
    errors: list[str] = [f"{name}: unknown field" for name in raw if name not in FIELDS]

    event_id = _text(raw, EVENT_ID, errors, required=True)
    if event_id is not None and not _EVENT_ID_RE.fullmatch(event_id):
        errors.append(f"{EVENT_ID}: must be 1-128 characters of A-Z a-z 0-9 . _ : -")

    sender = _text(raw, CARRIER, errors, required=True)
    if sender is not None:
        if not _CARRIER_RE.fullmatch(sender):
            errors.append(f"{CARRIER}: must be 2-32 characters of a-z 0-9 _ -")
        elif carrier is not None and sender != carrier:
            errors.append(f"{CARRIER}: {sender!r} is not the carrier this token belongs to ({carrier!r})")

    waybill = _text(raw, WAYBILL, errors, required=True, max_len=64)

    event_type = _text(raw, EVENT_TYPE, errors, required=True)
    if event_type is not None and event_type not in EVENT_TYPES:
        errors.append(f"{EVENT_TYPE}: {event_type!r} is not one of {', '.join(EVENT_TYPES)}")
        event_type = None

    code = _text(raw, LOCATION_CODE, errors, required=True)
    if code is not None:
        if not _CODE_RE.fullmatch(code):
            errors.append(f"{LOCATION_CODE}: must be a 9-digit township or 12-digit village division code")
        elif event_type in VILLAGE_ONLY_TYPES and len(code) != 12:
            errors.append(f"{LOCATION_CODE}: {event_type} needs a 12-digit village code")

    occurred_at = None
    occurred_raw = _text(raw, OCCURRED_AT, errors, required=True)
    if occurred_raw is not None:
        occurred_at = _parse_time(occurred_raw, now, errors)

    station_id = _text(raw, STATION_ID, errors, max_len=64)
    model = _text(raw, COOPERATION_MODEL, errors)
    if model is not None and model not in COOPERATION_MODELS:
        errors.append(f"{COOPERATION_MODEL}: {model!r} is not one of {', '.join(COOPERATION_MODELS)}")
    reason = _text(raw, REASON, errors, max_len=200)
    if event_type == DELIVERY_FAILED and reason is None and REASON not in _present_errors(errors):
        errors.append(f"{REASON}: required for {DELIVERY_FAILED}")

    if errors:
        return errors
    assert event_id and sender and waybill and event_type and code and occurred_at  # guaranteed by no errors
    return ScanEvent(event_id, sender, waybill, event_type, code, occurred_at, station_id, model, reason)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision, the form every response uses."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_ms(ms: int) -> str:
    return format_time(datetime.fromtimestamp(ms / 1000, UTC))


def _present_errors(errors: list[str]) -> set[str]:
    return {e.split(":", 1)[0] for e in errors}


def _text(raw: dict[str, Any], name: str, errors: list[str], *, required: bool = False, max_len: int = 0) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            errors.append(f"{name}: required")
        return None
    if not isinstance(value, str):
        errors.append(f"{name}: must be a string, not {_json_type(value)}")
        return None
    if max_len:
        if not 1 <= len(value) <= max_len:
            errors.append(f"{name}: must be 1-{max_len} characters, got {len(value)}")
            return None
        if _CONTROL_RE.search(value):
            errors.append(f"{name}: must not contain control characters")
            return None
    return value


def _parse_time(text: str, now: datetime, errors: list[str]) -> datetime | None:
    m = _RFC3339_RE.fullmatch(text)
    if not m:
        errors.append(f"{OCCURRED_AT}: {text!r} is not an RFC 3339 date-time such as 2024-05-01T08:30:00+08:00")
        return None
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = m.groups()
    if not zulu and not sign:
        errors.append(f"{OCCURRED_AT}: needs an explicit UTC offset (Z or +08:00); local times are ambiguous")
        return None
    if sign == "-" and off_h == "00" and off_m == "00":
        errors.append(f"{OCCURRED_AT}: offset -00:00 means the offset is unknown (RFC 3339); send the real offset")
        return None
    try:
        offset = timedelta(0) if zulu else (1 if sign == "+" else -1) * timedelta(hours=int(off_h), minutes=int(off_m))
        micros = int((frac or "0").ljust(6, "0")[:6])
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tzinfo=timezone(offset)
        )
        moment.astimezone(UTC)  # 0001-01-01T00:00:00+08:00 is in year 0 in UTC: to_json could not write it
    except ValueError as exc:
        errors.append(f"{OCCURRED_AT}: {text!r} is not a valid date-time ({exc})")
        return None
    except OverflowError:
        errors.append(f"{OCCURRED_AT}: {text!r} is before 0001-01-01T00:00:00Z")
        return None
    if moment - now > MAX_FUTURE:
        errors.append(f"{OCCURRED_AT}: {text} is more than 5 minutes in the future")
        return None
    return moment


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


def json_schema() -> dict[str, Any]:
    """JSON Schema of one event, for the OpenAPI document (the checks above are the authority)."""
    text = {"type": "string"}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [EVENT_ID, CARRIER, WAYBILL, EVENT_TYPE, LOCATION_CODE, OCCURRED_AT],
        "properties": {
            EVENT_ID: {**text, "pattern": r"^[A-Za-z0-9._:-]{1,128}$", "description": "Unique per carrier."},
            CARRIER: {**text, "pattern": r"^[a-z0-9_-]{2,32}$", "description": "Must be the token's carrier."},
            WAYBILL: {**text, "minLength": 1, "maxLength": 64},
            EVENT_TYPE: {**text, "enum": list(EVENT_TYPES)},
            LOCATION_CODE: {
                **text,
                "pattern": r"^([0-9]{9}|[0-9]{12})$",
                "description": "Registry division code: 9-digit township or 12-digit village; "
                + ", ".join(sorted(VILLAGE_ONLY_TYPES))
                + " need a village.",
            },
            OCCURRED_AT: {
                **text,
                "format": "date-time",
                "description": "RFC 3339 with an explicit offset; at most 5 minutes in the future.",
                "examples": ["2024-05-01T08:30:00+08:00"],
            },
            STATION_ID: {**text, "minLength": 1, "maxLength": 64},
            COOPERATION_MODEL: {**text, "enum": list(COOPERATION_MODELS)},
            REASON: {**text, "minLength": 1, "maxLength": 200, "description": f"Required for {DELIVERY_FAILED}."},
        },
    }
