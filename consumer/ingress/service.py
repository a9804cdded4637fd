"""Composition root of ``cancel-processor ingress``: settings -> producer -> app -> server.

SIGTERM/SIGINT: keep serving for ``ingress.shutdown_delay_seconds`` with ``/readyz`` at 503,
so load balancers take this instance out before its listener closes; then stop accepting
connections, let requests in flight finish (within ``ingress.drain_grace_seconds``), flush
the producer, leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from aiohttp import web

from consumer.config import Settings
from consumer.core.errors import ConfigError
from consumer.ingress.publisher import KafkaPublisher, Publisher
from consumer.ingress.server import build_app
from consumer.observability.telemetry import build_meter_provider, build_tracer_provider

log = logging.getLogger(__name__)


def require_sources(settings: Settings) -> None:
    if not settings.ingress.sources:
        raise ConfigError(
            "ingress.sources: no webhook sources configured; add "
            '[ingress.sources.NAME] with secret = "${VAR}"'
        )


async def serve_ingress(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_listening: Callable[[int], None] | None = None,
    publisher: Publisher | None = None,
) -> None:
    """Serve until ``stop`` is set, then drain. ``on_listening`` gets the bound port;
    ``publisher`` replaces the Kafka one (tests)."""
    require_sources(settings)
    ingress = settings.ingress
    tracer_provider = build_tracer_provider(settings.telemetry)
    meter_provider = build_meter_provider(settings.telemetry)
    if publisher is None:
        publisher = KafkaPublisher(
            settings.kafka, settings.kafka.input_topic, ingress.publish_timeout_seconds
        )
    stopping = False

    def readiness() -> tuple[bool, str]:
        return (False, "shutting down") if stopping else publisher.readiness()

    app = build_app(
        ingress,
        topic=settings.kafka.input_topic,
        publisher=publisher,
        tracer=tracer_provider.get_tracer("consumer.ingress"),
        meter=meter_provider.get_meter("consumer.ingress"),
        readiness=readiness,
    )
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=ingress.drain_grace_seconds,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, ingress.host, ingress.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(
                f"ingress.port: cannot listen on {ingress.host}:{ingress.port}: {why}"
            ) from None
        # Requests that arrive before the producer connects are answered 503.
        await publisher.start()
        port = int(runner.addresses[0][1]) if runner.addresses else ingress.port
        log.info(
            "ingress listening",
            extra={
                "host": ingress.host,
                "port": port,
                "topic": settings.kafka.input_topic,
                "sources": sorted(ingress.sources),
            },
        )
        if on_listening is not None:
            on_listening(port)
        await stop.wait()
        stopping = True
        if ingress.shutdown_delay_seconds > 0:
            log.info(
                "ingress stopping: not ready, still serving",
                extra={"shutdown_delay_seconds": ingress.shutdown_delay_seconds},
            )
            await asyncio.sleep(ingress.shutdown_delay_seconds)
        log.info("ingress stopping: finishing requests in flight")
    finally:
        # Closes the listener, waits for handlers in flight (up to the grace), then the rest.
        await runner.cleanup()
        await publisher.stop()
        meter_provider.shutdown()
        tracer_provider.shutdown()
    log.info("ingress stopped")


async def run_ingress_until_signalled(settings: Settings) -> None:
    """The ``ingress`` command: SIGTERM/SIGINT start a graceful drain."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(signame: str) -> None:
        if not stop.is_set():
            log.info("stop requested", extra={"signal": signame})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, request_stop, sig.name)
    await serve_ingress(settings, stop)
