"""The small Redis client's wire format: commands out, replies in (RESP2), and the URLs it speaks."""

from __future__ import annotations

import pytest
from redis import exceptions

from coverage_service.readmodel import resp


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert resp.pack(["EVALSHA", "ab", 0, "盂县"]) == (
        b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n0\r\n$6\r\n" + "盂县".encode() + b"\r\n"
    )
    assert resp.pack([b"\r\n"]) == b"*1\r\n$2\r\n\r\n\r\n"  # binary safe


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b":42\r\n", 42),
        (b":-3\r\n", -3),
        (b"+OK\r\n", b"OK"),
        (b"*2\r\n:7\r\n$4\r\na\r\nb\r\n", [7, b"a\r\nb"]),
        (b"*0\r\n", []),
        (b"*-1\r\n", None),
        (b"*2\r\n*1\r\n:1\r\n$-1\r\n", [[1], None]),
    ],
)
def test_replies(wire: bytes, reply: object) -> None:
    assert resp.parse(wire + b"$1\r\nx\r\n", 0) == (reply, len(wire))


def test_an_error_reply_is_returned_as_an_exception_for_its_command_only() -> None:
    found = resp.parse(b"-NOSCRIPT No matching script.\r\n", 0)
    assert found is not None
    assert isinstance(found[0], exceptions.NoScriptError)
    found = resp.parse(b"-ERR wrong number of arguments\r\n", 0)
    assert found is not None
    error = found[0]
    assert isinstance(error, exceptions.ResponseError) and not isinstance(error, exceptions.NoScriptError)
    assert "wrong number" in str(error)


@pytest.mark.parametrize("wire", [b"", b"$5\r\nhel", b"$5\r\nhello", b"*2\r\n:1\r\n", b":12", b"*1\r\n$3\r\nab"])
def test_a_reply_not_all_there_waits_for_more(wire: bytes) -> None:
    assert resp.parse(wire, 0) is None


def test_replies_are_read_one_after_the_other() -> None:
    wire = b":1\r\n$2\r\nok\r\n-ERR no\r\n"
    first = resp.parse(wire, 0)
    assert first is not None and first[0] == 1
    second = resp.parse(wire, first[1])
    assert second is not None and second[0] == b"ok"
    third = resp.parse(wire, second[1])
    assert third is not None and isinstance(third[0], exceptions.ResponseError) and third[1] == len(wire)


def test_an_unknown_reply_type_is_refused() -> None:
    with pytest.raises(exceptions.InvalidResponse):
        resp.parse(b"~1\r\n", 0)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://localhost:6379/0", resp.Address("localhost", 6379, 0, None, None)),
        ("redis://127.0.0.1:6380", resp.Address("127.0.0.1", 6380, 0, None, None)),
        ("redis://redis/3", resp.Address("redis", 6379, 3, None, None)),
        ("redis://:s%40cret@h:1/2", resp.Address("h", 1, 2, None, "s@cret")),
        ("redis://user:pw@h:1", resp.Address("h", 1, 0, "user", "pw")),
        ("redis://h:1?db=4", resp.Address("h", 1, 4, None, None)),
    ],
)
def test_the_urls_it_speaks(url: str, address: resp.Address) -> None:
    assert resp.address(url) == address
    assert resp.supports(url)


@pytest.mark.parametrize(
    "url", ["rediss://h:6379/0", "unix:///tmp/redis.sock", "redis://h:1/0?socket_timeout=3", "redis:///0", "h:1"]
)
def test_other_urls_are_left_to_redis_py(url: str) -> None:
    assert resp.address(url) is None
    assert not resp.supports(url)
    with pytest.raises(ValueError, match="redis://"):
        resp.RespClient.from_url(url)
