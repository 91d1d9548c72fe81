"""The correction contract: a carrier withdraws one of its accepted scan events, optionally replacing it. Pure; no I/O.

A withdrawal repeats the event as it was accepted (as EPCIS 2.0's ``errorDeclaration`` does), so that it routes to
the original's partition and takes out exactly what was counted. The design is on docs/corrections.md.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from lastmile import names, scan

CORRECTIONS: Final = "corrections"
EVENT: Final = "event"
REASON: Final = "reason"
REPLACEMENT: Final = "replacement"
_FIELDS: Final = (EVENT, REASON, REPLACEMENT)
FINGERPRINT_BYTES: Final = 8
# 120 bits: the odds that two of a billion events (a national window) share an identity are below 10^-18.
IDENTITY_BYTES: Final = 15

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


class Batch(msgspec.Struct, forbid_unknown_fields=True):
    """What ``POST /v1/scans/corrections`` takes, and what a scan-topic record of corrections holds (with the time
    ingest received it)."""

    corrections: Annotated[list[Correction], Meta(min_length=1)]
    received_at: str | None = None


def decode_batch(body: bytes) -> Batch | None:
    """A batch whose every correction is well formed, in one pass; None when any is not (then :func:`validate` each)."""
    try:
        return msgspec.json.decode(body, type=Batch)
    except msgspec.DecodeError:
        return None


def validate(raw: Any, *, now: datetime, carrier: str | None = None) -> Correction | list[str]:
    """The correction, or every rule it breaks, each message starting with the path of its field."""
    if not isinstance(raw, dict):
        return ["correction: must be a JSON object"]
    errors = [f"{name}: unknown field" for name in raw if name not in _FIELDS]
    for name in (EVENT, REPLACEMENT):
        value = raw.get(name)
        if value is None:
            if name == EVENT:
                errors.append(f"{EVENT}: required (the event withdrawn, as it was accepted)")
            continue
        result = scan.validate(value, now=now, carrier=carrier)
        if isinstance(result, list):
            errors += [f"{name}.{e}" for e in result]
    reason = raw.get(REASON)
    if not isinstance(reason, str) or not 1 <= len(reason) <= 200 or any(ord(c) < 32 or ord(c) == 127 for c in reason):
        errors.append(f"{REASON}: required, 1-200 characters without control characters")
    if errors:
        return errors
    correction = msgspec.convert(raw, Correction)
    return rules(correction, now=now, carrier=carrier) or correction


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


def json_schema(max_items: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON Schema of a ``POST /v1/scans/corrections`` body, and the component schemas it refers to."""
    _, components = msgspec.json.schema_components([Batch], ref_template="#/components/schemas/{name}")
    body = components.pop("Batch")
    body["properties"][CORRECTIONS]["maxItems"] = max_items
    del body["properties"]["received_at"]  # set by ingest on the topic, never by a carrier
    return body, components


def identity(carrier: str, event_id: str) -> bytes:
    """An event's identity, (carrier, event_id) hashed: what repeats are dropped by and withdrawals name."""
    return hashlib.blake2b(f"{carrier}\x1f{event_id}".encode(), digest_size=IDENTITY_BYTES).digest()


def b64(digest: bytes) -> str:
    """A digest as the ledger's field names hold it."""
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def withdrawn_field(event: scan.ScanEvent) -> str:
    """The field of its location's ledger (names.LEDGER) that holds the event's withdrawal, once there is one."""
    return names.ledger.WITHDRAWN + b64(identity(event.carrier, event.event_id))
