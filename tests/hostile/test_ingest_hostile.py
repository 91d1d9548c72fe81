"""Hostile clients against the ingest API: what they get, what the server spends, what reaches the topic.

Most requests go to the app in-process (httpx over ASGI, or straight ASGI calls to count what the app reads
of a body); what needs a real server (slow clients, an endless chunked upload, the process's own log) runs
`lastmile ingest` as a process. Every refusal is application/problem+json with a specific detail, and only
valid events from the token's own carrier ever reach the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from lastmile.settings import Settings
from lastmile_dev import devstack
from lastmile_dev.devstack import Proc
from tests.support import ingest_world, isolated
from tests.support.ingest_world import Ingest, running_ingest, topic_records
from tests.support.services import service_env, start, wait_ready

pytestmark = pytest.mark.integration

TOKEN = "sf-hostile-token-0123456789"
OTHER_TOKEN = "yto-hostile-token-0123456789"
LIMIT = 256 * 1024  # INGEST_MAX_BODY_BYTES of these tests
MAX_EVENTS = 1000  # the documented default of INGEST_MAX_EVENTS
PROBLEM = "application/problem+json"


def scan_event(i: int, **changes: Any) -> dict[str, Any]:
    return ingest_world.scan_event(i, "h", **changes)


def auth(token: str = TOKEN) -> dict[str, str]:
    return ingest_world.auth(token)


JSON = {**auth(), "Content-Type": "application/json"}


def problem(r: httpx.Response, status: int, type_: str, detail: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["type"].endswith("/" + type_), body
    assert detail in body["detail"], body
    return body


def hostile_settings(settings: Settings) -> Settings:
    tokens = json.dumps({TOKEN: "sf", OTHER_TOKEN: "yto"})
    return settings.replace(carrier_tokens=tokens, ingest_max_body_bytes=LIMIT, ingest_max_events=MAX_EVENTS)


@pytest.fixture
async def ingest(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[Ingest]:
    async with running_ingest(hostile_settings(settings), redis) as running:
        yield running


async def topic_events(settings: Settings, at_least: int) -> list[dict[str, Any]]:
    """Every event on the test's topic (waiting for ``at_least``, then a little more for anything extra)."""
    return [e for _, record in await topic_records(settings, at_least, settle=True) for e in record["events"]]


# -- bodies: size, shape, encoding -------------------------------------------------------------------------


class Body:
    """An ASGI receive() handing out a body in chunks, counting what the app pulled."""

    def __init__(self, chunk: bytes, total: int | None) -> None:
        self.chunk, self.total, self.pulled = chunk, total, 0

    async def __call__(self) -> dict[str, Any]:
        if self.total is not None and self.pulled >= self.total:
            return {"type": "http.disconnect"}
        self.pulled += len(self.chunk)
        more = self.total is None or self.pulled < self.total
        return {"type": "http.request", "body": self.chunk, "more_body": more}


async def asgi_post(app: FastAPI, headers: dict[str, str], body: Body) -> tuple[int, dict[str, str], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/scans",
        "raw_path": b"/v1/scans",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("ingest", 80),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, body, send), 10)
    start = sent[0]
    return (
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


async def test_an_endless_body_without_content_length_is_read_only_to_the_limit(ingest: Ingest) -> None:
    endless = Body(b" " * 16384, total=None)  # chunked, never ends
    status, headers, content = await asgi_post(ingest.app, JSON, endless)
    assert (status, headers["content-type"]) == (413, PROBLEM)
    assert json.loads(content)["limit_bytes"] == LIMIT
    assert endless.pulled <= LIMIT + 16384  # stopped at the limit: nothing unbounded was buffered


async def test_a_declared_oversize_body_is_refused_before_reading_it(ingest: Ingest) -> None:
    body = Body(b" " * 16384, total=10**12)
    status, headers, content = await asgi_post(ingest.app, {**JSON, "Content-Length": str(10**12)}, body)
    assert (status, headers["content-type"]) == (413, PROBLEM)
    assert f"the body is {10**12} bytes; the limit is {LIMIT}" in json.loads(content)["detail"]
    assert body.pulled == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Content-Type": "application/json"}, 401), ({**auth(), "Content-Type": "text/plain"}, 415)],
)
async def test_no_body_is_read_before_the_token_and_the_media_type_are_checked(
    ingest: Ingest, headers: dict[str, str], status: int
) -> None:
    body = Body(b" " * 16384, total=None)
    got, response_headers, _ = await asgi_post(ingest.app, headers, body)
    assert (got, response_headers["content-type"], body.pulled) == (status, PROBLEM, 0)


