"""The pipelining Redis client against a real redis-server: order, scripts, failures, databases."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis import exceptions

from coverage_service.readmodel import resp
from lastmile.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[resp.RespClient]:
    c = resp.RespClient.from_url(settings.redis_url, timeout_s=0.5)
    try:
        yield c
    finally:
        await c.close()


async def test_concurrent_commands_get_their_own_replies(
    client: resp.RespClient, redis: aioredis.Redis, unique: str
) -> None:
    await redis.mset({f"{unique}:{i}": f"value-{i}" for i in range(300)})
    replies = await asyncio.gather(*(client.execute("GET", f"{unique}:{i}") for i in range(300)))
    assert replies == [f"value-{i}".encode() for i in range(300)]
    assert await client.execute("GET", f"{unique}:none") is None
    assert await client.execute("INCRBY", f"{unique}:n", 5) == 5
    big = "盂" * 100_000  # replies in many reads
    await redis.set(f"{unique}:big", big)
    assert await client.execute("GET", f"{unique}:big") == big.encode()


async def test_an_error_reply_fails_its_command_only(client: resp.RespClient, unique: str) -> None:
    results = await asyncio.gather(
        client.execute("SET", f"{unique}:k", "v"),
        client.execute("HGET", f"{unique}:k", "f"),  # WRONGTYPE
        client.execute("GET", f"{unique}:k"),
        return_exceptions=True,
    )
    assert results[0] == b"OK" and results[2] == b"v"
    assert isinstance(results[1], exceptions.ResponseError) and "WRONGTYPE" in str(results[1])


async def test_a_script_is_loaded_when_redis_does_not_have_it(client: resp.RespClient, redis: aioredis.Redis) -> None:
    loads: list[str] = []

    async def load() -> object:
        loads.append("load")
        return await redis.script_load(script.text)

    script = resp.Script(client, "return KEYS[1] .. ' hello ' .. ARGV[1]", load=load)
    assert await asyncio.gather(*(script("k", "盂县") for _ in range(20))) == ["k hello 盂县".encode()] * 20
    assert loads == ["load"]  # once for all the calls waiting
    await redis.script_flush()
    assert await script("k", "again") == b"k hello again"  # NOSCRIPT: loaded again
    assert loads == ["load", "load"]


async def test_a_slow_reply_times_out_and_the_next_command_gets_a_new_connection(
    client: resp.RespClient, unique: str
) -> None:
    with pytest.raises(exceptions.TimeoutError):
        await client.execute("BLPOP", f"{unique}:empty", 3)  # waits 3 s; the client waits 0.5
    assert await client.execute("PING") == b"PONG"


async def test_a_dropped_connection_is_opened_again(client: resp.RespClient, redis: aioredis.Redis) -> None:
    client_id = await client.execute("CLIENT", "ID")
    assert isinstance(client_id, int)
    await redis.execute_command("CLIENT", "KILL", "ID", client_id)
    assert await client.execute("PING") == b"PONG"  # retried once on a new connection
    assert await client.execute("CLIENT", "ID") != client_id


async def test_an_unreachable_server_is_a_connection_error() -> None:
    client = resp.RespClient.from_url("redis://127.0.0.1:1/0", connect_timeout_s=1.0)
    with pytest.raises(exceptions.ConnectionError):
        await client.execute("PING")
    await client.close()
    with pytest.raises(exceptions.ConnectionError, match="closed"):
        await client.execute("PING")


async def test_the_database_of_the_url(settings: Settings, redis: aioredis.Redis, unique: str) -> None:
    url = settings.redis_url.rsplit("/", 1)[0] + "/3"
    other = aioredis.from_url(url)
    client = resp.RespClient.from_url(url)
    try:
        await other.set(f"{unique}:db", "three")
        assert await client.execute("GET", f"{unique}:db") == b"three"
        assert await redis.get(f"{unique}:db") is None  # not in database 0
    finally:
        await other.delete(f"{unique}:db")
        await other.aclose()
        await client.close()


async def test_a_wrong_password_is_refused(settings: Settings) -> None:
    addr = resp.address(settings.redis_url)
    assert addr is not None
    client = resp.RespClient(dataclasses.replace(addr, password="not-the-password"))
    with pytest.raises(exceptions.AuthenticationError):
        await client.execute("PING")
    await client.close()
