"""The correction contract: a carrier withdraws one of its accepted scan events, optionally replacing it. Pure; no I/O.

A withdrawal repeats the event as it was accepted (as EPCIS 2.0's ``errorDeclaration`` does), so that it routes to
the original's partition and takes out exactly what was counted. The design is on docs/corrections.md.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from lastmile import scan

EVENT: Final = "event"
REASON: Final = "reason"
REPLACEMENT: Final = "replacement"
FINGERPRINT_BYTES: Final = 8

Reason = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]*$(?!\n)",
        description="Why the event is withdrawn (kept in the corrections list regulators read).",
        extra={"invalid": "must not contain control characters"},
    ),
]


class Correction(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Withdraw ``event``, as it was accepted, for ``reason``; ``replacement`` (a new event, new id) replaces it."""

    event: scan.ScanEvent
    reason: Reason
    replacement: scan.ScanEvent | None = None


def rules(correction: Correction, *, now: datetime, carrier: str | None = None) -> list[str]:
    """What the model cannot say; each message starts with the path of its field (``event.carrier: ...``)."""
    errors = [f"{EVENT}.{e}" for e in scan.rules(correction.event, now=now, carrier=carrier)]
    replacement = correction.replacement
    if replacement is not None:
        errors += [f"{REPLACEMENT}.{e}" for e in scan.rules(replacement, now=now, carrier=carrier)]
        if replacement.carrier != correction.event.carrier:
            errors.append(f"{REPLACEMENT}.{scan.CARRIER}: must be the withdrawn event's carrier")
        if replacement.event_id == correction.event.event_id:
            errors.append(f"{REPLACEMENT}.{scan.EVENT_ID}: a replacement needs a new event_id")
    return errors


def fingerprint(event: scan.ScanEvent) -> bytes:
    """What of an event counted, hashed: a withdrawal must repeat it exactly (the time as an instant, so that
    ``+08:00`` and ``Z`` forms of one moment agree). Waybill and reason count in no figure and are left out."""
    counted = (
        event.carrier,
        event.event_id,
        event.event_type,
        event.location_code,
        event.occurred_ms,
        event.station_id or "",
        event.cooperation_model or "",
    )
    return hashlib.blake2b(msgspec.msgpack.encode(counted), digest_size=FINGERPRINT_BYTES).digest()
