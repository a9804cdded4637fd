"""The simulator as a server: hangs, shutdown, request ids, the admin API, serve_forever."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import httpx
import pytest

from consumer.simulator import Simulator, SimulatorOptions, serve_forever
from consumer.simulator.admin import is_loopback
from tests.polling import eventually

from .helpers import SHIPSTATION_AUTH, StartSimulator, mvmnt_token


def ss_cancel(simulator: Simulator, shipment_id: str) -> str:
    return f"{simulator.shipstation_base_url}/v2/shipments/{shipment_id}/cancel"


async def test_a_hanging_call_is_cancelled_when_the_client_gives_up(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await http.put(ss_cancel(simulator, "se-hang-1"), headers=SHIPSTATION_AUTH, timeout=0.2)
    assert simulator.calls("shipstation", "se-hang-1") == 1
    await eventually(lambda: simulator.stats()["in_flight"] == 0)
    log = (await http.get(f"{simulator.admin_url}/requests")).json()["requests"]
    assert [(entry["path"], entry["status"]) for entry in log] == [
        ("/shipstation/v2/shipments/se-hang-1/cancel", None)
    ]


async def test_a_hanging_mvmnt_call_is_cancelled_too(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    auth = {"Authorization": f"Bearer {await mvmnt_token(http, simulator)}"}
    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            f"{simulator.mvmnt_base_url}/shipments/SHP-hang/cancel", headers=auth, timeout=0.2
        )
    await eventually(lambda: simulator.stats()["in_flight"] == 0)


async def test_stop_does_not_wait_for_hanging_calls(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    simulator = await start_simulator()
    call = asyncio.create_task(
        http.put(ss_cancel(simulator, "se-hang-2"), headers=SHIPSTATION_AUTH)
    )
    await eventually(lambda: simulator.stats()["in_flight"] == 1)
    started = time.monotonic()
    await simulator.stop()
    assert time.monotonic() - started < 1.0
    (outcome,) = await asyncio.gather(call, return_exceptions=True)
    if isinstance(outcome, httpx.Response):
        assert outcome.status_code == 503
    else:
        assert isinstance(outcome, httpx.TransportError)


async def test_every_provider_response_has_its_own_request_id(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    responses = [
        await http.put(ss_cancel(simulator, "se-1"), headers=SHIPSTATION_AUTH),
        await http.put(ss_cancel(simulator, "se-1")),
        await http.get(f"{simulator.shipstation_base_url}/nowhere"),
        await http.get(f"{simulator.mvmnt_base_url}/shipments/SHP-1"),
        await http.post(simulator.mvmnt_token_url),
    ]
    ids = {response.headers["X-Request-Id"] for response in responses}
    assert len(ids) == len(responses)


async def test_unknown_top_level_paths_are_404(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    response = await http.get(f"{simulator.base_url}/v2/shipments/se-1")
    assert response.status_code == 404
    assert "error" in response.json()


async def test_idempotency_keys_are_accepted_and_recorded(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    response = await http.put(
        ss_cancel(simulator, "se-1"), headers={**SHIPSTATION_AUTH, "Idempotency-Key": "k-1"}
    )
    assert response.status_code == 204
    (entry,) = (await http.get(f"{simulator.admin_url}/requests")).json()["requests"]
    assert entry["idempotency_key"] == "k-1"


async def test_request_log_shows_contract_details_but_no_credentials(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    token = await mvmnt_token(http, simulator)
    await http.put(ss_cancel(simulator, "se-1"), headers=SHIPSTATION_AUTH)
    await http.post(
        f"{simulator.mvmnt_base_url}/shipments/SHP-1/cancel",
        params={"by": "key"},
        json={"reason": "Customer changed their mind"},
        headers={"Authorization": f"Bearer {token}"},
    )
    response = await http.get(f"{simulator.admin_url}/requests", params={"limit": 2})
    text = response.text
    for secret in (token, SimulatorOptions().shipstation_api_key, "sim-mvmnt-secret"):
        assert secret not in text
    shipstation, mvmnt = response.json()["requests"]
    assert shipstation["method"] == "PUT"
    assert shipstation["path"] == "/shipstation/v2/shipments/se-1/cancel"
    assert "API-Key" in shipstation["headers"]
    assert shipstation["body_size"] == 0
    assert shipstation["status"] == 204
    assert mvmnt["query"] == {"by": "key"}
    assert mvmnt["content_type"] == "application/json"
    assert mvmnt["json"] == {"reason": "Customer changed their mind"}
    assert "Authorization" in mvmnt["headers"]

    everything = (await http.get(f"{simulator.admin_url}/requests")).json()["requests"]
    assert everything == simulator.recent_requests()
    assert simulator.recent_requests(1) == everything[-1:]
    assert everything[0]["path"] == "/mvmnt/oauth2/token"
    assert everything[0]["form"]["client_secret"] == "***"


async def test_admin_fault_overrides_the_id_convention(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    admin = f"{simulator.admin_url}/faults"
    set_fault = await http.post(
        admin, json={"provider": "shipstation", "shipment_id": "se-7", "fault": "ratelimit1-slow10"}
    )
    assert set_fault.status_code == 200
    assert set_fault.json()["fault"]["rate_limited_calls"] == 1
    assert (
        await http.put(ss_cancel(simulator, "se-7"), headers=SHIPSTATION_AUTH)
    ).status_code == 429
    assert (
        await http.put(ss_cancel(simulator, "se-7"), headers=SHIPSTATION_AUTH)
    ).status_code == 204

    cleared = await http.post(
        admin, json={"provider": "mvmnt", "shipment_id": "SHP-notfound-9", "fault": ""}
    )
    assert cleared.status_code == 200
    auth = {"Authorization": f"Bearer {await mvmnt_token(http, simulator)}"}
    response = await http.post(
        f"{simulator.mvmnt_base_url}/shipments/SHP-notfound-9/cancel", headers=auth
    )
    assert response.status_code == 200


async def test_admin_fault_rebuilds_an_existing_shipment(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    assert (
        await http.put(ss_cancel(simulator, "se-8"), headers=SHIPSTATION_AUTH)
    ).status_code == 204
    await http.post(
        f"{simulator.admin_url}/faults",
        json={"provider": "shipstation", "shipment_id": "se-8", "fault": "labeled"},
    )
    shown = await http.get(
        f"{simulator.shipstation_base_url}/v2/shipments/se-8", headers=SHIPSTATION_AUTH
    )
    assert shown.json()["shipment_status"] == "label_purchased"


@pytest.mark.parametrize(
    "body",
    [
        {"provider": "ups", "shipment_id": "se-1", "fault": "hang"},
        {"provider": "mvmnt", "fault": "hang"},
        {"provider": "mvmnt", "shipment_id": "SHP-1", "fault": 3},
        ["provider"],
    ],
)
async def test_admin_fault_rejects_bad_bodies(
    simulator: Simulator, http: httpx.AsyncClient, body: object
) -> None:
    response = await http.post(f"{simulator.admin_url}/faults", json=body)
    assert response.status_code == 400
    assert response.json()["error"]


async def test_admin_latency_slows_provider_calls(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    response = await http.put(f"{simulator.admin_url}/latency", json={"latency_ms": 150})
    assert response.json() == {"latency_ms": 150.0}
    started = time.perf_counter()
    await http.put(ss_cancel(simulator, "se-1"), headers=SHIPSTATION_AUTH)
    assert time.perf_counter() - started >= 0.15
    for bad in (-1, "fast", True):
        rejected = await http.put(f"{simulator.admin_url}/latency", json={"latency_ms": bad})
        assert rejected.status_code == 400


async def test_admin_stats_count_provider_traffic_only(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    await mvmnt_token(http, simulator)
    await http.put(ss_cancel(simulator, "se-1"), headers=SHIPSTATION_AUTH)
    await http.put(ss_cancel(simulator, "se-1"), headers=SHIPSTATION_AUTH)
    await http.get(f"{simulator.admin_url}/requests")
    stats = (await http.get(f"{simulator.admin_url}/stats")).json()
    assert stats == {
        "requests_total": 3,
        "cancel_calls": {"shipstation": {"se-1": 2}, "mvmnt": {}},
        "status_counts": {"200": 1, "204": 1, "400": 1},
        "token_requests": 1,
        "in_flight": 0,
    }
    assert stats == simulator.stats()


async def test_admin_reset_clears_state_stats_and_faults(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    await http.put(ss_cancel(simulator, "se-1"), headers=SHIPSTATION_AUTH)
    await http.post(
        f"{simulator.admin_url}/faults",
        json={"provider": "shipstation", "shipment_id": "se-2", "fault": "notfound"},
    )
    await http.put(f"{simulator.admin_url}/latency", json={"latency_ms": 5})
    assert (await http.post(f"{simulator.admin_url}/reset")).status_code == 200
    assert simulator.stats()["requests_total"] == 0
    assert simulator.calls("shipstation", "se-1") == 0
    assert (await http.get(f"{simulator.admin_url}/requests")).json() == {"requests": []}
    assert (
        await http.put(ss_cancel(simulator, "se-1"), headers=SHIPSTATION_AUTH)
    ).status_code == 204
    assert (
        await http.put(ss_cancel(simulator, "se-2"), headers=SHIPSTATION_AUTH)
    ).status_code == 204


async def test_admin_requests_rejects_a_bad_limit(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    response = await http.get(f"{simulator.admin_url}/requests", params={"limit": "many"})
    assert response.status_code == 400


def test_admin_serves_loopback_clients_only() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert not is_loopback("10.0.0.5")
    assert not is_loopback(None)
    assert not is_loopback("unix-socket")


async def test_lifecycle_errors_are_explicit(start_simulator: StartSimulator) -> None:
    idle = Simulator()
    with pytest.raises(RuntimeError, match="not been started"):
        _ = idle.port
    running = await start_simulator()
    with pytest.raises(RuntimeError, match="already running"):
        await running.start()
    with pytest.raises(ValueError, match="unknown provider"):
        running.calls("fedex", "x")
    assert running.shipstation_base_url == f"http://127.0.0.1:{running.port}/shipstation"
    assert running.mvmnt_base_url == f"http://127.0.0.1:{running.port}/mvmnt/v1"
    assert running.mvmnt_token_url == f"http://127.0.0.1:{running.port}/mvmnt/oauth2/token"


async def test_serve_forever_logs_its_urls_and_stops_when_cancelled(
    caplog: pytest.LogCaptureFixture, http: httpx.AsyncClient
) -> None:
    caplog.set_level(logging.INFO, logger="consumer.simulator")
    server = asyncio.create_task(serve_forever(SimulatorOptions()))
    await eventually(lambda: "listening" in caplog.text)
    match = re.search(r"shipstation=(\S+)", caplog.text)
    assert match is not None
    url = f"{match.group(1)}/v2/shipments/se-1/cancel"
    assert (await http.put(url, headers=SHIPSTATION_AUTH)).status_code == 204
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
    with pytest.raises(httpx.ConnectError):
        await http.put(url, headers=SHIPSTATION_AUTH)
