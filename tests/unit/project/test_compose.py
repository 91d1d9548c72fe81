"""docker-compose.yml, Dockerfile and .dockerignore, checked without Docker.

The compose file is parsed as YAML and held against the code it deploys: the CLI's subcommands
(lastmile.cli), the documented settings (lastmile.settings.documented()) and their defaults, and
Kafka's own rules for a KRaft node. Each test names the service and the value at fault.
"""

from __future__ import annotations

import base64
import inspect
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from lastmile import cli
from lastmile.settings import PREFIX, Settings, parse_token_map
from lastmile_dev import devstack
from tests.support import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

INFRA = ("kafka", "redis")
ONE_SHOT = "init"
CLUSTER_NODES = ("redis-node-1", "redis-node-2", "redis-node-3")  # the profile `cluster`
CLUSTER_ONE_SHOT = "redis-cluster"
LASTMILE_SERVICES = ("init", "ingest", "worker", "coverage")
OBSERVABILITY = ("prometheus", "alertmanager", "grafana")  # the profile `observability`
LONG_RUNNING = ("ingest", "worker", "coverage")
REGISTRY_MOUNT = "/app/registry"

# Each service's lastmile command line(s), subcommand words first.
EXPECTED_COMMANDS = {
    "init": [["topics", "create"], ["registry", "load", REGISTRY_MOUNT]],
    "ingest": [["ingest"]],
    "worker": [["worker"]],
    "coverage": [["coverage"]],
}
# Which setting gives each API's port, and which its bind address.
API_PORT_SETTING = {"ingest": "INGEST_PORT", "coverage": "COVERAGE_PORT"}
API_HOST_SETTING = {"ingest": "INGEST_HOST", "coverage": "COVERAGE_HOST"}
# The ports each long-running service answers /readyz on (the worker's only on the compose network).
READYZ_PORT_SETTING = {**API_PORT_SETTING, "worker": "WORKER_HTTP_PORT"}
# Dependencies each service cannot start without (more are allowed).
REQUIRED_DEPENDENCIES = {
    "init": {"kafka", "redis"},
    "ingest": {"kafka", "redis", "init"},
    "worker": {"kafka", "redis", "init"},
    "coverage": {"redis", "init"},
}
# Settings that must have the same value in every service, or they talk past each other.
MUST_AGREE = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "REDIS_URL",
    "REDIS_CLUSTER_NODES",
    "REDIS_KEY_PREFIX",
    "SCAN_TOPIC",
    "DEAD_LETTER_TOPIC",
    "SCAN_TOPIC_PARTITIONS",
    "KAFKA_REPLICATION_FACTOR",
    "WORKER_GROUP_ID",
)


# -- helpers ---------------------------------------------------------------------------------------


