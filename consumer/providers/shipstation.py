"""ShipStation API v2: ``PUT /v2/shipments/{shipment_id}/cancel`` with the ``API-Key`` header.

Facts of the API this adapter relies on:

- The cancel answers 204 with no body. 400 and 404 answer
  ``{"request_id": ..., "errors": [{"error_source", "error_type", "error_code", "message",
  "field_name"?, "field_value"?}]}``; 5xx bodies are empty or arbitrary.
- A shipment with an active label cannot be cancelled: the label must be voided first
  (``PUT /v2/labels/{label_id}/void`` answers 200 ``{"approved", "message", "reason_code"?}``).
- ``GET /v2/shipments/{id}`` has ``shipment_status``: pending, processing, label_purchased,
  cancelled. ``GET /v2/labels?shipment_id=`` pages ``{"labels": [...], "pages": n}``; a label
  has ``label_id``, ``status`` (processing, completed, error, voided) and ``voided``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import httpx
from pydantic import SecretStr

from consumer.core.errors import (
    AuthError,
    CancelError,
    ConflictError,
    RateLimitedError,
    UnavailableError,
)
from consumer.providers.base import (
    CancelOutcome,
    CancelRequest,
    ErrorBody,
    ProviderSettingsBase,
    error_class_for_status,
)
from consumer.providers.client import HttpClient
from consumer.providers.http import (
    conflict_keeping,
    error_from_response,
    path_segment,
    read_error,
    request_id,
    send,
    success_object,
    text_field,
)


class ShipStationSettings(ProviderSettingsBase):
    """[providers.NAME]: a ShipStation API v2 account."""

    kind: Literal["shipstation"]
    """The adapter this account uses: "shipstation"."""
    api_key: SecretStr
    """The account's API key, sent in the API-Key header. Keep it in the environment: "${VAR}"."""
    void_labels: bool = False
    """Whether a shipment's active label is voided so that it can be cancelled. Voiding costs
    money, so it is opt-in; without it a labelled shipment fails."""
    rate_limit_per_minute: float | None = 200.0
    """Requests per minute this account sends at most, paced evenly and shared by all events;
    the default is ShipStation's documented limit."""


# How each ``error_code`` of ShipStation's enum refines the HTTP status's category.
# ``None``: the code says nothing beyond the status (400 -> rejected, 404 -> not_found).
# Only statuses in _REFINABLE_STATUSES are refined: 401/403/429/5xx speak for themselves.
ERROR_CODE_CLASSES: Final[Mapping[str, type[CancelError] | None]] = {
    # The shipment's (or its batch's) state forbids the change: a state refusal, confirmed
    # with a read of the shipment (see STATE_REFUSAL_CODES).
    "invalid_status": ConflictError,
    "batch_cannot_be_modified": ConflictError,
    # Something else already holds what the request asks for.
    "carrier_conflict": ConflictError,
    "field_conflict": ConflictError,
    "identifier_conflict": ConflictError,
    "warehouse_conflict": ConflictError,
    "webhook_event_type_conflict": ConflictError,
    # The account may not call the API at all until someone fixes credentials or billing.
    "unauthorized": AuthError,
    "forbidden": AuthError,
    "subscription_inactive": AuthError,
    "trial_expired": AuthError,
    "terms_not_accepted": AuthError,
    "invalid_billing_plan": AuthError,
    "rate_limit_exceeded": RateLimitedError,
    # A postage meter fault is on the carrier's side and clears on its own.
    "meter_failure": UnavailableError,
    # "Unknown"/"unspecified" say nothing: ERROR_TYPE_CLASSES decides from error_type.
    "unknown": None,
    "unspecified": None,
    # Bad input or an unsupported operation: the status decides (invalid_identifier on a 404
    # is the plain "no such shipment").
    "invalid_identifier": None,
    "auto_fund_not_supported": None,
    "carrier_disconnected": None,
    "carrier_not_connected": None,
    "carrier_not_supported": None,
    "confirmation_not_supported": None,
    "default_warehouse_cannot_be_deleted": None,
    "field_value_required": None,
    "identifiers_must_match": None,
    "insufficient_funds": None,
    "invalid_address": None,
    "invalid_field_value": None,
    "invalid_string_length": None,
    "label_images_not_supported": None,
    "order_source_not_active": None,
    "refresh_not_supported": None,
    "request_body_required": None,
    "return_label_not_supported": None,
    "settings_not_supported": None,
    "tracking_not_supported": None,
    "verification_failure": None,
    "customs_items_required": None,
    "incompatible_paired_labels": None,
    "invalid_charge_event": None,
    "invalid_object": None,
    "no_rates_returned": None,
}

