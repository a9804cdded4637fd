"""Settings: one TOML file, ``${VAR}`` interpolation, env overrides, one-line errors.

Built once at start-up, frozen and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from consumer.core.errors import ConfigError
from consumer.providers import PROVIDER_KINDS as _PROVIDER_KINDS
from consumer.providers import ProviderSettings
from consumer.providers.base import BLANK_SECRET, refuse_blank_secret

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
CONFIG_PATH_ENV = "CANCEL_PROCESSOR_CONFIG"
# The standard OpenTelemetry variables read into [telemetry] (see _telemetry_from_env).
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"
TRACES_EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
METRICS_EXPORTER_ENV = "OTEL_METRICS_EXPORTER"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Frozen(BaseModel):
    # Each field's docstring is its description: what the configuration reference shows.
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    @field_validator("*")
    @classmethod
    def _secrets_not_blank(cls, value: Any) -> Any:
        return refuse_blank_secret(value)


class KafkaSettings(_Frozen):
    """[kafka]: how to reach the brokers and which topics to use."""

    bootstrap_servers: str = Field(min_length=1)
    """Brokers to connect to first, as comma-separated host:port pairs.
    KAFKA_BOOTSTRAP_SERVERS, when set, wins over this."""
    group_id: str = "shipment-cancel-processor"
    """Consumer group of the input topic; the processes sharing the work join the same one."""
    client_id: str = "shipment-cancel-processor"
    """How this process names itself to the brokers (their logs and quotas)."""
    input_topic: str = "orders.cancelled"
    """Where the order-cancelled events arrive."""
    cancelled_topic: str = "shipments.cancelled"
    """Where a result is published for each shipment cancelled (or found already cancelled)."""
    failed_topic: str = "shipments.cancel-failed"
    """Where a result is published for each shipment that could not be cancelled."""
    dlq_topic: str = "orders.cancelled.dlq"
    """Where input records that cannot be read or validated go, with their original bytes."""
    retry_topic: str = "orders.cancelled.retry"
    """Where parked shipments wait for their next attempt; it needs as many partitions as the
    input topic."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How the connection to the brokers is encrypted and authenticated."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """The SASL mechanism; required by the SASL_* protocols."""
    sasl_username: str | None = None
    """The SASL user name; required by the SASL_* protocols."""
    sasl_password: SecretStr | None = None
    """The SASL password; required by the SASL_* protocols. Keep it in the environment:
    "${VAR}"."""
    ssl_cafile: str | None = None
    """CA bundle (PEM) that signed the brokers' certificates; unset, the system trust store."""
    ssl_certfile: str | None = None
    """Client certificate (PEM), for brokers that require mutual TLS."""
    ssl_keyfile: str | None = None
    """Private key (PEM) of the client certificate."""
    enable_idempotence: bool = True
    """Whether the producer is idempotent. Real Kafka supports it; the embedded Tansu broker
    needs false."""
    session_timeout_ms: int = Field(default=45_000, ge=1_000)
    """The broker drops a consumer it has not heard from for this long, then rebalances."""
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    """Heartbeat period; at most a third of session_timeout_ms."""
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    """Longest gap between two polls before the group evicts this consumer."""
    fetch_max_wait_ms: int = Field(default=500, ge=0, le=60_000)
    """Longest a fetch waits at the broker for new records. Kafka answers as soon as records
    arrive; the embedded Tansu broker waits this long, so it bounds latency there."""
    fetch_max_bytes: int = Field(default=1024 * 1024, ge=64 * 1024)
    """Most record bytes one fetch may return: what the consumer buffers ahead of the work, so
    it bounds memory with a large backlog. A larger record still comes through, alone."""
    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    """Time box of one request to the brokers."""
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest record the producer may send; a DLQ copy of the largest accepted input must fit."""
    commit_interval_seconds: float = Field(default=1.0, gt=0)
    """How often finished offsets are committed (also on revocation and shutdown)."""

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password"
            )
        return self


class RetrySettings(_Frozen):
    """[processing.retry]: how often and how long a failing cancel is tried again."""

    max_attempts: int = Field(default=4, ge=1, le=20)
    """In-memory attempts per shipment and round, the first included."""
    budget_seconds: float = Field(default=30.0, gt=0)
    """Wall-clock budget of one round of in-memory attempts. Waiting for the account's own rate
    limit or concurrency cap does not count."""
    backoff_initial_seconds: float = Field(default=0.25, ge=0)
    """Ceiling of the wait after the first attempt; it doubles with each attempt, and the wait
    is drawn at random below it. A longer Retry-After from the provider wins."""
    backoff_max_seconds: float = Field(default=8.0, ge=0)
    """Most the ceiling of the wait between two attempts grows to."""
    schedule_seconds: tuple[float, ...] = Field(
        default=(30.0, 120.0, 600.0, 1800.0, 3600.0), min_length=1
    )
    """Delays after which a shipment still failing transiently after a round, and so parked in
    the retry topic, is due again: one per round, the last one repeating."""
    horizon_hours: float = Field(default=24.0, gt=0)
    """Only this long after its first park does a shipment end as cancel-failed."""
    park_after_wait_seconds: float = Field(default=5.0, gt=0)
    """An account whose rate-limit queue is longer than this parks new shipments."""
    max_held: int = Field(default=10_000, ge=1, le=1_000_000)
    """Parked records read back and held in memory until due, all partitions together; past it
    the retry topic's partitions pause."""

    @field_validator("schedule_seconds")
    @classmethod
    def _positive_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay <= 0 for delay in value):
            raise ValueError("every delay must be more than 0 seconds")
        return value