async def test_a_body_just_over_the_limit_is_413(ingest: Ingest) -> None:
    # Valid JSON padded past the limit, sent with and without Content-Length.
    padded = b'{"events": [' + orjson.dumps(scan_event(0)) + b"]}" + b" " * LIMIT

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(padded), 4096):
            yield padded[i : i + 4096]

    for content in (padded, chunks()):
        r = await ingest.http.post("/v1/scans", content=content, headers=JSON)
        problem(r, 413, "body-too-large", f"limit of {LIMIT} bytes" if not isinstance(content, bytes) else "limit")


NESTED = 100_000


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"[" * NESTED + b"]" * NESTED, "not valid JSON"),
        (b'{"events": ' + b"[" * NESTED + b"]" * NESTED + b"}", "not valid JSON"),
        (b'{"a":' * 40_000 + b"1" + b"}" * 40_000, "not valid JSON"),  # within the body limit
        (b'{"events": [{"event_id": ' + b"[" * NESTED + b"]" * NESTED + b"}]}", "not valid JSON"),
        (b"", "not valid JSON"),
        (b" \n\t ", "not valid JSON"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),  # a UTF-8 byte-order mark
        (b'{"events": [{"event_id": "\xff"}]}', "not valid JSON"),  # invalid UTF-8 inside a string
        (b'{"events": [{"waybill": "\xc0\xaf"}]}', "not valid JSON"),  # an overlong encoding of '/'
        (b'{"events": [{"waybill": "\xed\xa0\x80"}]}', "not valid JSON"),  # a UTF-8-encoded surrogate
        (b'{"events": [{"waybill": "\\ud800"}]}', "not valid JSON"),  # a lone surrogate escape
        (b'{"events": [{"event_id": 1e999}]}', "not valid JSON"),  # infinity
        (b'{"events": [], }', "not valid JSON"),
        (b"null", "JSON object"),
        (b"1", "JSON object"),
        (b'"events"', "JSON object"),
        (b"true", "JSON object"),
        (b'[{"events": [{}]}]', "JSON object"),
        (b'{"events": null}', "must be an array"),
        (b'{"events": "[]"}', "must be an array"),
        (b'{"Events": [{}]}', "unknown top-level field(s): Events"),
        (b"{}", "must be an array"),
        (b'{"events": []}', "empty"),
    ],
)
async def test_malformed_bodies_are_400_problems(ingest: Ingest, content: bytes, detail: str) -> None:
    r = await ingest.http.post("/v1/scans", content=content, headers=JSON)
    assert r.status_code == 400, r.text[:300]
    type_ = "malformed-json" if detail == "not valid JSON" else "invalid-body"
    problem(r, 400, type_, detail)


async def test_deep_but_parseable_nesting_in_an_event_is_a_rejection_not_a_crash(ingest: Ingest) -> None:
    deep = b"[" * 1000 + b"]" * 1000  # as deep as the parser goes (encoders give up earlier: written by hand)
    events = [
        orjson.dumps(scan_event(0, waybill="W")).replace(b'"W"', deep),
        orjson.dumps(scan_event(1, extra="X")).replace(b'"X"', b'{"a":' + deep + b"}"),
    ]
    content = b'{"events": [' + b",".join(events) + b"]}"
    r = await ingest.http.post("/v1/scans", content=content, headers=JSON)
    body = problem(r, 422, "no-valid-events", "none of the 2 events is valid")
    assert body["rejected"][0]["errors"] == ["waybill: must be a string, not an array"]
    assert body["rejected"][1]["errors"] == ["extra: unknown field"]


async def test_events_over_the_documented_limit_are_413(ingest: Ingest) -> None:
    r = await ingest.http.post("/v1/scans", json={"events": [{}] * (MAX_EVENTS + 1)}, headers=auth())
    problem(r, 413, "too-many-events", f"{MAX_EVENTS + 1} events in one request; the limit is {MAX_EVENTS}")
    at_limit = await ingest.http.post("/v1/scans", json={"events": [{}] * MAX_EVENTS}, headers=auth())
    problem(at_limit, 422, "no-valid-events", f"none of the {MAX_EVENTS} events is valid")  # judged, not refused