def documented_defaults() -> dict[str, str]:
    from lastmile.settings import documented

    return {env: default for env, default, _help in documented()}


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} and $$, as if no host variable were set."""

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return m.group("default") or ""

    return _INTERPOLATION.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services: in docker-compose.yml"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def raw_environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in raw_environment(service).items() if v is not None}


def effective(service: dict[str, Any], name: str) -> str:
    """The value a service sees for a setting: its environment's, else the setting's default."""
    name = PREFIX + name  # the settings' names here are short: `INGEST_PORT`
    return environment(service).get(name, documented_defaults()[name])


def built_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if "build" in s}


def as_list(command: Any) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def lastmile_commands(name: str, service: dict[str, Any]) -> list[list[str]]:
    """The argv (after `lastmile`) of each lastmile command a service runs."""
    entrypoint = as_list(service.get("entrypoint"))
    command = as_list(service.get("command"))
    if not entrypoint:  # the image's ENTRYPOINT ["lastmile"]
        return [command]
    assert entrypoint[0] in ("/bin/sh", "sh") and entrypoint[-1].startswith("-") and "c" in entrypoint[-1], (
        f"{name}: an overridden entrypoint must be a shell running lastmile commands, got {entrypoint}"
    )
    assert len(command) == 1, f"{name}: a shell entrypoint takes one script as its command, got {command}"
    argvs = []
    for line in command[0].splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        assert words[0] == "lastmile", f"{name}: script line {line!r} does not run lastmile"
        argvs.append(words[1:])
    return argvs


def subcommand_words(argv: list[str]) -> list[str]:
    """argv without its options (words starting with '-')."""
    return [w for w in argv if not w.startswith("-")]


def healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return test if isinstance(test, str) else " ".join(str(t) for t in (test or []))


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host_ip, host_port, container_port) for each published port."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), int(port["published"]), int(port["target"])))
            continue
        spec = str(port).split("/")[0]
        parts = spec.rsplit(":", 2)
        assert len(parts) >= 2, f"port {port!r} publishes no host port"
        host_ip = parts[0] if len(parts) == 3 else ""
        out.append((host_ip, int(parts[-2]), int(parts[-1])))
    return out


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host, int(port)


# -- services and their commands ---------------------------------------------------------------------


def test_the_expected_services_exist_and_lastmile_ones_are_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    assert set(services) == {*INFRA, *LASTMILE_SERVICES, *CLUSTER_NODES, CLUSTER_ONE_SHOT, *OBSERVABILITY}
    assert set(built_services(services)) == set(LASTMILE_SERVICES)
    for name, service in built_services(services).items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (REPO / context / dockerfile).resolve() == DOCKERFILE, f"{name} is not built from ./Dockerfile"


def test_every_command_is_one_the_image_has(services: dict[str, Any]) -> None:
    """Each command parses with the real CLI, and is not a development command (lastmile_dev, not in the image)."""
    parser = cli.parser()
    for name, service in built_services(services).items():
        argvs = lastmile_commands(name, service)
        assert argvs, f"{name} runs no lastmile command"
        for argv in argvs:
            assert argv, f"{name} runs bare `lastmile`"
            try:
                handler = parser.parse_args(argv).handler
            except SystemExit:
                raise AssertionError(f"{name} runs `lastmile {' '.join(argv)}`, which the CLI refuses") from None
            assert not handler.__module__.startswith("lastmile_dev"), f"{name} runs a development command {argv}"


def test_each_service_runs_its_role(services: dict[str, Any]) -> None:
    actual = {
        name: [subcommand_words(a) for a in lastmile_commands(name, s)] for name, s in built_services(services).items()
    }
    assert actual == EXPECTED_COMMANDS


def test_the_cli_accepts_every_command_line_of_the_compose_file(
    services: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command line, with --help added, gets through the real argparse parser (exit 0, not 2)."""
    from lastmile.cli import main

    takes_argv = bool(inspect.signature(main).parameters)
    for name, service in built_services(services).items():
        for argv in lastmile_commands(name, service):
            probe = [*argv, "--help"]
            monkeypatch.setattr("sys.argv", ["lastmile", *probe])
            with pytest.raises(SystemExit) as stopped:
                main(probe) if takes_argv else main()
            err = capsys.readouterr().err
            assert stopped.value.code in (0, None), f"{name}: `lastmile {' '.join(argv)}` is refused: {err}"


def test_registry_load_reads_the_bind_mounted_registry_defaulting_to_the_sample(services: dict[str, Any]) -> None:
    init = services[ONE_SHOT]
    mounts = [m for m in init.get("volumes") or [] if isinstance(m, dict) and m.get("target") == REGISTRY_MOUNT]
    assert len(mounts) == 1, f"init needs one long-syntax bind mount at {REGISTRY_MOUNT}, has {init.get('volumes')}"
    mount = mounts[0]
    assert mount["type"] == "bind"
    assert mount.get("read_only") is True, "the registry is mounted writable"
    assert "${REGISTRY_DIR" in mount["source"], f"the registry source {mount['source']!r} cannot be set by REGISTRY_DIR"
    default = REPO / interpolate(mount["source"])
    assert default.resolve() == (REPO / "lastmile" / "registry_data" / "sample").resolve(), (
        f"default registry is {default}"
    )
    assert sorted(p.name for p in default.glob("*.csv")), f"no sample registry CSVs in {default}"


def test_only_the_one_shot_init_overrides_the_entrypoint(services: dict[str, Any]) -> None:
    overriding = {name for name, s in built_services(services).items() if "entrypoint" in s}
    assert overriding <= {ONE_SHOT}, f"{overriding - {ONE_SHOT}} bypass the image's `lastmile` entrypoint"


