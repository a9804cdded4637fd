"""MVMNT API routes under ``/mvmnt``: the OAuth2 token endpoint and shipments get/cancel."""

from __future__ import annotations

import math
import time

import orjson
from aiohttp import web

from consumer.simulator.bodies import mvmnt_shipment
from consumer.simulator.context import SimulatorContext
from consumer.simulator.faults import FaultSpec
from consumer.simulator.responses import (
    FORM,
    JSON,
    PROBLEM_JSON,
    json_response,
    mvmnt_error,
    mvmnt_nested_error,
)
from consumer.simulator.shipments import Lookup

PREFIX = "/mvmnt"
_MAX_REASON_LENGTH = 1000
# The limit a ``ratelimit<N>`` fault reports when no real limiter is configured.
_FAULT_REPORTED_LIMIT = 120
# RFC 6749 section 5.1: token responses must not be cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def rate_limited(limit: int, retry_after_seconds: int, reset_at: int) -> web.Response:
    return mvmnt_error(
        429,
        "rate_limit_exceeded",
        f"Too many requests. Please retry after {retry_after_seconds} seconds.",
        headers={
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset_at),
            "Retry-After": str(retry_after_seconds),
        },
    )


def unavailable() -> web.Response:
    return mvmnt_nested_error(
        503, "service_unavailable", "The service is temporarily unavailable. Please retry."
    )


def not_found() -> web.Response:
    return mvmnt_error(404, "not_found", "Resource not found")


class MvmntApi:
    def __init__(self, ctx: SimulatorContext) -> None:
        self._ctx = ctx
        self._store = ctx.mvmnt
        self._account = ctx.account("mvmnt")
        self._tokens = ctx.tokens
        self._client_id = ctx.options.mvmnt_client_id
        self._client_secret = ctx.options.mvmnt_client_secret

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{PREFIX}/oauth2/token", self.issue_token),
            web.post(f"{PREFIX}/v1/shipments/{{id}}/cancel", self.cancel_shipment),
            web.get(f"{PREFIX}/v1/shipments/{{id}}", self.get_shipment, allow_head=False),
        ]

    async def issue_token(self, request: web.Request) -> web.Response:
        self._ctx.recorder.token_requests += 1
        if request.content_type != FORM:
            return mvmnt_error(400, "invalid_request", f"Content-Type must be {FORM}")
        form = await request.post()
        grant_type = form.get("grant_type")
        if grant_type is None:
            return mvmnt_error(400, "invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            return mvmnt_error(
                400, "unsupported_grant_type", "Only grant_type=client_credentials is supported"
            )
        if form.get("client_id") != self._client_id or (
            form.get("client_secret") != self._client_secret
        ):
            return mvmnt_error(401, "invalid_client", "Client authentication failed")
        token = self._tokens.issue(self._client_id)
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self._tokens.ttl_seconds,
        }
        return json_response(body, headers=_NO_STORE)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        return scheme.lower() == "bearer" and bool(token) and self._tokens.is_valid(token)

    async def _admit(self, request: web.Request, fault: FaultSpec) -> web.Response | None:
        """Bearer token, rate limit, latency and hang: before the endpoint's logic.

        The limit counts a call when it arrives, as the call log times it, so a 429 or a
        401 comes without the latency.
        """
        if not self._authorized(request):
            return mvmnt_error(
                401,
                "unauthorized",
                "Invalid or expired access token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if (refusal := self._account.acquire()) is not None:
            return rate_limited(refusal.limit, refusal.retry_after_seconds, refusal.reset_at)
        await self._ctx.pause("mvmnt", fault)
        if fault.hang:
            await self._ctx.hang()
            return unavailable()
        return None

    @staticmethod
    def _lookup(request: web.Request) -> Lookup | web.Response | None:
        by = request.query.get("by")
        if by is None:
            return None
        if by == "id":
            return "id"
        if by == "key":
            return "key"
        return mvmnt_error(400, "bad_request", "Query parameter 'by' must be 'id' or 'key'")

    @staticmethod
    async def _check_body(request: web.Request) -> web.Response | None:
        """The optional ``CancelShipmentRequest``: a JSON object with ``reason`` ≤ 1000."""
        raw = await request.read()
        if not raw.strip():
            return None
        if request.content_type != JSON:
            return mvmnt_error(400, "bad_request", f"Content-Type must be {JSON}")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return mvmnt_error(400, "bad_request", "Request body is not valid JSON")
        problem = None
        if not isinstance(body, dict):
            problem = "Request body must be a JSON object"
        elif "reason" in body and not isinstance(body["reason"], str):
            problem = "reason must be a string"
        elif len(body.get("reason", "")) > _MAX_REASON_LENGTH:
            problem = f"reason must be at most {_MAX_REASON_LENGTH} characters"
        if problem is not None:
            return mvmnt_error(422, "validation_error", problem)
        return None

    async def cancel_shipment(self, request: web.Request) -> web.Response:
        ref = request.match_info["id"]
        self._ctx.recorder.count_cancel("mvmnt", ref)
        fault = self._store.fault_for(ref)
        if (refused := await self._admit(request, fault)) is not None:
            return refused
        by = self._lookup(request)
        if isinstance(by, web.Response):
            return by
        if (refused := await self._check_body(request)) is not None:
            return refused
        shipment = self._store.get(ref, by)
        if shipment is None:
            return not_found()
        if shipment.budget.take_rate_limited():
            limit = self._ctx.options.rate_limit_per_minute or _FAULT_REPORTED_LIMIT
            return rate_limited(limit, 1, math.ceil(time.time() + 1))
        if shipment.budget.take_failing():
            return unavailable()
        if shipment.fault.auth_fail:
            return mvmnt_error(403, "forbidden", "This token may not cancel this shipment")
        if shipment.fault.reject:
            return mvmnt_error(400, "bad_request", f"Shipment {ref} cannot be canceled")
        if (refusal := shipment.cancel()) is not None:
            return mvmnt_error(409, "conflict", refusal, content_type=PROBLEM_JSON)
        return json_response(mvmnt_shipment(shipment))

    async def get_shipment(self, request: web.Request) -> web.Response:
        ref = request.match_info["id"]
        if (refused := await self._admit(request, self._store.fault_for(ref))) is not None:
            return refused
        by = self._lookup(request)
        if isinstance(by, web.Response):
            return by
        shipment = self._store.get(ref, by)
        if shipment is None:
            return not_found()
        return json_response(mvmnt_shipment(shipment))
