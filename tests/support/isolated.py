"""Settings that keep a test (or a module's stack) apart from every other on the shared broker and Redis: its own
topics, consumer group and Redis key prefix, as faust-streaming's own integration tests do."""

from __future__ import annotations

from typing import Any

from lastmile.settings import Settings


def settings(broker_url: str, redis_url: str, unique: str, **changes: Any) -> Settings:
    """Settings named after ``unique`` (letters and digits), with ``changes`` to any other field."""
    fields: dict[str, Any] = {
        "kafka_bootstrap_servers": broker_url,
        "redis_url": redis_url,
        "redis_key_prefix": unique if unique[0].isalpha() else f"t{unique}",
        "scan_topic": f"scans-{unique}",
        "dead_letter_topic": f"scans-{unique}-deadletter",
        "consumer_group": f"group-{unique}",
        "scan_topic_partitions": 4,
        "log_format": "console",
    }
    return Settings(**{**fields, **changes})