class BreakerSettings(_Frozen):
    """[processing.breaker]: when a struggling provider account gets a rest."""

    failure_threshold: int = Field(default=5, ge=1, le=1000)
    """Consecutive transient failures (5xx, timeouts, connection errors) of one account that
    open its circuit: no calls, new work parked."""
    cooldown_seconds: float = Field(default=30.0, gt=0)
    """How long an open circuit stays open before one probe call is let through."""


class ProcessingSettings(_Frozen):
    """[processing]: how many events are worked on at once, and how work drains."""

    max_in_flight: int = Field(default=512, ge=1, le=100_000)
    """Events processed at once across all partitions; fetching pauses when full."""
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    """An input value larger than this many bytes goes to the DLQ unread."""
    drain_grace_seconds: float = Field(default=20.0, ge=0)
    """On SIGTERM or revocation, how long in-flight work may finish before the process
    leaves."""
    retry: RetrySettings = RetrySettings()
    """Retries of transient failures: the [processing.retry] table."""
    breaker: BreakerSettings = BreakerSettings()
    """The per-account circuit breaker: the [processing.breaker] table."""


# Operators write "info" as often as "INFO", and "warn" is the usual short form.
_LOG_LEVEL_ALIASES = {"WARN": "WARNING"}


class TelemetrySettings(_Frozen):
    """[telemetry]: logs, traces, metrics and the ops HTTP server."""

    service_name: str = "shipment-cancel-processor"
    """service.name of traces and metrics; OTEL_SERVICE_NAME, when set, wins over this."""
    traces_exporter: Literal["none", "console", "otlp"] = "none"
    """Where traces go. otlp takes endpoint, protocol and headers from the standard
    OTEL_EXPORTER_OTLP_* variables. Left at "none", OTEL_TRACES_EXPORTER chooses."""
    metrics_exporter: Literal["none", "otlp"] = "none"
    """Whether metrics are also pushed over OTLP; Prometheus /metrics is served either way.
    Left at "none", OTEL_METRICS_EXPORTER chooses."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe level logged, in any case ("warn" means WARNING)."""
    log_format: Literal["json", "text"] = "json"
    """json: one object per line, for collectors; text: for people."""
    http_enabled: bool = True
    """Whether `run` serves /healthz, /readyz and /metrics."""
    http_host: str = "0.0.0.0"
    """Interface of the ops HTTP server; all by default, since probes and scrapers come from
    outside the pod."""
    http_port: int = Field(default=9464, ge=0, le=65535)
    """Port of the ops HTTP server."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            level = value.strip().upper()
            return _LOG_LEVEL_ALIASES.get(level, level)
        return value


class TopicsSettings(_Frozen):
    """[topics]: what ``cancel-processor topics`` creates and verifies; ``run`` ignores it."""

    partitions: int = Field(default=6, ge=1, le=10_000)
    """Partitions of each of the five topics; the input's count caps how many processes share
    the work."""
    replication_factor: int = Field(default=3, ge=1, le=32)
    """Copies of each partition: 3 survive the loss of a broker; a single-node broker needs 1."""
    min_insync_replicas: int = Field(default=2, ge=1)
    """min.insync.replicas: acks=all writes fail below this many in-sync copies, so no
    acknowledged record is lost. Below replication_factor, unless both are 1."""
    compression_type: Literal["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"] = (
        "producer"
    )
    """compression.type on the broker; "producer" keeps whatever the producer chose. The
    processor reads every codec here."""
    input_retention_days: float = Field(default=7.0, gt=0)
    """How long the input topic keeps records (cleanup.policy is always "delete": compaction
    would drop all but one event per order)."""
    results_retention_days: float = Field(default=14.0, gt=0)
    """How long the cancelled and cancel-failed topics keep records."""
    dlq_retention_days: float = Field(default=30.0, gt=0)
    """How long the DLQ keeps records: long enough to investigate and redrive after a holiday
    weekend."""
    retry_retention_days: float = Field(default=7.0, gt=0)
    """How long the retry topic keeps parked shipments; longer than
    processing.retry.horizon_hours, or a park is deleted before its last attempt."""

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> TopicsSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError("min_insync_replicas must not exceed replication_factor")
        if 1 < self.replication_factor <= self.min_insync_replicas:
            # Every acks=all write would stop while any one broker is down (an upgrade).
            raise ValueError(
                "min_insync_replicas must be below replication_factor "
                "(or both 1): one broker down would stop every write"
            )
        return self


_NAME = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# Shorter HMAC keys are guessable offline from one captured webhook.
MIN_SOURCE_SECRET_CHARS = 16


class IngressSourceSettings(_Frozen):
    """[ingress.sources.NAME]: one sender allowed to call the webhook ingress."""

    secret: SecretStr
    """HMAC-SHA256 key shared with this sender, at least 16 characters. Keep it in the
    environment: "${VAR}"."""

    @field_validator("secret")
    @classmethod
    def _secret_is_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SOURCE_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SOURCE_SECRET_CHARS} characters")
        return value


class IngressSettings(_Frozen):
    """[ingress]: the webhook ingress (``cancel-processor ingress``); ``run`` ignores it."""

    host: str = "0.0.0.0"
    """Interface the ingress listens on; all by default."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Port of the webhooks, and of /healthz, /readyz and /metrics."""
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Larger bodies are refused with 413 before they are read; at most
    processing.max_event_bytes."""
    idempotency_window: int = Field(default=100_000, ge=0, le=10_000_000)
    """Event ids remembered per process to answer repeats without publishing again; 0 turns it
    off."""
    publish_timeout_seconds: float = Field(default=10.0, gt=0)
    """Longest wait for the broker's acknowledgement before answering 503."""
    shutdown_delay_seconds: float = Field(default=2.0, ge=0, le=300)
    """On SIGTERM, how long to keep serving with /readyz at 503, so load balancers stop sending
    here before the listener closes."""
    drain_grace_seconds: float = Field(default=20.0, ge=0)
    """On SIGTERM, how long requests in flight may finish before the process leaves."""
    sources: dict[_NAME, IngressSourceSettings] = {}
    """The senders allowed to call, by the name they send in X-Cancel-Source: one
    [ingress.sources.NAME] table each."""


