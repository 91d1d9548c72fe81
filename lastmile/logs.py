"""Structured logs: one JSON object a line (LASTMILE_LOG_FORMAT=json) or readable console lines."""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from typing import Any

import orjson

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _RESERVED)
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.name}: "
        line += record.getMessage() + (f"  {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def dict_config(service: str, level: str = "INFO", fmt: str = "json") -> dict[str, Any]:
    """A logging.config.dictConfig document; Faust's worker takes it as its logging_config."""
    formatter: dict[str, Any] = {"()": JsonFormatter, "service": service} if fmt == "json" else {"()": ConsoleFormatter}
    quiet = {"level": max(logging.WARNING, logging.getLevelName(level.upper()))}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"lastmile": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": sys.stderr, "formatter": "lastmile"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {"aiokafka": quiet, "kafka": quiet},
    }


def configure(service: str, level: str = "INFO", fmt: str = "json") -> None:
    logging.config.dictConfig(dict_config(service, level, fmt))


def describe(exc: BaseException) -> str:
    """An error for a log line: its class and message. (redis-py 8's repr of its errors drops the message,
    which is what tells ops what went wrong, e.g. that the registry is not loaded.)"""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
