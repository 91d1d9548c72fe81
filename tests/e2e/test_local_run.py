"""`lastmile run`, what `make run` starts: up, the README's example, a killed worker, Ctrl-C, no orphans."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from lastmile.registry import BUNDLED
from lastmile_dev import devstack
from tests.support.services import wait

pytestmark = pytest.mark.e2e

# What would point `make run` at servers of one's own, under the settings' names old and new.
NAMED_SERVERS = {f"{p}{n}" for p in ("", "LASTMILE_") for n in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}

SAMPLE = BUNDLED["sample"]

# The README's example post: two villages of 盂县 reached, one event refused.
README_EVENTS = [
    {
        "event_id": "demo-1",
        "carrier": "demo",
        "waybill": "YT0001",
        "event_type": "delivered",
        "location_code": "140322205206",
        "occurred_at": "2024-05-01T09:15:00+08:00",
    },
    {
        "event_id": "demo-2",
        "carrier": "demo",
        "waybill": "YT0002",
        "event_type": "collected",
        "location_code": "140322100200",
        "occurred_at": "2024-05-01T10:00:00+08:00",
        "station_id": "YX-ST-01",
        "cooperation_model": "postal_express",
    },
    {
        "event_id": "demo-3",
        "carrier": "demo",
        "waybill": "YT0003",
        "event_type": "delivered",
        "location_code": "140322205",
        "occurred_at": "2024-05-01T10:00:00+08:00",
    },
]


def children(pid: int) -> dict[int, str]:
    """Direct child processes of ``pid``: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_local_run_serves_the_readme_example_survives_a_killed_worker_and_stops_clean(tmp_path: Path) -> None:
    ingest_port, coverage_port = devstack.free_port(), devstack.free_port()
    env = {k: v for k, v in os.environ.items() if k not in NAMED_SERVERS}
    env.update(
        LASTMILE_INGEST_PORT=str(ingest_port),
        LASTMILE_COVERAGE_PORT=str(coverage_port),
        LASTMILE_LOG_FORMAT="console",
        LASTMILE_WORKER_SESSION_TIMEOUT_SECONDS="6",
    )
    out = tmp_path / "run.out"
    with open(out, "wb") as sink:
        run = subprocess.Popen(
            devstack.lastmile_command("run", "--data-dir", str(tmp_path / "data")),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    ingest, coverage = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{coverage_port}"
    try:
        wait(lambda: "Press Ctrl-C" in out.read_text() or run.poll() is not None, 120, "the stack to start")
        assert run.poll() is None, out.read_text()
        token = (tmp_path / "data" / "carrier-token").read_text().strip()
        assert token in out.read_text()
        regulator = (tmp_path / "data" / "regulator-token").read_text().strip()
        assert regulator in out.read_text()
        assert f"{coverage}/dashboard/" in out.read_text()  # the link make run prints opens the dashboard
        page = httpx.get(f"{coverage}/dashboard/")
        assert page.status_code == 200 and "快递进村" in page.text
        services = children(run.pid)
        assert sorted(cmd.split()[-1] for cmd in services.values() if "lastmile.cli" in cmd) == [
            "coverage",
            "ingest",
            "worker",
        ]

        def post() -> dict[str, Any]:
            r = httpx.post(
                f"{ingest}/v1/scans", json={"events": README_EVENTS}, headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 202, r.text
            return dict(r.json())

        def county() -> dict[str, Any]:
            r = httpx.get(f"{coverage}/v1/coverage/140322", headers={"Authorization": f"Bearer {regulator}"})
            return dict(r.json())

        def metric(name: str) -> float:
            for line in httpx.get(f"{coverage}/metrics").text.splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            return 0.0

        body = post()
        assert body["accepted"] == 2
        assert body["rejected"] == [
            {"index": 2, "event_id": "demo-3", "errors": ["location_code: delivered needs a 12-digit village code"]}
        ]
        wait(lambda: county()["villages_reached"] == 2, 60, "two villages reached")
        assert county()["villages_total"] == 277

        # The same post again, then the worker killed with SIGKILL: it comes back, nothing moves.
        post()
        wait(lambda: metric("lastmile_events_duplicate_total") == 2, 60, "the repeats to be dropped")
        worker = next(pid for pid, cmd in children(run.pid).items() if cmd.endswith("lastmile.cli worker"))
        os.kill(worker, signal.SIGKILL)
        wait(lambda: "worker exited (code -9); restarting it" in out.read_text(), 30, "the restart")
        post()
        wait(lambda: metric("lastmile_events_duplicate_total") == 4, 90, "the restarted worker to drop repeats")
        assert metric("lastmile_events_applied_total") == 2
        figures = county()
        assert (figures["villages_reached"], figures["coverage_rate"]) == (2, round(2 / 277, 6))

        # The README's correction: demo-1 withdrawn and replaced at another village.
        fix = {**README_EVENTS[0], "event_id": "demo-1-fix", "location_code": "140322205207"}
        correction = {"event": README_EVENTS[0], "reason": "scanned at the wrong village", "replacement": fix}
        r = httpx.post(
            f"{ingest}/v1/scans/corrections",
            json={"corrections": [correction]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 202 and r.json()["accepted"] == 1, r.text

        def village(code: str) -> dict[str, Any]:
            r = httpx.get(f"{coverage}/v1/villages/{code}", headers={"Authorization": f"Bearer {regulator}"})
            return dict(r.json())

        wait(lambda: village("140322205207")["reached"] and not village("140322205206")["reached"], 60, "the fix")
        assert county()["villages_reached"] == 2
        listed = httpx.get(f"{coverage}/v1/corrections", headers={"Authorization": f"Bearer {regulator}"}).json()
        assert [(c["event_id"], c["status"]) for c in listed["corrections"]] == [("demo-1", "withdrawn")]
        services = children(run.pid)
    finally:
        run.send_signal(signal.SIGINT)  # Ctrl-C
        code = run.wait(60)
    assert code == 0, out.read_text()
    assert "stopped." in out.read_text()
    leftover = {pid: cmd for pid, cmd in services.items() if alive(pid)}
    assert leftover == {}, f"processes outlived `lastmile run`: {json.dumps(leftover)}"


def test_a_second_run_keeps_a_registry_loaded_into_its_redis_since(tmp_path: Path) -> None:
    """`make run` again after the registry in its Redis was replaced (another edition, the national one): the run keeps
    it, says so, and does not fail on loading the sample over it, which would remove units."""
    extended = tmp_path / "extended"
    shutil.copytree(SAMPLE, extended)
    extra = "140322205299"
    with open(extended / "villages.csv", "a", encoding="utf-8") as f:
        f.write(f'{extra},"新增村委会",140322205,14,1403,140322\n')
    ingest_port, coverage_port = devstack.free_port(), devstack.free_port()
    env = {k: v for k, v in os.environ.items() if k not in NAMED_SERVERS}
    env.update(
        LASTMILE_INGEST_PORT=str(ingest_port), LASTMILE_COVERAGE_PORT=str(coverage_port), LASTMILE_LOG_FORMAT="console"
    )
    data = tmp_path / "data"

    def start(out: Path) -> subprocess.Popen[bytes]:
        with open(out, "wb") as sink:
            run = subprocess.Popen(
                devstack.lastmile_command("run", "--data-dir", str(data)),
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait(lambda: "Press Ctrl-C" in out.read_text() or run.poll() is not None, 120, "the stack to start")
        assert run.poll() is None, out.read_text()
        return run

    def stop(run: subprocess.Popen[bytes]) -> None:
        run.send_signal(signal.SIGINT)
        assert run.wait(60) == 0

    first = start(tmp_path / "first.out")
    try:
        stack = dict(line.split("=", 1) for line in (data / "lastmile.env").read_text().splitlines() if "=" in line)
        loaded = subprocess.run(
            devstack.lastmile_command("registry", "load", str(extended), "--edition", "extended", "--no-progress"),
            env={**env, **stack},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert loaded.returncode == 0, loaded.stderr
    finally:
        stop(first)
    second = start(tmp_path / "second.out")
    try:
        assert "the one Redis held is kept" in (tmp_path / "second.out").read_text()
        regulator = (data / "regulator-token").read_text().strip()
        r = httpx.get(
            f"http://127.0.0.1:{coverage_port}/v1/villages/{extra}", headers={"Authorization": f"Bearer {regulator}"}
        )
        assert r.status_code == 200 and r.json()["name"] == "新增村委会", r.text
    finally:
        stop(second)