class Settings(_Frozen):
    """The whole configuration file."""

    kafka: KafkaSettings
    """The brokers and topics: the [kafka] table."""
    processing: ProcessingSettings = ProcessingSettings()
    """Concurrency, retries and the circuit breaker: the [processing] table."""
    telemetry: TelemetrySettings = TelemetrySettings()
    """Logs, traces, metrics and the ops HTTP server: the [telemetry] table."""
    providers: dict[_NAME, ProviderSettings] = {}
    """The provider accounts, one [providers.NAME] table each; events name the account. `run`
    needs at least one; the ingress never calls providers."""
    ingress: IngressSettings = IngressSettings()
    """The webhook ingress: the [ingress] table."""
    topics: TopicsSettings = TopicsSettings()
    """What the topics tool creates and verifies: the [topics] table."""

    @model_validator(mode="after")
    def _ingress_bodies_fit_the_processor(self) -> Settings:
        if self.ingress.max_body_bytes > self.processing.max_event_bytes:
            # The processor would dead-letter every event the ingress accepted above it.
            raise ValueError("ingress.max_body_bytes must not exceed processing.max_event_bytes")
        return self

    @model_validator(mode="after")
    def _parks_outlive_the_horizon(self) -> Settings:
        if self.topics.retry_retention_days * 24 <= self.processing.retry.horizon_hours:
            # The broker would delete a parked shipment before its last attempt.
            raise ValueError(
                "topics.retry_retention_days must be longer than processing.retry.horizon_hours"
            )
        return self


