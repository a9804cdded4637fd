"""Settings of one simulator instance."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    host: str = "127.0.0.1"
    # 0 lets the OS pick a free port; read the real one from ``Simulator.port``.
    port: int = 0
    shipstation_api_key: str = "sim-shipstation-key"
    mvmnt_client_id: str = "sim-mvmnt-client"
    mvmnt_client_secret: str = "sim-mvmnt-secret"
    mvmnt_token_ttl_seconds: int = 3600
    # Accepted as a Bearer token without going through /oauth2/token (MVMNT's static tokens).
    mvmnt_static_token: str | None = None
    # Added to every provider call, not to admin or token requests (also per provider:
    # PUT /_admin/accounts/{provider}).
    latency_ms: float = 0.0
    # Per provider, at most this many calls in any 60 s (a sliding window); None: no limit.
    # PUT /_admin/accounts/{provider} changes it at run time, /_admin/reset brings it back.
    rate_limit_per_minute: int | None = None
    # How many recent requests GET /_admin/requests can show.
    request_log_size: int = 1000
    access_log: bool = False
    # How long stop() lets in-flight handlers finish before cancelling them.
    shutdown_timeout_seconds: float = 2.0


# Frozen, so one shared default instance is safe.
DEFAULT_OPTIONS = SimulatorOptions()
