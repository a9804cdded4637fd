"""ShipStation API v2 routes under ``/shipstation``: shipments get/cancel, labels list/void."""

from __future__ import annotations

from aiohttp import web

from consumer.simulator.bodies import shipstation_label_page, shipstation_shipment
from consumer.simulator.context import SimulatorContext
from consumer.simulator.faults import NO_FAULT, FaultSpec
from consumer.simulator.responses import (
    empty_response,
    json_response,
    request_id,
    shipstation_error,
)

PREFIX = "/shipstation"
_LABEL_STATUSES = frozenset({"processing", "completed", "error", "voided"})
_MAX_PAGE_SIZE = 500


def rate_limited(rid: str, retry_after_seconds: int) -> web.Response:
    return shipstation_error(
        rid,
        429,
        "system",
        "rate_limit_exceeded",
        "You have exceeded the rate limit. Please retry after the time in Retry-After.",
        headers={"Retry-After": str(retry_after_seconds)},
    )


def unavailable() -> web.Response:
    # ShipStation's ServerError has an empty body.
    return empty_response(503)


def not_found(rid: str, field_name: str, value: str) -> web.Response:
    return shipstation_error(
        rid,
        404,
        "validation",
        "invalid_identifier",
        f"{field_name} {value} was not found.",
        field_name=field_name,
        field_value=value,
    )


def invalid_value(rid: str, field_name: str, value: str, message: str) -> web.Response:
    return shipstation_error(
        rid,
        400,
        "validation",
        "invalid_field_value",
        message,
        field_name=field_name,
        field_value=value,
    )


class ShipStationApi:
    def __init__(self, ctx: SimulatorContext) -> None:
        self._ctx = ctx
        self._store = ctx.shipstation
        self._account = ctx.account("shipstation")
        self._api_key = ctx.options.shipstation_api_key

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put(f"{PREFIX}/v2/shipments/{{shipment_id}}/cancel", self.cancel_shipment),
            web.get(f"{PREFIX}/v2/shipments/{{shipment_id}}", self.get_shipment, allow_head=False),
            web.get(f"{PREFIX}/v2/labels", self.list_labels, allow_head=False),
            web.put(f"{PREFIX}/v2/labels/{{label_id}}/void", self.void_label),
        ]

    async def _admit(self, request: web.Request, fault: FaultSpec) -> web.Response | None:
        """API key, rate limit, latency and hang: what happens before the endpoint's logic.

        The limit counts a call when it arrives, as the call log times it, so a 429 or a
        401 comes without the latency.
        """
        rid = request_id(request)
        if request.headers.get("API-Key") != self._api_key:
            return shipstation_error(
                rid,
                401,
                "security",
                "unauthorized",
                "The API key is invalid. Send a valid key in the API-Key header.",
            )
        if (refusal := self._account.acquire()) is not None:
            return rate_limited(rid, refusal.retry_after_seconds)
        await self._ctx.pause("shipstation", fault)
        if fault.hang:
            await self._ctx.hang()
            return unavailable()
        return None

    async def _refuse_body(self, request: web.Request) -> web.Response | None:
        # These PUTs take no body; one means the client mixed up its endpoints.
        if await request.read():
            return shipstation_error(
                request_id(request),
                400,
                "validation",
                "invalid_object",
                "This endpoint does not accept a request body.",
            )
        return None

    async def cancel_shipment(self, request: web.Request) -> web.Response:
        shipment_id = request.match_info["shipment_id"]
        self._ctx.recorder.count_cancel("shipstation", shipment_id)
        fault = self._store.fault_for(shipment_id)
        if (refused := await self._admit(request, fault)) is not None:
            return refused
        if (refused := await self._refuse_body(request)) is not None:
            return refused
        rid = request_id(request)
        shipment = self._store.get(shipment_id)
        if shipment is None:
            return not_found(rid, "shipment_id", shipment_id)
        if shipment.budget.take_rate_limited():
            return rate_limited(rid, 1)
        if shipment.budget.take_failing():
            return unavailable()
        if fault.auth_fail:
            return shipstation_error(
                rid,
                403,
                "security",
                "forbidden",
                f"This API key is not allowed to cancel shipment {shipment_id}.",
            )
        if fault.reject:
            return invalid_value(
                rid, "shipment_id", shipment_id, f"Shipment {shipment_id} cannot be cancelled."
            )
        if (refusal := shipment.cancel()) is not None:
            return shipstation_error(rid, 400, "business_rules", "invalid_status", refusal)
        return empty_response(204)

    async def get_shipment(self, request: web.Request) -> web.Response:
        shipment_id = request.match_info["shipment_id"]
        if (refused := await self._admit(request, self._store.fault_for(shipment_id))) is not None:
            return refused
        shipment = self._store.get(shipment_id)
        if shipment is None:
            return not_found(request_id(request), "shipment_id", shipment_id)
        return json_response(shipstation_shipment(shipment))

    async def list_labels(self, request: web.Request) -> web.Response:
        query = request.query
        shipment_id = query.get("shipment_id") or None
        fault = self._store.fault_for(shipment_id) if shipment_id is not None else NO_FAULT
        if (refused := await self._admit(request, fault)) is not None:
            return refused
        rid = request_id(request)
        status = query.get("label_status")
        if status is not None and status not in _LABEL_STATUSES:
            return invalid_value(rid, "label_status", status, f"'{status}' is not a label status.")
        paging: dict[str, int] = {}
        for name, default, upper in (("page", 1, None), ("page_size", 25, _MAX_PAGE_SIZE)):
            raw = query.get(name, str(default))
            number = int(raw) if raw.isdigit() else 0
            if number < 1 or (upper is not None and number > upper):
                limit = f" to {upper}" if upper is not None else ""
                return invalid_value(
                    rid, name, raw, f"{name} must be a whole number from 1{limit}."
                )
            paging[name] = number
        labels = self._store.labels(shipment_id, status)
        body = shipstation_label_page(
            labels,
            paging["page"],
            paging["page_size"],
            lambda page: str(request.url.update_query(page=page)),
        )
        return json_response(body)

    async def void_label(self, request: web.Request) -> web.Response:
        label_id = request.match_info["label_id"]
        label = self._store.label(label_id)
        fault = self._store.fault_for(label.shipment_id) if label is not None else NO_FAULT
        if (refused := await self._admit(request, fault)) is not None:
            return refused
        if (refused := await self._refuse_body(request)) is not None:
            return refused
        # Looked up again: the state may have changed (reset, void) while we paused.
        label = self._store.label(label_id)
        if label is None:
            return not_found(request_id(request), "label_id", label_id)
        result = self._store.void(label)
        body: dict[str, object] = {"approved": result.approved, "message": result.message}
        if result.reason_code is not None:
            body["reason_code"] = result.reason_code
        return json_response(body)
