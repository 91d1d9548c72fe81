"""HTTP header arithmetic for representations (RFC 9110): Accept, entity tags, HTTP dates. Pure; no I/O.
(The date conversions are remembered: responses carry the same few times over and over.)

Kept apart from :mod:`coverage_service.api.representation` so each rule can be tested on its own strings.
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Iterator, Sequence
from datetime import UTC
from typing import Final

_ETAG: Final = re.compile(r'(W/)?"([^"]*)"')
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QVALUE: Final = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _ranges(accept: str) -> Iterator[tuple[str, str, int, float]]:
    """(type, subtype, number of media-type parameters, q) of each well-formed media range; others are skipped."""
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        type_, _, subtype = media.lower().partition("/")
        if not (_TOKEN.fullmatch(type_) and _TOKEN.fullmatch(subtype)) or (type_ == "*" and subtype != "*"):
            continue
        q, n_params, ok = 1.0, 0, True
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                if not _QVALUE.fullmatch(value.strip()):
                    ok = False
                q = float(value) if ok else 0.0
                break  # what follows q are accept-ext parameters, not the media type's
            n_params += 1
        if ok:
            yield type_, subtype, n_params, q


def choose(accept: str | None, offered: Sequence[str]) -> str | None:
    """The offered media type the Accept header prefers, or None when it accepts none of them.

    Each offered type takes the q of the most specific range matching it (type/subtype with parameters,
    then type/subtype, type/*, */*); the highest q wins, ties going to the type named more specifically
    (``text/csv, */*`` asks for CSV), then to the first offered. No Accept, or an empty one, accepts anything.
    """
    if accept is None or not accept.strip():
        return offered[0] if offered else None
    ranges = list(_ranges(accept))
    best: tuple[float, int, int] | None = None
    chosen: str | None = None
    for index, media in enumerate(offered):
        type_, _, subtype = media.partition("/")
        match: tuple[int, float] | None = None  # (specificity, q)
        for r_type, r_subtype, n_params, q in ranges:
            if (r_type, r_subtype) == ("*", "*"):
                specificity = 0
            elif r_type == type_ and r_subtype == "*":
                specificity = 1
            elif (r_type, r_subtype) == (type_, subtype):
                specificity = 2 + (n_params > 0)
            else:
                continue
            if match is None or specificity > match[0]:
                match = (specificity, q)
        if match is None or match[1] <= 0:
            continue
        key = (match[1], match[0], -index)
        if best is None or key > best:
            best, chosen = key, media
    return chosen


def none_match(if_none_match: str, etag: str) -> bool:
    """Whether If-None-Match matches ``etag`` (weak comparison, RFC 9110 §13.1.2): ``*`` matches any."""
    if if_none_match.strip() == "*":
        return True
    opaque = _ETAG.fullmatch(etag)
    assert opaque is not None, etag
    return any(m.group(2) == opaque.group(2) for m in _ETAG.finditer(if_none_match))


@functools.lru_cache(maxsize=4096)
def http_date(ms: int) -> str:
    """IMF-fixdate, e.g. ``Wed, 01 May 2024 00:30:00 GMT`` (the second the millisecond falls in)."""
    return email.utils.formatdate(ms // 1000, usegmt=True)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch, or None for a value that is not an HTTP date (which the caller ignores)."""
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())