async def test_dates_out_of_range_are_rejections_not_500(ingest: Ingest) -> None:
    # 0001-01-01T00:00:00+08:00 is in year 0 in UTC: it used to pass validation and crash the publisher (500).
    events = [
        scan_event(0, occurred_at="0001-01-01T00:00:00+08:00"),
        scan_event(1, occurred_at="２０２４-05-01T08:30:00+08:00"),
    ]
    r = await ingest.http.post("/v1/scans", json={"events": events}, headers=auth())
    body = problem(r, 422, "no-valid-events", "none of the 2 events is valid")
    assert [rej["errors"][0].split(":")[0] for rej in body["rejected"]] == ["occurred_at", "occurred_at"]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "text/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json-patch+json",
        "application/jsonx",
        "application/problem+json",
        "json",
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(ingest: Ingest, content_type: str | None) -> None:
    headers = auth() if content_type is None else {**auth(), "Content-Type": content_type}
    r = await ingest.http.post("/v1/scans", content=orjson.dumps({"events": [scan_event(0)]}), headers=headers)
    problem(r, 415, "unsupported-media-type", "send Content-Type: application/json")
    assert repr((content_type or "").split(";")[0].strip().lower() or "nothing") in r.json()["detail"]


async def test_json_with_parameters_or_capitals_is_json(ingest: Ingest) -> None:
    for i, content_type in enumerate(["application/json; charset=utf-8", "Application/JSON"]):
        content = orjson.dumps({"events": [scan_event(i)]})
        r = await ingest.http.post("/v1/scans", content=content, headers={**auth(), "Content-Type": content_type})
        assert r.status_code == 202, r.text


# -- who may post what ------------------------------------------------------------------------------------


async def test_events_naming_another_carrier_are_refused(ingest: Ingest) -> None:
    # The contract: `carrier` must be the carrier the token belongs to.
    theirs = [scan_event(i, carrier="yto", event_id=f"yto-{i}") for i in range(3)]
    r = await ingest.http.post("/v1/scans", json={"events": theirs}, headers=auth())
    body = problem(r, 422, "no-valid-events", "none of the 3 events is valid")
    assert all(
        rej["errors"] == ["carrier: 'yto' is not the carrier this token belongs to ('sf')"] for rej in body["rejected"]
    )
    mixed = await ingest.http.post("/v1/scans", json={"events": [scan_event(10), *theirs]}, headers=auth())
    assert mixed.status_code == 202 and mixed.json()["accepted"] == 1
    assert [rej["index"] for rej in mixed.json()["rejected"]] == [1, 2, 3]


UNAUTHORIZED = [
    ({}, "/v1/scans", "send the carrier's token as 'Authorization: Bearer <token>'"),
    ({"Authorization": ""}, "/v1/scans", "send the carrier's token"),
    ({"Authorization": "Bearer"}, "/v1/scans", "must be 'Bearer <token>'"),
    ({"Authorization": "Bearer    "}, "/v1/scans", "must be 'Bearer <token>'"),
    ({"Authorization": TOKEN}, "/v1/scans", "must be 'Bearer <token>'"),
    ({"Authorization": f"Token {TOKEN}"}, "/v1/scans", "must be 'Bearer <token>'"),
    ({"Authorization": f"Basic {TOKEN}"}, "/v1/scans", "must be 'Bearer <token>'"),
    ({"Authorization": f"Bearer {TOKEN}x"}, "/v1/scans", "unknown token"),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "/v1/scans", "unknown token"),
    ({"Authorization": f"Bearer {TOKEN.upper()}"}, "/v1/scans", "unknown token"),
    ({"Authorization": f"Bearer {TOKEN} {TOKEN}"}, "/v1/scans", "unknown token"),
    ({"Authorization": "Bearer not-a-known-token-0123456789"}, "/v1/scans", "unknown token"),
    # A token in the URL is not a token: it would end up in proxies' and servers' logs.
    ({}, f"/v1/scans?access_token={TOKEN}", "send the carrier's token"),
    ({}, f"/v1/scans?token={TOKEN}", "send the carrier's token"),
    ({}, f"/v1/scans?authorization=Bearer%20{TOKEN}", "send the carrier's token"),
]


