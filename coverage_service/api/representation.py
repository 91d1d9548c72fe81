"""How a route's result goes out: JSON, or CSV for tables; validators, caching headers, 304 and HEAD.

Routes call :func:`respond`, or :func:`respond_rendered` with a :class:`Rendered` document (made once, maybe kept in a
cache and served many times). What clients get (formats, CSV, ETag, 304) is on docs/reports.md.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.utils import deep_dict_update
from starlette.responses import StreamingResponse
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from coverage_service.api import negotiation
from coverage_service.api.params import redis_of, settings_of
from coverage_service.readmodel import queries
from lastmile import problem
from lastmile.problem import Problem

JSON: Final = "application/json"
CSV: Final = "text/csv"
CSV_CONTENT_TYPE: Final = "text/csv; charset=utf-8"
FORMATS: Final = {"json": JSON, "csv": CSV}
VARY: Final = "Authorization, Accept"
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_UNSAFE_IN_NAME: Final = re.compile(r"[^\w.-]+")
_NOT_ASCII_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Iterable[Sequence[Any]]


class Rendered:
    """A document and its representations: the JSON (and, for tables, CSV) bytes with their ETags, made once.

    ``table`` is the CSV form's table, or a function making it from the document. ``last_modified_ms`` is the
    read model's time the document was made at; None when it has none. With ``lookup_last_modified`` it is
    read from the read model when the response is sent instead (documents answered once, which are not worth
    a read of their own). A rendered document holds figures only: it may be kept and served to any caller
    whose access was checked for it. :meth:`compact` keeps the JSON bytes and lets the document go (a kept
    document costs the garbage collector a visit per object; the CSV form, rarely asked for, reads it back).
    """

    __slots__ = ("_body", "_forms", "_http_date", "filename", "last_modified_ms", "lookup_last_modified", "table")

    def __init__(
        self,
        body: Any,
        *,
        table: Callable[[Any], Table] | Table | None = None,
        filename: str = "export",
        last_modified_ms: int | None = None,
        lookup_last_modified: bool = False,
    ) -> None:
        self._body = body
        self.table = table
        self.filename = filename
        self.last_modified_ms = last_modified_ms
        self.lookup_last_modified = lookup_last_modified
        self._forms: dict[str, tuple[bytes, str]] = {}
        self._http_date: str | None = None

    @property
    def body(self) -> Any:
        """The document (read back from its JSON form once compacted)."""
        return self._body if self._body is not None else orjson.loads(self.form(JSON)[0])

    def compact(self) -> Rendered:
        self.form(JSON)
        self._body = None
        return self

    @property
    def http_last_modified(self) -> str | None:
        """``last_modified_ms`` as an HTTP date (made once)."""
        if self._http_date is None and self.last_modified_ms is not None:
            self._http_date = negotiation.http_date(self.last_modified_ms)
        return self._http_date

    @property
    def has_table(self) -> bool:
        return self.table is not None

    def form(self, media: str) -> tuple[bytes, str]:
        """(content, ETag) of the JSON or CSV representation."""
        found = self._forms.get(media)
        if found is None:
            if media == CSV:
                table = self.table(self.body) if callable(self.table) else self.table
                assert table is not None
                content, content_type = render_csv(table), CSV_CONTENT_TYPE
            else:
                content, content_type = orjson.dumps(self._body), JSON
            found = self._forms[media] = (content, etag_of(content_type, content))
        return found

    def headers(self, media: str, etag: str, cache_max_age: int) -> dict[str, str]:
        """The headers of a 200 in ``media`` (Last-Modified too when it is known here)."""
        # private: the answer depends on the caller's token
        headers = {"Cache-Control": f"private, max-age={cache_max_age}", "Vary": VARY, "ETag": etag}
        if media == CSV:
            headers["Content-Disposition"] = content_disposition(self.filename)
        last_modified = self.http_last_modified
        if last_modified is not None:
            headers["Last-Modified"] = last_modified
        return headers


def etag_of(content_type: str, content: bytes) -> str:
    """A strong ETag: a hash of the exact bytes sent and their type (so JSON and CSV differ)."""
    return '"' + hashlib.sha256(content_type.encode() + b"\n" + content).hexdigest()[:32] + '"'


def respond(
    request: Request,
    body: Any,
    *,
    table: Table | None = None,
    filename: str = "export",
    last_modified_ms: int | None = None,
) -> Response:
    """The response to ``request`` with the JSON document ``body``; ``table`` (columns and rows) is what its CSV
    export holds, for list and table endpoints. ``last_modified_ms`` defaults to the read model's last change (the
    worker's last apply or the last registry load), read when the response is sent. ``body`` must not hold the
    request time, or no two ETags would ever match."""
    rendered = Rendered(
        body,
        table=table,
        filename=filename,
        last_modified_ms=last_modified_ms,
        lookup_last_modified=last_modified_ms is None,
    )
    return respond_rendered(request, rendered)


def respond_rendered(request: Request, rendered: Rendered) -> Response:
    """The response to ``request`` with a document already rendered (maybe cached): its negotiated form."""
    media = _negotiate(request, rendered.has_table)
    settings = settings_of(request)
    content, etag = rendered.form(media)
    headers = rendered.headers(media, etag, settings.coverage_cache_max_age_seconds)
    return _Representation(
        content,
        CSV_CONTENT_TYPE if media == CSV else JSON,
        headers,
        last_modified_ms=rendered.last_modified_ms,
        lookup=rendered.lookup_last_modified,
        redis=redis_of(request),
        prefix=settings.redis_key_prefix,
        if_none_match=request.headers.get("if-none-match"),
        if_modified_since=request.headers.get("if-modified-since"),
    )


def _negotiate(request: Request, has_table: bool) -> str:
    asked = request.query_params.get("format")
    if asked is not None:
        media = FORMATS.get(asked.lower())
        if media is None:
            raise Problem(400, f"format={asked!r} is not one of: json, csv", type_="invalid-format")
        if media == CSV and not has_table:
            raise _csv_only_for_lists()
        return media
    accept = request.headers.get("accept")
    chosen = negotiation.choose(accept, [JSON, CSV] if has_table else [JSON])
    if chosen is not None:
        return chosen
    if not has_table and negotiation.choose(accept, [CSV]):
        raise _csv_only_for_lists()
    offered = "application/json or text/csv" if has_table else "application/json"
    raise Problem(
        406, f"this endpoint answers {offered}; the Accept header ({accept}) allows neither", type_="not-acceptable"
    )


def _csv_only_for_lists() -> Problem:
    return Problem(
        406, "CSV is for list endpoints; this endpoint answers application/json only", type_="not-acceptable"
    )


def render_csv(table: Table) -> bytes:
    """The table as CSV: UTF-8 with BOM, CRLF line ends, a header row; text that a spreadsheet would run
    as a formula (starting with = + - @) is prefixed with an apostrophe."""
    out = io.StringIO()
    writer = csv.writer(out)  # the excel dialect: CRLF line ends, minimal quoting
    writer.writerow(table.columns)
    width = len(table.columns)
    for row in table.rows:
        if len(row) != width:
            raise ValueError(f"a CSV row has {len(row)} cells for {width} columns: {row!r}")
        writer.writerow([_cell(value) for value in row])
    return out.getvalue().encode("utf-8-sig")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_START) else value
    return orjson.dumps(value).decode()


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` and, for other names, the exact one as RFC 5987 ``filename*``."""
    stem = filename.removesuffix(".csv")
    name = (_UNSAFE_IN_NAME.sub("_", stem).strip("._") or "export") + ".csv"
    ascii_name = (_NOT_ASCII_NAME.sub("_", stem).strip("._") or "export") + ".csv"
    value = f'attachment; filename="{ascii_name}"'
    if name != ascii_name:
        value += "; filename*=UTF-8''" + urllib.parse.quote(name, safe="")
    return value


