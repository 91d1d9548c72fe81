"""Every setting, read from the environment in one place (pydantic-settings), each checked when a process starts.

A field's alias is its environment variable (``LASTMILE_`` and its name; the name alone is read too, deprecated) and
its description the help text; docs/settings.md is generated from :func:`documented`. A bad value stops the process
with a message naming the variable (:class:`SettingsError`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from dotenv import dotenv_values
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from lastmile import divisions, names


class SettingsError(ValueError):
    """A setting is present but unusable; the message names the variable."""


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _tiers(text: str) -> str:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{text!r} is not a comma-separated list of positive whole numbers")
    return text


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _token_json(text: str) -> str:
    if text.strip():
        try:
            parse_token_map("", text)
        except SettingsError as exc:
            raise ValueError(str(exc).removeprefix(": ")) from None
    return text


PREFIX: Final = "LASTMILE_"
# What Kubernetes sets for a Service named like a setting: COVERAGE_PORT=tcp://10.0.0.7:8001 for `coverage`, and
# LASTMILE_COVERAGE_PORT for `lastmile-coverage`. Never a port of ours, so it is ignored under either name.
_SERVICE_LINK: Final = re.compile(r"^(tcp|udp|sctp)://")


def _env(name: str, default: Any, help: str, **constraints: Any) -> Any:
    return Field(default, validation_alias=PREFIX + name, description=help, **constraints)


def lookup(environ: Mapping[str, str], name: str) -> str | None:
    """The value ``environ`` gives setting ``name`` (``REDIS_URL``), read as :func:`resolve` reads it; None when it
    sets none."""
    return resolve(environ)[0].get(PREFIX + name)


def resolve(environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The settings ``environ`` sets, by their ``LASTMILE_`` names; the variable each was read from; and a notice
    for each old name read (deprecated) or ignored (a Kubernetes service link such as ``COVERAGE_PORT=tcp://…``)."""
    values: dict[str, str] = {}
    source: dict[str, str] = {}
    notices: list[str] = []
    for info in Settings.model_fields.values():
        name = str(info.validation_alias)
        old = name.removeprefix(PREFIX)
        for given in (name, old):
            value = environ.get(given, "")
            if value == "":
                continue
            if given.endswith("_PORT") and _SERVICE_LINK.match(value):
                notices.append(f"{given}={value!r} ignored: a Kubernetes service link, not a port (set {name})")
                continue
            values[name], source[name] = value, given
            if given == old:
                notices.append(f"{old} is deprecated: set {name} instead (the old name is read until the next release)")
            break
    return values, source, notices


# The read model keeps its per-day counts of last reaches this many days, so no longer window can be asked for.
MAX_LAPSE_WINDOW_DAYS: Final = 90

