"""Header arithmetic (Accept, entity tags, HTTP dates) and the token bucket, on plain values."""

from __future__ import annotations

import pytest

from coverage_service.api import negotiation
from coverage_service.api.ratelimit import RateLimiter, retry_after
from coverage_service.readmodel import queries

JSON, CSV = "application/json", "text/csv"


@pytest.mark.parametrize(
    ("accept", "offered", "chosen"),
    [
        (None, [JSON, CSV], JSON),
        ("", [JSON, CSV], JSON),
        ("*/*", [JSON, CSV], JSON),
        ("text/csv", [JSON, CSV], CSV),
        ("text/csv", [JSON], None),
        ("text/csv, */*", [JSON, CSV], CSV),
        ("text/csv;q=0.5, application/json", [JSON, CSV], JSON),
        ("application/*;q=0.2, text/*;q=0.3", [JSON, CSV], CSV),
        ("text/csv;q=0, */*", [JSON, CSV], JSON),
        ("text/csv;q=0, */*;q=0.1", [CSV], None),
        ("text/csv;q=1.0", [JSON, CSV], CSV),
        ("text/csv;q=1.5, application/json;q=0.1", [JSON, CSV], JSON),  # q > 1 is malformed: skipped
        ("*/csv, application/json", [JSON, CSV], JSON),  # */subtype is not a media range
        ("text/csv;header=present;q=0.4, text/csv;q=0.9", [CSV], CSV),
        ("text/csv;header=present;q=0.4, text/csv;q=0.9, application/json;q=0.5", [JSON, CSV], JSON),
        ("garbage", [JSON, CSV], None),
    ],
)
def test_choose(accept: str | None, offered: list[str], chosen: str | None) -> None:
    assert negotiation.choose(accept, offered) == chosen


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"x,y", W/"abc"', True),
        ("*", True),
        ('"abcd"', False),
        ("abc", False),  # not quoted: not an entity tag
        ("", False),
    ],
)
def test_none_match_is_a_weak_comparison(header: str, matches: bool) -> None:
    assert negotiation.none_match(header, '"abc"') is matches


def test_http_dates() -> None:
    assert negotiation.http_date(1714523400999) == "Wed, 01 May 2024 00:30:00 GMT"
    assert negotiation.parse_http_date("Wed, 01 May 2024 00:30:00 GMT") == 1714523400
    assert negotiation.parse_http_date("Wednesday, 01-May-24 00:30:00 GMT") == 1714523400  # obsolete RFC 850
    assert negotiation.parse_http_date("yesterday") is None


def test_the_read_models_data_time_is_the_later_of_its_last_apply_and_registry_load() -> None:
    assert queries.data_time(None, "2024-05-01T00:30:00Z") == 1714523400000
    assert queries.data_time("1714523400001", "2024-05-01T00:30:00Z") == 1714523400001
    assert queries.data_time(5, "nonsense") == 5
    assert queries.data_time(None, None) is None


def test_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(per_second=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # buckets are per token
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 60
    assert [limiter.take("a") for _ in range(4)][-1] > 0  # refills up to the burst, no further
    assert retry_after(0.01) == "1" and retry_after(1.2) == "2"
    assert RateLimiter(per_second=0, burst=1).take("a") == 0.0  # 0: no limit
