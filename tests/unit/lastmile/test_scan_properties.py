"""Properties of the scan event contract (lastmile/scan.py validate()), over generated inputs.

validate() never raises, whatever JSON it is given; it answers a ScanEvent or a non-empty list of messages
each starting with the field it is about; a valid event survives its canonical JSON form (what ingest
publishes and the worker validates again); and breaking any one field is reported against that field.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from lastmile import scan

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REQUIRED = (scan.EVENT_ID, scan.CARRIER, scan.WAYBILL, scan.EVENT_TYPE, scan.LOCATION_CODE, scan.OCCURRED_AT)
OPTIONAL = (scan.STATION_ID, scan.COOPERATION_MODEL, scan.REASON)

# -- any JSON ------------------------------------------------------------------------------------------

# Text as orjson decodes it: any code point but lone surrogates (orjson refuses those in input).
json_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(json_text, inner, max_size=5),
    max_leaves=20,
)
# Objects with the contract's keys (and a few others) and values of any JSON type, plausible ones too.
plausible = {
    scan.EVENT_ID: st.text(string.ascii_letters + string.digits + "._:-/", min_size=0, max_size=130),
    scan.CARRIER: st.sampled_from(["sf", "yto", "SF", "s", "x" * 33, "sf!"]),
    scan.EVENT_TYPE: st.sampled_from([*scan.EVENT_TYPES, "Delivered", ""]),
    scan.LOCATION_CODE: st.from_regex(r"[0-9０-９]{8,13}", fullmatch=True),
    scan.OCCURRED_AT: st.sampled_from(
        [
            "2024-05-01T08:30:00+08:00",
            "2024-05-01T08:30:00",
            "2024-05-01T08:30:00-00:00",
            "0001-01-01T00:00:00+08:00",
            "2024-02-30T00:00:00Z",
            "2024-05-01T08:30:00+24:00",
            "9999-12-31T23:59:59Z",
            "２０２４-05-01T08:30:00Z",
        ]
    ),
    scan.COOPERATION_MODEL: st.sampled_from([*scan.COOPERATION_MODELS, "unknown"]),
}
contract_like = st.fixed_dictionaries(
    {},
    optional={name: plausible.get(name, json_scalars) | json_values for name in (*scan.FIELDS, "extra", "")},
)


def check_answer(raw: Any, result: scan.ScanEvent | list[str]) -> None:
    """A ScanEvent, or a non-empty list of messages each naming a field (or the event as a whole)."""
    if isinstance(result, scan.ScanEvent):
        assert isinstance(raw, dict)
        return
    assert isinstance(result, list) and result
    named = {*scan.FIELDS, "event", *(raw if isinstance(raw, dict) else ())}
    for message in result:
        assert isinstance(message, str)
        # A field's name may itself hold ": " (any JSON key can be sent): the message starts with one of the names.
        assert any(message.startswith(f"{name}: ") and len(message) > len(name) + 2 for name in named), message


@FAST
@given(json_values, st.sampled_from([None, "sf", "yto"]))
def test_any_json_value_gets_an_event_or_field_errors(raw: Any, carrier: str | None) -> None:
    check_answer(raw, scan.validate(raw, now=NOW, carrier=carrier))


@FAST
@given(contract_like, st.sampled_from([None, "sf"]))
def test_objects_with_the_contract_keys_get_an_event_or_field_errors(raw: dict[str, Any], carrier: str | None) -> None:
    result = scan.validate(raw, now=NOW, carrier=carrier)
    check_answer(raw, result)
    if isinstance(result, scan.ScanEvent):  # whatever it accepted, it can publish
        orjson.dumps(result.to_json())
        assert carrier is None or result.carrier == carrier


# -- valid events ---------------------------------------------------------------------------------------

plain_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=64)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).filter(lambda m: m != 0) | st.just(0)


event_ids = st.text(string.ascii_letters + string.digits + "._:-", min_size=1, max_size=128)
carriers = st.text(string.ascii_lowercase + string.digits + "_-", min_size=2, max_size=32)


@st.composite
def valid_events(draw: st.DrawFn, *, whole_ms: bool = True) -> dict[str, Any]:
    event_type = draw(st.sampled_from(scan.EVENT_TYPES))
    village = event_type in scan.VILLAGE_ONLY_TYPES or draw(st.booleans())
    moment = draw(
        st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2024, 5, 1, 12, 4), timezones=st.just(UTC))
    )
    if whole_ms:
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    minutes = draw(offsets)
    local = moment.astimezone(timezone(timedelta(minutes=minutes)))
    text = local.isoformat().replace("+00:00", draw(st.sampled_from(["Z", "+00:00"])))
    raw: dict[str, Any] = {
        scan.EVENT_ID: draw(event_ids),
        scan.CARRIER: draw(carriers),
        scan.WAYBILL: draw(plain_text),
        scan.EVENT_TYPE: event_type,
        scan.LOCATION_CODE: draw(st.from_regex(r"[0-9]{12}" if village else r"[0-9]{9}", fullmatch=True)),
        scan.OCCURRED_AT: text,
    }
    if draw(st.booleans()):
        raw[scan.STATION_ID] = draw(plain_text)
    if draw(st.booleans()):
        raw[scan.COOPERATION_MODEL] = draw(st.sampled_from(scan.COOPERATION_MODELS))
    if event_type == scan.DELIVERY_FAILED or draw(st.booleans()):
        raw[scan.REASON] = draw(st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=200))
    for name in OPTIONAL:
        if name not in raw and draw(st.booleans()):
            raw[name] = None  # optional fields may be null
    return raw


def parse(raw: Any, carrier: str | None = None) -> scan.ScanEvent:
    result = scan.validate(raw, now=NOW, carrier=carrier)
    assert isinstance(result, scan.ScanEvent), (raw, result)
    return result


@FAST
@given(valid_events())
def test_a_valid_event_round_trips_through_its_canonical_json(raw: dict[str, Any]) -> None:
    event = parse(raw, carrier=raw[scan.CARRIER])
    published = orjson.loads(orjson.dumps(event.to_json()))  # exactly what the worker reads
    assert parse(published) == event
    assert parse(published).to_json() == event.to_json()


@FAST
@given(valid_events(whole_ms=False))
def test_the_canonical_json_is_a_fixpoint_at_any_precision(raw: dict[str, Any]) -> None:
    once = parse(raw).to_json()
    assert parse(once).to_json() == once
    assert abs(parse(once).occurred_at - parse(raw).occurred_at) < timedelta(milliseconds=1)


# -- one broken field is reported against that field ------------------------------------------------------

not_a_string = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.lists(st.integers())
with_control = st.builds(
    lambda a, c, b: a + c + b, plain_text, st.sampled_from(["\x00", "\n", "\x1f", "\x7f"]), st.text(max_size=3)
)
BROKEN: dict[str, st.SearchStrategy[Any]] = {
    scan.EVENT_ID: st.just("")
    | st.text(min_size=129, max_size=140, alphabet="ab")
    | st.from_regex(r"[a-z]{0,5}[ /#é\u0661][a-z]{0,5}", fullmatch=True)
    | not_a_string.filter(lambda v: v is not None),
    scan.CARRIER: st.sampled_from(["", "s", "SF", "s f", "x" * 33, "sf\n"]) | st.integers(),
    scan.WAYBILL: st.just("") | st.text(alphabet="w", min_size=65, max_size=70) | with_control | st.integers(),
    scan.EVENT_TYPE: st.text(max_size=20).filter(lambda t: t not in scan.EVENT_TYPES) | st.booleans(),
    scan.LOCATION_CODE: st.from_regex(
        r"[0-9]{0,8}|[0-9]{10,11}|[0-9]{13,15}|[0-9]{8}[a-z ]|[０-９]{12}|[٠-٩]{9}", fullmatch=True
    )
    | st.integers(),
    scan.OCCURRED_AT: st.sampled_from(
        [
            "",
            "yesterday",
            "2024-05-01",
            "2024-05-01T08:30:00",
            "2024-05-01T08:30:00-00:00",
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-05-01T25:00:00Z",
            "2024-05-01T08:30:00+24:00",
            "0001-01-01T00:00:00+00:01",
            "2024-05-01T12:06:00Z",
            "9999-12-31T23:59:59Z",
            "２０２４-05-01T08:30:00Z",
            "2024-05-01T08:30:00+0800",
        ]
    )
    | st.integers(),
    scan.STATION_ID: st.just("") | st.text(alphabet="s", min_size=65, max_size=70) | with_control | st.booleans(),
    scan.COOPERATION_MODEL: st.text(max_size=20).filter(lambda t: t not in scan.COOPERATION_MODELS) | st.integers(),
    scan.REASON: st.just("") | st.text(alphabet="r", min_size=201, max_size=210) | with_control | st.floats(),
}


A_VALID_EVENT = {
    "event_id": "sf-1",
    "carrier": "sf",
    "waybill": "W1",
    "event_type": "delivered",
    "location_code": "140322205206",
    "occurred_at": "2024-05-01T08:30:00+08:00",
}
one_broken_field = st.one_of([st.tuples(st.just(name), values) for name, values in BROKEN.items()])


@FAST
@given(valid_events(), one_broken_field)
@example(A_VALID_EVENT, (scan.OCCURRED_AT, "0001-01-01T00:00:00+08:00"))  # year 0 in UTC: to_json cannot write it
@example(A_VALID_EVENT, (scan.OCCURRED_AT, "２０２４-05-01T08:30:00Z"))  # RFC 3339 digits are ASCII
@example(A_VALID_EVENT, (scan.OCCURRED_AT, "٢٠٢٤-05-01T08:30:00Z"))
def test_breaking_one_field_is_an_error_naming_that_field(raw: dict[str, Any], broken_field: tuple[str, Any]) -> None:
    name, value = broken_field
    broken = {**raw, name: value}
    result = scan.validate(broken, now=NOW)
    assert isinstance(result, list), (broken, result)
    check_answer(broken, result)
    assert any(m.startswith(name + ": ") for m in result), (name, result)


@FAST
@given(valid_events(), st.sampled_from(REQUIRED))
def test_a_missing_or_null_required_field_is_named(raw: dict[str, Any], name: str) -> None:
    for broken in ({k: v for k, v in raw.items() if k != name}, {**raw, name: None}):
        result = scan.validate(broken, now=NOW)
        assert isinstance(result, list) and f"{name}: required" in result, result


@FAST
@given(valid_events(), carriers)
def test_only_the_token_carrier_may_be_named(raw: dict[str, Any], token_carrier: str) -> None:
    assume(token_carrier != raw[scan.CARRIER])
    result = scan.validate(raw, now=NOW, carrier=token_carrier)
    assert isinstance(result, list) and [m.split(":")[0] for m in result] == [scan.CARRIER], result


@FAST
@given(valid_events(), json_text.filter(lambda k: k not in scan.FIELDS), json_values)
def test_an_unknown_field_is_named(raw: dict[str, Any], extra: str, value: Any) -> None:
    result = scan.validate({**raw, extra: value}, now=NOW)
    assert isinstance(result, list) and f"{extra}: unknown field" in result, result
