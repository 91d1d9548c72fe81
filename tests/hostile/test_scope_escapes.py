"""A county bureau's token trying to read beyond its county on the coverage API.

tests/integration/api/test_access.py covers the plain cases (neighbours, parents, the nation, path tricks with a
national token, 400 before Redis). Here the county token (盂县 140322) tries the tricks on every endpoint:
codes that start with its own prefix but are not codes, the neighbour's code in other digits or encoded,
dot segments, doubled or trailing slashes, query parameters, CSV, HEAD and validators, another region's
cursor, and the same through the real server (uvicorn) over a raw socket, which no client
normalises. Every answer is a refusal (400, 403 or 404, problem+json) and none shows the neighbour's figures.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from coverage_service.readmodel import unreached
from lastmile.settings import Settings
from lastmile_dev import devstack
from lastmile_dev.devstack import Proc
from tests.support.regulator_world import (
    CARRIER_TOKEN,
    CHENGQU,
    CHENGQU_TOKEN,
    DONGGUAN,
    DONGJIE,
    TOKENS,
    YIJING,
    YUXIAN,
    YUXIAN_TOKEN,
    World,
    app_for,
    event,
    loaded_world,
)
from tests.support.services import service_env, start, wait_ready

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
# What only the neighbour's figures hold: its names (城区, 东街街道, 义井村委会) and its units' codes.
LEAKS = ("城区", "东街街道", "义井村委会", f'"code":"{DONGJIE}"', f'"code":"{YIJING}"', f'"code":"{CHENGQU}"')


def fullwidth(code: str) -> str:
    return "".join(chr(0xFF10 + int(d)) for d in code)


def arabic_indic(code: str) -> str:
    return "".join(chr(0x0660 + int(d)) for d in code)


def pct(text: str) -> str:
    return quote(text, safe="")


def every_byte_encoded(code: str) -> str:
    return "".join(f"%{b:02X}" for b in code.encode())


N = CHENGQU  # the neighbour, 城区 140302
ESCAPES: list[tuple[str, tuple[int, ...]]] = [
    # Codes that start with the token's prefix (a naive prefix check passes them) but are not codes.
    (f"/v1/coverage/{YUXIAN}9", (400,)),
    (f"/v1/coverage/{YUXIAN}0000", (400,)),
    (f"/v1/villages/{YUXIAN}00000", (400,)),
    (f"/v1/villages/{YUXIAN}1002010", (400,)),
    (f"/v1/coverage/{YUXIAN}9/unreached", (400,)),
    (f"/v1/laggards/{YUXIAN}9", (400,)),
    (f"/v1/stream/{YUXIAN}9", (400,)),
    (f"/v1/coverage/{YUXIAN}{N}", (400,)),
    (f"/v1/coverage/{YUXIAN[:5]}", (400,)),  # 14032
    # The neighbour in other digits, or encoded.
    (f"/v1/coverage/{pct(fullwidth(N))}", (400,)),
    (f"/v1/coverage/{pct(arabic_indic(N))}", (400,)),
    (f"/v1/coverage/{N[:-1]}{pct(fullwidth(N[-1]))}", (400,)),
    (f"/v1/villages/{pct(arabic_indic(YIJING))}", (400,)),
    (f"/v1/stream/{pct(fullwidth(N))}", (400,)),
    (f"/v1/coverage/{every_byte_encoded(N)}", (403,)),  # decodes to the neighbour itself: out of scope
    (f"/v1/villages/{every_byte_encoded(YIJING)}", (403,)),
    (f"/v1/coverage/{N}%20", (400,)),
    (f"/v1/coverage/%20{N}", (400,)),
    (f"/v1/coverage/+{N}", (400,)),
    (f"/v1/coverage/0{N}", (400,)),
    (f"/v1/coverage/{N}.", (400,)),
    (f"/v1/coverage/{N}.csv", (400,)),
    (f"/v1/coverage/{N};{YUXIAN}", (400,)),
    (f"/v1/coverage/{N}%3B{YUXIAN}", (400,)),
    (f"/v1/coverage/{N}%3Fx", (400,)),
    (f"/v1/coverage/{N}%23", (400,)),
    (f"/v1/coverage/{N}%00", (400,)),
    (f"/v1/coverage/{YUXIAN}%00{N}", (400,)),
    ("/v1/coverage/cn", (400,)),
    # Dot segments, plain and encoded, in every place.
    (f"/v1/coverage/{YUXIAN}/../{N}", (400,)),
    (f"/v1/coverage/{YUXIAN}/%2e%2e/{N}", (400,)),
    (f"/v1/coverage/{YUXIAN}/%2E%2E%2F{N}", (400,)),
    (f"/v1/coverage/{YUXIAN}/.%2e/{N}", (400,)),
    (f"/v1/coverage/{YUXIAN}%2F..%2F{N}", (400,)),
    (f"/v1/coverage/{YUXIAN}%5C..%5C{N}", (400,)),
    (f"/v1/coverage/{YUXIAN}\\..\\{N}".replace("\\", "%5C"), (400,)),
    (f"/v1/coverage/{YUXIAN}../{N}", (404,)),  # "140322.." is no segment of its own: no route
    (f"/v1/coverage/{YUXIAN}/./../{N}", (400,)),
    (f"/v1/coverage/{YUXIAN}/../../v1/coverage/{N}", (400,)),
    (f"/v1/villages/{DONGGUAN}/../{YIJING}", (400,)),
    (f"/v1/stream/{YUXIAN}/../{N}", (400,)),
    (f"/v1/stream/{YUXIAN}/%2e%2e/{N}", (400,)),
    (f"/v1/coverage/{YUXIAN}/../{N}/unreached", (400,)),
    (f"/v1/reports/{YUXIAN}/../{N}/subsidies?year=2024", (400,)),
    (f"/v1/laggards/{YUXIAN}/../{N}", (400,)),
    (f"/v1/coverage/{YUXIAN}/%2e%2e", (400,)),
    ("/v1/coverage/..", (400,)),
    ("/v1/coverage/%2e%2e", (400,)),
    # Doubled slashes, other spellings of the path.
    (f"/v1/coverage//{N}", (404,)),
    (f"//v1/coverage/{N}", (404,)),
    (f"/v1//coverage/{N}", (404,)),
    (f"/v1/coverage/{YUXIAN}//{N}", (404,)),
    (f"/V1/coverage/{N}", (404,)),
    (f"/v1/Coverage/{N}", (404,)),
    # The neighbour on every endpoint, with queries that ask for other forms or other codes.
    (f"/v1/coverage/{N}?format=csv", (403,)),
    (f"/v1/coverage/{N}?code={YUXIAN}", (403,)),
    (f"/v1/coverage/{N}/unreached?format=csv&lapsed=true", (403,)),
    (f"/v1/coverage/{N}/targets?format=csv", (403,)),
    (f"/v1/coverage/{N}/history?format=csv&from=2024-01-01&to=2024-02-01", (403,)),
    (f"/v1/laggards/{N}?level=village&format=csv", (400, 403)),
    (f"/v1/laggards/{N}?level=township&format=csv", (403,)),
    ("/v1/laggards/CN?level=county", (403,)),
    (f"/v1/reports/{N}/subsidies?year=2024&format=csv", (403,)),
    (f"/v1/villages/{YIJING}?format=csv", (403, 406)),
    (f"/v1/stream/{N}?carrier=sf", (403,)),
    ("/v1/stream/CN", (403,)),
    ("/v1/coverage/CN?format=csv", (403,)),
    (f"/v1/coverage?code={YUXIAN}", (403,)),
    (f"/v1/coverage?region={YUXIAN}&code={YUXIAN}", (403,)),
    (f"/v1/coverage/{N}?carrier=sf&min_population=2500&cooperation_model=postal_express", (400, 403)),
]


def split(target: str) -> tuple[bytes, bytes]:
    raw, _, query = target.partition("?")
    return raw.encode("ascii"), query.encode("ascii")


async def asgi(
    app: FastAPI, target: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request straight through ASGI, the path exactly as a server passes it (percent-decoded ``path``)."""
    raw_path, query = split(target)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("coverage.test", 80),
    }
    sent: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if sent:  # the answer has started: for a stream, that is all this test needs
            await done.wait()
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    task = asyncio.create_task(app(scope, receive, send))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        done.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