@pytest.mark.parametrize(("headers", "path", "detail"), UNAUTHORIZED)
async def test_no_usable_token_is_401(ingest: Ingest, headers: dict[str, str], path: str, detail: str) -> None:
    content = orjson.dumps({"events": [scan_event(0)]})
    r = await ingest.http.post(path, content=content, headers={**headers, "Content-Type": "application/json"})
    problem(r, 401, "unauthorized", detail)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in r.text


async def test_nothing_invalid_reaches_the_topic(ingest: Ingest) -> None:
    """Every kind of refusal above, then two good batches: the topic holds exactly the good events."""
    http, good = ingest.http, [scan_event(i) for i in range(100, 104)]
    body = orjson.dumps({"events": good})
    refusals = [
        await http.post("/v1/scans", content=body, headers={"Content-Type": "application/json"}),
        await http.post(f"/v1/scans?access_token={TOKEN}", content=body, headers={"Content-Type": "application/json"}),
        await http.post("/v1/scans", content=body, headers=auth()),
        await http.post("/v1/scans", content=body + b" " * LIMIT, headers=JSON),
        await http.post("/v1/scans", content=b"[" * NESTED + b"]" * NESTED, headers=JSON),
        await http.post("/v1/scans", content=body[:-3], headers=JSON),
        await http.post("/v1/scans", json={"events": good * 300}, headers=auth()),
        await http.post("/v1/scans", json={"events": good, "more": 1}, headers=auth()),
        await http.post("/v1/scans", json={"events": [scan_event(200, carrier="yto")]}, headers=auth()),
        await http.post("/v1/scans", json={"events": [scan_event(201)]}, headers=auth(OTHER_TOKEN)),
        await http.post(
            "/v1/scans", json={"events": [scan_event(202, occurred_at="0001-01-01T00:00:00+08:00")]}, headers=auth()
        ),
    ]
    assert [r.status_code for r in refusals] == [401, 401, 415, 413, 400, 400, 413, 400, 422, 422, 422]
    # A mixed batch: only its valid events go on; then the good batch again (a retry).
    mixed = [
        scan_event(300),
        scan_event(301, carrier="yto"),
        scan_event(302, location_code="140322299999"),
        scan_event(303, event_type="teleported"),
        scan_event(300),
    ]
    r = await http.post("/v1/scans", json={"events": mixed}, headers=auth())
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    assert (await http.post("/v1/scans", content=body, headers=JSON)).status_code == 202
    on_topic = await topic_events(ingest.settings, at_least=5)
    assert sorted(e["event_id"] for e in on_topic) == ["h-100", "h-101", "h-102", "h-103", "h-300"]
    assert {e["carrier"] for e in on_topic} == {"sf"}


# -- a real server: slow clients, endless uploads, its log ------------------------------------------------------


def run_ingest(broker_url: str, redis_url: str, logs: Path, **env: str) -> Iterator[tuple[str, Proc, Settings]]:
    """`lastmile ingest` as a process on its own topic and key prefix: its address, process and settings."""
    unique = os.urandom(5).hex()
    settings = hostile_settings(isolated.settings(broker_url, redis_url, f"t{unique}", scan_topic_partitions=2))

    async def load() -> None:
        client = aioredis.from_url(redis_url)
        try:
            await ingest_world.seed_villages(client, settings)
        finally:
            await client.aclose()

    asyncio.run(load())
    port = devstack.free_port()
    proc = start(
        "ingest",
        service_env(
            settings,
            INGEST_PORT=str(port),
            INGEST_CARRIER_TOKENS=settings.carrier_tokens,
            INGEST_MAX_BODY_BYTES=str(LIMIT),
            LOG_LEVEL="DEBUG",
            **env,
        ),
        logs,
    )
    try:
        wait_ready([(proc, f"http://127.0.0.1:{port}")])
        yield f"127.0.0.1:{port}", proc, settings
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def server(broker_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proc]]:
    for address_, proc, _ in run_ingest(broker_url, redis_url, tmp_path_factory.mktemp("ingest")):
        yield address_, proc


def address(server: tuple[str, Proc]) -> tuple[str, int]:
    host, port = server[0].split(":")
    return host, int(port)