# -- environment ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LASTMILE_SERVICES)
def test_environment_holds_only_documented_settings_with_valid_values(services: dict[str, Any], name: str) -> None:
    service = services[name]
    assert "env_file" not in service, f"{name}: env_file hides variables from this check; use environment:"
    raw = raw_environment(service)
    undocumented = sorted(set(raw) - set(documented_defaults()))
    assert not undocumented, f"{name} sets {undocumented}, which are not in lastmile.settings.documented()"
    not_strings = {k: v for k, v in raw.items() if not isinstance(v, str)}
    assert not not_strings, f"{name}: quote these values, YAML turns them into non-strings: {not_strings}"
    Settings.from_env(environment(service))  # raises SettingsError naming the variable


def test_settings_that_must_agree_are_the_same_in_every_service(services: dict[str, Any]) -> None:
    for setting in MUST_AGREE:
        values = {name: effective(services[name], setting) for name in LASTMILE_SERVICES}
        assert len(set(values.values())) == 1, f"{setting} differs between services: {values}"


def test_services_reach_kafka_on_its_internal_listener_and_redis_by_service_name(services: dict[str, Any]) -> None:
    kafka_env = environment(services["kafka"])
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    internal = advertised[kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    redis_port = [target for _ip, _host, target in published(services["redis"])] or [6379]
    for name in LASTMILE_SERVICES:
        servers = [host_port(s) for s in effective(services[name], "KAFKA_BOOTSTRAP_SERVERS").split(",")]
        assert servers == [internal], f"{name}: KAFKA_BOOTSTRAP_SERVERS {servers}, the internal listener is {internal}"
        url = urlsplit(effective(services[name], "REDIS_URL"))
        assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", redis_port[0]), (
            f"{name}: REDIS_URL {url.geturl()} is not the redis service"
        )


def test_apis_bind_all_interfaces_inside_their_containers(services: dict[str, Any]) -> None:
    for name, setting in API_HOST_SETTING.items():
        assert effective(services[name], setting) == "0.0.0.0", f"{name}: {setting} must be 0.0.0.0"


def test_real_kafka_gets_idempotent_producers(services: dict[str, Any]) -> None:
    for name in ("ingest", "worker"):
        settings = Settings.from_env(environment(services[name]))
        assert settings.kafka_enable_idempotence is True, f"{name}: KAFKA_ENABLE_IDEMPOTENCE is not on"


def test_carrier_tokens_come_from_a_compose_secret_file(compose: dict[str, Any], services: dict[str, Any]) -> None:
    for name in LASTMILE_SERVICES:
        assert "INGEST_CARRIER_TOKENS" not in raw_environment(services[name]), f"{name}: tokens inline in compose"
    ingest = services["ingest"]
    path = effective(ingest, "INGEST_CARRIER_TOKENS_FILE")
    match = re.fullmatch(r"/run/secrets/([A-Za-z0-9_.-]+)", path)
    assert match, f"ingest: INGEST_CARRIER_TOKENS_FILE {path!r} is not under /run/secrets/"
    secret = match.group(1)
    granted = [s if isinstance(s, str) else s.get("source") for s in ingest.get("secrets") or []]
    assert secret in granted, f"ingest reads secret {secret!r} but is granted only {granted}"
    source = (compose.get("secrets") or {}).get(secret, {}).get("file", "")
    assert source, f"secret {secret!r} is not defined with a file: at the top level"
    assert Path(source).parent == Path("secrets") and "example" not in source, f"secret file {source!r}"
    example = REPO / "secrets" / "carrier-tokens.example.json"
    assert parse_token_map(str(example), example.read_text(encoding="utf-8")), "the example holds no token"


