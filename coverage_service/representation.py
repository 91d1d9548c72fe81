"""How a route's result goes out: JSON, or CSV for tables; validators and caching headers.

INTERFACE (routes call it): ``respond(request, body, table=..., filename=..., last_modified_ms=...)``.
``body`` is the JSON document; ``table`` (columns and rows) is what a CSV export of it holds, for
list and table endpoints. This first version answers JSON only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request, Response


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Iterable[Sequence[Any]]


def respond(
    request: Request,
    body: Any,
    *,
    table: Table | None = None,
    filename: str = "export",
    last_modified_ms: int | None = None,
) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
