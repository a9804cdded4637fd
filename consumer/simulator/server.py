"""The aiohttp application, the ``Simulator`` that runs it, and ``serve_forever`` for the CLI."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from consumer.runtime.gc_schedule import clocked_collections
from consumer.simulator.accounts import KEEP, AccountMode, DownMode, Keep
from consumer.simulator.admin import PREFIX as ADMIN_PREFIX
from consumer.simulator.admin import AdminApi, admin_error, is_loopback
from consumer.simulator.context import SimulatorContext
from consumer.simulator.mvmnt import MvmntApi
from consumer.simulator.mvmnt import unavailable as mvmnt_unavailable
from consumer.simulator.options import DEFAULT_OPTIONS, SimulatorOptions
from consumer.simulator.recorder import ProviderCall, RequestRecord
from consumer.simulator.responses import (
    REQUEST_ID,
    empty_response,
    json_response,
    mvmnt_error,
    mvmnt_nested_error,
    shipstation_error,
)
from consumer.simulator.shipstation import ShipStationApi
from consumer.simulator.shipstation import unavailable as shipstation_unavailable

logger = logging.getLogger(__name__)


def _provider_of(path: str) -> str | None:
    if path.startswith("/shipstation/"):
        return "shipstation"
    if path.startswith("/mvmnt/"):
        return "mvmnt"
    return None


def _http_error(provider: str | None, rid: str, exc: web.HTTPException) -> web.Response:
    """An unknown route, wrong method or oversized body, in the provider's error shape."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    status = exc.status
    if provider == "shipstation":
        if status >= 500:
            return empty_response(status)
        return shipstation_error(
            rid, status, "validation", "unspecified", exc.reason, headers=headers
        )
    if provider == "mvmnt":
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        message = "Resource not found" if status == 404 else exc.reason
        return mvmnt_error(status, code.get(status, "bad_request"), message, headers=headers)
    return json_response({"error": exc.reason}, status, headers=headers)


def _internal_error(provider: str | None) -> web.Response:
    if provider == "shipstation":
        # ShipStation's ServerError has an empty body.
        return empty_response(500)
    if provider == "mvmnt":
        return mvmnt_nested_error(500, "internal_error", "An unexpected error occurred")
    return json_response({"error": "internal error"}, 500)


async def _outage(
    ctx: SimulatorContext, request: web.Request, provider: str, mode: DownMode
) -> web.Response:
    """A call to a provider that is down: its 503, or a connection dropped unanswered."""
    if mode == "unavailable":
        return shipstation_unavailable() if provider == "shipstation" else mvmnt_unavailable()
    if request.transport is not None:
        request.transport.abort()
    # The lost connection cancels this handler (the runner has handler_cancellation), so
    # nothing is written; until then, or if the client left first, wait like a hang.
    await ctx.hang()
    return empty_response(503)


def _middleware(ctx: SimulatorContext) -> Middleware:
    recorder = ctx.recorder
    call_log = recorder.call_log
    clock = ctx.clock

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith(ADMIN_PREFIX + "/"):
            return await _admin(request, handler)
        rid = str(uuid.uuid4())
        request[REQUEST_ID] = rid
        headers = request.headers
        record = RequestRecord(
            at=clock(),
            request_id=rid,
            method=request.method,
            path=path,
            query_string=request.query_string,
            header_names=tuple(headers.keys()),
            content_type=request.content_type if "Content-Type" in headers else "",
            idempotency_key=headers.get("Idempotency-Key"),
        )
        recorder.begin(record)
        provider = _provider_of(path)
        call = None
        if provider is not None:
            call = call_log.begin(record.at, provider, record.method, path)
        try:
            record.keep_body(await request.read())
            outage = ctx.accounts[provider].outage() if provider is not None else None
            response: web.StreamResponse
            if provider is not None and outage is not None:
                response = await _outage(ctx, request, provider, outage)
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            response = _http_error(provider, rid, exc)
        except Exception:
            logger.exception("simulator failed on %s %s", request.method, path)
            response = _internal_error(provider)
        finally:
            recorder.end()
        response.headers["X-Request-Id"] = rid
        recorder.answered(record, response.status)
        if call is not None:
            call_log.answered(call, response.status)
        return response

    return middleware


async def _admin(request: web.Request, handler: Handler) -> web.StreamResponse:
    response: web.StreamResponse
    if not is_loopback(request.remote):
        response = admin_error(403, "the admin API only serves loopback clients")
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = admin_error(exc.status, exc.reason)
    response.headers["X-Request-Id"] = str(uuid.uuid4())
    return response


