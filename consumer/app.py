"""Composition root: settings -> HTTP clients -> providers -> canceller -> runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

from opentelemetry.trace import Tracer

from consumer.config import Settings
from consumer.core.accounts import ProviderAccount
from consumer.core.breaker import CircuitBreaker
from consumer.core.canceller import Canceller, ParkingPolicy
from consumer.core.errors import ConfigError
from consumer.core.pacing import Pace
from consumer.core.retry import AccountGate, RetryPolicy
from consumer.kafka.runner import Runner
from consumer.kafka.seams import KafkaClients
from consumer.observability.logs import flushing_logs
from consumer.observability.metrics import Metrics
from consumer.observability.ops_http import Readiness, serve_ops
from consumer.observability.telemetry import build_meter_provider, build_tracer_provider
from consumer.observability.tracing import record_token_wait
from consumer.providers import build_provider
from consumer.providers.client import TransportClient, provider_transport
from consumer.providers.ratelimit import paced
from consumer.runtime.gc_schedule import clocked_collections

log = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> RetryPolicy:
    retry = settings.processing.retry
    return RetryPolicy(
        max_attempts=retry.max_attempts,
        budget_seconds=retry.budget_seconds,
        backoff_initial_seconds=retry.backoff_initial_seconds,
        backoff_max_seconds=retry.backoff_max_seconds,
    )


def parking_policy(settings: Settings) -> ParkingPolicy:
    retry = settings.processing.retry
    return ParkingPolicy(
        schedule_seconds=retry.schedule_seconds,
        horizon=timedelta(hours=retry.horizon_hours),
        park_after_wait_seconds=retry.park_after_wait_seconds,
    )


async def open_accounts(settings: Settings, stack: AsyncExitStack) -> dict[str, ProviderAccount]:
    """One HTTP client, pace, concurrency cap and circuit breaker per provider account."""
    accounts = {}
    breaker = settings.processing.breaker
    for name, account in settings.providers.items():
        limit = account.rate_limit_per_minute
        pace = Pace(limit) if limit is not None else None
        client = await stack.enter_async_context(
            TransportClient(
                # Every request takes a slot: cancels, confirming reads, token fetches.
                paced(
                    provider_transport(account.base_url, account.max_concurrency),
                    pace,
                    on_wait=record_token_wait,
                    # Admission keeps the queue within park_after_wait_seconds; twice that
                    # means the provider asked for a pause: park instead of waiting it out.
                    max_wait_seconds=2 * settings.processing.retry.park_after_wait_seconds,
                )
            )
        )
        accounts[name] = ProviderAccount(
            name=name,
            provider=build_provider(name, account, client),
            gate=AccountGate(account.max_concurrency),
            breaker=CircuitBreaker(name, breaker.failure_threshold, breaker.cooldown_seconds),
            pace=pace,
        )
    return accounts


async def build_runner(
    settings: Settings,
    stack: AsyncExitStack,
    tracer: Tracer,
    metrics: Metrics,
    *,
    clients: KafkaClients | None = None,
) -> Runner:
    """The runner over the configured accounts (opened on ``stack``); ``clients`` replaces
    aiokafka's clients (the in-process bench and tests)."""
    canceller = Canceller(
        await open_accounts(settings, stack),
        retry_policy(settings),
        parking=parking_policy(settings),
        tracer=tracer,
        metrics=metrics,
    )
    return Runner(
        settings.kafka, settings.processing, canceller, tracer, metrics=metrics, clients=clients
    )


async def run_service(settings: Settings, stop: asyncio.Event, *, ops_http: bool = False) -> None:
    """Run the processor until ``stop`` is set; then drain and release everything.

    ``ops_http``: serve /healthz, /readyz and /metrics on ``telemetry.http_host:http_port``
    (the ``run`` command; embedded uses such as the demo leave it off).
    """
    telemetry = settings.telemetry
    tracer_provider = build_tracer_provider(telemetry)
    meter_provider = build_meter_provider(telemetry)
    metrics = Metrics(meter_provider)
    tracer = tracer_provider.get_tracer("consumer")
    runner: Runner | None = None

    def readiness() -> tuple[bool, str]:
        return runner.readiness() if runner is not None else (False, "starting")

    try:
        async with AsyncExitStack() as stack:
            if ops_http:
                await stack.enter_async_context(_ops_server(settings, readiness))
            runner = await build_runner(settings, stack, tracer, metrics)
            await runner.run(stop)
    finally:
        meter_provider.shutdown()
        tracer_provider.shutdown()


@contextlib.asynccontextmanager
async def _ops_server(settings: Settings, readiness: Readiness) -> AsyncIterator[int]:
    host, port = settings.telemetry.http_host, settings.telemetry.http_port
    listening = False
    try:
        async with serve_ops(host, port, readiness) as bound:
            listening = True
            log.info("ops http server listening", extra={"host": host, "port": bound})
            yield bound
    except OSError as exc:
        if listening:
            raise
        raise ConfigError(
            f"telemetry.http_port: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from None


async def run_until_signalled(settings: Settings) -> None:
    """The ``run`` command: SIGTERM/SIGINT start a graceful drain."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(signame: str) -> None:
        if not stop.is_set():
            log.info("stop requested, draining", extra={"signal": signame})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, request_stop, sig.name)
    async with clocked_collections(), flushing_logs():
        await run_service(settings, stop, ops_http=settings.telemetry.http_enabled)
