"""Every setting, read from the environment in one place.

Each field's metadata names its environment variable and says what it does; the README's settings
table and the docker-compose test are generated from / checked against :func:`documented`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lastmile import divisions, names


class SettingsError(ValueError):
    """A setting is present but unusable; the message names the variable."""


def _env(name: str, help: str) -> dict[str, str]:
    return {"env": name, "help": help}


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = field(
        default="localhost:9092", metadata=_env("KAFKA_BOOTSTRAP_SERVERS", "Kafka bootstrap servers, host:port[,...]")
    )
    redis_url: str = field(
        default="redis://localhost:6379/0", metadata=_env("REDIS_URL", "Redis URL of the read model")
    )
    redis_key_prefix: str = field(default="lm", metadata=_env("REDIS_KEY_PREFIX", "Prefix of every Redis key"))
    scan_topic: str = field(default=names.SCAN_TOPIC, metadata=_env("SCAN_TOPIC", "Topic the scan events go to"))
    dead_letter_topic: str = field(
        default=names.DEAD_LETTER_TOPIC, metadata=_env("DEAD_LETTER_TOPIC", "Topic for records the worker cannot use")
    )
    scan_topic_partitions: int = field(
        default=8, metadata=_env("SCAN_TOPIC_PARTITIONS", "Partitions of the scan topic when it is created")
    )
    kafka_replication_factor: int = field(
        default=1, metadata=_env("KAFKA_REPLICATION_FACTOR", "Replication factor of topics created by lastmile")
    )
    kafka_enable_idempotence: bool = field(
        default=False,
        metadata=_env(
            "KAFKA_ENABLE_IDEMPOTENCE", "Idempotent producer (Apache Kafka yes; the embedded Tansu has none)"
        ),
    )
    consumer_group: str = field(
        default=names.CONSUMER_GROUP, metadata=_env("WORKER_GROUP_ID", "Consumer group (Faust app id) of the workers")
    )
    worker_batch_max: int = field(
        # Records, not events: an ingest record holds one POST's share of a partition (up to ~1,000 events),
        # and one Lua call blocks Redis for its whole length, so calls are kept well under a second.
        default=16,
        metadata=_env("WORKER_BATCH_MAX", "Most records the worker folds in one Redis call"),
    )
    worker_batch_within_seconds: float = field(
        default=0.05, metadata=_env("WORKER_BATCH_WITHIN_SECONDS", "Longest wait to fill a worker batch")
    )
    worker_session_timeout_seconds: float = field(
        default=10.0,
        metadata=_env("WORKER_SESSION_TIMEOUT_SECONDS", "How soon a dead worker's partitions move to another"),
    )
    dedup_window_hours: float = field(
        default=72.0,
        metadata=_env("DEDUP_WINDOW_HOURS", "How long a (carrier, event_id) is remembered to drop repeats"),
    )
    lapse_window_days: float = field(
        default=30.0,
        metadata=_env("LAPSE_WINDOW_DAYS", "A reached village not reached again for this long is lapsed (防回退)"),
    )
    priority_population_tiers: str = field(
        default="2500",
        metadata=_env("PRIORITY_POPULATION_TIERS", "Population thresholds for ?min_population=, comma-separated"),
    )
    ingest_host: str = field(default="127.0.0.1", metadata=_env("INGEST_HOST", "Address the ingest API binds"))
    ingest_port: int = field(default=8000, metadata=_env("INGEST_PORT", "Port of the ingest API"))
    coverage_host: str = field(default="127.0.0.1", metadata=_env("COVERAGE_HOST", "Address the coverage API binds"))
    coverage_port: int = field(default=8001, metadata=_env("COVERAGE_PORT", "Port of the coverage API"))
    carrier_tokens: str = field(
        default="",
        metadata=_env("INGEST_CARRIER_TOKENS", 'Carrier tokens, a JSON object {"<token>": "<carrier>"}'),
    )
    carrier_tokens_file: str = field(
        default="", metadata=_env("INGEST_CARRIER_TOKENS_FILE", "A file holding the same JSON object")
    )
    ingest_max_events: int = field(default=1000, metadata=_env("INGEST_MAX_EVENTS", "Most events in one POST"))
    ingest_max_body_bytes: int = field(
        default=4 * 1024 * 1024, metadata=_env("INGEST_MAX_BODY_BYTES", "Largest POST body accepted, in bytes")
    )
    ingest_publish_timeout_seconds: float = field(
        default=10.0,
        metadata=_env("INGEST_PUBLISH_TIMEOUT_SECONDS", "Longest wait for the broker's ack before answering 503"),
    )
    ingest_request_read_timeout_seconds: float = field(
        default=30.0,
        metadata=_env(
            "INGEST_REQUEST_READ_TIMEOUT_SECONDS",
            "A request must arrive whole (headers and body) within this many seconds of its first byte, else 408",
        ),
    )
    ingest_retry_after_seconds: int = field(
        default=5, metadata=_env("INGEST_RETRY_AFTER_SECONDS", "Retry-After sent with 503")
    )
    regulator_tokens: str = field(
        default="",
        metadata=_env(
            "COVERAGE_REGULATOR_TOKENS", 'Regulator tokens, a JSON object {"<token>": "<region prefix>"}, "" national'
        ),
    )
    regulator_tokens_file: str = field(
        default="", metadata=_env("COVERAGE_REGULATOR_TOKENS_FILE", "A file holding the same JSON object")
    )
    coverage_rate_limit_per_second: float = field(
        default=20.0,
        metadata=_env("COVERAGE_RATE_LIMIT_PER_SECOND", "Requests a regulator token may make per second (0: no limit)"),
    )
    coverage_rate_limit_burst: int = field(
        default=100, metadata=_env("COVERAGE_RATE_LIMIT_BURST", "Requests a regulator token may make in one burst")
    )
    coverage_cache_max_age_seconds: int = field(
        default=30, metadata=_env("COVERAGE_CACHE_MAX_AGE_SECONDS", "max-age of the coverage API's Cache-Control")
    )
    coverage_figures_max_age_seconds: float = field(
        default=0.5,
        metadata=_env(
            "COVERAGE_FIGURES_MAX_AGE_SECONDS",
            "Longest time the coverage API serves a computed region report from memory (0: no cache)",
        ),
    )
    coverage_server: str = field(
        default="aiohttp",
        metadata=_env("COVERAGE_SERVER", "HTTP server of the coverage API: aiohttp (C parser) or uvicorn"),
    )
    coverage_access_log: bool = field(
        default=False, metadata=_env("COVERAGE_ACCESS_LOG", "Log one line per coverage API request (costly under load)")
    )
    coverage_stream_poll_seconds: float = field(
        default=1.0, metadata=_env("COVERAGE_STREAM_POLL_SECONDS", "How often a live stream reads its figures")
    )
    coverage_stream_keepalive_seconds: float = field(
        default=15.0,
        metadata=_env("COVERAGE_STREAM_KEEPALIVE_SECONDS", "A live stream sends a keep-alive comment after this idle"),
    )
    coverage_streams_per_token: int = field(
        default=5, metadata=_env("COVERAGE_STREAMS_PER_TOKEN", "Live streams one regulator token may hold open")
    )
    coverage_targets: str = field(
        default="",
        metadata=_env(
            "COVERAGE_TARGETS",
            "Coverage milestones, JSON (README, Targets); empty: 2021-12-31 ≥ 0.90 and 2022-12-31 ≥ 1.00",
        ),
    )
    coverage_targets_file: str = field(
        default="", metadata=_env("COVERAGE_TARGETS_FILE", "A file holding the same JSON (instead of COVERAGE_TARGETS)")
    )
    snapshot_hour: int = field(
        default=23,
        metadata=_env(
            "SNAPSHOT_HOUR", "Hour (0-23, China Standard Time) from which the worker takes the daily snapshot"
        ),
    )
    subsidy_rules_file: str = field(
        default="",
        metadata=_env("SUBSIDY_RULES_FILE", "Subsidy rules, a JSON file; empty: the bundled 驿城区 2021 rules"),
    )
    log_level: str = field(default="INFO", metadata=_env("LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"))
    log_format: str = field(default="json", metadata=_env("LOG_FORMAT", "json (one object a line) or console"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.metadata["env"], f.type, raw)
        values.update(overrides)
        return cls(**values)

    @property
    def population_tiers(self) -> tuple[int, ...]:
        try:
            tiers = tuple(sorted({int(t) for t in self.priority_population_tiers.split(",") if t.strip()}))
        except ValueError:
            raise SettingsError(
                f"PRIORITY_POPULATION_TIERS: {self.priority_population_tiers!r} is not a list of whole numbers"
            ) from None
        if any(t <= 0 for t in tiers):
            raise SettingsError("PRIORITY_POPULATION_TIERS: thresholds must be positive")
        return tiers

    @property
    def lapse_window_ms(self) -> int:
        return round(self.lapse_window_days * 86_400_000)

    @property
    def dedup_window_seconds(self) -> int:
        return max(1, round(self.dedup_window_hours * 3600))

    def carrier_token_map(self) -> dict[str, str]:
        """Token -> carrier, from INGEST_CARRIER_TOKENS and INGEST_CARRIER_TOKENS_FILE (both may be set)."""
        tokens: dict[str, str] = {}
        sources = [("INGEST_CARRIER_TOKENS", self.carrier_tokens)]
        if self.carrier_tokens_file:
            try:
                text = Path(self.carrier_tokens_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(
                    f"INGEST_CARRIER_TOKENS_FILE: cannot read {self.carrier_tokens_file}: {exc}"
                ) from exc
            sources.append(("INGEST_CARRIER_TOKENS_FILE", text))
        for env, text in sources:
            if text.strip():
                tokens.update(parse_token_map(env, text))
        return tokens

    def regulator_token_map(self) -> dict[str, str]:
        """Token -> region prefix ("" national, else a 2/4/6/9-digit code), from COVERAGE_REGULATOR_TOKENS and
        COVERAGE_REGULATOR_TOKENS_FILE (both may be set)."""
        sources = [("COVERAGE_REGULATOR_TOKENS", self.regulator_tokens)]
        if self.regulator_tokens_file:
            try:
                text = Path(self.regulator_tokens_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(
                    f"COVERAGE_REGULATOR_TOKENS_FILE: cannot read {self.regulator_tokens_file}: {exc}"
                ) from exc
            sources.append(("COVERAGE_REGULATOR_TOKENS_FILE", text))
        tokens: dict[str, str] = {}
        for env, text in sources:
            if not text.strip():
                continue
            for token, prefix in parse_token_map(env, text).items():
                if prefix != "" and not divisions.is_region_code(prefix):
                    raise SettingsError(
                        f'{env}: region prefix {prefix!r} is not "" (national) or a 2, 4, 6 or 9-digit division code'
                    )
                tokens[token] = prefix
        return tokens


def parse_token_map(env: str, text: str) -> dict[str, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{env}: not a JSON object ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SettingsError(f'{env}: expected a JSON object of strings, {{"<token>": "<value>"}}')
    short = [v for k, v in data.items() if len(k) < 16]
    if short:
        raise SettingsError(f"{env}: the token for {short[0]!r} is shorter than 16 characters")
    return data


def _parse(env: str, type_: Any, raw: str) -> Any:
    kind = type_ if isinstance(type_, str) else type_.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(f"{env}: {raw!r} is not a valid {kind}") from None
    return raw


def documented() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting, for the README and the compose check."""
    return [(f.metadata["env"], str(f.default), f.metadata["help"]) for f in dataclasses.fields(Settings)]
