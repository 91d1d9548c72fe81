"""The scan event contract v1: every rule, each with a passing and a failing case."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lastmile import scan

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "sf-0001",
        "carrier": "sf",
        "waybill": "SF1234567890",
        "event_type": "delivered",
        "location_code": "140322205206",
        "occurred_at": "2024-05-01T08:30:00+08:00",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def errors(raw: Any, carrier: str | None = None) -> list[str]:
    result = scan.validate(raw, now=NOW, carrier=carrier)
    return result if isinstance(result, list) else []


def test_a_valid_event_parses_with_its_offset() -> None:
    result = scan.validate(event(), now=NOW, carrier="sf")
    assert isinstance(result, scan.ScanEvent)
    assert result.occurred_at == datetime(2024, 5, 1, 0, 30, tzinfo=UTC)
    assert result.occurred_ms == 1714523400000
    assert result.reaches
    # Published as sent, its offset kept (EPCIS keeps eventTimeZoneOffset too); it reads back to the same event.
    assert result.to_json()["occurred_at"] == "2024-05-01T08:30:00+08:00"
    assert scan.validate(result.to_json(), now=NOW, carrier="sf") == result


def test_a_well_formed_batch_decodes_in_one_pass_and_any_flaw_sends_it_event_by_event() -> None:
    good = orjson.dumps({"events": [event(), event(event_id="sf-0002")]})
    batch = scan.decode_batch(good)
    assert batch is not None and [e.event_id for e in batch.events] == ["sf-0001", "sf-0002"]
    assert batch.events[0] == scan.validate(event(), now=NOW)
    for flawed in (
        {"events": [event(), event(waybill="")]},
        {"events": [event(extra=1)]},
        {"events": []},
        {"events": [event(occurred_at="2024-05-01T08:30:00-00:00")]},  # msgspec would read it as UTC
        {"evnts": [event()]},
        [event()],
    ):
        assert scan.decode_batch(orjson.dumps(flawed)) is None, flawed
    assert scan.decode_batch(b"{not json") is None


def test_the_schema_comes_from_the_model() -> None:
    body, components = scan.json_schema(max_events=1000)
    assert body["properties"]["events"]["maxItems"] == 1000 and body["required"] == ["events"]
    schema = components["ScanEvent"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(scan.FIELDS)
    assert schema["required"] == ["event_id", "carrier", "waybill", "event_type", "location_code", "occurred_at"]
    assert sorted(schema["properties"]["event_type"]["enum"]) == sorted(scan.EVENT_TYPES)
    assert re.search(schema["properties"]["event_id"]["pattern"], "has space") is None
    assert re.search(schema["properties"]["waybill"]["pattern"], "ab\n") is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"event_id": ""}, "event_id: must be 1-128"),
        ({"event_id": "a" * 129}, "event_id: must be 1-128"),
        ({"event_id": "has space"}, "event_id: must be 1-128"),
        ({"event_id": "中文"}, "event_id: must be 1-128"),
        ({"event_id": ...}, "event_id: required"),
        ({"event_id": 17}, "event_id: must be a string, not a number"),
        ({"carrier": "S"}, "carrier: must be 2-32"),
        ({"carrier": "SF"}, "carrier: must be 2-32"),
        ({"carrier": "a" * 33}, "carrier: must be 2-32"),
        ({"waybill": ""}, "waybill: must be 1-64 characters, got 0"),
        ({"waybill": "x" * 65}, "waybill: must be 1-64 characters, got 65"),
        ({"waybill": "ab\ncd"}, "waybill: must not contain control characters"),
        ({"waybill": ...}, "waybill: required"),
        ({"event_type": "lost"}, "event_type: 'lost' is not one of"),
        ({"location_code": "14032220520"}, "location_code: must be a 9-digit township or 12-digit"),
        ({"location_code": "１４０３２２２０５２０６"}, "location_code: must be a 9-digit township or 12-digit"),
        ({"location_code": "140322"}, "location_code: must be a 9-digit"),
        ({"location_code": "140322205"}, "location_code: delivered needs a 12-digit village code"),
        ({"event_type": "arrived_at_station", "location_code": "140322205"}, "arrived_at_station needs a 12-digit"),
        ({"event_type": "picked_up", "location_code": "140322205"}, "picked_up needs a 12-digit"),
        ({"event_type": "collected", "location_code": "140322205"}, "collected needs a 12-digit"),
        ({"occurred_at": "2024-05-01T08:30:00"}, "occurred_at: needs an explicit UTC offset"),
        ({"occurred_at": "2024-05-01T08:30:00-00:00"}, "occurred_at: offset -00:00 means the offset is unknown"),
        ({"occurred_at": "2024-05-01"}, "occurred_at: '2024-05-01' is not an RFC 3339"),
        ({"occurred_at": "yesterday"}, "is not an RFC 3339"),
        ({"occurred_at": "2024-02-30T08:30:00+08:00"}, "is not a valid date-time"),
        ({"occurred_at": "2024-05-01T20:05:01+08:00"}, "more than 5 minutes in the future"),
        ({"station_id": ""}, "station_id: must be 1-64"),
        ({"station_id": "s" * 65}, "station_id: must be 1-64"),
        ({"cooperation_model": "postal"}, "cooperation_model: 'postal' is not one of"),
        ({"event_type": "delivery_failed", "location_code": "140322205"}, "reason: required for delivery_failed"),
        ({"reason": "r" * 201}, "reason: must be 1-200 characters, got 201"),
        ({"extra": 1}, "extra: unknown field"),
    ],
)
def test_each_rule_rejects_with_a_message_naming_the_field(changes: dict[str, Any], expected: str) -> None:
    found = errors(event(**changes), carrier="sf")
    assert any(expected in e for e in found), found


@pytest.mark.parametrize(
    "changes",
    [
        {"event_id": "A.b_c:d-9"},
        {"event_id": "x" * 128},
        {"carrier": "zto-express_2"},
        {"waybill": "运单-1"},
        {"occurred_at": "2024-05-01T08:30:00Z"},
        {"occurred_at": "2024-05-01t00:30:00.123456789z"},
        {"occurred_at": "2024-05-01 08:30:00.5+08:00"},
        {"occurred_at": "2024-05-01T20:04:59+08:00"},  # 4 min 59 s ahead: within the allowance
        {"occurred_at": "2019-01-01T00:00:00-05:00"},  # late events are fine
        {"event_type": "arrived_at_hub", "location_code": "140322205"},
        {"event_type": "out_for_delivery", "location_code": "140322205206"},
        {"event_type": "delivery_failed", "location_code": "140322205", "reason": "recipient away"},
        {"station_id": "YX-DL-01", "cooperation_model": "postal_express"},
        {"station_id": None, "cooperation_model": None, "reason": None},
    ],
)
def test_valid_variants_are_accepted(changes: dict[str, Any]) -> None:
    assert errors(event(**changes), carrier=changes.get("carrier", "sf")) == []


def test_the_token_carrier_must_match() -> None:
    assert errors(event(carrier="yto"), carrier="sf") == [
        "carrier: 'yto' is not the carrier this token belongs to ('sf')"
    ]
    assert errors(event(carrier="yto")) == []  # the worker validates without a token


def test_every_error_is_reported_at_once() -> None:
    found = errors({"event_id": "", "carrier": 3, "bogus": True})
    fields = {e.split(":")[0] for e in found}
    assert fields == {"bogus", "event_id", "carrier", "waybill", "event_type", "location_code", "occurred_at"}


@pytest.mark.parametrize("raw", [None, [], "event", 3, True])
def test_a_non_object_is_rejected(raw: Any) -> None:
    assert errors(raw)[0].startswith("event: must be a JSON object")


def test_reach_and_direction() -> None:
    def parsed(**changes: Any) -> scan.ScanEvent:
        result = scan.validate(event(**changes), now=NOW)
        assert isinstance(result, scan.ScanEvent)
        return result

    assert {t for t in scan.EVENT_TYPES if parsed(event_type=t, reason="x").reaches} == {
        "arrived_at_station",
        "delivered",
        "picked_up",
        "collected",
    }
    assert not parsed(event_type="arrived_at_hub", location_code="140322205").reaches
    assert scan.DIRECTION == {
        "arrived_at_station": "inbound",
        "delivered": "inbound",
        "picked_up": "inbound",
        "collected": "outbound",
    }


@given(st.dictionaries(st.text(max_size=12), st.none() | st.booleans() | st.integers() | st.text(max_size=40)))
def test_arbitrary_objects_never_raise(raw: dict[str, Any]) -> None:
    result = scan.validate(raw, now=NOW, carrier="sf")
    assert isinstance(result, scan.ScanEvent | list)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2024, 5, 1)), st.integers(-14 * 60, 14 * 60))
def test_any_offset_round_trips_to_the_same_instant(moment: datetime, offset_minutes: int) -> None:
    from datetime import timezone

    local = moment.replace(tzinfo=UTC).astimezone(timezone(timedelta(minutes=offset_minutes)))
    text = local.isoformat()
    if text.endswith("-00:00"):
        text = text[:-6] + "+00:00"
    result = scan.validate(event(occurred_at=text), now=NOW)
    assert isinstance(result, scan.ScanEvent), result
    assert result.occurred_at == moment.replace(tzinfo=UTC)


def test_direction_counts_are_sums_of_the_type_counts() -> None:
    by_type = {"arrived_at_station": 2, "delivered": 3, "picked_up": 4, "collected": 5, "out_for_delivery": 7}
    assert scan.direction_counts(by_type) == {"inbound": 9, "outbound": 5}
    assert scan.direction_counts({}) == {"inbound": 0, "outbound": 0}
