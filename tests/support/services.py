"""Running the services as real processes for the end-to-end and worker tests.

Also the registry facts those tests check against, computed here from the sample CSV with the
classification rule (docs/registry.md) written out again (never with the code under test).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from lastmile.registry import BUNDLED
from lastmile.settings import PREFIX, Settings
from lastmile_dev import devstack
from lastmile_dev.devstack import Proc

SAMPLE = BUNDLED["sample"]


def is_administrative_village(name: str) -> bool:
    """The classification rule (docs/registry.md), first match wins."""
    if name.endswith(("村委会", "村民委员会")):
        return True
    if name.endswith(("居委会", "居民委员会", "社区")):
        return False
    return name.endswith(("村", "嘎查"))


def sample_villages(where: Callable[[dict[str, str]], bool]) -> dict[str, str]:
    """Administrative villages of the sample registry matching ``where``: code -> township code."""
    with open(SAMPLE / "villages.csv", encoding="utf-8-sig", newline="") as f:
        return {
            row["code"]: row["streetCode"]
            for row in csv.DictReader(f)
            if where(row) and is_administrative_village(row["name"])
        }


def sample_units(where: Callable[[dict[str, str]], bool]) -> list[str]:
    """Every village-level unit of the sample registry matching ``where``, of any kind."""
    with open(SAMPLE / "villages.csv", encoding="utf-8-sig", newline="") as f:
        return [row["code"] for row in csv.DictReader(f) if where(row)]


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a service process gets for this test's settings (its topic, group, key prefix)."""
    env = dict(os.environ)
    env.update(
        {
            PREFIX + name: value
            for name, value in (
                ("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers),
                ("REDIS_URL", settings.redis_url),
                ("REDIS_CLUSTER_NODES", settings.redis_cluster_nodes),
                ("REDIS_KEY_PREFIX", settings.redis_key_prefix),
                ("SCAN_TOPIC", settings.scan_topic),
                ("DEAD_LETTER_TOPIC", settings.dead_letter_topic),
                ("WORKER_GROUP_ID", settings.consumer_group),
                ("SCAN_TOPIC_PARTITIONS", str(settings.scan_topic_partitions)),
                ("LOG_FORMAT", "console"),
                ("WORKER_SESSION_TIMEOUT_SECONDS", "6"),  # the broker's minimum: faster rejoins after a kill
                ("WORKER_HTTP_PORT", "0"),  # tests run several workers on one host; the health tests give theirs one
            )
        }
    )
    env.update({PREFIX + name: value for name, value in extra.items()})  # extra: by the settings' short names
    return env


def start(name: str, env: dict[str, str], logs: Path, *args: str) -> Proc:
    return Proc(name, devstack.lastmile_command(name, *args), logs / f"{name}.log", env=env).start()


def load_sample_registry(env: dict[str, str], logs: Path) -> None:
    load = start("registry", env, logs, "load", str(SAMPLE), "--no-progress")
    assert load.popen is not None and load.popen.wait(120) == 0, load.log_tail()


def wait(condition: Callable[[], Any], within: float, what: str) -> Any:
    """Polls ``condition`` until it gives something truthy, and returns that; fails the test after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")


def wait_ready(services: Iterable[tuple[Proc, str]]) -> None:
    """Wait until each (process, base URL) answers GET /readyz with 200."""
    for proc, url in services:
        proc.wait_until(lambda u=url: _ready(u), 60, "GET /readyz")  # type: ignore[misc]


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
