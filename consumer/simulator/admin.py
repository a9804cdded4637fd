"""``/_admin``: steer the simulator (faults, latency, accounts, reset) and look at what it saw.

No auth, but only loopback clients are served, even when the simulator listens wider.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import orjson
from aiohttp import web

from consumer.simulator.accounts import parse_change
from consumer.simulator.context import SimulatorContext
from consumer.simulator.faults import parse_fault
from consumer.simulator.recorder import PROVIDERS
from consumer.simulator.responses import JSON, json_response

PREFIX = "/_admin"
_DEFAULT_REQUEST_LIMIT = 100


def admin_error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def is_loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_type != JSON:
        return admin_error(400, f"Content-Type must be {JSON}")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return admin_error(400, "body is not valid JSON")
    if not isinstance(body, dict):
        return admin_error(400, "body must be a JSON object")
    return body


def _unknown_provider(provider: str) -> web.Response:
    return admin_error(404, f"unknown provider {provider!r}; expected one of {list(PROVIDERS)}")


class AdminApi:
    def __init__(self, ctx: SimulatorContext) -> None:
        self._ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{PREFIX}/faults", self.set_fault),
            web.put(f"{PREFIX}/latency", self.set_latency),
            web.put(f"{PREFIX}/accounts/{{provider}}", self.set_account),
            web.get(f"{PREFIX}/accounts/{{provider}}", self.account, allow_head=False),
            web.get(f"{PREFIX}/calls", self.calls, allow_head=False),
            web.get(f"{PREFIX}/stats", self.stats, allow_head=False),
            web.get(f"{PREFIX}/requests", self.requests, allow_head=False),
            web.post(f"{PREFIX}/reset", self.reset),
        ]

    async def set_fault(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        provider = body.get("provider")
        shipment_id = body.get("shipment_id")
        fault_text = body.get("fault")
        if provider not in PROVIDERS:
            return admin_error(400, f"provider must be one of {list(PROVIDERS)}")
        if not isinstance(shipment_id, str) or not shipment_id:
            return admin_error(400, "shipment_id must be a non-empty string")
        if not isinstance(fault_text, str):
            return admin_error(
                400, 'fault must be a string (e.g. "ratelimit2-slow50", "" for none)'
            )
        fault = parse_fault(fault_text)
        store = self._ctx.shipstation if provider == "shipstation" else self._ctx.mvmnt
        store.set_fault(shipment_id, fault)
        return json_response(
            {"provider": provider, "shipment_id": shipment_id, "fault": fault.to_json()}
        )

    async def set_latency(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        latency = body.get("latency_ms")
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            return admin_error(400, "latency_ms must be a number >= 0")
        self._ctx.latency_ms = float(latency)
        return json_response({"latency_ms": self._ctx.latency_ms})

    def _account_json(self, provider: str) -> dict[str, Any]:
        return {"provider": provider, **self._ctx.account_mode(provider).to_json()}

    async def set_account(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        if provider not in PROVIDERS:
            return _unknown_provider(provider)
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            change = parse_change(body)
        except ValueError as exc:
            return admin_error(400, str(exc))
        self._ctx.account(provider).change(change)
        return json_response(self._account_json(provider))

    async def account(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        if provider not in PROVIDERS:
            return _unknown_provider(provider)
        return json_response(self._account_json(provider))

    async def calls(self, request: web.Request) -> web.Response:
        provider = request.query.get("provider")
        if provider is not None and provider not in PROVIDERS:
            return admin_error(400, f"provider must be one of {list(PROVIDERS)}")
        return json_response({"calls": self._ctx.recorder.call_log.to_json(provider)})

    async def stats(self, request: web.Request) -> web.Response:
        return json_response(self._ctx.recorder.stats())

    async def requests(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", str(_DEFAULT_REQUEST_LIMIT))
        if not raw.isdigit():
            return admin_error(400, "limit must be a whole number")
        return json_response({"requests": self._ctx.recorder.recent(int(raw))})

    async def reset(self, request: web.Request) -> web.Response:
        self._ctx.reset()
        return json_response({"reset": True})
