"""Scan events for the write path's tests: valid by the v1 contract, at a fixed time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lastmile import scan

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def make_event(i: int, carrier: str, event_type: str, code: str, hours: int, now: datetime = NOW) -> scan.ScanEvent:
    """Event ``e<i>`` of ``carrier`` at ``code``, ``hours`` before ``now`` (:data:`NOW`)."""
    result = scan.validate(
        {
            "event_id": f"e{i}",
            "carrier": carrier,
            "waybill": f"W{i}",
            "event_type": event_type,
            "location_code": code,
            "occurred_at": (now - timedelta(hours=hours)).isoformat(),
            **({"reason": "away"} if event_type == "delivery_failed" else {}),
        },
        now=now,
    )
    assert isinstance(result, scan.ScanEvent), result
    return result