def load_settings(path: str | Path, env: Mapping[str, str]) -> Settings:
    """Read, interpolate and validate the config file; raise ``ConfigError`` with one line."""
    path = Path(path)
    return settings_from_mapping(_read_toml(path), env, source=str(path))


# What tools that only talk to the broker read (`topics`, `demo-traffic`).
_KAFKA_SECTIONS = ("kafka", "topics")


def load_kafka_settings(path: str | Path, env: Mapping[str, str]) -> Settings:
    """Like ``load_settings`` but reads only ``[kafka]`` and ``[topics]``, so a topic job
    needs the Kafka credentials and none of the provider secrets."""
    path = Path(path)
    raw = _read_toml(path)
    kafka_only = {key: raw[key] for key in _KAFKA_SECTIONS if key in raw}
    return settings_from_mapping(kafka_only, env, source=str(path))


# What the webhook ingress reads: it never calls a provider, so it needs none of their secrets.
_INGRESS_SECTIONS = ("kafka", "processing", "telemetry", "ingress")


def load_ingress_settings(path: str | Path, env: Mapping[str, str]) -> Settings:
    """Like ``load_settings`` but reads only the sections ``cancel-processor ingress`` uses."""
    path = Path(path)
    raw = _read_toml(path)
    sections = {key: raw[key] for key in _INGRESS_SECTIONS if key in raw}
    return settings_from_mapping(sections, env, source=str(path))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def settings_from_mapping(
    raw: Mapping[str, Any], env: Mapping[str, str], *, source: str = "config"
) -> Settings:
    try:
        data = _interpolate(raw, env, path=())
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if env.get(BOOTSTRAP_ENV):
        kafka = data.setdefault("kafka", {})
        if isinstance(kafka, dict):
            kafka["bootstrap_servers"] = env[BOOTSTRAP_ENV]
    _telemetry_from_env(data, env)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, raw, env)}") from None


def _telemetry_from_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    """The standard OpenTelemetry variables, as the SDK would honour them: ``OTEL_SERVICE_NAME``
    wins over ``service_name``; ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` choose
    an exporter the file leaves at its default, ``none`` (an exporter the file names wins)."""
    service = env.get(SERVICE_NAME_ENV, "").strip()
    traces = _exporter_from_env(env, TRACES_EXPORTER_ENV, ("none", "console", "otlp"))
    # Prometheus is always served on /metrics: asking for it adds nothing to push.
    metrics = _exporter_from_env(env, METRICS_EXPORTER_ENV, ("none", "otlp"), also=("prometheus",))
    if not (service or traces or metrics):
        return
    telemetry = data.setdefault("telemetry", {})
    if not isinstance(telemetry, dict):
        return  # validation names the key
    if service:
        telemetry["service_name"] = service
    for key, chosen in (("traces_exporter", traces), ("metrics_exporter", metrics)):
        if chosen and telemetry.get(key, "none") == "none":
            telemetry[key] = chosen