async def dribble(host: str, port: int, data: bytes, every: float, stop: asyncio.Event) -> None:
    """A slow client: one byte at a time, never finishing while ``stop`` is unset."""
    _, writer = await asyncio.open_connection(host, port)
    try:
        for byte in data:
            if stop.is_set():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_slow_clients_do_not_hold_up_the_others(server: tuple[str, Proc]) -> None:
    host, port = address(server)
    body = orjson.dumps({"events": [scan_event(0)]})
    head = f"POST /v1/scans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
    slow_headers = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    stop = asyncio.Event()
    slow = [asyncio.create_task(dribble(host, port, slow_headers, 0.05, stop)) for _ in range(20)]  # headers
    _, writer = await asyncio.open_connection(host, port)  # a body that trickles in
    writer.write((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:5])
    await writer.drain()
    slow.append(
        asyncio.create_task(
            dribble(
                host, port, (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"1\r\n{\r\n" * 200, 0.05, stop
            )
        )
    )
    try:
        await asyncio.sleep(0.5)  # they are all mid-request
        async with httpx.AsyncClient(base_url=f"http://{server[0]}", timeout=5) as http:
            for i in range(5):
                started = time.monotonic()
                r = await http.post("/v1/scans", json={"events": [scan_event(i)]}, headers=auth())
                assert r.status_code == 202, r.text
                assert time.monotonic() - started < 3.0  # not held up behind the slow ones (they never finish)
                assert (await http.get("/healthz")).status_code == 200
        assert not any(task.done() for task in slow)  # the slow ones were still dribbling throughout
    finally:
        stop.set()
        writer.close()
        await asyncio.gather(*slow)
    assert server[1].alive()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_endless_chunked_upload_gets_413_and_the_server_stays_small(server: tuple[str, Proc]) -> None:
    proc = server[1]
    before = rss_kib(proc.pid)
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    sent, answer = 0, b""
    with socket.create_connection(address(server), timeout=10) as s:
        s.sendall(
            b"POST /v1/scans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        s.setblocking(False)
        try:
            while sent < 64 * 1024 * 1024:  # 256 times the limit
                try:
                    s.sendall(chunk)
                    sent += len(chunk)
                except BlockingIOError:
                    time.sleep(0.001)
                with contextlib.suppress(BlockingIOError):
                    answer += s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may hang up on the rest: that is fine too
        s.setblocking(True)
        s.settimeout(5)
        with contextlib.suppress(ConnectionError):
            while b"body-too-large" not in answer and (more := s.recv(65536)):
                answer += more
    head, _, content = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"content-type: application/problem+json" in head.lower()
    assert b"body-too-large" in content
    assert rss_kib(proc.pid) - before < 16 * 1024, "the server kept what it was sent"
    assert proc.alive()


def test_a_huge_declared_length_is_answered_at_once(server: tuple[str, Proc]) -> None:
    with socket.create_connection(address(server), timeout=5) as s:
        s.sendall(
            b"POST /v1/scans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{"
        )
        answer = s.recv(65536)
        while b"the limit is" not in answer and (more := s.recv(65536)):  # the body may come in a packet of its own
            answer += more
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"the limit is %d" % LIMIT in answer


async def test_tokens_never_reach_the_process_log(server: tuple[str, Proc]) -> None:
    body = orjson.dumps({"events": [scan_event(0)]})
    json_type = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://{server[0]}", timeout=5) as http:
        await http.post("/v1/scans", content=body, headers={**auth(), **json_type})
        await http.post("/v1/scans", content=body, headers={**auth(OTHER_TOKEN), **json_type})  # refused events
        await http.post("/v1/scans", content=body, headers={**auth("unknown-token-0123456789abc"), **json_type})
        await http.post(f"/v1/scans?access_token={TOKEN}", content=body, headers=json_type)
        await http.post("/v1/scans", content=body, headers={"Authorization": f"Basic {OTHER_TOKEN}", **json_type})
        await http.post("/v1/scans", content=b"{" + TOKEN.encode(), headers={**auth(), **json_type})
        await http.get(f"/nowhere/{TOKEN}", headers=auth())
    await asyncio.sleep(0.3)
    text = server[1].log_path.read_text(errors="replace")
    assert "accepted" in text  # DEBUG logging was on and the process did log
    for token in (TOKEN, OTHER_TOKEN, "unknown-token-0123456789abc"):
        assert token not in text


# -- the read deadline: each request arrives whole within INGEST_REQUEST_READ_TIMEOUT_SECONDS of its first byte --

READ_TIMEOUT_S = 2.0  # short for the test, with room for a loaded machine's stalls


@pytest.fixture(scope="module")
def strict_server(
    broker_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Proc, Settings]]:
    yield from run_ingest(
        broker_url,
        redis_url,
        tmp_path_factory.mktemp("strict"),
        INGEST_REQUEST_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT_S),
    )