def test_every_secret_file_is_made_by_the_first_run_target_and_documented(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """A fresh clone has no secrets/*.json (git-ignored): `make compose-secrets` makes every file compose mounts,
    each a token map the services accept, readable by the services' uid; the compose header and the docs say so."""
    files = sorted(Path(s["file"]).name for s in (compose.get("secrets") or {}).values())
    assert files == ["carrier-tokens.json", "grafana-admin-password", "regulator-tokens.json"]
    made = tmp_path / "secrets"
    script = REPO / "scripts" / "compose-secrets"
    env = {"PATH": "/usr/bin:/bin", "SECRETS_DIR": str(made)}
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
    first = {name: (made / name).read_text() for name in files}
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)  # keeps what the first made
    assert sorted(p.name for p in made.iterdir()) == files
    for name in files:
        path = made / name
        assert path.read_text() == first[name], f"{name} was overwritten"
        assert path.stat().st_mode & 0o777 == 0o644, f"{name} is not readable by uid 10001"
        if not name.endswith(".json"):
            assert len(path.read_text().strip()) >= 32, f"{name} is too short a password"
            continue
        tokens = parse_token_map(name, path.read_text())
        assert tokens and all(len(token) >= 32 for token in tokens), tokens
    assert Settings.from_env(
        {PREFIX + "COVERAGE_REGULATOR_TOKENS_FILE": str(made / "regulator-tokens.json")}
    ).regulator_token_map()
    assert "make compose-secrets" in COMPOSE_FILE.read_text(encoding="utf-8").split("\nname:")[0]
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "make compose-secrets" in operations and all(name in operations for name in files)