Positive = Annotated[float, Field(gt=0), AfterValidator(_finite)]
NonNegative = Annotated[float, Field(ge=0), AfterValidator(_finite)]
Port = Annotated[int, Field(ge=0, le=65535)]
TokenJson = Annotated[str, AfterValidator(_token_json)]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        env_ignore_empty=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        validate_default=True,
    )

    kafka_bootstrap_servers: str = _env(
        "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092", "Kafka bootstrap servers, host:port[,...]", min_length=1
    )
    redis_url: str = _env(
        "REDIS_URL", "redis://localhost:6379/0", "Redis URL of the read model", pattern=r"^(redis|rediss|unix)://"
    )
    redis_key_prefix: str = _env("REDIS_KEY_PREFIX", "lm", "Prefix of every Redis key", pattern=r"^[A-Za-z0-9_.-]+$")
    redis_cluster_nodes: str = _env(
        "REDIS_CLUSTER_NODES",
        "",
        "host:port[,...] of a Redis Cluster holding the read model, REDIS_URL giving its credentials and TLS"
        " (empty: the single Redis of REDIS_URL)",
        pattern=r"^\s*([^,:\s]+:\d{1,5}(\s*,\s*[^,:\s]+:\d{1,5})*)?\s*$",
    )
    scan_topic: str = _env("SCAN_TOPIC", names.SCAN_TOPIC, "Topic the scan events go to", min_length=1)
    dead_letter_topic: str = _env(
        "DEAD_LETTER_TOPIC", names.DEAD_LETTER_TOPIC, "Topic for records the worker cannot use", min_length=1
    )
    scan_topic_partitions: int = _env(
        "SCAN_TOPIC_PARTITIONS", 8, "Partitions of the scan topic when it is created", ge=1
    )
    kafka_replication_factor: int = _env(
        "KAFKA_REPLICATION_FACTOR", 1, "Replication factor of topics created by lastmile", ge=1
    )
    kafka_enable_idempotence: bool = _env(
        "KAFKA_ENABLE_IDEMPOTENCE", False, "Idempotent producer (Apache Kafka yes; the embedded Tansu has none)"
    )
    consumer_group: str = _env(
        "WORKER_GROUP_ID", names.CONSUMER_GROUP, "Consumer group (Faust app id) of the workers", min_length=1
    )
    # A record holds one POST's share of a partition (1 to ~1,000 events): records are taken by the hundred, and
    # folded in calls sized in events, since one Lua call blocks Redis's readers for its whole length.
    worker_batch_max: int = _env("WORKER_BATCH_MAX", 256, "Most records the worker takes from the topic at once", ge=1)
    worker_apply_events: int = _env(
        "WORKER_APPLY_EVENTS", 5_000, "Most events the worker folds in one Redis call (a bigger record: one call)", ge=1
    )
    worker_batch_within_seconds: Positive = _env(
        "WORKER_BATCH_WITHIN_SECONDS", 0.05, "Longest wait to fill a worker batch"
    )
    worker_session_timeout_seconds: Positive = _env(
        "WORKER_SESSION_TIMEOUT_SECONDS", 10.0, "How soon a dead worker's partitions move to another"
    )
    dedup_window_hours: Positive = _env(
        "DEDUP_WINDOW_HOURS", 72.0, "How long a (carrier, event_id) is remembered to drop repeats"
    )
    correction_window_days: int = _env(
        "CORRECTION_WINDOW_DAYS",
        7,
        "Days after the day it was accepted (China Standard Time) that a carrier may withdraw an event; the ledger "
        "this needs in Redis grows with it (docs/corrections.md)",
        ge=1,
    )
    worker_village_cache: int = _env(
        "WORKER_VILLAGE_CACHE",
        200_000,
        "Villages whose read-model state a worker keeps in memory, saving a Redis read per batch (0: none)",
        ge=0,
    )
    lapse_window_days: int = _env(
        "LAPSE_WINDOW_DAYS",
        30,
        "A reached village is active while reached on one of this many last days (China Standard Time, today "
        "included), else lapsed (防回退)",
        ge=1,
        le=MAX_LAPSE_WINDOW_DAYS,
    )
    priority_population_tiers: Annotated[str, AfterValidator(_tiers)] = _env(
        "PRIORITY_POPULATION_TIERS", "2500", "Population thresholds for ?min_population=, comma-separated"
    )
    ingest_max_backlog_records: int = _env(
        "INGEST_MAX_BACKLOG_RECORDS",
        20_000,
        "Records published but not yet folded past which POST /v1/scans answers 503 (0: never)",
        ge=0,
    )
    ingest_host: str = _env("INGEST_HOST", "127.0.0.1", "Address the ingest API binds")
    ingest_port: Port = _env("INGEST_PORT", 8000, "Port of the ingest API")
    coverage_host: str = _env("COVERAGE_HOST", "127.0.0.1", "Address the coverage API binds")
    coverage_port: Port = _env("COVERAGE_PORT", 8001, "Port of the coverage API")
    worker_http_host: str = _env(
        "WORKER_HTTP_HOST", "127.0.0.1", "Address the worker's health and metrics endpoint binds"
    )
    worker_http_port: Port = _env(
        "WORKER_HTTP_PORT", 8002, "Port of the worker's /healthz, /readyz and /metrics (0: no endpoint)"
    )
    worker_ready_stall_seconds: Positive = _env(
        "WORKER_READY_STALL_SECONDS",
        30.0,
        "A worker with records to fold and no batch applied for this long is not ready (/readyz 503)",
    )
    carrier_tokens: TokenJson = _env(
        "INGEST_CARRIER_TOKENS", "", 'Carrier tokens, a JSON object {"<token>": "<carrier>"}'
    )
    carrier_tokens_file: str = _env("INGEST_CARRIER_TOKENS_FILE", "", "A file holding the same JSON object")
    ingest_max_events: int = _env("INGEST_MAX_EVENTS", 1000, "Most events in one POST", ge=1)
    ingest_max_body_bytes: int = _env(
        "INGEST_MAX_BODY_BYTES", 4 * 1024 * 1024, "Largest POST body accepted, in bytes", ge=1
    )
    ingest_publish_timeout_seconds: Positive = _env(
        "INGEST_PUBLISH_TIMEOUT_SECONDS", 10.0, "Longest wait for the broker's ack before answering 503"
    )
    ingest_request_read_timeout_seconds: Positive = _env(
        "INGEST_REQUEST_READ_TIMEOUT_SECONDS",
        30.0,
        "A request must arrive whole (headers and body) within this many seconds of its first byte, else 408",
    )
    ingest_retry_after_seconds: int = _env("INGEST_RETRY_AFTER_SECONDS", 5, "Retry-After sent with 503", ge=1)
    regulator_tokens: TokenJson = _env(
        "COVERAGE_REGULATOR_TOKENS",
        "",
        'Regulator tokens, a JSON object {"<token>": "<region prefix>"}, "" national',
    )
    regulator_tokens_file: str = _env("COVERAGE_REGULATOR_TOKENS_FILE", "", "A file holding the same JSON object")
    coverage_rate_limit_per_second: NonNegative = _env(
        "COVERAGE_RATE_LIMIT_PER_SECOND", 20.0, "Requests a regulator token may make per second (0: no limit)"
    )
    coverage_rate_limit_burst: int = _env(
        "COVERAGE_RATE_LIMIT_BURST", 100, "Requests a regulator token may make in one burst", ge=1
    )
    coverage_cache_max_age_seconds: int = _env(
        "COVERAGE_CACHE_MAX_AGE_SECONDS", 30, "max-age of the coverage API's Cache-Control", ge=0
    )
    coverage_figures_max_age_seconds: NonNegative = _env(
        "COVERAGE_FIGURES_MAX_AGE_SECONDS",
        0.5,
        "Longest time the coverage API serves a computed region report from memory (0: no cache)",
    )
    coverage_stale_after_seconds: Positive = _env(
        "COVERAGE_STALE_AFTER_SECONDS",
        60.0,
        "Records have waited this long with no batch applied: documents say stale (lastmile_read_model_stale)",
    )
    coverage_audit_log: bool = _env(
        "COVERAGE_AUDIT_LOG",
        True,
        "Log every regulator read (token name, region, request, status; never the token) to the lastmile.audit logger",
    )
    coverage_access_log: bool = _env(
        "COVERAGE_ACCESS_LOG", False, "Log one line per coverage API request (costly under load)"
    )
    coverage_stream_poll_seconds: Positive = _env(
        "COVERAGE_STREAM_POLL_SECONDS",
        0.5,
        "How often the live streams of one region and filter read its figures (one read for all of them)",
    )
    coverage_stream_keepalive_seconds: Positive = _env(
        "COVERAGE_STREAM_KEEPALIVE_SECONDS", 15.0, "A live stream sends a keep-alive comment after this idle"
    )
    coverage_streams_per_token: int = _env(
        "COVERAGE_STREAMS_PER_TOKEN", 5, "Live streams one regulator token may hold open", ge=1
    )
    coverage_targets: str = _env(
        "COVERAGE_TARGETS",
        "",
        "Coverage milestones, JSON (docs: reports); empty: 2021-12-31 ≥ 0.90 and 2022-12-31 ≥ 1.00",
    )
    coverage_targets_file: str = _env(
        "COVERAGE_TARGETS_FILE", "", "A file holding the same JSON (instead of COVERAGE_TARGETS)"
    )
    snapshot_hour: int = _env(
        "SNAPSHOT_HOUR",
        23,
        "Hour (0-23, China Standard Time) from which the worker takes the daily snapshot",
        ge=0,
        le=23,
    )
    subsidy_rules_file: str = _env(
        "SUBSIDY_RULES_FILE", "", "Subsidy rules, a JSON file; empty: the bundled 驿城区 2021 rules"
    )
    log_level: LogLevel = _env("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["json", "console"] = _env("LOG_FORMAT", "json", "json (one object a line) or console")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, env_file: Path | None = None) -> Settings:
        """The settings of this process's environment (or of ``environ``); ``env_file`` (KEY=value lines) fills
        in what the environment does not set. :class:`SettingsError` names every variable at fault."""
        values, source, _ = resolve(_read_env_file(env_file)) if env_file is not None else ({}, {}, [])
        given, given_source, _ = resolve(os.environ if environ is None else environ)
        values.update(given)
        source.update(given_source)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, values, source)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (by field name), checked like the environment's values."""
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise SettingsError(_describe(exc, {}, {})) from None

    def to_env(self) -> dict[str, str]:
        """The environment variables that give exactly these settings (:meth:`from_env` reads them back)."""
        out = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            out[str(info.validation_alias)] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    @property
    def redis_url_shown(self) -> str:
        """REDIS_URL for logs and messages: any password in it masked."""
        return re.sub(r"(://[^:@/]*:)[^@/]*@", r"\1***@", self.redis_url)

    def describe(self) -> dict[str, str]:
        """What a process talks to, for its first log line."""
        return {
            "redis": self.redis_url_shown
            + (f" (cluster {self.redis_cluster_nodes})" if self.redis_cluster_nodes else ""),
            "broker": self.kafka_bootstrap_servers,
            "key_prefix": self.redis_key_prefix,
            "topic": self.scan_topic,
        }

    @property
    def redis_cluster(self) -> list[tuple[str, int]]:
        """REDIS_CLUSTER_NODES as (host, port) pairs; empty for a single Redis."""
        pairs = (n.strip().rsplit(":", 1) for n in self.redis_cluster_nodes.split(",") if n.strip())
        return [(host, int(port)) for host, port in pairs]

    @property
    def population_tiers(self) -> tuple[int, ...]:
        return tuple(sorted({int(t) for t in self.priority_population_tiers.split(",") if t.strip()}))

    @property
    def dedup_window_seconds(self) -> int:
        return max(1, round(self.dedup_window_hours * 3600))

    def carrier_token_map(self) -> dict[str, str]:
        """Token -> carrier, from INGEST_CARRIER_TOKENS and INGEST_CARRIER_TOKENS_FILE (both may be set)."""
        tokens: dict[str, str] = {}
        sources = [(PREFIX + "INGEST_CARRIER_TOKENS", self.carrier_tokens)]
        if self.carrier_tokens_file:
            try:
                text = Path(self.carrier_tokens_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(
                    f"{PREFIX}INGEST_CARRIER_TOKENS_FILE: cannot read {self.carrier_tokens_file}: {exc}"
                ) from exc
            sources.append((PREFIX + "INGEST_CARRIER_TOKENS_FILE", text))
        for env, text in sources:
            if text.strip():
                tokens.update(parse_token_map(env, text))
        return tokens

    def regulator_token_map(self) -> dict[str, str]:
        """Token -> region prefix ("" national, else a 2/4/6/9-digit code), from COVERAGE_REGULATOR_TOKENS and
        COVERAGE_REGULATOR_TOKENS_FILE (both may be set)."""
        sources = [(PREFIX + "COVERAGE_REGULATOR_TOKENS", self.regulator_tokens)]
        if self.regulator_tokens_file:
            try:
                text = Path(self.regulator_tokens_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(
                    f"{PREFIX}COVERAGE_REGULATOR_TOKENS_FILE: cannot read {self.regulator_tokens_file}: {exc}"
                ) from exc
            sources.append((PREFIX + "COVERAGE_REGULATOR_TOKENS_FILE", text))
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


def _read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments, optional quotes), as ``lastmile run`` writes .run/lastmile.env."""
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _describe(exc: ValidationError, given: Mapping[str, str], source: Mapping[str, str]) -> str:
    """One part per variable at fault: ``LASTMILE_SNAPSHOT_HOUR: '99' is not valid: Input should be ...``, named as
    the environment set it, with the value it gave."""
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        field = Settings.model_fields.get(name)
        env = field.validation_alias if field is not None and isinstance(field.validation_alias, str) else name
        value = "(value not shown: it holds tokens)" if env in _SECRET else repr(given.get(env, error["input"]))
        parts.append(f"{source.get(env, env)}: {value} is not valid: {error['msg']}")
    return "; ".join(parts)


_SECRET: Final = frozenset({PREFIX + "INGEST_CARRIER_TOKENS", PREFIX + "COVERAGE_REGULATOR_TOKENS"})


def documented() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting, for the docs' settings table and the compose check."""
    return [(str(f.validation_alias), str(f.default), str(f.description)) for f in Settings.model_fields.values()]