# For a vague ("unknown", "unspecified") or unlisted code, the error_type still tells a
# fault of ShipStation itself (retry later) or of our credentials from a bad request.
ERROR_TYPE_CLASSES: Final[Mapping[str, type[CancelError]]] = {
    "system": UnavailableError,
    "security": AuthError,
}
_VAGUE_CODES: Final = frozenset({"unknown", "unspecified"})

# Codes meaning "the shipment's state forbids cancelling": it may already be cancelled (a
# success) or hold an active label (voidable when the account opts in).
STATE_REFUSAL_CODES: Final = frozenset({"invalid_status", "batch_cannot_be_modified"})

_REFINABLE_STATUSES: Final = frozenset({400, 404, 409, 422})

# Labels that can still be voided; "error" labels were never bought, "voided" ones are done.
_SPENT_LABEL_STATUSES: Final = frozenset({"voided", "error"})
_VOID_ALREADY_DONE: Final = "label_already_voided"
_LABEL_PAGE_SIZE: Final = 100
# A shipment has a handful of labels; more pages than this means the filter was ignored.
_MAX_LABEL_PAGES: Final = 10


def error_class(status: int, error_code: str | None, error_type: str | None) -> type[CancelError]:
    """The category of a ShipStation error answer, from its status, code and type."""
    by_status = error_class_for_status(status)
    if status not in _REFINABLE_STATUSES:
        return by_status
    refined = ERROR_CODE_CLASSES.get(error_code or "")
    if refined is None and (error_code in _VAGUE_CODES or error_code not in ERROR_CODE_CLASSES):
        refined = ERROR_TYPE_CLASSES.get(error_type or "")
    return refined or by_status


def error_body(body: dict[str, Any]) -> ErrorBody:
    """ShipStation's error answer ``{"request_id", "errors": [{"error_code", "message", ...}]}``:
    the first error names the code and message; every error object is kept."""
    raw_errors = body.get("errors")
    errors = (
        tuple(e for e in raw_errors if isinstance(e, dict)) if isinstance(raw_errors, list) else ()
    )
    first = errors[0] if errors else None
    return ErrorBody(
        code=text_field(first, "error_code"),
        message=text_field(first, "message"),
        request_id=text_field(body, "request_id"),
        errors=errors,
    )


def is_state_refusal(status: int, error_code: str | None) -> bool:
    # ShipStation documents no 409 for the cancel; should one come, it can only be the state.
    return status == 409 or (status in (400, 422) and error_code in STATE_REFUSAL_CODES)