def test_the_observability_profile_scrapes_every_service_and_mounts_what_the_repo_holds(
    services: dict[str, Any],
) -> None:
    """Prometheus, Alertmanager and Grafana run only with `--profile observability`, published on loopback; what
    they mount exists in the repo, and Prometheus scrapes each lastmile service at the port it serves."""
    for name in OBSERVABILITY:
        service = services[name]
        assert service.get("profiles") == ["observability"], name
        assert ":" in service["image"] and not service["image"].endswith(":latest"), f"{name}: pin the image"
        assert all(ip == "127.0.0.1" for ip, _h, _c in published(service)), f"{name} must publish on loopback"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which the repo does not hold"
    config = yaml.safe_load((REPO / "ops" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    defaults = documented_defaults()
    scraped = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            scraped.update({host_port(t)[0]: host_port(t)[1] for t in static["targets"]})
        for dns in job.get("dns_sd_configs", []):
            scraped.update(dict.fromkeys(dns["names"], dns["port"]))
    assert scraped == {
        "ingest": int(defaults[PREFIX + "INGEST_PORT"]),
        "coverage": int(defaults[PREFIX + "COVERAGE_PORT"]),
        "worker": int(effective(services["worker"], "WORKER_HTTP_PORT")),
    }
    (alertmanager,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert host_port(alertmanager) == ("alertmanager", published(services["alertmanager"])[0][2])


# -- ports -------------------------------------------------------------------------------------------


def test_apis_publish_their_default_ports(services: dict[str, Any]) -> None:
    defaults = documented_defaults()
    for name, setting in API_PORT_SETTING.items():
        port = int(defaults[PREFIX + setting])
        assert int(effective(services[name], setting)) == port, f"{name}: {setting} is not its default {port}"
        assert [(h, c) for _ip, h, c in published(services[name])] == [(port, port)], (
            f"{name} publishes {published(services[name])}, expected {port}:{port}"
        )


def test_worker_and_init_publish_nothing(services: dict[str, Any]) -> None:
    for name in ("worker", ONE_SHOT):
        assert not published(services[name]), f"{name} publishes {published(services[name])}"


def test_infra_is_published_on_loopback_at_the_settings_defaults(services: dict[str, Any]) -> None:
    defaults = documented_defaults()
    (kafka_default,) = [host_port(s) for s in defaults[PREFIX + "KAFKA_BOOTSTRAP_SERVERS"].split(",")]
    redis_default = urlsplit(defaults[PREFIX + "REDIS_URL"]).port or 6379
    kafka_env = environment(services["kafka"])
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(kafka_env["KAFKA_LISTENERS"])
    host_listener = [n for n, address in advertised.items() if address == kafka_default]
    assert host_listener, f"no advertised listener is {kafka_default}, the default KAFKA_BOOTSTRAP_SERVERS"
    assert published(services["kafka"]) == [("127.0.0.1", kafka_default[1], bound[host_listener[0]][1])]
    assert published(services["redis"]) == [("127.0.0.1", redis_default, 6379)]


# -- health checks and start order ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [*INFRA, *CLUSTER_NODES, *LONG_RUNNING])
def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any], name: str) -> None:
    check = services[name].get("healthcheck") or {}
    assert not check.get("disable"), f"{name}: healthcheck disabled"
    test = check.get("test")
    assert test and test != ["NONE"], f"{name} has no healthcheck"
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test starts with {test[0]!r}"
        assert len(test) > 1 and all(test[1:]), f"{name}: empty healthcheck command {test}"


def test_the_one_shot_init_has_no_healthcheck_and_no_restart(services: dict[str, Any]) -> None:
    init = services[ONE_SHOT]
    assert "healthcheck" not in init, "init is a job, not a server: a healthcheck keeps it 'starting'"
    assert str(init.get("restart", "no")) == "no", f"init restarts: {init.get('restart')}"


@pytest.mark.parametrize("name", list(READYZ_PORT_SETTING))
def test_healthchecks_probe_readyz_on_the_service_port(services: dict[str, Any], name: str) -> None:
    port = int(effective(services[name], READYZ_PORT_SETTING[name]))
    text = healthcheck_text(services[name])
    assert f"http://127.0.0.1:{port}/readyz" in text or f"http://localhost:{port}/readyz" in text, (
        f"{name}: healthcheck {text!r} does not GET /readyz on port {port}"
    )
    assert "curl" not in text and "wget" not in text, f"{name}: the slim image has no curl or wget: {text!r}"


def test_infra_healthchecks_use_the_servers_own_clients(services: dict[str, Any]) -> None:
    redis_check = healthcheck_text(services["redis"])
    assert "redis-cli" in redis_check and "ping" in redis_check, f"redis healthcheck: {redis_check!r}"
    kafka_check = healthcheck_text(services["kafka"])
    assert re.search(r"kafka-(broker-api-versions|topics)\.sh", kafka_check), f"kafka healthcheck: {kafka_check!r}"
    match = re.search(r"--bootstrap-server\s+(\S+)", kafka_check)
    assert match, f"kafka healthcheck names no --bootstrap-server: {kafka_check!r}"
    target = host_port(match.group(1))
    ports = {port for _host, port in listeners(environment(services["kafka"])["KAFKA_LISTENERS"]).values()}
    assert target[1] in ports, f"kafka healthcheck probes port {target[1]}, not a listener port {ports}"


@pytest.mark.parametrize("name", LASTMILE_SERVICES)
def test_depends_on_waits_for_healthy_servers_and_a_finished_init(services: dict[str, Any], name: str) -> None:
    depends = services[name].get("depends_on") or {}
    assert isinstance(depends, dict), f"{name}: depends_on must be the long form with conditions, got {depends}"
    missing = REQUIRED_DEPENDENCIES[name] - set(depends)
    assert not missing, f"{name} does not wait for {sorted(missing)}"
    for target, spec in depends.items():
        want = "service_completed_successfully" if target in (ONE_SHOT, CLUSTER_ONE_SHOT) else "service_healthy"
        got = (spec or {}).get("condition")
        assert got == want, f"{name} -> {target}: condition {got!r}, want {want!r}"
        # A service of a profile that is off must not stop the others from starting.
        profiled = bool(services[target].get("profiles"))
        assert (spec or {}).get("required", True) is not profiled, (
            f"{name} -> {target}: required must be {not profiled}"
        )
        if want == "service_healthy":
            assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no healthcheck"


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a container_name makes `--scale worker=2` fail"
    assert not worker.get("ports"), "published ports make `--scale worker=2` fail"
    assert worker.get("restart") == "unless-stopped", f"worker restart: {worker.get('restart')!r}"


# -- Kafka and Redis ---------------------------------------------------------------------------------


def test_kafka_is_the_pinned_apache_image_in_kraft_combined_mode(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    env = environment(kafka)
    assert not any(k.startswith("KAFKA_ZOOKEEPER") for k in env), "ZooKeeper settings in KRaft mode"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "auto topic creation is on"
    cluster_id = env["CLUSTER_ID"]
    assert len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, (
        f"CLUSTER_ID {cluster_id!r} is not a base64url UUID (kafka-storage.sh random-uuid)"
    )


def test_kafka_listeners_and_quorum_are_coherent(services: dict[str, Any]) -> None:
    env = environment(services["kafka"])
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controllers = env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")

    assert set(bound) <= set(protocols), f"listeners {set(bound) - set(protocols)} have no security protocol"
    for name, (_host, port) in advertised.items():
        assert name in bound, f"advertised listener {name} is not among KAFKA_LISTENERS"
        assert bound[name][1] == port, f"{name} is advertised on port {port} but bound on {bound[name][1]}"
    for name in controllers:
        assert name in bound, f"controller listener {name} is not bound"
        assert name not in advertised, f"controller listener {name} is advertised to clients"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] not in controllers

    node_id = int(env["KAFKA_NODE_ID"])
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1, f"one combined node, but voters {voters}"
    voter_id, _, voter_address = voters[0].partition("@")
    voter_host, voter_port = host_port(voter_address)
    assert int(voter_id) == node_id, f"the only voter is {voter_id}, the node is {node_id}"
    assert voter_host in ("kafka", services["kafka"].get("hostname")), f"voter host {voter_host!r} is not this node"
    assert voter_port in {bound[name][1] for name in controllers}, f"voter port {voter_port} is no controller port"


def test_single_broker_replication_factors(services: dict[str, Any]) -> None:
    env = environment(services["kafka"])
    for setting in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert env.get(setting) == "1", f"{setting} is {env.get(setting)!r}; one broker cannot hold more replicas"
    for name in LASTMILE_SERVICES:
        factor = int(effective(services[name], "KAFKA_REPLICATION_FACTOR"))
        assert factor == 1, f"{name}: KAFKA_REPLICATION_FACTOR {factor} on a single broker"


def test_kafka_and_redis_keep_their_data_on_volumes(compose: dict[str, Any], services: dict[str, Any]) -> None:
    log_dirs = environment(services["kafka"])["KAFKA_LOG_DIRS"]
    for name, path in (("kafka", log_dirs), ("redis", "/data")):
        volumes = [str(v).rsplit(":", 1) for v in services[name].get("volumes") or [] if isinstance(v, str)]
        named = [src for src, dst in volumes if dst == path]
        assert named and named[0] in (compose.get("volumes") or {}), f"{name}: {path} is not on a named volume"


def test_redis_saves_snapshots_and_logs_no_writes(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7.2-alpine"
    args = as_list(redis.get("command"))
    assert args[0] == "redis-server", f"redis command {args}"
    options = dict(zip(args[1::2], args[2::2], strict=False))
    assert options.get("--appendonly") == "no" and options.get("--save"), options
    assert options.get("--maxmemory-policy", "noeviction") == "noeviction", "Redis may evict read-model keys"


# -- the cluster profile ---------------------------------------------------------------------------


def cluster_usage() -> str:
    """REDIS_CLUSTER_NODES as the compose file's header says to set it for the cluster profile."""
    found = re.findall(
        r"REDIS_CLUSTER_NODES=(\S+) docker compose --profile cluster up", COMPOSE_FILE.read_text("utf-8")
    )
    assert len(found) == 1, f"the header shows how to start the cluster profile once, found {found}"
    return str(found[0])


def test_the_cluster_profile_names_its_nodes_as_the_settings_read_them(services: dict[str, Any]) -> None:
    value = cluster_usage()
    nodes = Settings.from_env({"REDIS_CLUSTER_NODES": value}).redis_cluster  # raises SettingsError if unusable
    assert nodes == [(name, 6379) for name in CLUSTER_NODES], value
    for name in LASTMILE_SERVICES:  # handed on from the host, empty (the single redis) by default
        assert raw_environment(services[name]).get(PREFIX + "REDIS_CLUSTER_NODES") == "${REDIS_CLUSTER_NODES:-}", name


@pytest.mark.parametrize("name", CLUSTER_NODES)
def test_cluster_masters_run_the_read_model_settings_in_cluster_mode_on_their_own_volume(
    compose: dict[str, Any], services: dict[str, Any], name: str
) -> None:
    node = services[name]
    assert node.get("profiles") == ["cluster"], f"{name}: not only in the cluster profile"
    assert node["image"] == services["redis"]["image"], f"{name}: another Redis than the single one"
    args = as_list(node.get("command"))
    assert args[0] == "redis-server", args
    options = dict(zip(args[1::2], args[2::2], strict=False))
    redis_args = as_list(services["redis"]["command"])
    single = dict(zip(redis_args[1::2], redis_args[2::2], strict=True))
    assert {k: options.get(k) for k in single} == single, f"{name}: not the single redis's settings {single}"
    assert options.get("--cluster-enabled") == "yes", options
    # Clients are sent to the node's service name: its container IP changes when it restarts.
    assert options.get("--cluster-announce-hostname") == name, options
    assert options.get("--cluster-preferred-endpoint-type") == "hostname", options
    volumes = [str(v).rsplit(":", 1) for v in node.get("volumes") or []]
    assert next(src for src, dst in volumes if dst == "/data") in (compose.get("volumes") or {}), volumes
    assert not node.get("ports"), f"{name}: nodes announce service names, which the host cannot resolve"


def test_the_cluster_is_created_once_from_exactly_its_masters(services: dict[str, Any]) -> None:
    job = services[CLUSTER_ONE_SHOT]
    assert job.get("profiles") == ["cluster"] and str(job.get("restart", "no")) == "no"
    script = as_list(job.get("command"))[0]
    create = [line.split() for line in script.splitlines() if "--cluster create" in line]
    assert len(create) == 1, script
    words = create[0]
    assert words[words.index("create") + 1 : words.index("create") + 4] == [f"{n}:6379" for n in CLUSTER_NODES]
    assert words[words.index("--cluster-replicas") + 1] == "0"
    assert "cluster_state:ok" in script, "the job must wait for a working cluster, and leave a created one alone"
    assert set(job.get("depends_on") or {}) == set(CLUSTER_NODES)


# -- Dockerfile and .dockerignore -----------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_dockerfile_entrypoint_is_lastmile() -> None:
    final = dockerfile_stages()[-1]
    entrypoints = [args for instruction, args in final if instruction == "ENTRYPOINT"]
    assert entrypoints, "the final stage has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["lastmile"], f"ENTRYPOINT {entrypoints[-1]}"


def test_dockerfile_is_multi_stage_on_python_311_slim_with_a_clean_non_root_runtime() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "not a multi-stage build"
    for stage in stages:
        assert stage[0][1].split()[0] == "python:3.11-slim", f"stage base {stage[0][1]!r}"
    final = stages[-1]
    users = [args for instruction, args in final if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"the runtime runs as {users or 'root'}"
    runs = " ".join(args for instruction, args in final if instruction == "RUN")
    for tool in ("gcc", "build-essential", "libc6-dev", "pip install"):
        assert tool not in runs, f"the runtime stage runs {tool!r}; build in the build stage"
    assert any(i == "COPY" and a.startswith("--from=") for i, a in final), "the runtime copies nothing from the build"
    all_instructions = [instruction for stage in stages for instruction, _ in stage]
    assert "HEALTHCHECK" not in all_instructions, "health checks belong to the compose services, not the image"


def test_dockerfile_installs_from_the_hashed_lock_then_the_project_without_deps() -> None:
    runs = [args for stage in dockerfile_stages()[:-1] for instruction, args in stage if instruction == "RUN"]
    lock = [r for r in runs if "-r requirements-runtime.lock" in r]
    assert lock and "--require-hashes" in lock[0], f"the lock is not installed with --require-hashes: {lock}"
    project = [r for r in runs if re.search(r"pip install --no-deps \.(\s|$)", r)]
    assert project, "the project is not installed with `pip install --no-deps .`"
    assert runs.index(lock[0]) < runs.index(project[0]), "the project is installed before its locked dependencies"


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore must start by ignoring everything (an allowlist)"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied: set[str] = set()
    for stage in dockerfile_stages():
        for instruction, args in stage:
            if instruction in ("COPY", "ADD") and "--from=" not in args:
                words = [w for w in args.split() if not w.startswith("--")]
                copied.update(w.rstrip("/") for w in words[:-1])
    assert copied <= allowed, f"the Dockerfile copies {sorted(copied - allowed)}, which .dockerignore keeps out"
    assert not {"secrets", ".git", ".venv", ".run"} & allowed, "secrets or local state are let into the context"


def test_compose_redis_runs_with_the_read_model_settings_the_tests_and_bench_use(
    services: dict[str, dict[str, Any]],
) -> None:
    command = [str(part) for part in services["redis"]["command"]]
    config = list(devstack.READ_MODEL_CONFIG)
    assert any(command[i : i + len(config)] == config for i in range(len(command))), command
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
