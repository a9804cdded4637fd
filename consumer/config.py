"""Settings: one TOML file, ``${VAR}`` interpolation, env overrides, one-line errors.

Built once at start-up, frozen and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from consumer.core.errors import ConfigError
from consumer.providers import PROVIDER_KINDS as _PROVIDER_KINDS
from consumer.providers import ProviderSettings

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
CONFIG_PATH_ENV = "CANCEL_PROCESSOR_CONFIG"
# The standard OpenTelemetry variables read into [telemetry] (see _telemetry_from_env).
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"
TRACES_EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
METRICS_EXPORTER_ENV = "OTEL_METRICS_EXPORTER"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    bootstrap_servers: str = Field(min_length=1)
    group_id: str = "shipment-cancel-processor"
    client_id: str = "shipment-cancel-processor"
    input_topic: str = "orders.cancelled"
    cancelled_topic: str = "shipments.cancelled"
    failed_topic: str = "shipments.cancel-failed"
    dlq_topic: str = "orders.cancelled.dlq"
    # Parked shipments wait here for their next attempt; as many partitions as the input.
    retry_topic: str = "orders.cancelled.retry"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # Real Kafka supports the idempotent producer; the embedded Tansu broker does not.
    enable_idempotence: bool = True
    session_timeout_ms: int = Field(default=45_000, ge=1_000)
    # Must be well under session_timeout_ms (a third or less).
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    # Longest a fetch waits at the broker for new records. Kafka answers as soon as records
    # arrive; the embedded Tansu broker waits this long, so it bounds latency there.
    fetch_max_wait_ms: int = Field(default=500, ge=0, le=60_000)
    # Most record bytes one fetch may return: what the consumer buffers ahead of the work,
    # so it bounds memory with a large backlog (aiokafka's default is 50 MiB). A record
    # larger than this still comes through, alone.
    fetch_max_bytes: int = Field(default=1024 * 1024, ge=64 * 1024)
    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    # Largest record the producer may send: a DLQ copy must fit whatever the input allowed.
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # How often finished offsets are committed (also on revocation and shutdown).
    commit_interval_seconds: float = Field(default=1.0, gt=0)

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
    # In-memory attempts per shipment and round, the first included.
    max_attempts: int = Field(default=4, ge=1, le=20)
    # Wall-clock budget of one round of in-memory attempts; waiting for the account's own
    # rate limit or concurrency cap does not count.
    budget_seconds: float = Field(default=30.0, gt=0)
    backoff_initial_seconds: float = Field(default=0.25, ge=0)
    backoff_max_seconds: float = Field(default=8.0, ge=0)
    # A shipment still failing transiently after a round is parked in the retry topic: due
    # after these delays, one per round, the last one repeating.
    schedule_seconds: tuple[float, ...] = Field(
        default=(30.0, 120.0, 600.0, 1800.0, 3600.0), min_length=1
    )
    # Only this long after its first park does a shipment end as cancel-failed.
    horizon_hours: float = Field(default=24.0, gt=0)
    # An account whose rate-limit queue is longer than this parks new shipments.
    park_after_wait_seconds: float = Field(default=5.0, gt=0)
    # Parked records read back and held in memory until due, all partitions together;
    # past it the retry topic's partitions pause.
    max_held: int = Field(default=10_000, ge=1, le=1_000_000)

    @field_validator("schedule_seconds")
    @classmethod
    def _positive_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay <= 0 for delay in value):
            raise ValueError("every delay must be more than 0 seconds")
        return value


class BreakerSettings(_Frozen):
    # Consecutive transient failures (5xx, timeouts, connection errors) of one account that
    # open its circuit: no calls, new work parked.
    failure_threshold: int = Field(default=5, ge=1, le=1000)
    # How long an open circuit stays open before one probe call is let through.
    cooldown_seconds: float = Field(default=30.0, gt=0)


class ProcessingSettings(_Frozen):
    # Events being processed at once (all partitions); fetching pauses when full.
    max_in_flight: int = Field(default=512, ge=1, le=100_000)
    # An input value larger than this goes to the DLQ unread.
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    # On SIGTERM or revocation, how long in-flight work may finish before we leave.
    drain_grace_seconds: float = Field(default=20.0, ge=0)
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()


class TelemetrySettings(_Frozen):
    # OTEL_SERVICE_NAME, when set, wins over this.
    service_name: str = "shipment-cancel-processor"
    # otlp: endpoint, protocol and headers from the standard OTEL_EXPORTER_OTLP_* variables.
    # Left at "none", OTEL_TRACES_EXPORTER (none, console, otlp) chooses.
    traces_exporter: Literal["none", "console", "otlp"] = "none"
    # Prometheus /metrics is always served when the ops HTTP server is on; otlp pushes too.
    # Left at "none", OTEL_METRICS_EXPORTER (none, otlp; prometheus = none) chooses.
    metrics_exporter: Literal["none", "otlp"] = "none"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    # Ops HTTP server of `run`: /healthz, /readyz, /metrics.
    http_enabled: bool = True
    # All interfaces: probes and scrapers come from outside the pod.
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=9464, ge=0, le=65535)


class TopicsSettings(_Frozen):
    """What ``cancel-processor topics`` creates and verifies; ``run`` never reads it."""

    # Of each of the four topics. The input's count caps how many processes share the work.
    partitions: int = Field(default=6, ge=1, le=10_000)
    # 3 copies survive the loss of a broker; the embedded and single-node brokers need 1.
    replication_factor: int = Field(default=3, ge=1, le=32)
    # acks=all writes fail below this many in-sync copies: no acknowledged record is lost.
    min_insync_replicas: int = Field(default=2, ge=1)
    # Broker-side codec; "producer" keeps whatever the producer chose. Every codec here can
    # be read by the processor (aiokafka's codec extras are installed).
    compression_type: Literal["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"] = (
        "producer"
    )
    # cleanup.policy is always "delete": compaction would drop all but one event per order.
    input_retention_days: float = Field(default=7.0, gt=0)
    results_retention_days: float = Field(default=14.0, gt=0)
    # Long enough to investigate and redrive after a holiday weekend.
    dlq_retention_days: float = Field(default=30.0, gt=0)
    # Parked shipments: longer than processing.retry.horizon_hours, or a park is deleted
    # before its last attempt.
    retry_retention_days: float = Field(default=7.0, gt=0)

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
    # HMAC-SHA256 key shared with this sender; put it in the environment: "${VAR}".
    secret: SecretStr

    @field_validator("secret")
    @classmethod
    def _secret_is_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SOURCE_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SOURCE_SECRET_CHARS} characters")
        return value


class IngressSettings(_Frozen):
    """The webhook ingress (``cancel-processor ingress``); unused by ``run``."""

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    # Larger bodies are refused with 413 before they are read.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    # event_ids remembered per process to answer repeats without publishing (0: off).
    idempotency_window: int = Field(default=100_000, ge=0, le=10_000_000)
    # Longest wait for the broker's acknowledgement before answering 503.
    publish_timeout_seconds: float = Field(default=10.0, gt=0)
    # On SIGTERM, first keep serving this long with /readyz at 503, so load balancers stop
    # sending here before the listener closes.
    shutdown_delay_seconds: float = Field(default=2.0, ge=0, le=300)
    # On SIGTERM, how long requests in flight may finish before the process leaves.
    drain_grace_seconds: float = Field(default=20.0, ge=0)
    # The senders allowed to call, by the name they send in X-Cancel-Source.
    sources: dict[_NAME, IngressSourceSettings] = {}


class Settings(_Frozen):
    kafka: KafkaSettings
    processing: ProcessingSettings = ProcessingSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    # Required by `run` (checked there), not by the ingress, which never calls providers.
    providers: dict[_NAME, ProviderSettings] = {}
    ingress: IngressSettings = IngressSettings()
    topics: TopicsSettings = TopicsSettings()

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
        raise ConfigError(f"{source}: {_first_error(exc)}") from None


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


def _key_path(loc: tuple[int | str, ...]) -> str:
    # A discriminated union puts its tag after the account name; a reader wants the key.
    parts = [str(p) for p in loc]
    if len(parts) >= 3 and parts[0] == "providers" and parts[2] in _PROVIDER_KINDS:
        del parts[2]
    return ".".join(parts)


def _first_error(exc: ValidationError) -> str:
    """One line naming the key; never the offending value (it may be a secret)."""
    first = exc.errors(include_input=False, include_url=False)[0]
    loc = _key_path(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = exc.error_count() - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{loc}: {message}{suffix}" if loc else f"{message}{suffix}"
