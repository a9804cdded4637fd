"""ShipStation v2 on the simulator: contract, state and faults."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from consumer.simulator import Simulator

from .helpers import SHIPSTATION_AUTH, StartSimulator

SHIPMENT_REQUIRED = {
    "shipment_id",
    "created_at",
    "modified_at",
    "shipment_status",
    "ship_to",
    "ship_from",
    "return_to",
    "confirmation",
    "advanced_options",
    "insurance_provider",
    "tags",
    "packages",
    "total_weight",
}
ADDRESS_REQUIRED = {
    "name",
    "phone",
    "address_line1",
    "city_locality",
    "state_province",
    "postal_code",
    "country_code",
    "address_residential_indicator",
}


def only_error(response: httpx.Response) -> dict[str, Any]:
    """The single error of a ShipStation error body, after checking the envelope."""
    body = response.json()
    assert set(body) == {"request_id", "errors"}
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert uuid.UUID(body["request_id"]).version == 4
    (error,) = body["errors"]
    assert error["error_source"] == "ShipStation"
    return dict(error)


async def status_of(api: httpx.AsyncClient, shipment_id: str) -> str:
    response = await api.get(f"/v2/shipments/{shipment_id}")
    assert response.status_code == 200
    status: str = response.json()["shipment_status"]
    return status


@pytest.mark.parametrize("headers", [{}, {"API-Key": "wrong"}, {"Authorization": "Bearer x"}])
async def test_a_missing_or_wrong_api_key_is_401(
    simulator: Simulator, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    url = f"{simulator.shipstation_base_url}/v2/shipments/se-1/cancel"
    response = await http.put(url, headers=headers)
    assert response.status_code == 401
    error = only_error(response)
    assert (error["error_type"], error["error_code"]) == ("security", "unauthorized")
    assert "field_name" not in error


async def test_cancel_is_204_then_a_second_cancel_is_invalid_status(
    simulator: Simulator, shipstation_api: httpx.AsyncClient
) -> None:
    first = await shipstation_api.put("/v2/shipments/se-100/cancel")
    assert first.status_code == 204
    assert first.content == b""
    assert uuid.UUID(first.headers["X-Request-Id"])

    second = await shipstation_api.put("/v2/shipments/se-100/cancel")
    assert second.status_code == 400
    error = only_error(second)
    assert (error["error_type"], error["error_code"]) == ("business_rules", "invalid_status")
    assert error["message"]

    assert await status_of(shipstation_api, "se-100") == "cancelled"
    assert simulator.calls("shipstation", "se-100") == 2


async def test_get_shipment_has_the_spec_required_fields(
    shipstation_api: httpx.AsyncClient,
) -> None:
    response = await shipstation_api.get("/v2/shipments/se-28529731")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) >= SHIPMENT_REQUIRED
    assert body["shipment_id"] == "se-28529731"
    assert body["shipment_status"] == "pending"
    for address in ("ship_to", "ship_from", "return_to"):
        assert set(body[address]) >= ADDRESS_REQUIRED
    assert body["total_weight"]["unit"] in {"pound", "ounce", "gram", "kilogram"}
    assert all("weight" in package for package in body["packages"])


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v2/shipments/se-notfound-1"), ("PUT", "/v2/shipments/se-notfound-1/cancel")],
)
async def test_notfound_is_404_invalid_identifier_on_get_and_cancel(
    shipstation_api: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await shipstation_api.request(method, path)
    assert response.status_code == 404
    error = only_error(response)
    assert error == {
        "error_source": "ShipStation",
        "error_type": "validation",
        "error_code": "invalid_identifier",
        "message": error["message"],
        "field_name": "shipment_id",
        "field_value": "se-notfound-1",
    }


@pytest.mark.parametrize(
    ("shipment_id", "status"),
    [("se-delivered-1", "label_purchased"), ("se-cancelled-1", "cancelled")],
)
async def test_delivered_and_cancelled_shipments_refuse_cancel(
    shipstation_api: httpx.AsyncClient, shipment_id: str, status: str
) -> None:
    response = await shipstation_api.put(f"/v2/shipments/{shipment_id}/cancel")
    assert response.status_code == 400
    assert only_error(response)["error_code"] == "invalid_status"
    assert await status_of(shipstation_api, shipment_id) == status


async def test_a_labeled_shipment_cancels_only_after_its_label_is_voided(
    shipstation_api: httpx.AsyncClient,
) -> None:
    refused = await shipstation_api.put("/v2/shipments/se-labeled-1/cancel")
    assert refused.status_code == 400
    assert only_error(refused)["error_code"] == "invalid_status"
    assert await status_of(shipstation_api, "se-labeled-1") == "label_purchased"

    listed = await shipstation_api.get("/v2/labels", params={"shipment_id": "se-labeled-1"})
    assert listed.status_code == 200
    page = listed.json()
    assert (page["total"], page["page"], page["pages"]) == (1, 1, 1)
    assert set(page["links"]) == {"first", "last", "prev", "next"}
    assert page["links"]["prev"] == page["links"]["next"] == {}
    (label,) = page["labels"]
    assert label["status"] == "completed"
    assert label["shipment_id"] == "se-labeled-1"

    voided = await shipstation_api.put(f"/v2/labels/{label['label_id']}/void")
    assert voided.status_code == 200
    assert voided.json()["approved"] is True
    assert isinstance(voided.json()["message"], str)
    assert await status_of(shipstation_api, "se-labeled-1") == "pending"

    relisted = await shipstation_api.get(
        "/v2/labels", params={"shipment_id": "se-labeled-1", "label_status": "voided"}
    )
    assert [item["status"] for item in relisted.json()["labels"]] == ["voided"]
    cancelled = await shipstation_api.put("/v2/shipments/se-labeled-1/cancel")
    assert cancelled.status_code == 204


async def test_voiding_twice_is_not_approved(shipstation_api: httpx.AsyncClient) -> None:
    listed = await shipstation_api.get("/v2/labels", params={"shipment_id": "se-labeled-2"})
    label_id = listed.json()["labels"][0]["label_id"]
    await shipstation_api.put(f"/v2/labels/{label_id}/void")
    again = await shipstation_api.put(f"/v2/labels/{label_id}/void")
    assert again.status_code == 200
    assert again.json()["approved"] is False
    assert again.json()["reason_code"] == "label_already_voided"


async def test_voiding_an_unknown_label_is_404(shipstation_api: httpx.AsyncClient) -> None:
    response = await shipstation_api.put("/v2/labels/se-lbl-404/void")
    assert response.status_code == 404
    assert only_error(response)["field_name"] == "label_id"


async def test_ratelimit_answers_429_with_retry_after_then_succeeds(
    simulator: Simulator, shipstation_api: httpx.AsyncClient
) -> None:
    url = "/v2/shipments/se-ratelimit2-1/cancel"
    for _ in range(2):
        response = await shipstation_api.put(url)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        error = only_error(response)
        assert (error["error_type"], error["error_code"]) == ("system", "rate_limit_exceeded")
    assert (await shipstation_api.put(url)).status_code == 204
    assert simulator.calls("shipstation", "se-ratelimit2-1") == 3


async def test_flaky_answers_503_with_an_empty_body_then_succeeds(
    shipstation_api: httpx.AsyncClient,
) -> None:
    url = "/v2/shipments/se-flaky1-1/cancel"
    failed = await shipstation_api.put(url)
    assert failed.status_code == 503
    assert failed.content == b""
    assert (await shipstation_api.put(url)).status_code == 204


async def test_reject_is_a_400_validation_error(shipstation_api: httpx.AsyncClient) -> None:
    response = await shipstation_api.put("/v2/shipments/se-reject-1/cancel")
    assert response.status_code == 400
    error = only_error(response)
    assert (error["error_type"], error["error_code"]) == ("validation", "invalid_field_value")
    assert error["field_value"] == "se-reject-1"


async def test_authfail_is_403_forbidden(shipstation_api: httpx.AsyncClient) -> None:
    response = await shipstation_api.put("/v2/shipments/se-authfail-1/cancel")
    assert response.status_code == 403
    assert only_error(response)["error_code"] == "forbidden"


async def test_slow_adds_its_latency(shipstation_api: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    response = await shipstation_api.put("/v2/shipments/se-slow150-1/cancel")
    assert response.status_code == 204
    assert time.perf_counter() - started >= 0.15


async def test_the_global_limiter_answers_429_once_the_minute_is_used_up(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    simulator = await start_simulator(rate_limit_per_minute=2)
    base = simulator.shipstation_base_url
    statuses = [
        (await http.put(f"{base}/v2/shipments/se-{n}/cancel", headers=SHIPSTATION_AUTH)).status_code
        for n in range(3)
    ]
    assert statuses == [204, 204, 429]
    limited = await http.get(f"{base}/v2/shipments/se-0", headers=SHIPSTATION_AUTH)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v2/shipments/se-1/cancel", 405),
        ("DELETE", "/v2/shipments/se-1", 405),
        ("PUT", "/v2/shipment/se-1/cancel", 404),
        ("PUT", "/v1/shipments/se-1/cancel", 404),
    ],
)
async def test_wrong_method_or_path_gets_a_shipstation_error(
    shipstation_api: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await shipstation_api.request(method, path)
    assert response.status_code == status
    assert only_error(response)["error_type"] == "validation"


async def test_a_body_on_cancel_is_rejected(
    simulator: Simulator, shipstation_api: httpx.AsyncClient
) -> None:
    response = await shipstation_api.put("/v2/shipments/se-1/cancel", json={"reason": "x"})
    assert response.status_code == 400
    assert only_error(response)["error_code"] == "invalid_object"
    assert simulator.calls("shipstation", "se-1") == 1
    assert await status_of(shipstation_api, "se-1") == "pending"


@pytest.mark.parametrize(
    "params", [{"label_status": "lost"}, {"page": "0"}, {"page_size": "x"}, {"page_size": "501"}]
)
async def test_list_labels_rejects_bad_query_values(
    shipstation_api: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await shipstation_api.get("/v2/labels", params=params)
    assert response.status_code == 400
    error = only_error(response)
    assert error["error_code"] == "invalid_field_value"
    assert error["field_name"] == next(iter(params))