def _exporter_from_env(
    env: Mapping[str, str], name: str, supported: tuple[str, ...], also: tuple[str, ...] = ()
) -> str | None:
    """The one exporter ``name`` asks for (``also``: accepted, meaning none); ``None`` when
    unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    chosen = {v.strip().lower() for v in raw.split(",") if v.strip()} - set(also)
    if len(chosen) > 1 or not chosen <= set(supported):
        raise ConfigError(f"{name}: {raw!r} is not supported (use one of {', '.join(supported)})")
    return chosen.pop() if chosen else "none"


def _interpolate(value: Any, env: Mapping[str, str], path: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, (*path, str(i))) for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            key = ".".join(path)
            raise ConfigError(f"{key}: environment variable {name} is not set")

        return _VAR.sub(substitute, value)
    return value


def _key_parts(loc: tuple[int | str, ...]) -> list[str]:
    # A discriminated union puts its tag after the account name; a reader wants the key.
    parts = [str(p) for p in loc]
    if len(parts) >= 3 and parts[0] == "providers" and parts[2] in _PROVIDER_KINDS:
        del parts[2]
    return parts


def _describe(exc: ValidationError, raw: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """Every problem on one line, unknown keys first (most often the typo behind the others);
    never the offending value (it may be a secret)."""
    problems: list[tuple[bool, str]] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error["loc"]
        parts = _key_parts(loc)
        key = ".".join(parts)
        message = error["msg"].removeprefix("Value error, ")
        unknown = error["type"] == "extra_forbidden"
        if unknown:
            message = "unknown key" + _did_you_mean(loc, _raw_value(raw, parts[:-1]))
        elif message == BLANK_SECRET:
            message += _blank_variable(_raw_value(raw, parts), env)
        problems.append((unknown, f"{key}: {message}" if key else message))
    ordered = sorted(problems, key=lambda problem: not problem[0])  # stable: pydantic's order
    lines = list(dict.fromkeys(line for _, line in ordered))
    return lines[0] if len(lines) == 1 else f"{len(lines)} problems: {'; '.join(lines)}"


def _did_you_mean(loc: tuple[int | str, ...], table: Any) -> str:
    """`` (did you mean KEY?)`` when the unknown key at ``loc`` is a near miss of a known one
    that its table, as written, does not set already."""
    given = table if isinstance(table, Mapping) else {}
    known = [key for key in _known_keys(loc[:-1]) if key not in given]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys of the settings table at ``loc`` (a pydantic location); none if no table."""
    node: Any = Settings
    for part in loc:
        node = _child(node, part)
    return list(node.model_fields) if _is_model(node) else []


def _child(node: Any, part: int | str) -> Any:
    """What ``part`` of a location leads to inside the type ``node``; ``None`` if unknown."""
    if _is_model(node):
        field = node.model_fields.get(str(part))
        return None if field is None else field.annotation
    if get_origin(node) is dict:
        return get_args(node)[1]  # part is a table name the user chose
    if get_origin(node) is Annotated:
        inner, *metadata = get_args(node)
        tags = [m.discriminator for m in metadata if isinstance(m, FieldInfo)]
        if tags and isinstance(tag := tags[0], str):
            # A discriminated union: part is the tag naming the member.
            for member in get_args(inner):
                if part in get_args(member.model_fields[tag].annotation):
                    return member
            return None
        return _child(inner, part)
    return None


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _raw_value(raw: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(raw, Mapping):
            return None
        raw = raw.get(part)
    return raw


def _blank_variable(raw: Any, env: Mapping[str, str]) -> str:
    """A hint naming the variable an empty value came from, when it came from one."""
    if isinstance(raw, str):
        for name, _default in _VAR.findall(raw):
            if name in env and not env[name].strip():
                return f' (is {name} set to ""?)'
    return ""
