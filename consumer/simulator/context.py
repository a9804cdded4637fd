"""Everything one running simulator shares between its routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from consumer.simulator.accounts import (
    KEEP,
    AccountChange,
    AccountMode,
    DownMode,
    Keep,
    ProviderAccount,
)
from consumer.simulator.faults import FaultSpec
from consumer.simulator.options import SimulatorOptions
from consumer.simulator.recorder import PROVIDERS, Recorder
from consumer.simulator.shipments import MvmntStore, ShipStationStore
from consumer.simulator.tokens import TokenStore


class SimulatorContext:
    def __init__(self, options: SimulatorOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        # Unix time for the call log, rate limits and outages; tests inject a fake one.
        self.clock = clock
        self.latency_ms = options.latency_ms
        self.shipstation = ShipStationStore()
        self.mvmnt = MvmntStore()
        self.tokens = TokenStore(options.mvmnt_token_ttl_seconds, options.mvmnt_static_token)
        self.recorder = Recorder(options.request_log_size)
        self.accounts = {
            name: ProviderAccount(options.rate_limit_per_minute, clock) for name in PROVIDERS
        }
        # Set by stop() so hanging handlers return and shutdown does not wait for them.
        self.stopping = asyncio.Event()

    def account(self, provider: str) -> ProviderAccount:
        account = self.accounts.get(provider)
        if account is None:
            raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")
        return account

    def set_account_mode(
        self,
        provider: str,
        *,
        rate_limit_per_minute: int | Keep | None = KEEP,
        latency_ms: float | None = None,
        down_seconds: float | None = None,
        down_mode: DownMode | None = None,
    ) -> AccountMode:
        """What ``PUT /_admin/accounts/{provider}`` does; a setting left out stays as it is."""
        change = AccountChange(rate_limit_per_minute, latency_ms, down_seconds, down_mode)
        return self.account(provider).change(change)

    def account_mode(self, provider: str) -> AccountMode:
        return self.account(provider).mode()

    async def pause(self, provider: str, fault: FaultSpec) -> None:
        delay_ms = self.latency_ms + self.accounts[provider].latency_ms + fault.slow_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

    async def hang(self) -> None:
        """Never answer: wait until the client disconnects (we are cancelled) or stop()."""
        await self.stopping.wait()

    def reset(self) -> None:
        """Back to a fresh start; issued tokens stay valid so connected clients keep working."""
        self.latency_ms = self.options.latency_ms
        self.shipstation.reset()
        self.mvmnt.reset()
        self.recorder.reset()
        for account in self.accounts.values():
            account.reset()
