"""Settings: one TOML file, ``${VAR}`` interpolation, env overrides, one-line errors.

Built once at start-up, frozen and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from consumer.errors import ConfigError
from consumer.providers import PROVIDER_KINDS as _PROVIDER_KINDS
from consumer.providers import ProviderSettings

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
CONFIG_PATH_ENV = "CANCEL_PROCESSOR_CONFIG"

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
    # Attempts per shipment, the first included.
    max_attempts: int = Field(default=4, ge=1, le=20)
    # Wall-clock budget per shipment cancel, retries and waits included.
    budget_seconds: float = Field(default=30.0, gt=0)
    backoff_initial_seconds: float = Field(default=0.25, ge=0)
    backoff_max_seconds: float = Field(default=8.0, ge=0)


class ProcessingSettings(_Frozen):
    # Events being processed at once (all partitions); fetching pauses when full.
    max_in_flight: int = Field(default=512, ge=1, le=100_000)
    # An input value larger than this goes to the DLQ unread.
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    # On SIGTERM or revocation, how long in-flight work may finish before we leave.
    drain_grace_seconds: float = Field(default=20.0, ge=0)
    retry: RetrySettings = RetrySettings()


class TelemetrySettings(_Frozen):
    service_name: str = "shipment-cancel-processor"
    traces_exporter: Literal["none", "console"] = "none"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"


class Settings(_Frozen):
    kafka: KafkaSettings
    processing: ProcessingSettings = ProcessingSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    providers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], ProviderSettings] = (
        Field(min_length=1)
    )


def load_settings(path: str | Path, env: Mapping[str, str]) -> Settings:
    """Read, interpolate and validate the config file; raise ``ConfigError`` with one line."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return settings_from_mapping(raw, env, source=str(path))


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
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None


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
