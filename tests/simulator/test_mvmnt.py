"""MVMNT on the simulator: OAuth2 token flow, Bearer auth, cancel/get contract and faults."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from consumer.simulator import Simulator

from .helpers import StartSimulator, mvmnt_token

GRANT = {"grant_type": "client_credentials"}
CLIENT = {"client_id": "sim-mvmnt-client", "client_secret": "sim-mvmnt-secret"}


def shipment_url(simulator: Simulator, ref: str) -> str:
    return f"{simulator.mvmnt_base_url}/shipments/{ref}"


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message"}
    return body


async def test_token_flow_issues_a_jwt_shaped_bearer_token(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    response = await http.post(simulator.mvmnt_token_url, data={**GRANT, **CLIENT})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert len(body["access_token"].split(".")) == 3
    assert simulator.stats()["token_requests"] == 1


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({**GRANT, **CLIENT, "client_secret": "nope"}, 401, "invalid_client"),
        ({**GRANT, **CLIENT, "client_id": "someone"}, 401, "invalid_client"),
        ({**GRANT, "client_id": "sim-mvmnt-client"}, 401, "invalid_client"),
        (CLIENT, 400, "invalid_request"),
        ({**CLIENT, "grant_type": "password"}, 400, "unsupported_grant_type"),
    ],
)
async def test_token_endpoint_refuses_bad_requests(
    simulator: Simulator, http: httpx.AsyncClient, form: dict[str, str], status: int, error: str
) -> None:
    response = await http.post(simulator.mvmnt_token_url, data=form)
    assert error_of(response, status)["error"] == error


async def test_token_endpoint_wants_a_form_not_json(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    response = await http.post(simulator.mvmnt_token_url, json={**GRANT, **CLIENT})
    assert error_of(response, 400)["error"] == "invalid_request"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-issued"}, {"Authorization": "Basic abc"}, {"API-Key": "x"}],
)
async def test_calls_without_a_valid_bearer_token_are_401(
    simulator: Simulator, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await http.post(
        f"{simulator.mvmnt_base_url}/shipments/SHP-1/cancel", headers=headers
    )
    body = error_of(response, 401)
    assert body == {"error": "unauthorized", "message": "Invalid or expired access token"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_an_expired_token_is_401(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    simulator = await start_simulator(mvmnt_token_ttl_seconds=0)
    token = await mvmnt_token(http, simulator)
    response = await http.get(
        shipment_url(simulator, "SHP-1"), headers={"Authorization": f"Bearer {token}"}
    )
    assert error_of(response, 401)["error"] == "unauthorized"


async def test_a_static_token_is_accepted(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    simulator = await start_simulator(mvmnt_static_token="static-token")
    response = await http.get(
        shipment_url(simulator, "SHP-1"), headers={"Authorization": "Bearer static-token"}
    )
    assert response.status_code == 200


async def test_cancel_is_200_canceled_then_409_and_get_shows_canceled(
    simulator: Simulator, mvmnt_api: httpx.AsyncClient
) -> None:
    url = "/shipments/SHP-12345/cancel"
    reason = {"reason": "Customer changed their mind"}
    first = await mvmnt_api.post(url, params={"by": "key"}, json=reason)
    assert first.status_code == 200
    assert uuid.UUID(first.headers["X-Request-Id"])
    shipment = first.json()
    assert shipment["status"] == "CANCELED"
    assert shipment["key"] == "SHP-12345"
    assert uuid.UUID(shipment["id"])
    assert {"id", "key", "status", "createdAt"} <= set(shipment)

    second = await mvmnt_api.post(url, params={"by": "key"})
    assert second.headers["Content-Type"] == "application/problem+json"
    assert error_of(second, 409) == {
        "error": "conflict",
        "message": "Shipment is delivered or already canceled",
    }

    by_key = await mvmnt_api.get("/shipments/SHP-12345")
    by_id = await mvmnt_api.get(f"/shipments/{shipment['id']}", params={"by": "id"})
    assert by_key.json()["status"] == by_id.json()["status"] == "CANCELED"
    assert simulator.calls("mvmnt", "SHP-12345") == 2


async def test_a_uuid_is_looked_up_as_an_id(mvmnt_api: httpx.AsyncClient) -> None:
    shipment_id = str(uuid.uuid4())
    response = await mvmnt_api.post(f"/shipments/{shipment_id}/cancel")
    assert response.status_code == 200
    assert response.json()["id"] == shipment_id
    assert response.json()["key"].startswith("SHP-")


async def test_by_id_with_a_non_uuid_finds_nothing(mvmnt_api: httpx.AsyncClient) -> None:
    response = await mvmnt_api.post("/shipments/SHP-1/cancel", params={"by": "id"})
    assert error_of(response, 404) == {"error": "not_found", "message": "Resource not found"}


@pytest.mark.parametrize(
    ("ref", "status"), [("SHP-delivered-1", "DELIVERED"), ("SHP-labeled-1", "IN_TRANSIT")]
)
async def test_delivered_and_in_transit_shipments_refuse_cancel_with_409(
    mvmnt_api: httpx.AsyncClient, ref: str, status: str
) -> None:
    response = await mvmnt_api.post(f"/shipments/{ref}/cancel")
    assert response.headers["Content-Type"] == "application/problem+json"
    assert error_of(response, 409)["error"] == "conflict"
    shown = (await mvmnt_api.get(f"/shipments/{ref}")).json()
    assert shown["status"] == status
    assert (shown["deliveredAt"] is not None) == (status == "DELIVERED")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/shipments/SHP-notfound-1"), ("POST", "/shipments/SHP-notfound-1/cancel")],
)
async def test_notfound_is_404_on_get_and_cancel(
    mvmnt_api: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await mvmnt_api.request(method, path)
    assert error_of(response, 404)["error"] == "not_found"


async def test_ratelimit_answers_429_with_rate_limit_headers_then_succeeds(
    mvmnt_api: httpx.AsyncClient,
) -> None:
    url = "/shipments/SHP-ratelimit1-1/cancel"
    limited = await mvmnt_api.post(url)
    assert error_of(limited, 429)["error"] == "rate_limit_exceeded"
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Limit"]) > 0
    assert int(limited.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert (await mvmnt_api.post(url)).status_code == 200


async def test_flaky_answers_503_in_the_nested_error_shape_then_succeeds(
    mvmnt_api: httpx.AsyncClient,
) -> None:
    url = "/shipments/SHP-flaky2-1/cancel"
    for _ in range(2):
        failed = await mvmnt_api.post(url)
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "service_unavailable"
        assert failed.json()["error"]["message"]
    assert (await mvmnt_api.post(url)).status_code == 200


@pytest.mark.parametrize(
    ("ref", "status", "error"),
    [("SHP-reject-1", 400, "bad_request"), ("SHP-authfail-1", 403, "forbidden")],
)
async def test_reject_and_authfail_faults(
    mvmnt_api: httpx.AsyncClient, ref: str, status: int, error: str
) -> None:
    response = await mvmnt_api.post(f"/shipments/{ref}/cancel")
    assert error_of(response, status)["error"] == error


async def test_the_global_limiter_sends_rate_limit_headers(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    simulator = await start_simulator(rate_limit_per_minute=1)
    auth = {"Authorization": f"Bearer {await mvmnt_token(http, simulator)}"}
    assert (await http.get(shipment_url(simulator, "SHP-1"), headers=auth)).status_code == 200
    limited = await http.get(shipment_url(simulator, "SHP-1"), headers=auth)
    assert error_of(limited, 429)["error"] == "rate_limit_exceeded"
    assert limited.headers["X-RateLimit-Limit"] == "1"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


@pytest.mark.parametrize(
    ("params", "content", "content_type", "expected"),
    [
        ({"by": "name"}, None, None, (400, "bad_request")),
        ({}, b"{not json", "application/json", (400, "bad_request")),
        ({}, b'{"reason": "x"}', "text/plain", (400, "bad_request")),
        ({}, b'["reason"]', "application/json", (422, "validation_error")),
        ({}, b'{"reason": 7}', "application/json", (422, "validation_error")),
        ({}, b'{"reason": "' + b"x" * 1001 + b'"}', "application/json", (422, "validation_error")),
    ],
)
async def test_non_conforming_cancel_requests_are_refused(
    mvmnt_api: httpx.AsyncClient,
    params: dict[str, str],
    content: bytes | None,
    content_type: str | None,
    expected: tuple[int, str],
) -> None:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    response = await mvmnt_api.post(
        "/shipments/SHP-1/cancel", params=params, content=content, headers=headers
    )
    status, error = expected
    assert error_of(response, status)["error"] == error
    assert (await mvmnt_api.get("/shipments/SHP-1")).json()["status"] == "BOOKED"


async def test_a_reason_of_1000_characters_and_an_empty_body_are_fine(
    mvmnt_api: httpx.AsyncClient,
) -> None:
    long_reason = await mvmnt_api.post("/shipments/SHP-1/cancel", json={"reason": "x" * 1000})
    assert long_reason.status_code == 200
    assert (await mvmnt_api.post("/shipments/SHP-2/cancel")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("PUT", "/shipments/SHP-1/cancel", 405, "method_not_allowed"),
        ("DELETE", "/shipments/SHP-1", 405, "method_not_allowed"),
        ("POST", "/shipment/SHP-1/cancel", 404, "not_found"),
    ],
)
async def test_wrong_method_or_path_gets_an_mvmnt_error(
    mvmnt_api: httpx.AsyncClient, method: str, path: str, status: int, error: str
) -> None:
    response = await mvmnt_api.request(method, path)
    assert error_of(response, status)["error"] == error
