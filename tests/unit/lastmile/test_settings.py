"""Settings: every value checked when a process starts, each error naming its variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lastmile.settings import Settings, SettingsError, documented, resolve


def test_the_defaults_are_valid_and_documented() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://localhost:6379/0" and settings.snapshot_hour == 23
    assert [env for env, _, _ in documented()][:3] == [
        "LASTMILE_KAFKA_BOOTSTRAP_SERVERS",
        "LASTMILE_REDIS_URL",
        "LASTMILE_REDIS_KEY_PREFIX",
    ]
    assert all(help_ for _, _, help_ in documented())


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("LOG_LEVEL", "verbose", "LOG_LEVEL: 'verbose' is not valid"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT: 'xml' is not valid"),
        ("SNAPSHOT_HOUR", "99", "SNAPSHOT_HOUR: '99' is not valid: Input should be less than or equal to 23"),
        ("SNAPSHOT_HOUR", "noon", "SNAPSHOT_HOUR: 'noon' is not valid"),
        ("INGEST_PORT", "70000", "INGEST_PORT: '70000' is not valid"),
        ("WORKER_BATCH_MAX", "0", "WORKER_BATCH_MAX: '0' is not valid"),
        ("DEDUP_WINDOW_HOURS", "-1", "DEDUP_WINDOW_HOURS: '-1' is not valid"),
        ("LAPSE_WINDOW_DAYS", "inf", "LAPSE_WINDOW_DAYS: 'inf' is not valid"),
        ("COVERAGE_FIGURES_MAX_AGE_SECONDS", "nan", "COVERAGE_FIGURES_MAX_AGE_SECONDS: 'nan' is not valid"),
        ("KAFKA_ENABLE_IDEMPOTENCE", "perhaps", "KAFKA_ENABLE_IDEMPOTENCE: 'perhaps' is not valid"),
        ("PRIORITY_POPULATION_TIERS", "2500,lots", "PRIORITY_POPULATION_TIERS: '2500,lots' is not valid"),
        ("PRIORITY_POPULATION_TIERS", "0", "is not a comma-separated list of positive whole numbers"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL: 'localhost:6379' is not valid"),
        ("REDIS_KEY_PREFIX", "a b", "REDIS_KEY_PREFIX: 'a b' is not valid"),
        ("REDIS_CLUSTER_NODES", "redis://a:6379", "REDIS_CLUSTER_NODES: 'redis://a:6379' is not valid"),
        ("REDIS_CLUSTER_NODES", "a:6379,b", "REDIS_CLUSTER_NODES: 'a:6379,b' is not valid"),
        (
            "INGEST_CARRIER_TOKENS",
            "{not json",
            "INGEST_CARRIER_TOKENS: (value not shown: it holds tokens) is not valid",
        ),
        ("COVERAGE_REGULATOR_TOKENS", '{"short": ""}', "shorter than 16 characters"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value})
    assert str(raised.value).startswith(f"{variable}: ") and says in str(raised.value), str(raised.value)


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"LOG_LEVEL": "loud", "SNAPSHOT_HOUR": "25"})
    assert "LOG_LEVEL" in str(raised.value) and "SNAPSHOT_HOUR" in str(raised.value)


def test_values_are_read_as_the_environment_gives_them() -> None:
    settings = Settings.from_env(
        {"LOG_LEVEL": "debug", "KAFKA_ENABLE_IDEMPOTENCE": "yes", "SNAPSHOT_HOUR": "0", "WORKER_GROUP_ID": "g"}
    )
    assert (settings.log_level, settings.kafka_enable_idempotence, settings.snapshot_hour) == ("DEBUG", True, 0)
    assert settings.consumer_group == "g"
    assert Settings.from_env({"SNAPSHOT_HOUR": ""}).snapshot_hour == 23  # empty: the default


def test_an_env_file_fills_in_what_the_environment_does_not_set(tmp_path: Path) -> None:
    stack = tmp_path / "lastmile.env"
    stack.write_text("# written by lastmile run\nREDIS_URL=redis://127.0.0.1:6380/0\nKAFKA_BOOTSTRAP_SERVERS=h:1\n")
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "mine:9092"}, env_file=stack)
    assert (settings.redis_url, settings.kafka_bootstrap_servers) == ("redis://127.0.0.1:6380/0", "mine:9092")


def test_replace_checks_the_new_values() -> None:
    settings = Settings.from_env({})
    assert settings.replace(snapshot_hour=5).snapshot_hour == 5
    with pytest.raises(SettingsError, match="SNAPSHOT_HOUR"):
        settings.replace(snapshot_hour=24)


def test_the_cli_stops_at_start_naming_the_variable() -> None:
    env = {"PATH": "/usr/bin:/bin", "LOG_LEVEL": "verbose"}
    done = subprocess.run(
        [sys.executable, "-m", "lastmile.cli", "topics", "create"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.startswith("lastmile: LOG_LEVEL: 'verbose' is not valid"), done.stderr


def test_to_env_gives_the_same_settings_back() -> None:
    settings = Settings.from_env(
        {"LASTMILE_SNAPSHOT_HOUR": "4", "LASTMILE_KAFKA_ENABLE_IDEMPOTENCE": "true", "LASTMILE_LOG_LEVEL": "debug"}
    )
    assert Settings.from_env(settings.to_env()) == settings
    assert (
        settings.to_env()["LASTMILE_KAFKA_ENABLE_IDEMPOTENCE"] == "true"
        and settings.to_env()["LASTMILE_WORKER_GROUP_ID"]
    )


def test_the_old_names_still_work_with_a_deprecation_notice_and_the_new_ones_win() -> None:
    old = {"SNAPSHOT_HOUR": "4", "REDIS_URL": "redis://old:6379/0", "LASTMILE_REDIS_URL": "redis://new:6379/0"}
    settings = Settings.from_env(old)
    assert settings.snapshot_hour == 4 and settings.redis_url == "redis://new:6379/0"
    _, source, notices = resolve(old)
    assert source == {"LASTMILE_SNAPSHOT_HOUR": "SNAPSHOT_HOUR", "LASTMILE_REDIS_URL": "LASTMILE_REDIS_URL"}
    assert notices == [
        "SNAPSHOT_HOUR is deprecated: set LASTMILE_SNAPSHOT_HOUR instead (the old name is read until the next release)"
    ]
    # An error names the variable as it was set.
    with pytest.raises(SettingsError, match=r"^SNAPSHOT_HOUR: '99' is not valid"):
        Settings.from_env({"SNAPSHOT_HOUR": "99"})
    with pytest.raises(SettingsError, match=r"^LASTMILE_SNAPSHOT_HOUR: '99' is not valid"):
        Settings.from_env({"LASTMILE_SNAPSHOT_HOUR": "99"})


def test_kubernetes_service_links_under_port_names_old_or_new_are_ignored() -> None:
    """A Service named `coverage` gives every pod COVERAGE_PORT=tcp://10.0.0.7:8001; it is not our port."""
    env = {"COVERAGE_PORT": "tcp://10.0.0.7:8001", "INGEST_PORT": "udp://10.0.0.8:8000", "LASTMILE_INGEST_PORT": "9000"}
    settings = Settings.from_env(env)
    assert (settings.coverage_port, settings.ingest_port) == (8001, 9000)
    notices = resolve(env)[2]
    assert notices == [
        "COVERAGE_PORT='tcp://10.0.0.7:8001' ignored: a Kubernetes service link, not a port (set "
        "LASTMILE_COVERAGE_PORT)"
    ]
    # A Service named `lastmile-coverage` gives LASTMILE_COVERAGE_PORT=tcp://…: ignored too, the old name then read.
    env = {"LASTMILE_COVERAGE_PORT": "tcp://10.0.0.7:8001", "COVERAGE_PORT": "9001"}
    assert Settings.from_env(env).coverage_port == 9001
    assert resolve(env)[2][0].startswith("LASTMILE_COVERAGE_PORT='tcp://10.0.0.7:8001' ignored")
    assert Settings.from_env({"LASTMILE_INGEST_PORT": "tcp://10.0.0.8:8000"}).ingest_port == 8000


def test_a_password_in_redis_url_is_never_shown() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://user:s3cret@redis.internal:6379/0"})
    assert settings.redis_url_shown == "redis://user:***@redis.internal:6379/0"
    assert "s3cret" not in str(settings.describe())
    assert Settings.from_env({"REDIS_URL": "redis://:pw@h:1/0"}).redis_url_shown == "redis://:***@h:1/0"
    assert Settings.from_env({}).redis_url_shown == "redis://localhost:6379/0"


@pytest.mark.parametrize("variable", ["INGEST_CARRIER_TOKENS", "COVERAGE_REGULATOR_TOKENS"])
def test_a_bad_token_setting_never_shows_the_tokens(variable: str) -> None:
    secret = "a-real-secret-token-0123456789"
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: f'{{"{secret}": "sf", "short": "14"}}'})
    assert secret not in str(raised.value) and str(raised.value).startswith(f"{variable}: (value not shown")
