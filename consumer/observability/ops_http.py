"""The ops HTTP endpoints: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

``add_ops_routes`` puts them on any aiohttp app (the ingress serves them on its own port);
``serve_ops`` runs a small server with just these routes for ``run``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

Readiness = Callable[[], tuple[bool, str]]


def add_ops_routes(app: web.Application, readiness: Readiness) -> None:
    """``readiness()`` returns ``(ready, reason)``; it must be cheap and never block."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, reason = readiness()
        if ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    async def metrics(_: web.Request) -> web.Response:
        # Collection runs the OTel observable callbacks: in-memory reads, no I/O. The 0.0.4
        # text format is the one every Prometheus version parses.
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


@asynccontextmanager
async def serve_ops(host: str, port: int, readiness: Readiness) -> AsyncIterator[int]:
    """Serve the ops routes while the block runs; yields the bound port (``port=0`` picks one)."""
    app = web.Application()
    add_ops_routes(app, readiness)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        yield int(runner.addresses[0][1]) if runner.addresses else port
    finally:
        await runner.cleanup()
