"""`lastmile run` (what `make run` calls): the whole pipeline on this machine, stopped cleanly on Ctrl-C.

Starts the embedded broker and a redis-server with persistence (unless LASTMILE_KAFKA_BOOTSTRAP_SERVERS /
LASTMILE_REDIS_URL point at servers of your own), loads the registry, then the ingest API, the worker and the
coverage API as child processes with the same settings a container would get.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

from lastmile.cli import STACK_FILE
from lastmile.settings import PREFIX, Settings, lookup
from lastmile_dev import devstack
from lastmile_dev.devstack import Proc, StackError

DEV_CARRIER = "demo"
PREFERRED_BROKER_PORT = 9092
PREFERRED_REDIS_PORT = 6380
RESTARTABLE = frozenset({"ingest", "worker", "coverage"})
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_SECONDS = 60.0


def _port(preferred: int) -> int:
    return preferred if not devstack.port_open("127.0.0.1", preferred) else devstack.free_port()


def _dev_token(data_dir: Path, name: str = "carrier-token") -> str:
    """A token kept across runs in DATA_DIR/<name> (carrier-token, regulator-token), so scripts can read it."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def _env_for(settings: Settings, tokens_file: Path | None, regulator_tokens_file: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            PREFIX + "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            PREFIX + "REDIS_URL": settings.redis_url,
            PREFIX + "INGEST_PORT": str(settings.ingest_port),
            PREFIX + "COVERAGE_PORT": str(settings.coverage_port),
            PREFIX + "LOG_FORMAT": settings.log_format,
        }
    )
    if tokens_file is not None:
        env[PREFIX + "INGEST_CARRIER_TOKENS_FILE"] = str(tokens_file)
    if regulator_tokens_file is not None:
        env[PREFIX + "COVERAGE_REGULATOR_TOKENS_FILE"] = str(regulator_tokens_file)
    return env


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def run_stack(settings: Settings, *, registry: Path, data_dir: Path) -> int:
    data_dir = data_dir.resolve()
    logs_dir = data_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []

    stack_file = data_dir / STACK_FILE.name

    def stop_all(*_: object) -> None:
        stack_file.unlink(missing_ok=True)
        for proc in reversed(procs):
            proc.stop()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a stack started in the background from a script inherits SIGINT as ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if not lookup(os.environ, "KAFKA_BOOTSTRAP_SERVERS"):
            broker, url = devstack.start_broker(logs_dir, _port(PREFERRED_BROKER_PORT))
            procs.append(broker)
            settings = settings.replace(kafka_bootstrap_servers=url)
        if not lookup(os.environ, "REDIS_URL"):
            redis_proc, url = devstack.start_redis(data_dir / "redis", _port(PREFERRED_REDIS_PORT))
            procs.append(redis_proc)
            settings = settings.replace(redis_url=url)
        settings = settings.replace(
            ingest_port=settings.ingest_port if not devstack.port_open("127.0.0.1", settings.ingest_port) else 0,
            coverage_port=settings.coverage_port if not devstack.port_open("127.0.0.1", settings.coverage_port) else 0,
        )
        if not settings.ingest_port or not settings.coverage_port:
            raise StackError("port 8000 or 8001 is taken; set LASTMILE_INGEST_PORT / LASTMILE_COVERAGE_PORT")

        tokens_file: Path | None = None
        token: str | None = None
        if not (settings.carrier_tokens or settings.carrier_tokens_file):
            token = _dev_token(data_dir)
            tokens_file = data_dir / "carrier-tokens.json"
            tokens_file.write_text(json.dumps({token: DEV_CARRIER}))
            tokens_file.chmod(0o600)
        # A national regulator token for the coverage API, unless LASTMILE_COVERAGE_REGULATOR_TOKENS(_FILE) name some.
        regulator_file: Path | None = None
        regulator_token: str | None = None
        if not (settings.regulator_tokens or settings.regulator_tokens_file):
            regulator_token = _dev_token(data_dir, "regulator-token")
            regulator_file = data_dir / "regulator-tokens.json"
            regulator_file.write_text(json.dumps({regulator_token: ""}))
            regulator_file.chmod(0o600)
        env = _env_for(settings, tokens_file, regulator_file)
        # Tools run beside the stack (`lastmile registry load ...` in another terminal) read this when their
        # environment names no broker or Redis; it goes when the stack stops.
        stack_file.write_text(
            "# the stack `lastmile run` (make run) started; removed when it stops\n"
            f"{PREFIX}KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}\n"
            f"{PREFIX}REDIS_URL={settings.redis_url}\n"
        )

        kept_registry = False
        for step in (["topics", "create"], ["registry", "load", str(registry), "--no-progress"]):
            setup = Proc(step[0], devstack.lastmile_command(*step), logs_dir / "setup.log", env=env).start()
            assert setup.popen is not None
            code = setup.popen.wait()
            setup.stop()
            # The data dir's Redis keeps what an earlier run held: a registry loaded into it since (the national one,
            # another edition) is kept rather than replaced by one that would remove its units (exit 2: unconfirmed).
            if code == 2 and step[0] == "registry":
                kept_registry = True
            elif code != 0:
                raise StackError(f"`lastmile {' '.join(step)}` failed; see {logs_dir / 'setup.log'}")

        ingest_url = f"http://127.0.0.1:{settings.ingest_port}"
        worker_url = f"http://127.0.0.1:{settings.worker_http_port}"
        coverage_url = f"http://127.0.0.1:{settings.coverage_port}"
        services: list[tuple[str, str | None]] = [("ingest", ingest_url), ("worker", None), ("coverage", coverage_url)]
        for name, ready_url in services:
            proc = Proc(name, devstack.lastmile_command(name), logs_dir / f"{name}.log", env=env).start()
            procs.append(proc)
            if ready_url is not None:
                proc.wait_until(lambda u=ready_url: _http_ok(f"{u}/readyz"), 60, "GET /readyz")  # type: ignore[misc]

        print(f"""
lastmile-coverage is running.
  ingest API    {ingest_url}   (OpenAPI: {ingest_url}/docs)
  coverage API  {coverage_url}   (OpenAPI: {coverage_url}/docs)
  dashboard     {coverage_url}/dashboard/   (sign in with a regulator token)
  worker        {worker_url}/readyz   (health; /metrics for Prometheus)
  broker        {settings.kafka_bootstrap_servers}
  redis         {settings.redis_url}  (data in {data_dir / "redis"})
  logs          {logs_dir}/
  tools         `.venv/bin/lastmile registry load national` (or rebuild, snapshot, dead-letters) in another
                terminal use this stack's broker and Redis ({stack_file})""")
        if kept_registry:
            print(
                f"  registry      the one Redis held is kept: loading {registry} would remove units from it "
                f"(`.venv/bin/lastmile registry load {registry} --yes` replaces it)"
            )
        if token is not None:
            print(f"  carrier token {token}  (carrier {DEV_CARRIER!r}; also in {data_dir / 'carrier-token'})")
        if regulator_token is not None:
            print(f"  regulator token {regulator_token}  (national; also in {data_dir / 'regulator-token'})")
        print("Press Ctrl-C to stop everything.\n", flush=True)

        restarts: list[float] = []
        while True:
            for i, proc in enumerate(procs):
                if proc.alive():
                    continue
                if proc.name not in RESTARTABLE:
                    raise StackError(f"{proc.name} stopped unexpectedly; log {proc.log_path}:\n{proc.log_tail()}")
                # Like a container's restart policy: a crashed service comes back; a crash loop stops all.
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < CRASH_LOOP_WINDOW_SECONDS] + [now]
                if len(restarts) > CRASH_LOOP_RESTARTS:
                    raise StackError(f"{proc.name} keeps crashing; log {proc.log_path}:\n{proc.log_tail()}")
                exit_code = proc.popen.returncode if proc.popen is not None else None
                print(f"{proc.name} exited (code {exit_code}); restarting it", flush=True)
                proc.stop()
                procs[i] = Proc(proc.name, proc.argv, proc.log_path, env=proc.env).start()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        stop_all()
        print("stopped.")
        return 0
    except StackError as exc:
        print(f"lastmile run: {exc}", file=sys.stderr)
        stop_all()
        return 1
    finally:
        stop_all()