def post_bytes(event_id: int) -> bytes:
    body = orjson.dumps({"events": [scan_event(event_id)]})
    return (
        f"POST /v1/scans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response off a socket: its head and its body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        assert more, f"closed without an answer: {data!r}"
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += s.recv(65536)
    return head, body


def trickle_until_answered(s: socket.socket, data: bytes, every: float, started: float) -> tuple[bytes, float]:
    """Send ``data`` a byte every ``every`` seconds (never its last byte) until the server answers and closes:
    all the server said, and how long after ``started`` (taken before connecting) it closed."""
    s.settimeout(every)
    answer, sent = b"", 0
    while time.monotonic() - started < READ_TIMEOUT_S + 10:
        try:
            more = s.recv(65536)
        except TimeoutError:
            if sent < len(data) - 1:
                with contextlib.suppress(ConnectionError):
                    s.sendall(data[sent : sent + 1])
                sent += 1
            continue
        except ConnectionError:
            break
        if not more:
            break
        answer += more
    return answer, time.monotonic() - started


@pytest.mark.parametrize("stage", ["headers", "body"])
async def test_a_request_trickling_past_the_read_timeout_gets_408_and_publishes_nothing(
    strict_server: tuple[str, Proc, Settings], stage: str
) -> None:
    where, proc, settings = strict_server
    late_id, good_id = (900, 902) if stage == "headers" else (901, 903)
    late = post_bytes(late_id)
    head_size = late.index(b"\r\n\r\n") + 4
    started = time.monotonic()  # before connecting: the server's deadline runs from the connection's opening
    with socket.create_connection(address((where, proc)), timeout=5) as s:
        if stage == "body":
            s.sendall(late[: head_size + 10])  # the headers at once, then the body a byte at a time
            late = late[head_size + 10 :]
        answer, took = await asyncio.to_thread(trickle_until_answered, s, late, 0.2, started)
    head, _, content = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"content-type: application/problem+json" in head.lower()
    body = orjson.loads(content)
    assert body["status"] == 408 and body["type"].endswith("/request-timeout"), body
    assert body["timeout_seconds"] == READ_TIMEOUT_S
    # closed at the deadline, not at the client's will; the server's loop clock is cached per iteration and its timers
    # have millisecond granularity, so the deadline may fall a few ms short of one taken before connecting
    assert READ_TIMEOUT_S - 0.05 <= took <= READ_TIMEOUT_S + 5, took
    async with httpx.AsyncClient(base_url=f"http://{where}", timeout=5) as http:
        r = await http.post("/v1/scans", json={"events": [scan_event(good_id)]}, headers=auth())
        assert r.status_code == 202, r.text
    on_topic = await topic_events(settings, at_least=1)
    assert [e["event_id"] for e in on_topic if e["event_id"] in (f"h-{late_id}", f"h-{good_id}")] == [f"h-{good_id}"]
    assert proc.alive()


def test_a_connection_that_sends_nothing_is_closed_at_the_read_timeout(
    strict_server: tuple[str, Proc, Settings],
) -> None:
    where, proc, _ = strict_server
    started = time.monotonic()
    with socket.create_connection(address((where, proc)), timeout=READ_TIMEOUT_S + 10) as s:
        assert s.recv(65536) == b""  # closed without a word: there was no request to answer
        assert READ_TIMEOUT_S <= time.monotonic() - started <= READ_TIMEOUT_S + 5


def test_a_slow_request_within_the_timeout_and_an_idle_keep_alive_are_served(
    strict_server: tuple[str, Proc, Settings],
) -> None:
    where, proc, _ = strict_server
    with socket.create_connection(address((where, proc)), timeout=5) as s:
        first = post_bytes(910)
        for i in range(0, len(first), len(first) // 4 + 1):  # in pieces, over about a third of the deadline
            s.sendall(first[i : i + len(first) // 4 + 1])
            time.sleep(READ_TIMEOUT_S * 0.08)
        head, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 202 "), head
        time.sleep(READ_TIMEOUT_S * 1.5)  # idle between requests: the keep-alive timeout's business, not the deadline's
        s.sendall(post_bytes(911))
        head, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 202 "), head
