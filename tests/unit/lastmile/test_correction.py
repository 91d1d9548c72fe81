"""The correction contract: what a carrier sends to withdraw an event, and the fingerprint that ties it to the event
accepted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from lastmile import correction, scan

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def event(**over: Any) -> dict[str, Any]:
    return {
        "event_id": "sf-1",
        "carrier": "sf",
        "waybill": "SF1",
        "event_type": "delivered",
        "location_code": "140322100201",
        "occurred_at": "2024-05-01T08:00:00+08:00",
        **over,
    }


def test_a_well_formed_correction_decodes_in_one_pass_and_by_hand_alike() -> None:
    body = {"corrections": [{"event": event(), "reason": "wrong village", "replacement": event(event_id="sf-2")}]}
    batch = correction.decode_batch(orjson.dumps(body))
    assert batch is not None
    assert correction.validate(body["corrections"][0], now=NOW, carrier="sf") == batch.corrections[0]
    assert correction.rules(batch.corrections[0], now=NOW, carrier="sf") == []


def test_each_problem_names_the_path_of_its_field() -> None:
    errors = correction.validate({"event": event(waybill=""), "reason": "", "why": 1}, now=NOW, carrier="sf")
    assert isinstance(errors, list)
    assert "why: unknown field" in errors
    assert any(e.startswith("event.waybill:") for e in errors)
    assert any(e.startswith("reason:") for e in errors)
    assert correction.validate({"reason": "x"}, now=NOW) == [
        "event: required (the event withdrawn, as it was accepted)"
    ]


def test_a_replacement_is_a_new_event_of_the_same_carrier() -> None:
    same_id = correction.validate({"event": event(), "reason": "x", "replacement": event()}, now=NOW)
    assert same_id == ["replacement.event_id: a replacement needs a new event_id"]
    other = correction.validate(
        {"event": event(), "reason": "x", "replacement": event(event_id="zto-1", carrier="zto")}, now=NOW, carrier="sf"
    )
    assert isinstance(other, list) and any(e.startswith("replacement.carrier:") for e in other)


def test_the_fingerprint_is_of_what_counted_and_of_the_instant_not_its_spelling() -> None:
    def fp(**over: Any) -> bytes:
        parsed = scan.validate(event(**over), now=NOW)
        assert isinstance(parsed, scan.ScanEvent)
        return correction.fingerprint(parsed)

    assert fp() == fp(occurred_at="2024-05-01T00:00:00Z") == fp(waybill="OTHER")
    for changed in ({"occurred_at": "2024-05-01T09:00:00+08:00"}, {"event_type": "picked_up"}, {"station_id": "S"}):
        assert fp(**changed) != fp(), changed


def test_the_body_schema_caps_the_batch_and_hides_received_at() -> None:
    body, components = correction.json_schema(1000)
    assert body["properties"]["corrections"]["maxItems"] == 1000
    assert "received_at" not in body["properties"]
    assert {"Correction", "ScanEvent"} <= set(components)
    assert correction.decode_batch(b'{"corrections": []}') is None
