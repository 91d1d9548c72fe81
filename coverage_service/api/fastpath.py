"""The requests dashboards make most, answered without FastAPI's routing and dependency injection.

``GET`` and ``HEAD`` of ``/v1/coverage``, ``/v1/coverage/{code}`` and ``/v1/villages/{code}`` without a query, asking
for JSON, are most of the API's traffic: :class:`FastPathMiddleware` answers them with the functions the routes use,
so the answer is the route's, byte for byte. Anything else goes on to the app (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from coverage_service.api import access, negotiation, representation
from coverage_service.api.access import Regulator
from coverage_service.api.documents import Documents
from coverage_service.api.representation import CSV, JSON, Rendered
from lastmile import divisions, names

_COVERAGE: Final = "/v1/coverage"
_REGION_PREFIX: Final = "/v1/coverage/"
_VILLAGE_PREFIX: Final = "/v1/villages/"
REGION_ROUTE: Final = "/v1/coverage/{code}"
VILLAGE_ROUTE: Final = "/v1/villages/{code}"
_TABLE_MEDIA: Final = [JSON, CSV]
_VARY: Final = representation.VARY.encode()
_JSON_TYPE: Final = JSON.encode()
WANTED: Final = frozenset((b"authorization", b"accept", b"if-none-match", b"if-modified-since"))


def target(path: str) -> tuple[str, str] | None:
    """(route template, code) of a path the fast path answers, else None."""
    if path == _COVERAGE:
        return _COVERAGE, names.NATIONAL
    if path.startswith(_REGION_PREFIX):
        code = path[len(_REGION_PREFIX) :]
        if code == names.NATIONAL or divisions.is_region_code(code):
            return REGION_ROUTE, code
    elif path.startswith(_VILLAGE_PREFIX):
        code = path[len(_VILLAGE_PREFIX) :]
        if divisions.is_village_code(code):
            return VILLAGE_ROUTE, code
    return None


@dataclass(frozen=True, slots=True)
class Answer:
    route: str  # the route template (metrics label requests by it)
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes  # empty for HEAD and 304
    who: Regulator  # the caller, for the audit log


class FastPath:
    """Answers the hot requests for one app (its access, documents and settings)."""

    def __init__(self, gate: access.Access, documents: Documents, cache_max_age: int) -> None:
        self.gate = gate
        self.documents = documents
        self.cache_control = f"private, max-age={cache_max_age}".encode()

    async def answer(
        self, method: str, route: str, code: str, headers: Mapping[bytes, str]
    ) -> Answer | Regulator | None:
        """The answer; or, for the app to answer, the caller when the request has been charged to its
        budget already, else None. ``headers`` holds (at least) the :data:`WANTED` ones, first of each."""
        gate = self.gate
        try:
            who = gate.identify(headers.get(b"authorization"))
        except Exception:
            return None  # the route answers 401 or 403
        if gate.limiter.take(who.name) > 0:
            return None  # the route answers 429 (its own take fails too: the bucket is still empty)
        if not who.covers(code):
            return who  # 403
        is_village = route == VILLAGE_ROUTE
        if negotiation.choose(headers.get(b"accept"), [JSON] if is_village else _TABLE_MEDIA) != JSON:
            return who  # CSV or 406
        rendered: Rendered | None
        try:
            if is_village:
                body, last_modified_ms = await self.documents.village(code)
                rendered = None if body is None else Rendered(body, last_modified_ms=last_modified_ms)
            else:
                rendered = await self.documents.region(code)
        except Exception:
            return who  # the route meets the same failure and answers it (503 for Redis)
        if rendered is None:
            return who  # 404
        return self._answer(method, route, rendered, headers, who)

    def _answer(
        self, method: str, route: str, rendered: Rendered, asked: Mapping[bytes, str], who: Regulator
    ) -> Answer:
        """The JSON representation, as :func:`coverage_service.api.representation.respond_rendered` answers it."""
        content, etag = rendered.form(JSON)
        last_modified = rendered.http_last_modified
        validators = [(b"etag", etag.encode())]
        if last_modified is not None:
            validators.append((b"last-modified", last_modified.encode()))
        if representation.not_modified(
            asked.get(b"if-none-match"), asked.get(b"if-modified-since"), etag, rendered.last_modified_ms
        ):
            return Answer(route, 304, [*validators, (b"cache-control", self.cache_control), (b"vary", _VARY)], b"", who)
        headers = [(b"cache-control", self.cache_control), (b"vary", _VARY), *validators]
        headers += [(b"content-length", str(len(content)).encode()), (b"content-type", _JSON_TYPE)]
        return Answer(route, 200, headers, b"" if method == "HEAD" else content, who)


def fast_path_of(app: Any) -> FastPath | None:
    """The app's fast path, once its lifespan has made it."""
    found: FastPath | None = getattr(app.state, "fast_path", None)
    return found


class FastPathMiddleware:
    """The fast path inside the app: answers the hot requests it can, and hands the rest on to the app."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["query_string"]
            or scope["method"] not in ("GET", "HEAD")
            or scope.get("raw_path", scope["path"].encode()) != scope["path"].encode()  # escapes: the app decides
        ):
            await self.app(scope, receive, send)
            return
        found = target(scope["path"])
        fast = fast_path_of(scope["app"])
        if found is None or fast is None:
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in WANTED and name not in headers:
                headers[name] = value.decode("latin-1")
        answer = await fast.answer(scope["method"], *found, headers)
        if not isinstance(answer, Answer):
            if answer is not None:  # charged to the token's budget already: the route must not charge it again
                scope[access.AUTHENTICATED] = answer
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes.get(answer.route)
        scope[access.AUTHENTICATED] = answer.who
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        await send({"type": "http.response.body", "body": answer.body})
