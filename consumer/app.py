"""Composition root: settings -> HTTP clients -> providers -> canceller -> runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from contextlib import AsyncExitStack

import httpx

from consumer.canceller import Canceller, ProviderAccount
from consumer.config import Settings
from consumer.providers import build_provider
from consumer.retry import AccountGate, RetryPolicy
from consumer.runner import Runner
from consumer.telemetry import build_tracer_provider

log = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> RetryPolicy:
    retry = settings.processing.retry
    return RetryPolicy(
        max_attempts=retry.max_attempts,
        budget_seconds=retry.budget_seconds,
        backoff_initial_seconds=retry.backoff_initial_seconds,
        backoff_max_seconds=retry.backoff_max_seconds,
    )


async def open_accounts(settings: Settings, stack: AsyncExitStack) -> dict[str, ProviderAccount]:
    """One HTTP client, rate limit and concurrency cap per configured provider account."""
    accounts = {}
    for name, account in settings.providers.items():
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                timeout=httpx.Timeout(account.timeout_seconds),
                limits=httpx.Limits(
                    max_connections=account.max_concurrency,
                    max_keepalive_connections=account.max_concurrency,
                ),
                follow_redirects=False,
            )
        )
        accounts[name] = ProviderAccount(
            name=name,
            provider=build_provider(name, account, client),
            gate=AccountGate(account.max_concurrency, account.rate_limit_per_minute),
        )
    return accounts


async def run_service(settings: Settings, stop: asyncio.Event) -> None:
    """Run the processor until ``stop`` is set; then drain and release everything."""
    tracer_provider = build_tracer_provider(settings.telemetry)
    try:
        async with AsyncExitStack() as stack:
            accounts = await open_accounts(settings, stack)
            canceller = Canceller(accounts, retry_policy(settings))
            runner = Runner(
                settings.kafka,
                settings.processing,
                canceller,
                tracer_provider.get_tracer("consumer"),
            )
            await runner.run(stop)
    finally:
        tracer_provider.shutdown()


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
    await run_service(settings, stop)
