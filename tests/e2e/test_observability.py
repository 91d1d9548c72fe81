"""The shipped alert rules, fired through a real Prometheus (Debian's) scraping the real services, each by its fault.

One stack for the module, with a broker and a redis-server of its own (both are frozen here). Prometheus loads
ops/prometheus/alerts.yml with every `for:` shortened and nothing else changed, and sends to a real Alertmanager
loaded with ops/alertmanager/alertmanager.yml. Each test injects one fault, waits for its alerts to fire, and
heals the stack; the Grafana board's queries are checked against a real scrape.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from aiokafka import AIOKafkaProducer

from lastmile.settings import Settings
from lastmile.topics import ensure_topics
from lastmile_dev import devstack
from lastmile_dev.devstack import Proc
from tests.support import REPO, isolated
from tests.support.services import load_sample_registry, sample_villages, service_env, start, wait, wait_ready

pytestmark = pytest.mark.e2e

OPS = REPO / "ops"
CARRIER_TOKEN = "observability-carrier-token-0123456789"
REGULATOR_TOKEN = "observability-regulator-token-0123456789"
MAXMEMORY = 1 << 30  # ops run Redis with a limit (the headroom metrics exist only with one)
FOR = "3s"  # every rule's `for:` in this test; the expressions are the shipped ones
SCRAPE_S = 3  # above the coverage API's 2 s broker timeout, so its scrape answers while the broker is frozen
VILLAGES = sorted(sample_villages(lambda row: row["areaCode"] == "140322"))


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/bootstrap installs Debian's prometheus and alertmanager")
    return path


@dataclass
class Observed:
    settings: Settings
    ingest: str
    coverage: str
    worker_url: str
    prometheus: str
    alertmanager: str
    broker: Proc
    worker: Proc
    redis: redis.Redis
    posted: int = 0

    def post(self, n: int = 5) -> int:
        """Posts ``n`` scans over HTTP; the status ingest answered."""
        now = datetime.now(UTC) - timedelta(minutes=5)
        events = [
            {
                "event_id": f"obs-{self.posted + i}",
                "carrier": "sf",
                "waybill": f"OBS{self.posted + i:08d}",
                "event_type": "delivered",
                "location_code": VILLAGES[(self.posted + i) % len(VILLAGES)],
                "occurred_at": now.isoformat(),
            }
            for i in range(n)
        ]
        self.posted += n
        r = httpx.post(
            f"{self.ingest}/v1/scans",
            json={"events": events},
            headers={"Authorization": f"Bearer {CARRIER_TOKEN}"},
            timeout=30,
        )
        return r.status_code

    def alerts(self, state: str = "firing") -> dict[str, list[dict[str, str]]]:
        """Alert name -> the labels of each of its alerts in ``state``, from Prometheus's API."""
        data = httpx.get(f"{self.prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        out: dict[str, list[dict[str, str]]] = {}
        for alert in data:
            if alert["state"] == state:
                out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return out

    def fires(self, name: str, within: float = 60, **labels: str) -> None:
        def firing() -> bool:
            return any(labels.items() <= found.items() for found in self.alerts().get(name, []))

        wait(firing, within, f"{name} {labels or ''} to fire")

    def resolved(self, *names: str, within: float = 90) -> None:
        def cleared() -> bool:
            return not set(names) & (set(self.alerts()) | set(self.alerts("pending")))

        wait(cleared, within, f"{', '.join(names)} to resolve")

    def in_alertmanager(self, name: str) -> None:
        def there() -> bool:
            found = httpx.get(f"{self.alertmanager}/api/v2/alerts", timeout=5).json()
            return any(a["labels"]["alertname"] == name for a in found)

        wait(there, 30, f"{name} to reach Alertmanager")

    def stale(self) -> bool:
        r = httpx.get(f"{self.coverage}/v1/coverage", headers={"Authorization": f"Bearer {REGULATOR_TOKEN}"})
        assert r.status_code == 200, r.text
        stale: bool = r.json()["stale"]
        return stale

    def caught_up(self) -> bool:
        text = httpx.get(f"{self.coverage}/metrics", timeout=5).text
        return not re.search(r"^lastmile_consumer_lag_records\{[^}]*\} [1-9]", text, re.M)


def prometheus_config(observed_dir: Path, ports: dict[str, int]) -> Path:
    """The shipped prometheus.yml with local targets and the test's intervals; the shipped rules with `for:`
    shortened."""
    rules = yaml.safe_load((OPS / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("for") not in (None, "0m", "0s"):
                rule["for"] = FOR
    (observed_dir / "alerts.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"].update(scrape_interval=f"{SCRAPE_S}s", scrape_timeout=f"{SCRAPE_S}s", evaluation_interval="1s")
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{ports['alertmanager']}"]}]
    local = {"lastmile-ingest": "ingest", "lastmile-coverage": "coverage", "lastmile-worker": "worker"}
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[local[job['job_name']]]}"]}]
    path = observed_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    work = tmp_path_factory.mktemp("observed")
    broker, broker_url = devstack.start_broker(work / "broker")
    redis_proc, redis_url = devstack.start_redis(work / "redis")
    procs: list[Proc] = [broker, redis_proc]
    try:
        settings = isolated.settings(broker_url, redis_url, f"obs{uuid.uuid4().hex[:8]}")
        ports = {name: devstack.free_port() for name in ("ingest", "coverage", "worker", "prometheus", "alertmanager")}
        env = service_env(
            settings,
            INGEST_PORT=str(ports["ingest"]),
            COVERAGE_PORT=str(ports["coverage"]),
            WORKER_HTTP_PORT=str(ports["worker"]),
            INGEST_CARRIER_TOKENS=json.dumps({CARRIER_TOKEN: "sf"}),
            COVERAGE_REGULATOR_TOKENS=json.dumps({REGULATOR_TOKEN: ""}),
            INGEST_PUBLISH_TIMEOUT_SECONDS="1",
            WORKER_READY_STALL_SECONDS="2",
            COVERAGE_STALE_AFTER_SECONDS="3",
        )
        asyncio.run(ensure_topics(settings))
        load_sample_registry(env, work)
        services = {name: start(name, env, work) for name in ("ingest", "worker", "coverage")}
        procs += services.values()
        url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        wait_ready([(services["ingest"], url["ingest"]), (services["coverage"], url["coverage"])])
        wait_ready([(services["worker"], url["worker"])])

        am = Proc(
            "alertmanager",
            [
                binary("prometheus-alertmanager"),
                f"--config.file={OPS / 'alertmanager' / 'alertmanager.yml'}",
                f"--storage.path={work / 'am'}",
                f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
                "--cluster.listen-address=",  # one instance: no gossip port
            ],
            work / "alertmanager.log",
        ).start()
        procs.append(am)
        prom = Proc(
            "prometheus",
            [
                binary("prometheus"),
                f"--config.file={prometheus_config(work, ports)}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            ],
            work / "prometheus.log",
        ).start()
        procs.append(prom)
        am.wait_until(lambda: _ok(f"{url['alertmanager']}/-/ready"), 60, "/-/ready")
        prom.wait_until(lambda: _ok(f"{url['prometheus']}/-/ready"), 60, "/-/ready")
        client = redis.Redis.from_url(redis_url)
        client.config_set("maxmemory", str(MAXMEMORY))
        yield Observed(
            settings,
            url["ingest"],
            url["coverage"],
            url["worker"],
            url["prometheus"],
            url["alertmanager"],
            broker,
            services["worker"],
            client,
        )
        client.close()
    finally:
        for proc in reversed(procs):
            proc.signal(signal.SIGCONT)  # a frozen process cannot stop
            proc.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_shipped_configs_pass_promtool_and_amtool() -> None:
    for argv in (
        [binary("promtool"), "check", "config", str(OPS / "prometheus" / "prometheus.yml")],
        [binary("promtool"), "check", "rules", str(OPS / "prometheus" / "alerts.yml")],
        [binary("amtool"), "check-config", str(OPS / "alertmanager" / "alertmanager.yml")],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_healthy_stack_fires_nothing_and_every_rule_evaluates(observed: Observed) -> None:
    def all_up() -> bool:
        targets = httpx.get(f"{observed.prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return len(targets) == 3 and all(t["health"] == "up" for t in targets)

    wait(all_up, 60, "Prometheus to scrape ingest, worker and coverage")
    assert observed.post() == 202
    wait(observed.caught_up, 60, "the worker to fold the scans")
    time.sleep(3 * SCRAPE_S)  # several scrapes and evaluations of a healthy stack
    groups = httpx.get(f"{observed.prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    shipped = yaml.safe_load((OPS / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    assert {r["name"] for r in rules} == {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert observed.alerts() == {} and observed.alerts("pending") == {}
    assert observed.stale() is False


def test_a_dead_letter_fires_dead_letters_rising(observed: Observed) -> None:
    async def garbage() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=observed.settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(observed.settings.scan_topic, b"not a record ingest wrote", partition=0)
        finally:
            await producer.stop()

    asyncio.run(garbage())
    observed.fires("LastmileDeadLettersRising")
    observed.in_alertmanager("LastmileDeadLettersRising")


def test_a_stopped_worker_fires_service_down_lag_growing_and_figures_stale(observed: Observed) -> None:
    observed.worker.signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # carriers keep posting: the backlog grows
            assert observed.post() == 202
            firing = observed.alerts()
            if {"LastmileServiceDown", "LastmileConsumerLagGrowing", "LastmileFiguresStale"} <= set(firing):
                break
            time.sleep(1)
        observed.fires("LastmileServiceDown", within=1, job="lastmile-worker")
        observed.fires("LastmileConsumerLagGrowing", within=1)
        observed.fires("LastmileFiguresStale", within=1)
        assert observed.stale() is True  # regulators are told too
        observed.in_alertmanager("LastmileFiguresStale")
    finally:
        observed.worker.signal(signal.SIGCONT)
    wait(observed.caught_up, 90, "the worker to catch up")
    observed.resolved("LastmileServiceDown", "LastmileConsumerLagGrowing", "LastmileFiguresStale")
    assert observed.stale() is False


def test_redis_at_maxmemory_fires_read_model_full_headroom_and_worker_not_folding(observed: Observed) -> None:
    observed.worker.signal(signal.SIGSTOP)
    try:
        assert observed.post() == 202  # accepted before Redis fills: it waits on the topic
        used = int(observed.redis.info("memory")["used_memory"])
        observed.redis.config_set("maxmemory", str(used // 2))  # below what it holds: every write is refused
    finally:
        observed.worker.signal(signal.SIGCONT)
    try:
        observed.fires("LastmileReadModelFull")
        observed.fires("LastmileRedisMemoryHeadroomLow")
        observed.fires("LastmileWorkerNotFolding")
        observed.in_alertmanager("LastmileReadModelFull")
    finally:
        observed.redis.config_set("maxmemory", str(MAXMEMORY))
    wait(observed.caught_up, 90, "the worker to fold what waited")
    observed.resolved("LastmileReadModelFull", "LastmileRedisMemoryHeadroomLow", "LastmileWorkerNotFolding")


def test_a_frozen_broker_fires_broker_unreachable_and_ingest_errors(observed: Observed) -> None:
    observed.broker.signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert observed.post() == 503  # the broker does not acknowledge
            if {"LastmileBrokerUnreachable", "LastmileIngestErrors"} <= set(observed.alerts()):
                break
        observed.fires("LastmileBrokerUnreachable", within=1)
        observed.fires("LastmileIngestErrors", within=1)
        # Regulators keep their figures: the coverage API stays ready without the broker.
        r = httpx.get(f"{observed.coverage}/readyz", timeout=10)
        assert r.status_code == 200 and r.json()["checks"]["broker"] != "ok", r.text
        observed.in_alertmanager("LastmileBrokerUnreachable")
    finally:
        observed.broker.signal(signal.SIGCONT)
    observed.resolved("LastmileBrokerUnreachable")


def test_every_grafana_panel_queries_metrics_the_services_export(observed: Observed) -> None:
    board = json.loads((OPS / "grafana" / "dashboards" / "lastmile.json").read_text(encoding="utf-8"))
    exported = {"up"}  # Prometheus's own, per target
    for base in (observed.ingest, observed.coverage, observed.worker_url):
        for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 20
    for expr in queries:
        metrics = set(re.findall(r"\b((?:lastmile|process)_[a-z0-9_]+|up)\b", expr))
        assert metrics, expr
        assert metrics <= exported, f"{expr}: {sorted(metrics - exported)} not exported"
        r = httpx.get(f"{observed.prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert r["status"] == "success", (expr, r)
