"""The worker's /healthz, /readyz and /metrics as a real process on the real broker and a redis-server of the test's
own: ready when caught up; no answer while the worker is SIGSTOPped and ready again after SIGCONT; not ready while
records wait and Redis (SIGSTOPped) lets nothing be applied, and ready again once it folds."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ingest_service.publisher import Publisher
from lastmile import problem, scan
from lastmile.settings import Settings
from lastmile.topics import ensure_topics
from lastmile_dev import devstack
from tests.support.services import load_sample_registry, sample_villages, service_env, start, wait

pytestmark = pytest.mark.integration


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None  # no answer: what a probe of a stopped process gets


async def publish(settings: Settings, event: scan.ScanEvent) -> None:
    publisher = Publisher(settings)
    publisher.start()
    try:
        for _ in range(300):
            if publisher.connected:
                break
            await asyncio.sleep(0.1)
        await publisher.publish("sf", "health-test", [event])
    finally:
        await publisher.stop()


def test_readiness_follows_the_worker_and_its_folding(settings: Settings, tmp_path: Path) -> None:
    redis_proc, redis_url = devstack.start_redis(tmp_path / "redis")
    port = devstack.free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        own = settings.replace(redis_url=redis_url)
        env = service_env(own, WORKER_HTTP_PORT=str(port), WORKER_READY_STALL_SECONDS="3")
        asyncio.run(ensure_topics(own))
        load_sample_registry(env, tmp_path)
        worker = start("worker", env, tmp_path)
        try:
            wait(lambda: status(f"{base}/readyz") == 200, 60, "the worker to be ready")
            assert status(f"{base}/healthz") == 200
            metrics = httpx.get(f"{base}/metrics").text
            for name in (
                "lastmile_worker_ready 1.0",
                "lastmile_worker_partitions_assigned",
                "lastmile_worker_fold_duration_seconds_bucket",
                "process_cpu_seconds_total",
            ):
                assert name in metrics, name

            # Stopped, it answers nothing; continued, it is ready again.
            worker.signal(signal.SIGSTOP)
            assert status(f"{base}/readyz") is None
            worker.signal(signal.SIGCONT)
            wait(lambda: status(f"{base}/readyz") == 200, 30, "ready after SIGCONT")

            # Records wait while Redis lets nothing be applied: not ready, saying why; ready again once it folds.
            redis_proc.signal(signal.SIGSTOP)
            now = datetime.now(UTC)
            village = sorted(sample_villages(lambda row: row["areaCode"] == "140322"))[0]
            raw = {
                "event_id": "h-1",
                "carrier": "sf",
                "waybill": "W1",
                "event_type": "delivered",
                "location_code": village,
                "occurred_at": (now - timedelta(hours=1)).isoformat(),
            }
            event = scan.validate(raw, now=now)
            assert isinstance(event, scan.ScanEvent)
            asyncio.run(publish(own, event))
            wait(lambda: status(f"{base}/readyz") == 503, 30, "not ready")
            r = httpx.get(f"{base}/readyz")
            assert r.headers["content-type"] == problem.MEDIA_TYPE
            body = r.json()
            assert body["records_behind"] == 1 and "not folding" in body["detail"], body
            assert "lastmile_worker_ready 0.0" in httpx.get(f"{base}/metrics").text
            redis_proc.signal(signal.SIGCONT)
            wait(lambda: status(f"{base}/readyz") == 200, 60, "ready once folding")
            assert httpx.get(f"{base}/readyz").json()["records_behind"] == 0
            folded = httpx.get(f"{base}/metrics").text
            assert "lastmile_worker_events_applied_total 1.0" in folded
            assert "lastmile_worker_fold_duration_seconds_count 0.0" not in folded  # the batch was timed
        finally:
            worker.signal(signal.SIGCONT)
            worker.stop()
    finally:
        redis_proc.signal(signal.SIGCONT)
        redis_proc.stop()