class ShipStationProvider:
    """One ShipStation account."""

    def __init__(self, name: str, settings: ShipStationSettings, client: HttpClient) -> None:
        self.name = name
        self._settings = settings
        self._client = client
        self._base_url = settings.base_url.rstrip("/")
        self._api_key = settings.api_key.get_secret_value()
        self._secrets = (self._api_key,)

    @property
    def kind(self) -> str:
        return "shipstation"

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        return await self._cancel(request, request.idempotency_key, labels_voided=False)

    async def _cancel(
        self, request: CancelRequest, idempotency_key: str, *, labels_voided: bool
    ) -> CancelOutcome:
        shipment = path_segment(request.shipment_id)
        response = await self._call(
            "PUT", f"/v2/shipments/{shipment}/cancel", "cancel", idempotency_key=idempotency_key
        )
        if response.is_success:
            return CancelOutcome("cancelled", provider_request_id=request_id(response))
        refusal = self._error(response, "cancel")
        if not is_state_refusal(response.status_code, refusal.provider_code):
            raise refusal
        return await self._after_refusal(request, refusal, labels_voided=labels_voided)

    async def _after_refusal(
        self, request: CancelRequest, refusal: CancelError, *, labels_voided: bool
    ) -> CancelOutcome:
        """Tell "already cancelled" from "label still active" from any other state."""
        response = await self._call(
            "GET", f"/v2/shipments/{path_segment(request.shipment_id)}", "get shipment"
        )
        if not response.is_success:
            raise self._error(response, "get shipment")
        status = text_field(success_object(response, "get shipment"), "shipment_status")
        if status == "cancelled":
            return CancelOutcome(
                "already_cancelled",
                provider_status="cancelled",
                provider_request_id=refusal.provider_request_id or request_id(response),
            )
        if status != "label_purchased":
            raise conflict_keeping(f"cancel refused: shipment status is {status!r}", refusal)
        if labels_voided:
            raise conflict_keeping(
                "label not voided: still active after voiding its labels", refusal
            )
        if not self._settings.void_labels:
            raise conflict_keeping(
                "label not voided: the shipment has an active label and void_labels is off"
                " for this account",
                refusal,
            )
        await self._void_active_labels(request, refusal)
        # A fresh key: the refused attempt may be replayed by ShipStation for the old one.
        return await self._cancel(
            request, f"{request.idempotency_key}:after-void", labels_voided=True
        )

    async def _void_active_labels(self, request: CancelRequest, refusal: CancelError) -> None:
        for label_id in await self._active_label_ids(request.shipment_id):
            response = await self._call(
                "PUT",
                f"/v2/labels/{path_segment(label_id)}/void",
                "void label",
                idempotency_key=f"{request.idempotency_key}:void:{label_id}",
            )
            if not response.is_success:
                raise self._error(response, "void label")
            answer = success_object(response, "void label")
            reason_code = text_field(answer, "reason_code")
            if answer.get("approved") is True or reason_code == _VOID_ALREADY_DONE:
                continue
            raise ConflictError(
                f"label not voided: ShipStation refused to void label {label_id}: "
                f"{text_field(answer, 'message') or 'no reason given'}",
                http_status=refusal.http_status,
                provider_code=reason_code or refusal.provider_code,
                provider_request_id=refusal.provider_request_id,
                provider_errors=[*refusal.provider_errors, answer],
            )

    async def _active_label_ids(self, shipment_id: str) -> list[str]:
        label_ids: list[str] = []
        for page in range(1, _MAX_LABEL_PAGES + 1):
            response = await self._call(
                "GET",
                "/v2/labels",
                "list labels",
                params={
                    "shipment_id": shipment_id,
                    "page": str(page),
                    "page_size": str(_LABEL_PAGE_SIZE),
                },
            )
            if not response.is_success:
                raise self._error(response, "list labels")
            body = success_object(response, "list labels")
            labels = body.get("labels")
            if not isinstance(labels, list) or not labels:
                break
            label_ids.extend(i for label in labels if (i := _voidable_label_id(label)))
            pages = body.get("pages")
            if not isinstance(pages, int) or page >= pages:
                break
        return label_ids

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        idempotency_key: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        headers = {"API-Key": self._api_key, "Accept": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return await send(
            self._client,
            method,
            self._base_url,
            path=path,
            what=f"shipstation {what}",
            http_timeout=self._settings.timeout_seconds,
            headers=headers,
            params=params,
            error_body=error_body,
        )

    def _error(self, response: httpx.Response, what: str) -> CancelError:
        said = read_error(response, error_body)
        error_type = text_field(said.errors[0], "error_type") if said.errors else None
        return error_from_response(
            error_class(response.status_code, said.code, error_type),
            f"shipstation {what}",
            response,
            said,
            secrets=self._secrets,
        )


def _voidable_label_id(label: Any) -> str | None:
    if not isinstance(label, dict) or label.get("voided") is True:
        return None
    if label.get("status") in _SPENT_LABEL_STATUSES:
        return None
    return text_field(label, "label_id")
