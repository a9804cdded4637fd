"""Spans and metrics of provider calls: the real adapters and canceller over a fake HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.trace import SpanKind, StatusCode

from consumer import app
from consumer.config import Settings, settings_from_mapping
from consumer.core.canceller import Canceller, ProviderAccount, Settled
from consumer.core.events import CancelFailed, OrderCancelled, ShipmentCancelled
from consumer.core.examples import order_cancelled_example
from consumer.core.parking import ParkedShipment
from consumer.core.pipeline import TraceRef
from consumer.core.retry import AccountGate, RetryPolicy
from consumer.providers.client import TransportClient
from consumer.providers.http import safe_url
from consumer.providers.mvmnt import MvmntProvider, MvmntSettings
from consumer.providers.shipstation import ShipStationProvider, ShipStationSettings
from tests.providers.provider_fakes import FakeApi, reply
from tests.telemetry.conftest import Telemetry, attribute_text

# Shaped like real credentials, so a leak cannot hide behind an unlikely-looking value.
API_KEY = "TEST_sk_live_4eC39HqLyjWDarjtT1zdp7dc9f3A"
CLIENT_SECRET = "mvmnt-secret-Zx81QpLw0vNa7Tq2"
ISSUED_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwcm9jZXNzb3IifQ.sig-9f8e7d"
SS_BASE = "https://ss.test:8443"
MV_BASE = "https://mvmnt.test/v1"
TOKEN_URL = "https://auth.mvmnt.test/oauth2/token"
TRACE = TraceRef("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
NOW = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def client(api: FakeApi) -> AsyncIterator[TransportClient]:
    async with api.client() as client:
        yield client


def order(*shipments: tuple[str, str]) -> OrderCancelled:
    return OrderCancelled.model_validate(
        order_cancelled_example(
            event_id=str(uuid.uuid4()),
            order_id="SO-1",
            shipments=[{"provider": p, "shipment_id": s} for p, s in shipments],
        )
    )


def canceller(
    telemetry: Telemetry, client: TransportClient, *, budget_seconds: float = 5
) -> Canceller:
    shipstation = ShipStationProvider(
        "ss-main",
        ShipStationSettings(kind="shipstation", base_url=SS_BASE, api_key=API_KEY),
        client,
    )
    mvmnt = MvmntProvider(
        "mv-main",
        MvmntSettings(
            kind="mvmnt",
            base_url=MV_BASE,
            token_url=TOKEN_URL,
            client_id="client-abc",
            client_secret=CLIENT_SECRET,
        ),
        client,
    )
    accounts = {
        "ss-main": ProviderAccount("ss-main", shipstation, AccountGate(4)),
        "mv-main": ProviderAccount("mv-main", mvmnt, AccountGate(4)),
    }
    return Canceller(
        accounts,
        RetryPolicy(backoff_initial_seconds=0, budget_seconds=budget_seconds),
        now=lambda: NOW,
        tracer=telemetry.tracer,
        metrics=telemetry.metrics,
    )


EVENT_SPAN = "process orders.cancelled"


async def cancel_in_event(
    cancel: Canceller, telemetry: Telemetry, event: OrderCancelled
) -> list[Settled]:
    """As the runner calls it: inside the event's span, which with one shipment is the
    shipment's span too."""
    with telemetry.tracer.start_as_current_span(EVENT_SPAN):
        return await cancel.cancel_order(event, TRACE)


