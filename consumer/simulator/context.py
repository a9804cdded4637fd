"""Everything one running simulator shares between its routes."""

from __future__ import annotations

import asyncio

from consumer.simulator.faults import FaultSpec
from consumer.simulator.options import SimulatorOptions
from consumer.simulator.ratelimit import FixedWindowLimiter
from consumer.simulator.recorder import Recorder
from consumer.simulator.shipments import MvmntStore, ShipStationStore
from consumer.simulator.tokens import TokenStore


class SimulatorContext:
    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.latency_ms = options.latency_ms
        self.shipstation = ShipStationStore()
        self.mvmnt = MvmntStore()
        self.tokens = TokenStore(options.mvmnt_token_ttl_seconds, options.mvmnt_static_token)
        self.recorder = Recorder(options.request_log_size)
        self.shipstation_limiter = _limiter(options.rate_limit_per_minute)
        self.mvmnt_limiter = _limiter(options.rate_limit_per_minute)
        # Set by stop() so hanging handlers return and shutdown does not wait for them.
        self.stopping = asyncio.Event()

    async def pause(self, fault: FaultSpec) -> None:
        delay_ms = self.latency_ms + fault.slow_ms
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
        for limiter in (self.shipstation_limiter, self.mvmnt_limiter):
            if limiter is not None:
                limiter.reset()


def _limiter(per_minute: int | None) -> FixedWindowLimiter | None:
    return FixedWindowLimiter(per_minute) if per_minute is not None else None
