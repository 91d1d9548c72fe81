"""Problem details for HTTP APIs (RFC 9457), shared by both services."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://lastmile-coverage.readthedocs.io/problems/"


class Problem(Exception):
    """Raise to answer with a problem document; ``type_`` is a short slug, appended to :data:`TYPE_BASE`."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type_ = type_
        self.headers = headers or {}
        self.extensions = extensions


def document(status: int, detail: str, *, type_: str | None = None, **extensions: Any) -> dict[str, Any]:
    """The problem document (RFC 9457) itself, for servers other than FastAPI's (the worker's endpoint)."""
    return {
        "type": TYPE_BASE + type_ if type_ else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extensions,
    }


def response(
    status: int, detail: str, *, type_: str | None = None, headers: dict[str, str] | None = None, **extensions: Any
) -> JSONResponse:
    body = document(status, detail, type_=type_, **extensions)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    """Every error the app can produce, including the framework's own, becomes problem+json."""

    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return response(exc.status, exc.detail, type_=exc.type_, headers=exc.headers, **exc.extensions)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return response(400, "; ".join(errors), type_="invalid-request", errors=errors)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        return response(500, "internal error; it has been logged", type_="internal")

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)


def document_validation_as_400(app: FastAPI) -> None:
    """Drop FastAPI's default 422 "Validation Error" from the OpenAPI document: :func:`install` answers
    request validation errors with a 400 problem, which the routes declare themselves."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    default = operation.get("responses", {}).get("422", {})
                    if default.get("description") == "Validation Error":
                        del operation["responses"]["422"]
                        operation["responses"].setdefault("400", openapi_responses(400)[400])
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def openapi_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries declaring problem+json bodies for the given statuses."""
    schema = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
        "required": ["type", "title", "status", "detail"],
    }
    return {s: {"description": HTTPStatus(s).phrase, "content": {MEDIA_TYPE: {"schema": schema}}} for s in statuses}
