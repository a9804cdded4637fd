"""Provider accounts changed at run time (sliding rate limit, latency, outages); the call log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from consumer.simulator import Simulator
from consumer.simulator.accounts import AccountChange, parse_change
from consumer.simulator.recorder import ProviderCall
from tests.polling import eventually

from .helpers import SHIPSTATION_AUTH, FakeClock, StartSimulator, mvmnt_token

T0 = 1_000_000.0
UP = {"down_mode": None, "down_until": None, "down_seconds_left": 0.0}


def ss_cancel(simulator: Simulator, shipment_id: str) -> str:
    return f"{simulator.shipstation_base_url}/v2/shipments/{shipment_id}/cancel"


def account_url(simulator: Simulator, provider: str) -> str:
    return f"{simulator.admin_url}/accounts/{provider}"


async def put_account(
    http: httpx.AsyncClient, simulator: Simulator, provider: str, **fields: Any
) -> dict[str, Any]:
    response = await http.put(account_url(simulator, provider), json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def ss_put(http: httpx.AsyncClient, simulator: Simulator, shipment_id: str) -> int:
    response = await http.put(ss_cancel(simulator, shipment_id), headers=SHIPSTATION_AUTH)
    return response.status_code


async def test_a_sliding_limit_refuses_until_the_oldest_call_leaves_the_minute(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    clock = FakeClock(T0)
    simulator = await start_simulator(clock=clock)
    mode = await put_account(http, simulator, "shipstation", rate_limit_per_minute=2)
    assert mode == {"provider": "shipstation", "rate_limit_per_minute": 2, "latency_ms": 0.0, **UP}
    assert await ss_put(http, simulator, "se-1") == 204
    clock.now = T0 + 30
    assert await ss_put(http, simulator, "se-2") == 204
    clock.now = T0 + 45
    limited = await http.put(ss_cancel(simulator, "se-3"), headers=SHIPSTATION_AUTH)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "15"
    (error,) = limited.json()["errors"]
    assert (error["error_type"], error["error_code"]) == ("system", "rate_limit_exceeded")
    clock.now = T0 + 60
    assert await ss_put(http, simulator, "se-3") == 204
    # A fixed window would start afresh here; the call at +30 still counts for 30 s.
    limited = await http.put(ss_cancel(simulator, "se-4"), headers=SHIPSTATION_AUTH)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "30"
    # The other provider has no limit.
    token = await mvmnt_token(http, simulator)
    url = f"{simulator.mvmnt_base_url}/shipments/SHP-1"
    for _ in range(3):
        response = await http.get(url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200


async def test_an_mvmnt_limit_answers_with_its_rate_limit_headers(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    clock = FakeClock(T0)
    simulator = await start_simulator(clock=clock)
    mode = simulator.set_account_mode("mvmnt", rate_limit_per_minute=1)
    assert mode.rate_limit_per_minute == 1
    auth = {"Authorization": f"Bearer {await mvmnt_token(http, simulator)}"}
    url = f"{simulator.mvmnt_base_url}/shipments/SHP-1/cancel"
    assert (await http.post(url, headers=auth)).status_code == 200
    clock.now = T0 + 20.5
    limited = await http.post(url, headers=auth)
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limit_exceeded"
    assert limited.headers["Retry-After"] == "40"
    assert limited.headers["X-RateLimit-Limit"] == "1"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.headers["X-RateLimit-Reset"] == str(int(T0) + 60)


async def test_the_limit_counts_calls_on_arrival_and_refuses_without_the_latency(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    simulator.set_account_mode("shipstation", rate_limit_per_minute=1, latency_ms=300)
    finished: list[int] = []

    async def cancel(shipment_id: str) -> None:
        finished.append(await ss_put(http, simulator, shipment_id))

    async with asyncio.TaskGroup() as group:
        group.create_task(cancel("se-1"))
        await eventually(lambda: simulator.stats()["in_flight"] == 1)
        group.create_task(cancel("se-2"))
    assert finished == [429, 204]


async def test_no_sliding_minute_holds_more_accepted_calls_than_the_limit(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    clock = FakeClock(T0)
    simulator = await start_simulator(clock=clock, rate_limit_per_minute=3)
    for n in range(40):
        clock.now = T0 + 7 * n
        await ss_put(http, simulator, f"se-{n}")
    calls = simulator.provider_calls("shipstation")
    accepted = [call.at for call in calls if call.status == 204]
    assert {call.status for call in calls} == {204, 429}
    busiest = max(sum(start <= at < start + 60 for at in accepted) for start in accepted)
    assert busiest == 3


async def test_account_latency_slows_that_provider_only(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    token = await mvmnt_token(http, simulator)
    mode = await put_account(http, simulator, "mvmnt", latency_ms=300)
    assert mode["latency_ms"] == 300.0
    started = time.perf_counter()
    response = await http.get(
        f"{simulator.mvmnt_base_url}/shipments/SHP-1", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    assert await ss_put(http, simulator, "se-1") == 204
    assert time.perf_counter() - started < 0.3


async def test_account_latency_adds_to_the_global_latency(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    simulator = await start_simulator(latency_ms=100)
    simulator.set_account_mode("shipstation", latency_ms=100)
    started = time.perf_counter()
    assert await ss_put(http, simulator, "se-1") == 204
    assert time.perf_counter() - started >= 0.2


async def test_a_down_shipstation_answers_503_with_its_empty_body(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    mode = await put_account(http, simulator, "shipstation", down_seconds=30)
    assert mode["down_mode"] == "unavailable"
    assert 29 < mode["down_seconds_left"] <= 30
    assert mode["down_until"] == pytest.approx(time.time() + 30, abs=1)
    cancel = await http.put(ss_cancel(simulator, "se-1"), headers=SHIPSTATION_AUTH)
    labels = await http.get(f"{simulator.shipstation_base_url}/v2/labels", headers=SHIPSTATION_AUTH)
    for response in (cancel, labels):
        assert response.status_code == 503
        assert response.content == b""
    # The shipment never reached the provider.
    assert simulator.calls("shipstation", "se-1") == 0
    await mvmnt_token(http, simulator)
    assert [call.status for call in simulator.provider_calls()] == [503, 503, 200]


async def test_a_down_mvmnt_answers_503_in_its_nested_shape_even_for_tokens(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    auth = {"Authorization": f"Bearer {await mvmnt_token(http, simulator)}"}
    await put_account(http, simulator, "mvmnt", down_seconds=30, down_mode="unavailable")
    cancel = await http.post(f"{simulator.mvmnt_base_url}/shipments/SHP-1/cancel", headers=auth)
    token = await http.post(
        simulator.mvmnt_token_url,
        data={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
    )
    for response in (cancel, token):
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "service_unavailable"
        assert error["message"]
    assert await ss_put(http, simulator, "se-1") == 204


@pytest.mark.parametrize("provider", ["shipstation", "mvmnt"])
async def test_a_refusing_provider_drops_the_connection_without_an_answer(
    simulator: Simulator, http: httpx.AsyncClient, provider: str
) -> None:
    token = await mvmnt_token(http, simulator)
    mode = simulator.set_account_mode(provider, down_seconds=30, down_mode="refuse")
    assert mode.down_mode == "refuse"
    if provider == "shipstation":
        call = http.build_request("PUT", ss_cancel(simulator, "se-1"), headers=SHIPSTATION_AUTH)
    else:
        call = http.build_request(
            "POST",
            f"{simulator.mvmnt_base_url}/shipments/SHP-1/cancel",
            json={"reason": "changed their mind"},
            headers={"Authorization": f"Bearer {token}"},
        )
    with pytest.raises(httpx.TransportError) as raised:
        await http.send(call)
    assert isinstance(raised.value, httpx.RemoteProtocolError | httpx.ReadError)
    await eventually(lambda: simulator.stats()["in_flight"] == 0)
    assert simulator.provider_calls(provider)[-1].status is None

    ended = await put_account(http, simulator, provider, down_seconds=0)
    assert {name: ended[name] for name in UP} == UP
    assert (await http.send(call)).status_code in (200, 204)


async def test_a_refusing_mvmnt_drops_token_requests_too(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    simulator.set_account_mode("mvmnt", down_seconds=30, down_mode="refuse")
    with pytest.raises(httpx.TransportError):
        await mvmnt_token(http, simulator)
    assert await ss_put(http, simulator, "se-1") == 204


async def test_an_outage_ends_after_its_seconds(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    clock = FakeClock(T0)
    simulator = await start_simulator(clock=clock)
    mode = await put_account(http, simulator, "shipstation", down_seconds=30)
    assert mode["down_until"] == T0 + 30
    assert mode["down_seconds_left"] == 30.0
    clock.now = T0 + 29.5
    assert await ss_put(http, simulator, "se-1") == 503
    shown = (await http.get(account_url(simulator, "shipstation"))).json()
    assert shown["down_seconds_left"] == 0.5
    clock.now = T0 + 30
    assert await ss_put(http, simulator, "se-1") == 204
    shown = (await http.get(account_url(simulator, "shipstation"))).json()
    assert shown == {
        "provider": "shipstation",
        "rate_limit_per_minute": None,
        "latency_ms": 0.0,
        **UP,
    }
    assert [(call.at, call.status) for call in simulator.provider_calls()] == [
        (T0 + 29.5, 503),
        (T0 + 30, 204),
    ]


async def test_the_call_log_lists_every_provider_call_in_arrival_order(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    clock = FakeClock(T0)
    simulator = await start_simulator(clock=clock)
    token = await mvmnt_token(http, simulator)
    clock.now += 1
    await ss_put(http, simulator, "se-1")
    clock.now += 1
    await http.put(ss_cancel(simulator, "se-2"))
    await http.get(f"{simulator.shipstation_base_url}/nowhere", headers=SHIPSTATION_AUTH)
    # Neither a path outside both providers nor the admin API is a provider call.
    await http.get(f"{simulator.base_url}/v2/shipments/se-1")
    await http.get(f"{simulator.admin_url}/stats")
    clock.now += 1
    await http.post(
        f"{simulator.mvmnt_base_url}/shipments/SHP-1/cancel",
        headers={"Authorization": f"Bearer {token}"},
    )
    expected = [
        ProviderCall(T0, "mvmnt", "POST", "/mvmnt/oauth2/token", 200),
        ProviderCall(T0 + 1, "shipstation", "PUT", "/shipstation/v2/shipments/se-1/cancel", 204),
        ProviderCall(T0 + 2, "shipstation", "PUT", "/shipstation/v2/shipments/se-2/cancel", 401),
        ProviderCall(T0 + 2, "shipstation", "GET", "/shipstation/nowhere", 404),
        ProviderCall(T0 + 3, "mvmnt", "POST", "/mvmnt/v1/shipments/SHP-1/cancel", 200),
    ]
    assert simulator.provider_calls() == expected
    everything = (await http.get(f"{simulator.admin_url}/calls")).json()
    assert everything == {"calls": [call._asdict() for call in expected]}
    mvmnt = await http.get(f"{simulator.admin_url}/calls", params={"provider": "mvmnt"})
    assert mvmnt.json() == {
        "calls": [call._asdict() for call in expected if call.provider == "mvmnt"]
    }
    assert simulator.provider_calls("shipstation") == expected[1:4]
    unknown = await http.get(f"{simulator.admin_url}/calls", params={"provider": "ups"})
    assert unknown.status_code == 400
    assert "provider" in unknown.json()["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"rate_limit_per_minute": 1.5}, "rate_limit_per_minute"),
        ({"rate_limit_per_minute": True}, "rate_limit_per_minute"),
        ({"rate_limit_per_minute": "10"}, "rate_limit_per_minute"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": "slow"}, "latency_ms"),
        ({"down_seconds": -5}, "down_seconds"),
        ({"down_seconds": None}, "down_seconds"),
        ({"down_seconds": 10, "down_mode": "sleep"}, "down_mode"),
        ({"down_mode": "refuse"}, "down_seconds"),
        ({"latency_ms": 5, "down_seconds": -1}, "down_seconds"),
        ({"latency_ms": 5, "rate": 3}, "rate"),
        (["latency_ms"], "object"),
    ],
)
async def test_account_changes_are_checked_and_applied_all_or_nothing(
    simulator: Simulator, http: httpx.AsyncClient, body: object, field: str
) -> None:
    before = simulator.account_mode("shipstation")
    response = await http.put(account_url(simulator, "shipstation"), json=body)
    assert response.status_code == 400
    assert field in response.json()["error"]
    assert simulator.account_mode("shipstation") == before


async def test_account_routes_know_only_the_two_providers_and_want_json(
    simulator: Simulator, http: httpx.AsyncClient
) -> None:
    for method in ("GET", "PUT"):
        response = await http.request(method, account_url(simulator, "ups"), json={})
        assert response.status_code == 404
        assert "ups" in response.json()["error"]
    form = await http.put(account_url(simulator, "mvmnt"), data={"latency_ms": "5"})
    assert form.status_code == 400
    with pytest.raises(ValueError, match="unknown provider"):
        simulator.set_account_mode("ups", latency_ms=5)
    with pytest.raises(ValueError, match="latency_ms"):
        simulator.set_account_mode("mvmnt", latency_ms=-1)


def test_an_empty_change_changes_nothing() -> None:
    assert parse_change({}) == AccountChange()
    assert parse_change({"rate_limit_per_minute": None}).rate_limit_per_minute is None


async def test_reset_brings_back_the_startup_accounts_and_clears_the_call_log(
    start_simulator: StartSimulator, http: httpx.AsyncClient
) -> None:
    clock = FakeClock(T0)
    simulator = await start_simulator(clock=clock, rate_limit_per_minute=1)
    startup = {"provider": "shipstation", "rate_limit_per_minute": 1, "latency_ms": 0.0, **UP}
    assert (await http.get(account_url(simulator, "shipstation"))).json() == startup
    assert await ss_put(http, simulator, "se-1") == 204
    changed = await put_account(
        http,
        simulator,
        "shipstation",
        rate_limit_per_minute=None,
        latency_ms=5,
        down_seconds=60,
        down_mode="refuse",
    )
    assert changed == {
        "provider": "shipstation",
        "rate_limit_per_minute": None,
        "latency_ms": 5.0,
        "down_mode": "refuse",
        "down_until": T0 + 60,
        "down_seconds_left": 60.0,
    }
    assert (await http.post(f"{simulator.admin_url}/reset")).status_code == 200
    assert (await http.get(account_url(simulator, "shipstation"))).json() == startup
    assert (await http.get(f"{simulator.admin_url}/calls")).json() == {"calls": []}
    # The window starts empty again: one call goes through, the next is limited.
    assert await ss_put(http, simulator, "se-1") == 204
    assert await ss_put(http, simulator, "se-2") == 429