def build_app(ctx: SimulatorContext) -> web.Application:
    app = web.Application(middlewares=[_middleware(ctx)])
    app.add_routes(ShipStationApi(ctx).routes())
    app.add_routes(MvmntApi(ctx).routes())
    app.add_routes(AdminApi(ctx).routes())
    return app


def _url_host(host: str) -> str:
    """A host clients can dial: wildcard binds become loopback, IPv6 gets brackets."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Simulator:
    """Both providers' APIs plus ``/_admin`` on one loopback port."""

    def __init__(
        self,
        options: SimulatorOptions = DEFAULT_OPTIONS,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (unix time) drives the call log, rate limits and outages."""
        self._options = options
        self._ctx = SimulatorContext(options, clock)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def options(self) -> SimulatorOptions:
        return self._options

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        self._ctx.stopping.clear()
        runner = web.AppRunner(
            build_app(self._ctx),
            # A client that gives up on a hanging call cancels the handler with it.
            handler_cancellation=True,
            access_log=logger if self._options.access_log else None,
            shutdown_timeout=self._options.shutdown_timeout_seconds,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._options.host, self._options.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._ctx.stopping.set()
        await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self._options.host)}:{self.port}"

    @property
    def shipstation_base_url(self) -> str:
        return f"{self.base_url}/shipstation"

    @property
    def mvmnt_base_url(self) -> str:
        return f"{self.base_url}/mvmnt/v1"

    @property
    def mvmnt_token_url(self) -> str:
        return f"{self.base_url}/mvmnt/oauth2/token"

    def provider_accounts(self) -> dict[str, dict[str, object]]:
        """The ``[providers]`` config of one account per kind, pointing at this simulator."""
        return {
            "shipstation": {
                "kind": "shipstation",
                "base_url": self.shipstation_base_url,
                "api_key": self.options.shipstation_api_key,
            },
            "mvmnt": {
                "kind": "mvmnt",
                "base_url": self.mvmnt_base_url,
                "token_url": self.mvmnt_token_url,
                "client_id": self.options.mvmnt_client_id,
                "client_secret": self.options.mvmnt_client_secret,
            },
        }

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}{ADMIN_PREFIX}"

    def calls(self, provider: str, shipment_id: str) -> int:
        """Cancel calls received for the shipment, answered or not, faulted or not.

        A call made while the provider is down never reaches it: ``provider_calls`` has those.
        """
        return self._ctx.recorder.calls(provider, shipment_id)

    def stats(self) -> dict[str, Any]:
        return self._ctx.recorder.stats()

    def recent_requests(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The logged requests, oldest first, as GET /_admin/requests lists them."""
        return self._ctx.recorder.recent(
            limit if limit is not None else self._options.request_log_size
        )

    def provider_calls(self, provider: str | None = None) -> list[ProviderCall]:
        """Every provider call in arrival order, or those to ``provider`` (/_admin/calls)."""
        return self._ctx.recorder.call_log.calls(provider)

    def set_account_mode(
        self,
        provider: str,
        *,
        rate_limit_per_minute: int | Keep | None = KEEP,
        latency_ms: float | None = None,
        down_seconds: float | None = None,
        down_mode: DownMode | None = None,
    ) -> AccountMode:
        """``PUT /_admin/accounts/{provider}`` in-process; ``ValueError`` on a bad value.

        A setting left out stays as it is; ``rate_limit_per_minute=None`` removes the limit.
        """
        return self._ctx.set_account_mode(
            provider,
            rate_limit_per_minute=rate_limit_per_minute,
            latency_ms=latency_ms,
            down_seconds=down_seconds,
            down_mode=down_mode,
        )

    def account_mode(self, provider: str) -> AccountMode:
        return self._ctx.account_mode(provider)


async def serve_forever(options: SimulatorOptions) -> None:
    """Run until cancelled (the caller's Ctrl-C / SIGTERM handling), then stop cleanly.

    Collections run on a clock, as in the processor: under load the allocation-driven
    ones paused the simulator for up to 110 ms (its shipment state only grows), and a
    load test would count that as provider latency.
    """
    async with clocked_collections(), Simulator(options) as simulator:
        logger.info(
            "provider simulator listening: shipstation=%s mvmnt=%s mvmnt_token=%s admin=%s",
            simulator.shipstation_base_url,
            simulator.mvmnt_base_url,
            simulator.mvmnt_token_url,
            simulator.admin_url,
        )
        await asyncio.Event().wait()