class _Representation(Response):
    """A 200 that decides, when it is sent, whether to be a 304: Last-Modified may need the read model."""

    def __init__(
        self,
        content: bytes,
        media_type: str,
        headers: dict[str, str],
        *,
        last_modified_ms: int | None,
        lookup: bool,
        redis: aioredis.Redis,
        prefix: str,
        if_none_match: str | None,
        if_modified_since: str | None,
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self._last_modified_ms, self._lookup = last_modified_ms, lookup
        self._redis, self._prefix = redis, prefix
        self._if_none_match, self._if_modified_since = if_none_match, if_modified_since

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ms = self._last_modified_ms
        if self._lookup:
            ms = await queries.data_time_ms(self._redis, self._prefix)
            if ms is not None:
                self.headers["Last-Modified"] = negotiation.http_date(ms)
        if not_modified(self._if_none_match, self._if_modified_since, self.headers["etag"], ms):
            kept = ("etag", "last-modified", "cache-control", "vary")
            await Response(status_code=304, headers={k: self.headers[k] for k in kept if k in self.headers})(
                scope, receive, send
            )
            return
        await super().__call__(scope, receive, send)


def not_modified(
    if_none_match: str | None, if_modified_since: str | None, etag: str, last_modified_ms: int | None
) -> bool:
    """Whether the conditional headers make the answer a 304 (RFC 9110 §13.2.2)."""
    if if_none_match is not None:  # when present, If-Modified-Since is ignored (RFC 9110 §13.1.3)
        return negotiation.none_match(if_none_match, etag)
    if if_modified_since is None or last_modified_ms is None:
        return False
    since = negotiation.parse_http_date(if_modified_since)
    return since is not None and last_modified_ms // 1000 <= since


# -- OpenAPI --------------------------------------------------------------------------------------------

_FORMAT_PARAMETER: Final = {
    "name": "format",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["json", "csv"]},
    "description": "json, or csv for list and table endpoints (others answer 406); overrides Accept. "
    "Without it the format follows Accept: text/csv asks for CSV.",
}


def document(route: APIRoute) -> None:
    """Declares ?format=, the CSV body, 304 and 406 on a GET route answered through :func:`respond`."""
    response_class = getattr(route.response_class, "value", route.response_class)  # unwraps FastAPI's default
    streams = isinstance(response_class, type) and issubclass(response_class, StreamingResponse)
    if "GET" not in (route.methods or ()) or streams:
        return
    route.responses = {
        **route.responses,
        304: {"description": "Not Modified: If-None-Match (or If-Modified-Since) matched; no body"},
        **problem.openapi_responses(406),
    }
    extra: dict[str, Any] = {
        "responses": {
            "200": {
                "content": {
                    CSV: {
                        "schema": {"type": "string"},
                        "description": (
                            "List and table endpoints: CSV, UTF-8 with BOM, header row, CRLF; as an attachment"
                        ),
                    }
                }
            }
        },
    }
    merged: dict[str, Any] = copy.deepcopy(route.openapi_extra or {})
    declared = [p.name for p in route.dependant.query_params] + [p.get("name") for p in merged.get("parameters", [])]
    if "format" not in declared:  # idempotent: routers (and their routes) are shared by every app made
        extra["parameters"] = [_FORMAT_PARAMETER]
    deep_dict_update(merged, extra)
    route.openapi_extra = merged


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute among ``routes``, including those of included routers (which FastAPI may keep nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from api_routes(included.routes)
