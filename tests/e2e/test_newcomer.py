"""The README's newcomer path, as a newcomer takes it: `make run` in one terminal, then the bare CLI in another
(`lastmile registry load national`, no setting at all) reaches that stack, and a scan at a village only the
national registry holds is accepted and counted.

It runs in a scratch folder that links the clone's Makefile, venv and lock files, so the stack's `.run/` is the
test's own and a developer's running stack is left alone.
"""

from __future__ import annotations

import csv
import gzip
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from lastmile.registry import BUNDLED
from lastmile_dev import devstack
from tests.support import REPO
from tests.support.services import is_administrative_village, wait

pytestmark = pytest.mark.e2e

LINKED = ("Makefile", ".venv", "requirements.lock", "pyproject.toml", "tools", "scripts")


def national_villages() -> tuple[int, str]:
    """Administrative villages of the bundled national registry by the classification rule, and one of them outside
    the sample registry: read from the CSV here, not through the code under test."""
    with gzip.open(BUNDLED["national"] / "villages.csv.gz", "rt", encoding="utf-8", newline="") as f:
        codes = [row["code"] for row in csv.DictReader(f) if is_administrative_village(row["name"])]
    with open(BUNDLED["sample"] / "villages.csv", encoding="utf-8-sig", newline="") as f:
        sample = {row["code"] for row in csv.DictReader(f)}
    outside = next(c for c in codes if c not in sample and not c.startswith("14"))
    return len(codes), outside


def test_make_run_then_the_bare_cli_loads_the_national_registry_and_a_scan_there_is_counted(tmp_path: Path) -> None:
    total, village = national_villages()
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in LINKED:
        (clone / name).symlink_to(REPO / name)
    ingest_port, coverage_port = devstack.free_port(), devstack.free_port()
    named = {f"{p}{n}" for p in ("", "LASTMILE_") for n in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    bare = {k: v for k, v in os.environ.items() if k not in {*named, "CI"}}
    out = tmp_path / "make-run.out"
    with open(out, "wb") as sink:
        run = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={
                **bare,
                "LASTMILE_INGEST_PORT": str(ingest_port),
                "LASTMILE_COVERAGE_PORT": str(coverage_port),
                "LASTMILE_LOG_FORMAT": "console",
            },
            start_new_session=True,
        )
    try:
        wait(lambda: "Press Ctrl-C" in out.read_text() or run.poll() is not None, 180, "`make run` to start")
        assert run.poll() is None, out.read_text()
        stack = dict(
            line.split("=", 1) for line in (clone / ".run" / "lastmile.env").read_text().splitlines() if "=" in line
        )

        # Another terminal: the README's command, bare.
        load = subprocess.run(
            [str(clone / ".venv" / "bin" / "lastmile"), "registry", "load", "national", "--no-progress"],
            cwd=clone,
            env=bare,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert load.returncode == 0, load.stdout + load.stderr
        assert f"Redis {stack['LASTMILE_REDIS_URL']}, broker {stack['LASTMILE_KAFKA_BOOTSTRAP_SERVERS']}" in load.stderr
        assert "deprecated" not in load.stderr, load.stderr
        assert ".run/lastmile.env" in load.stderr
        assert "620,573" in load.stdout, load.stdout

        token = (clone / ".run" / "carrier-token").read_text().strip()
        regulator = {"Authorization": f"Bearer {(clone / '.run' / 'regulator-token').read_text().strip()}"}
        scan = {
            "event_id": "newcomer-1",
            "carrier": "demo",
            "waybill": "NC0001",
            "event_type": "delivered",
            "location_code": village,
            "occurred_at": "2024-05-01T09:15:00+08:00",
        }
        posted = httpx.post(
            f"http://127.0.0.1:{ingest_port}/v1/scans",
            json={"events": [scan]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert posted.status_code == 202 and posted.json()["accepted"] == 1, posted.text

        def figures(path: str) -> Any:
            return httpx.get(f"http://127.0.0.1:{coverage_port}{path}", headers=regulator, timeout=30).json()

        detail = wait(lambda: (d := figures(f"/v1/villages/{village}")).get("reached") and d, 60, "the scan counted")
        assert detail["counts"]["by_carrier"] == {"demo": 1}
        nation = figures("/v1/coverage")
        assert nation["villages_total"] == total
        assert nation["villages_reached"] == 1
        assert figures(f"/v1/coverage/{village[:2]}")["villages_reached"] == 1
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)  # Ctrl-C in the first terminal
        run.wait(60)
    assert "stopped." in out.read_text()
    assert not (clone / ".run" / "lastmile.env").exists(), "the stack file outlived the stack"