def bearer(token: str = YUXIAN_TOKEN, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **more}


def assert_refused(status: int, headers: dict[str, str], body: bytes, allowed: tuple[int, ...], what: str) -> None:
    assert status in allowed, (what, status, body[:300])
    assert headers.get("content-type") == PROBLEM, (what, headers)
    document = json.loads(body)
    assert document["status"] == status and document["detail"], (what, document)
    assert_no_leak(body, what)


def assert_no_leak(body: bytes, what: str, *, figures: bool = False) -> None:
    """Nothing of the neighbour in ``body``; unless ``figures`` (our own report), no figures at all."""
    text = body.decode("utf-8", "replace")
    for marker in LEAKS:
        assert marker not in text, (what, marker, text[:300])
    if not figures:
        assert "villages_total" not in text and "villages_reached" not in text, (what, text[:300])


@pytest.fixture
async def world(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> World:
    return await loaded_world(redis, settings, tmp_path / "registry", event(DONGGUAN), event(YIJING))


@pytest.fixture
async def app(world: World, settings: Settings) -> AsyncIterator[FastAPI]:
    application = app_for(settings)
    async with application.router.lifespan_context(application):
        yield application


# -- in-process, every endpoint ------------------------------------------------------------------------------


async def test_the_neighbour_is_readable_by_its_own_token(app: FastAPI) -> None:
    """The leak markers are real: the neighbour's own answers hold them."""
    status, _, body = await asgi(app, f"/v1/coverage/{CHENGQU}", bearer(CHENGQU_TOKEN))
    assert status == 200
    with pytest.raises(AssertionError):
        assert_no_leak(body, "the neighbour's own report")


@pytest.mark.parametrize(("target", "allowed"), ESCAPES, ids=[t for t, _ in ESCAPES])
async def test_a_county_token_cannot_escape(app: FastAPI, target: str, allowed: tuple[int, ...]) -> None:
    for method in ("GET", "HEAD"):
        status, headers, body = await asgi(app, target, bearer(), method)
        if method == "HEAD":
            assert status in allowed and body == b"", (target, status, body[:200])
            continue
        assert_refused(status, headers, body, allowed, target)
    # With CSV asked for in the Accept header instead, the answer is the same refusal.
    status, headers, body = await asgi(app, target, bearer(Accept="text/csv"))
    assert_refused(status, headers, body, (*allowed, 406), target + " (Accept: text/csv)")


@pytest.mark.parametrize("target", [f"/v1/coverage/{CHENGQU}", f"/v1/villages/{YIJING}", "/v1/coverage"])
async def test_validators_do_not_answer_for_another_region(app: FastAPI, target: str) -> None:
    """If-None-Match: * (or our own region's ETag) on the neighbour is 403, never a 304 that would tell it exists."""
    _, own_headers, _ = await asgi(app, f"/v1/coverage/{YUXIAN}", bearer())
    for validator in ("*", own_headers["etag"], 'W/"x"'):
        for method in ("GET", "HEAD"):
            status, headers, _ = await asgi(app, target, bearer(**{"If-None-Match": validator}), method)
            assert status == 403, (target, validator, method, status)
            assert headers["content-type"] == PROBLEM and "etag" not in headers
    status, _, _ = await asgi(app, target, bearer(**{"If-Modified-Since": "Thu, 01 Jan 2099 00:00:00 GMT"}))
    assert status == 403


async def test_another_regions_cursor_is_refused(app: FastAPI) -> None:
    # A cursor as the service would hand it out for the neighbour's list (or for the province's).
    for after in (YIJING, "140302001999", "149999999999"):
        cursor = unreached.encode_cursor(after)
        status, headers, body = await asgi(app, f"/v1/coverage/{YUXIAN}/unreached?cursor={cursor}", bearer())
        assert_refused(status, headers, body, (400,), after)
        assert json.loads(body)["type"].endswith("/invalid-cursor")
    status, headers, body = await asgi(app, f"/v1/coverage/{YUXIAN}/unreached?cursor=..%2F{CHENGQU}", bearer())
    assert_refused(status, headers, body, (400,), "a path as a cursor")


@pytest.mark.parametrize(
    "query",
    [
        f"code={CHENGQU}",
        f"region={CHENGQU}",
        f"carrier=../{CHENGQU}",
        f"carrier={CHENGQU}",
        "cooperation_model=x",
        f"min_population={CHENGQU}",
        f"code={CHENGQU}&code={YUXIAN}",
        "format=json&format=csv",
    ],
)
async def test_queries_on_our_own_region_show_only_our_own(app: FastAPI, query: str) -> None:
    status, headers, body = await asgi(app, f"/v1/coverage/{YUXIAN}?{query}", bearer())
    assert status in (200, 400), (query, status, body[:300])
    if status == 400:
        assert headers["content-type"] == PROBLEM
    elif headers["content-type"].startswith("application/json"):
        assert json.loads(body)["code"] == YUXIAN
    else:  # CSV: our own rows only
        assert headers["content-type"].startswith("text/csv") and YUXIAN in body.decode("utf-8-sig")
    assert_no_leak(body, query, figures=True)


async def test_other_tokens_get_nothing_either(app: FastAPI) -> None:
    for headers in ({}, bearer(CARRIER_TOKEN), bearer(YUXIAN_TOKEN + "0"), {"Authorization": f"Basic {YUXIAN_TOKEN}"}):
        for target in (
            f"/v1/coverage/{CHENGQU}",
            f"/v1/coverage/{CHENGQU}?format=csv",
            f"/v1/stream/{CHENGQU}",
            f"/v1/coverage/{CHENGQU}?access_token={YUXIAN_TOKEN}",
        ):
            status, response_headers, body = await asgi(app, target, headers)
            assert_refused(status, response_headers, body, (401, 403), target)


async def test_a_trailing_slash_never_leaks(app: FastAPI) -> None:
    """A trailing slash is redirected (FastAPI's redirect_slashes) to the path without it, which is refused."""
    for target in (f"/v1/coverage/{CHENGQU}/", f"/v1/villages/{YIJING}/", f"/v1/stream/{CHENGQU}/", "/v1/coverage/"):
        status, headers, body = await asgi(app, target, bearer())
        assert_no_leak(body, target)
        if status == 307:  # see test_a_trailing_slash_is_refused_not_redirected
            location = headers["location"]
            assert location.endswith(target.rstrip("/")), (target, location)
            status, headers, body = await asgi(app, target.rstrip("/") or "/v1/coverage", bearer())
        assert_refused(status, headers, body, (403, 404), target)


async def test_a_trailing_slash_is_refused_not_redirected(app: FastAPI) -> None:
    status, headers, body = await asgi(app, f"/v1/coverage/{CHENGQU}/", {"Host": "evil.example"})
    assert_refused(status, headers, body, (401, 404), "trailing slash without a token")


# -- through the real servers, over a raw socket --------------------------------------------------------------


@dataclass
class Server:
    host: str
    port: int
    proc: Proc

    def get(self, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.host}:{self.port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        with socket.create_connection((self.host, self.port), timeout=10) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            answer = b""
            while more := s.recv(65536):  # Connection: close: the server hangs up after the answer
                answer += more
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        found = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
        if found.get("transfer-encoding") == "chunked":
            body = dechunk(body)
        return int(status_line.split()[1]), found, body


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + rest[:size], rest[size + 2 :]
    return out


@pytest.fixture
def server(world: World, settings: Settings, tmp_path: Path) -> Iterator[Server]:
    port = devstack.free_port()
    env = service_env(
        settings,
        COVERAGE_PORT=str(port),
        COVERAGE_REGULATOR_TOKENS=json.dumps(TOKENS),
        COVERAGE_RATE_LIMIT_PER_SECOND="0",
    )
    proc = start("coverage", env, tmp_path)
    try:
        wait_ready([(proc, f"http://127.0.0.1:{port}")])
        yield Server("127.0.0.1", port, proc)
    finally:
        proc.stop()


async def test_no_escape_through_the_real_server(server: Server) -> None:
    # Our own county is readable through the same server, and the neighbour is not: the setup is right.
    status, _, body = await asyncio.to_thread(server.get, f"/v1/coverage/{YUXIAN}", bearer())
    assert status == 200 and json.loads(body)["code"] == YUXIAN, body[:300]
    for target, allowed in ESCAPES:
        status, headers, body = await asyncio.to_thread(server.get, target, bearer())
        if status == 400 and headers.get("content-type", "").startswith("text/plain"):
            # The server itself refused the request line (a non-ASCII or malformed target): fine, and nothing leaks.
            assert_no_leak(body, target)
            continue
        assert_refused(status, headers, body, (*allowed, 400, 404) if 403 not in allowed else allowed, target)
    for target in (f"/v1/coverage/{CHENGQU}/", f"/v1/stream/{CHENGQU}/"):
        status, _, body = await asyncio.to_thread(server.get, target, bearer())
        assert status in (307, 403, 404), (target, status)
        assert_no_leak(body, target)
    assert server.proc.alive()