async def test_each_http_call_is_a_client_span_under_the_event_span(
    telemetry: Telemetry, api: FakeApi, client: TransportClient
) -> None:
    api.on(
        "POST",
        "/oauth2/token",
        reply(200, {"access_token": ISSUED_TOKEN, "token_type": "Bearer", "expires_in": 3600}),
    )
    api.on("POST", "/v1/shipments/SHP-1/cancel", reply(200, {"id": "1", "status": "CANCELED"}))
    [result] = await cancel_in_event(
        canceller(telemetry, client), telemetry, order(("mv-main", "SHP-1"))
    )
    assert isinstance(result, ShipmentCancelled)

    shipment = telemetry.one(EVENT_SPAN)
    assert telemetry.names() == ["POST", "POST", EVENT_SPAN], "no span of its own: one shipment"
    token, cancel = sorted(telemetry.kind(SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert all(s.parent and s.parent.span_id == shipment.context.span_id for s in (token, cancel))
    assert token.attributes is not None
    assert cancel.attributes is not None
    assert token.attributes["url.full"] == TOKEN_URL
    assert cancel.name == "POST"
    assert dict(cancel.attributes) == {
        "http.request.method": "POST",
        "url.full": f"{MV_BASE}/shipments/SHP-1/cancel",
        "server.address": "mvmnt.test",
        "server.port": 443,
        "cancel.provider": "mv-main",
        "http.response.status_code": 200,
    }
    assert shipment.attributes is not None
    assert shipment.attributes["cancel.outcome"] == "cancelled"
    assert shipment.attributes["cancel.shipment_id"] == "SHP-1"
    assert shipment.status.status_code == StatusCode.UNSET
    # Our trace context stays ours: providers are third parties.
    assert "traceparent" not in api.calls("POST", "/v1/shipments/SHP-1/cancel")[0].headers
    assert telemetry.total("http.client.request.duration", provider="mv-main") == 2


async def test_retried_then_succeeded_marks_only_the_failed_call(
    telemetry: Telemetry, api: FakeApi, client: TransportClient
) -> None:
    api.on(
        "PUT",
        "/v2/shipments/se-1/cancel",
        reply(503, b"upstream down", content_type="text/plain"),
        reply(204),
    )
    [result] = await cancel_in_event(
        canceller(telemetry, client), telemetry, order(("ss-main", "se-1"))
    )
    assert isinstance(result, ShipmentCancelled)
    assert result.attempts == 2

    failed, succeeded = sorted(telemetry.kind(SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "503"
    assert succeeded.status.status_code == StatusCode.UNSET
    assert succeeded.attributes is not None
    assert "error.type" not in succeeded.attributes
    # The same request sent again: the second is its first resend.
    assert "http.request.resend_count" not in failed.attributes
    assert succeeded.attributes["http.request.resend_count"] == 1
    shipment = telemetry.one(EVENT_SPAN)
    assert shipment.status.status_code == StatusCode.UNSET
    assert shipment.attributes is not None
    assert "error.type" not in shipment.attributes
    [backoff] = [e for e in shipment.events if e.name == "backoff"]
    assert backoff.attributes is not None
    assert backoff.attributes["error.type"] == "unavailable"
    assert backoff.attributes["http.response.status_code"] == 503
    assert telemetry.total("cancel_processor.provider.retries", category="unavailable") == 1
    calls = telemetry.points("http.client.request.duration")
    assert sorted(
        (a["http.response.status_code"], a.get("error.type"), count) for a, count in calls
    ) == [(204, None, 1), (503, "503", 1)]
    assert all(
        a["server.address"] == "ss.test" and a["server.port"] == 8443 and a["provider"] == "ss-main"
        for a, _ in calls
    )


async def test_a_permanent_failure_records_the_provider_details(
    telemetry: Telemetry, api: FakeApi, client: TransportClient
) -> None:
    api.on(
        "PUT",
        "/v2/shipments/se-404/cancel",
        reply(
            404,
            {
                "request_id": "req-77",
                "errors": [
                    {
                        "error_source": "shipstation",
                        "error_type": "resource",
                        "error_code": "not_found",
                        "message": "shipment se-404 not found",
                    }
                ],
            },
        ),
    )
    [result] = await cancel_in_event(
        canceller(telemetry, client), telemetry, order(("ss-main", "se-404"))
    )
    assert isinstance(result, CancelFailed)

    [call] = telemetry.kind(SpanKind.CLIENT)
    assert call.attributes is not None
    assert call.attributes["provider.request_id"] == "req-77"
    assert call.attributes["provider.error_code"] == "not_found"
    assert call.attributes["http.response.status_code"] == 404
    shipment = telemetry.one(EVENT_SPAN)
    assert shipment.status.status_code == StatusCode.ERROR
    assert shipment.status.description is not None
    assert shipment.status.description.startswith("not_found: ")
    assert shipment.attributes is not None
    assert shipment.attributes["error.type"] == "not_found"
    assert shipment.attributes["cancel.outcome"] == "failed"
    assert shipment.attributes["cancel.error.retryable"] is False
    assert shipment.attributes["provider.http_status"] == 404
    assert shipment.attributes["provider.request_id"] == "req-77"
    assert "shipment se-404 not found" in str(shipment.attributes["provider.errors"])
    # The cancel-failed event points at the span holding these details.
    assert result.span_id == f"{shipment.context.span_id:016x}"
    assert result.trace_id == TRACE.trace_id


async def test_a_transport_failure_names_the_exception(
    telemetry: Telemetry, api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", "/v2/shipments/se-2/cancel", httpx.ConnectError("refused"))
    [result] = await cancel_in_event(
        canceller(telemetry, client), telemetry, order(("ss-main", "se-2"))
    )
    # Transient: parked for a later round, with the error that parked it.
    assert isinstance(result, ParkedShipment)
    assert result.last_error is not None
    assert result.last_error.category == "network"
    parked_events = [e for e in telemetry.one(EVENT_SPAN).events if e.name == "parked"]
    assert [(e.attributes or {}).get("cancel.park.reason") for e in parked_events] == [
        "transient_failure"
    ]
    calls = telemetry.kind(SpanKind.CLIENT)
    assert len(calls) == 4  # every attempt of the retry budget
    for call in calls:
        assert call.attributes is not None
        assert call.attributes["error.type"] == "ConnectError"
        assert "http.response.status_code" not in call.attributes
        assert call.status.status_code == StatusCode.ERROR
    assert [(c.attributes or {}).get("http.request.resend_count") for c in calls] == [
        None,
        1,
        2,
        3,
    ]
    backoffs = [e for e in telemetry.one(EVENT_SPAN).events if e.name == "backoff"]
    assert len(backoffs) == 3
    # No answer, so no status code: not a made-up 0.
    assert all("http.response.status_code" not in (e.attributes or {}) for e in backoffs)


async def test_a_deeply_nested_error_body_is_still_a_retryable_answer(
    telemetry: Telemetry, api: FakeApi, client: TransportClient
) -> None:
    # Deeper than any JSON parser's recursion limit: must not escape as RecursionError.
    hostile = b'{"errors": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    api.on("PUT", "/v2/shipments/se-7/cancel", reply(503, hostile), reply(204))
    [result] = await cancel_in_event(
        canceller(telemetry, client), telemetry, order(("ss-main", "se-7"))
    )
    assert isinstance(result, ShipmentCancelled)
    assert result.attempts == 2

    failed, succeeded = sorted(telemetry.kind(SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "503"
    assert "provider.error_code" not in failed.attributes
    assert succeeded.status.status_code == StatusCode.UNSET
    # Both calls were timed: neither span was left open.
    assert telemetry.total("http.client.request.duration", provider="ss-main") == 2


async def test_a_call_cut_off_by_the_budget_is_cancelled_not_timed(
    telemetry: Telemetry, api: FakeApi, client: TransportClient
) -> None:
    api.delay = 30  # the provider never answers within the shipment's budget
    api.on("PUT", "/v2/shipments/se-8/cancel", reply(204))
    cancel = canceller(telemetry, client, budget_seconds=0.2)
    [result] = await cancel.cancel_order(order(("ss-main", "se-8")), TRACE)
    assert isinstance(result, ParkedShipment)
    assert result.last_error is not None
    assert result.last_error.category == "timeout"

    [call] = telemetry.kind(SpanKind.CLIENT)
    assert call.attributes is not None
    assert call.attributes["error.type"] == "cancelled"
    assert call.status.status_code == StatusCode.ERROR
    # An abandoned call has no duration worth a sample.
    assert telemetry.points("http.client.request.duration") == []


async def test_no_credential_reaches_a_span_or_metric(
    telemetry: Telemetry, api: FakeApi, client: TransportClient
) -> None:
    # The provider echoes the API key back in its error (it has happened).
    api.on(
        "PUT",
        "/v2/shipments/se-3/cancel",
        reply(
            400,
            {
                "request_id": f"req-{API_KEY}",
                "errors": [
                    {
                        "error_source": "shipstation",
                        "error_type": "security",
                        "error_code": API_KEY,
                        "message": f"API key {API_KEY} is not allowed here",
                    }
                ],
            },
            headers={"x-request-id": API_KEY},
        ),
    )
    api.on(
        "POST",
        "/oauth2/token",
        reply(200, {"access_token": ISSUED_TOKEN, "token_type": "Bearer", "expires_in": 3600}),
    )
    api.on(
        "POST",
        "/v1/shipments/SHP-3/cancel",
        reply(401, {"error": ISSUED_TOKEN, "message": f"bad token {ISSUED_TOKEN}"}),
    )
    results = await canceller(telemetry, client).cancel_order(
        order(("ss-main", "se-3"), ("mv-main", "SHP-3")), TRACE
    )
    assert all(isinstance(r, CancelFailed) for r in results)

    spans = telemetry.spans()
    assert len(telemetry.kind(SpanKind.CLIENT)) >= 3
    text = attribute_text(spans)
    assert "REDACTED" in text
    for secret in (API_KEY, CLIENT_SECRET, ISSUED_TOKEN):
        assert secret not in text
        assert secret not in str(telemetry.reader.get_metrics_data())
        assert all(secret not in r.model_dump_json() for r in results)


def test_url_full_drops_userinfo_secret_query_values_and_known_secrets() -> None:
    url = httpx.URL(f"https://user:{API_KEY}@api.test/v2/labels?shipment_id=se-1&api_key={API_KEY}")
    safe = safe_url(url)
    assert API_KEY not in safe
    assert safe.startswith("https://REDACTED:REDACTED@api.test/v2/labels?")
    assert "shipment_id=se-1" in safe
    assert "api_key=REDACTED" in safe
    plain = "https://api.test/v2/labels?shipment_id=se-1&page=2"
    assert safe_url(httpx.URL(plain)) == plain
    in_path = httpx.URL(f"https://api.test/keys/{API_KEY}/labels")
    assert safe_url(in_path, [API_KEY]) == "https://api.test/keys/REDACTED/labels"


def settings_with(**account: Any) -> Settings:
    return settings_from_mapping(
        {"kafka": {"bootstrap_servers": "127.0.0.1:9"}, "providers": {"ss-main": account}}, {}
    )


def duration_sum(telemetry: Telemetry, metric: str) -> float:
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    total = 0.0
    for r in data.resource_metrics:
        for s in r.scope_metrics:
            for m in s.metrics:
                if m.name == metric:
                    total += sum(
                        p.sum for p in m.data.data_points if isinstance(p, HistogramDataPoint)
                    )
    return total


async def test_a_token_wait_is_a_span_event_not_request_time(
    telemetry: Telemetry, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's own wiring (``app.open_accounts``): the account's token bucket in its
    HTTP transport, over a fake provider API."""

    def fake_network(_base_url: str, _max_connections: int) -> httpx.AsyncBaseTransport:
        return api.transport()

    monkeypatch.setattr(app, "provider_transport", fake_network)
    # 120/min: a burst of 2, then one token per ~0.5 s. Two 503s and a 204 make the third
    # call wait for its token.
    settings = settings_with(
        kind="shipstation", base_url=SS_BASE, api_key=API_KEY, rate_limit_per_minute=120
    )
    api.on("PUT", "/v2/shipments/se-4/cancel", reply(503), reply(503), reply(204))
    async with AsyncExitStack() as stack:
        accounts = await app.open_accounts(settings, stack)
        cancel = Canceller(
            accounts,
            RetryPolicy(backoff_initial_seconds=0, budget_seconds=10),
            now=lambda: NOW,
            tracer=telemetry.tracer,
            metrics=telemetry.metrics,
        )
        [result] = await cancel.cancel_order(order(("ss-main", "se-4")), TRACE)
    assert isinstance(result, ShipmentCancelled)
    assert result.attempts == 3

    calls = sorted(telemetry.kind(SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert [(c.attributes or {}).get("http.request.resend_count") for c in calls] == [None, 1, 2]
    [wait] = [e for e in calls[2].events if e.name == "rate limit wait"]
    assert wait.attributes is not None
    waited = wait.attributes["wait_seconds"]
    assert isinstance(waited, float)
    assert waited >= 0.2
    # The wait happened inside the call's span...
    started, ended = calls[2].start_time, calls[2].end_time
    assert started is not None
    assert ended is not None
    assert (ended - started) / 1e9 >= waited
    # ...but is not request time: three instant answers add up to far less than the wait.
    assert duration_sum(telemetry, "http.client.request.duration") < waited
    waits = telemetry.points("cancel_processor.rate_limiter.wait.duration")
    assert {(a["provider"], a["limiter"]) for a, _ in waits} == {
        ("ss-main", "token"),
        ("ss-main", "slot"),
    }
    assert telemetry.total("cancel_processor.rate_limiter.wait.duration", limiter="token") == 3
    assert telemetry.total("cancel_processor.rate_limiter.wait.duration", limiter="slot") == 3
