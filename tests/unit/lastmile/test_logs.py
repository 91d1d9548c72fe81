"""Log lines: structured fields, and errors that keep their message."""

from __future__ import annotations

import logging

import orjson
from redis.exceptions import ResponseError

from lastmile import logs


def test_an_error_is_described_by_its_class_and_message() -> None:
    # redis-py's own repr of this error is "server:ResponseError": the reason would be lost.
    assert logs.describe(ResponseError("REGISTRY_MISSING not loaded")) == "ResponseError: REGISTRY_MISSING not loaded"
    assert logs.describe(TimeoutError()) == "TimeoutError"


def test_a_json_line_carries_the_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "lastmile.worker", "levelno": logging.WARNING, "levelname": "WARNING", "msg": "retrying after error"}
    )
    record.error = logs.describe(ValueError("bad"))
    line = orjson.loads(logs.JsonFormatter("worker").format(record))
    assert line["service"] == "worker"
    assert line["level"] == "warning"
    assert line["msg"] == "retrying after error"
    assert line["error"] == "ValueError: bad"
    assert line["ts"].endswith("Z")
