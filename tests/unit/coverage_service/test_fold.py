"""The fold's pure half: what one event changes, and how a topic record is decoded."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from coverage_service import fold
from lastmile import scan

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def parsed(**changes: Any) -> scan.ScanEvent:
    raw = {
        "event_id": "e1",
        "carrier": "sf",
        "waybill": "W1",
        "event_type": "delivered",
        "location_code": "140322205206",
        "occurred_at": "2024-05-01T08:00:00+08:00",
        **changes,
    }
    result = scan.validate(raw, now=NOW)
    assert isinstance(result, scan.ScanEvent), result
    return result


def test_a_delivery_counts_type_carrier_direction_and_reaches() -> None:
    e = fold.entry(parsed())
    assert e.digest == hashlib.blake2b(b"sf\x1fe1", digest_size=15).digest()  # the dedup identity
    assert e.reaches
    assert e.occurred_ms == 1714521600000
    assert set(e.counters) == {"type:delivered", "carrier:sf", "vol:2024"}
    assert e.dimensions == ("carrier:sf",)


def test_collected_is_outbound_and_the_model_is_a_dimension() -> None:
    e = fold.entry(parsed(event_type="collected", cooperation_model="transport_express"))
    assert set(e.counters) == {"type:collected", "carrier:sf", "model:transport_express", "vol:2024"}
    assert e.dimensions == ("carrier:sf", "model:transport_express")


def test_volume_is_counted_once_per_parcel_by_china_standard_time_year() -> None:
    # 2023-12-31T17:00Z is already 2024 in China.
    assert "vol:2024" in fold.entry(parsed(event_type="picked_up", occurred_at="2023-12-31T17:00:00Z")).counters
    assert "vol:2023" in fold.entry(parsed(event_type="delivered", occurred_at="2023-12-31T15:59:59Z")).counters
    for not_a_parcel_end in ("arrived_at_station", "out_for_delivery"):
        assert not any(c.startswith("vol:") for c in fold.entry(parsed(event_type=not_a_parcel_end)).counters)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)))
def test_the_volume_year_is_the_year_on_a_clock_in_beijing(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)  # the contract's times are to the ms
    expected = moment.astimezone(timezone(timedelta(hours=8))).year
    event = scan.ScanEvent("e1", "sf", "W1", "delivered", "140322205206", moment)  # any time, unlike validate()
    e = fold.entry(event)
    assert f"vol:{expected}" in e.counters


def test_the_station_goes_with_village_events_only() -> None:
    assert fold.entry(parsed(station_id="YX-01")).station_id == "YX-01"
    assert fold.entry(parsed()).station_id == ""
    hub = parsed(event_type="arrived_at_hub", location_code="140322205", station_id="HUB-1")
    assert fold.entry(hub).station_id == ""


def test_township_events_do_not_reach_and_have_no_direction() -> None:
    e = fold.entry(parsed(event_type="arrived_at_hub", location_code="140322205"))
    assert not e.reaches
    assert set(e.counters) == {"type:arrived_at_hub", "carrier:sf"}
    e = fold.entry(parsed(event_type="out_for_delivery"))
    assert not e.reaches


def test_decode_a_batch_keeps_the_valid_and_rejects_the_rest_by_index() -> None:
    good = parsed().to_json()
    value = orjson.dumps({"received_at": "2024-05-01T00:00:00Z", "events": [good, {"event_id": "x"}, good]})
    decoded = fold.decode_record(value, now=NOW)
    assert len(decoded.events) == 2
    assert [r.index for r in decoded.rejected] == [1]
    assert "carrier: required" in decoded.rejected[0].reason


def test_decode_a_single_event_record() -> None:
    decoded = fold.decode_record(orjson.dumps(parsed().to_json()), now=NOW)
    assert [e.event_id for e in decoded.events] == ["e1"]
    assert decoded.rejected == []


def test_undecodable_records_are_rejected_whole() -> None:
    for value, reason in [
        (None, "record has no value"),
        (b"\xff\xfe not json", "not JSON"),
        (b'{"events": {"a": 1}}', "'events' must be an array"),
    ]:
        decoded = fold.decode_record(value, now=NOW)
        assert decoded.events == []
        assert decoded.rejected[0].index is None
        assert reason in decoded.rejected[0].reason
