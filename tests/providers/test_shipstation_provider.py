"""The ShipStation adapter against a recording fake of the v2 API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from consumer.core.errors import (
    AuthError,
    CancelError,
    ConflictError,
    InternalError,
    NetworkError,
    NotFoundError,
    ProviderTimeoutError,
    RateLimitedError,
    RejectedError,
    UnavailableError,
)
from consumer.providers.base import CancelOutcome, CancelRequest
from consumer.providers.client import TransportClient
from consumer.providers.shipstation import ShipStationProvider, ShipStationSettings
from tests.providers.provider_fakes import STATUS_CATEGORIES, FakeApi, client_spans, reply

API_KEY = "ss-live-key-0123456789"
BASE = "https://ss.test"
SHIPMENT = "se-28529731"
CANCEL = f"/v2/shipments/{SHIPMENT}/cancel"
SHIPMENT_PATH = f"/v2/shipments/{SHIPMENT}"
REQUEST = CancelRequest(shipment_id=SHIPMENT, idempotency_key="idem-1")


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def client(api: FakeApi) -> AsyncIterator[TransportClient]:
    async with api.client() as client:
        yield client


def provider(client: TransportClient, *, void_labels: bool = False) -> ShipStationProvider:
    settings = ShipStationSettings(
        kind="shipstation", base_url=BASE, api_key=API_KEY, void_labels=void_labels
    )
    return ShipStationProvider("ss-main", settings, client)


def error_body(code: str, *, error_type: str = "validation", **extra: Any) -> dict[str, Any]:
    return {
        "request_id": "aa3d8e8e-462b-4476-9618-72db7f7b7009",
        "errors": [
            {
                "error_source": "ShipStation",
                "error_type": error_type,
                "error_code": code,
                "message": f"{code} happened",
                **extra,
            }
        ],
    }


def shipment(status: str) -> httpx.Response:
    return reply(200, {"shipment_id": SHIPMENT, "shipment_status": status})


def label(label_id: str, status: str = "completed", *, voided: bool = False) -> dict[str, Any]:
    return {"label_id": label_id, "shipment_id": SHIPMENT, "status": status, "voided": voided}


async def failure(client: TransportClient, **kwargs: bool) -> CancelError:
    with pytest.raises(CancelError) as caught:
        await provider(client, **kwargs).cancel(REQUEST)
    return caught.value


def assert_authenticated(request: httpx.Request) -> None:
    assert request.headers["API-Key"] == API_KEY
    assert request.headers["Accept"] == "application/json"


async def test_cancel_is_a_put_with_api_key_and_idempotency_key(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", CANCEL, reply(204, headers={"X-Request-Id": "req-77"}))

    outcome = await provider(client).cancel(REQUEST)

    assert outcome == CancelOutcome("cancelled", provider_request_id="req-77")
    [sent] = api.requests
    assert sent.method == "PUT"
    assert str(sent.url) == f"{BASE}{CANCEL}"
    assert_authenticated(sent)
    assert sent.headers["Idempotency-Key"] == "idem-1"
    assert sent.content == b""


async def test_any_2xx_counts_as_cancelled(api: FakeApi, client: TransportClient) -> None:
    api.on("PUT", CANCEL, reply(200, {"whatever": True}))

    outcome = await provider(client).cancel(REQUEST)

    assert outcome == CancelOutcome("cancelled")


async def test_shipment_id_is_sent_as_one_encoded_path_segment(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", "/v2/shipments/se/1?x=2 #/cancel", reply(204))

    await provider(client).cancel(CancelRequest(shipment_id="se/1?x=2 #", idempotency_key="k"))

    assert api.requests[0].url.raw_path == b"/v2/shipments/se%2F1%3Fx%3D2%20%23/cancel"


async def test_base_url_with_trailing_slash_builds_the_same_path(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", CANCEL, reply(204))
    settings = ShipStationSettings(kind="shipstation", base_url=f"{BASE}/", api_key=API_KEY)

    await ShipStationProvider("ss", settings, client).cancel(REQUEST)

    assert str(api.requests[0].url) == f"{BASE}{CANCEL}"


def test_kind_is_shipstation(client: TransportClient) -> None:
    assert provider(client).kind == "shipstation"


@pytest.mark.parametrize(
    ("status", "expected"),
    STATUS_CATEGORIES,
)
async def test_each_error_status_maps_to_its_category(
    api: FakeApi, client: TransportClient, status: int, expected: type[CancelError]
) -> None:
    api.on("PUT", CANCEL, reply(status))

    error = await failure(client)

    assert type(error) is expected
    assert error.http_status == status
    assert f"HTTP {status}" in error.message
    assert len(api.requests) == 1, "one attempt per call: retries are the caller's"


async def test_error_body_is_kept_whole_with_code_and_request_id(
    api: FakeApi, client: TransportClient
) -> None:
    body = error_body(
        "invalid_field_value",
        field_name="shipment_id",
        field_value="se-?",
        some_future_field={"nested": [1, 2]},
    )
    body["errors"].append({"error_code": "unknown", "message": "second"})
    api.on("PUT", CANCEL, reply(400, body, headers={"X-Request-Id": "header-id"}))

    error = await failure(client)

    assert isinstance(error, RejectedError)
    assert error.provider_code == "invalid_field_value"
    assert error.provider_request_id == "aa3d8e8e-462b-4476-9618-72db7f7b7009"
    assert error.provider_errors == body["errors"]
    assert "invalid_field_value happened" in error.message


async def test_the_calls_span_names_shipstations_request_id_and_error_code(
    api: FakeApi, client: TransportClient
) -> None:
    body = error_body("invalid_status", error_type="business_rules")
    api.on("PUT", CANCEL, reply(400, body, headers={"X-Request-Id": "header-id"}))
    api.on("GET", SHIPMENT_PATH, shipment("pending"))

    with client_spans() as spans:
        error = await failure(client)

    cancel, _confirmation = spans.attributes()
    assert cancel["provider.request_id"] == error.provider_request_id == body["request_id"]
    assert cancel["provider.error_code"] == error.provider_code == "invalid_status"


async def test_without_a_request_id_in_the_body_the_header_names_the_request(
    api: FakeApi, client: TransportClient
) -> None:
    body = error_body("invalid_field_value")
    del body["request_id"]
    api.on("PUT", CANCEL, reply(400, body, headers={"X-Request-Id": "header-id"}))

    with client_spans() as spans:
        error = await failure(client)

    [cancel] = spans.attributes()
    assert cancel["provider.request_id"] == error.provider_request_id == "header-id"
    assert error.provider_code == "invalid_field_value"
    assert error.message.endswith(": invalid_field_value happened")
    assert error.provider_errors == body["errors"]


async def test_404_with_invalid_identifier_is_not_found(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", CANCEL, reply(404, error_body("invalid_identifier")))

    error = await failure(client)

    assert isinstance(error, NotFoundError)
    assert error.provider_code == "invalid_identifier"


@pytest.mark.parametrize(
    ("code", "error_type", "expected"),
    [
        ("unauthorized", "security", AuthError),
        ("subscription_inactive", "account_status", AuthError),
        ("rate_limit_exceeded", "security", RateLimitedError),
        ("identifier_conflict", "validation", ConflictError),
        ("unknown", "system", UnavailableError),
        ("unspecified", "system", UnavailableError),
        ("unknown", "validation", RejectedError),
    ],
)
async def test_error_code_refines_a_400(
    api: FakeApi,
    client: TransportClient,
    code: str,
    error_type: str,
    expected: type[CancelError],
) -> None:
    api.on("PUT", CANCEL, reply(400, error_body(code, error_type=error_type)))

    error = await failure(client)

    assert type(error) is expected
    assert error.provider_code == code
    # Only a state refusal is confirmed with a read.
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Bad gateway</body></html>",
        b"",
        b"[1, 2]",
        b'{"errors": "not a list"}',
        b'{"errors": ["not an object", 3], "request_id": 42}',
        b'{"trunc',
        b"\xff\xfe\x00garbage",
    ],
)
async def test_garbage_error_body_still_maps_by_status(
    api: FakeApi, client: TransportClient, body: bytes
) -> None:
    api.on("PUT", CANCEL, reply(400, body, content_type="text/html"))

    error = await failure(client)

    assert isinstance(error, RejectedError)
    assert error.message.startswith("shipstation cancel: HTTP 400 Bad Request")
    assert error.provider_code is None
    assert error.provider_request_id is None
    assert error.provider_errors == []


async def test_non_json_error_body_is_quoted_briefly_in_the_message(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", CANCEL, reply(502, b"<html>upstream down</html>" + b"x" * 5000))

    error = await failure(client)

    assert "upstream down" in error.message
    assert len(error.message) < 400


async def test_429_carries_retry_after(api: FakeApi, client: TransportClient) -> None:
    body = error_body("rate_limit_exceeded", error_type="security")
    api.on("PUT", CANCEL, reply(429, body, headers={"Retry-After": "7"}))

    error = await failure(client)

    assert isinstance(error, RateLimitedError)
    assert error.retryable
    assert error.retry_after == 7.0
    assert error.provider_code == "rate_limit_exceeded"


async def test_503_with_retry_after_keeps_the_hint(api: FakeApi, client: TransportClient) -> None:
    api.on("PUT", CANCEL, reply(503, headers={"Retry-After": "3"}))

    error = await failure(client)

    assert isinstance(error, UnavailableError)
    assert error.retry_after == 3.0


async def test_permanent_errors_carry_no_retry_after(api: FakeApi, client: TransportClient) -> None:
    body = error_body("invalid_field_value")
    api.on("PUT", CANCEL, reply(400, body, headers={"Retry-After": "3"}))

    error = await failure(client)

    assert error.retry_after is None


@pytest.mark.parametrize("code", ["invalid_status", "batch_cannot_be_modified"])
async def test_state_refusal_of_a_cancelled_shipment_is_already_cancelled(
    api: FakeApi, client: TransportClient, code: str
) -> None:
    api.on("PUT", CANCEL, reply(400, error_body(code, error_type="business_rules")))
    api.on("GET", SHIPMENT_PATH, shipment("cancelled"))

    outcome = await provider(client).cancel(REQUEST)

    assert outcome == CancelOutcome(
        "already_cancelled",
        provider_status="cancelled",
        provider_request_id="aa3d8e8e-462b-4476-9618-72db7f7b7009",
    )
    get = api.calls("GET", SHIPMENT_PATH)[0]
    assert_authenticated(get)
    assert [r.method for r in api.requests] == ["PUT", "GET"]


async def test_undocumented_409_is_confirmed_like_a_state_refusal(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", CANCEL, reply(409))
    api.on("GET", SHIPMENT_PATH, shipment("cancelled"))

    outcome = await provider(client).cancel(REQUEST)

    assert outcome.outcome == "already_cancelled"


async def test_active_label_without_void_opt_in_is_a_conflict_keeping_details(
    api: FakeApi, client: TransportClient
) -> None:
    body = error_body("invalid_status", error_type="business_rules")
    api.on("PUT", CANCEL, reply(400, body))
    api.on("GET", SHIPMENT_PATH, shipment("label_purchased"))

    error = await failure(client)

    assert isinstance(error, ConflictError)
    assert error.message.startswith("label not voided")
    assert "invalid_status happened" in error.message
    assert error.http_status == 400
    assert error.provider_code == "invalid_status"
    assert error.provider_request_id == body["request_id"]
    assert error.provider_errors == body["errors"]
    assert not api.calls("GET", "/v2/labels"), "voiding costs money: never without opt-in"


@pytest.mark.parametrize("status", ["pending", "processing", None])
async def test_state_refusal_in_another_state_is_a_conflict(
    api: FakeApi, client: TransportClient, status: str | None
) -> None:
    api.on("PUT", CANCEL, reply(400, error_body("invalid_status")))
    api.on("GET", SHIPMENT_PATH, reply(200, {"shipment_status": status}))

    error = await failure(client)

    assert isinstance(error, ConflictError)
    assert repr(status) in error.message
    assert error.provider_code == "invalid_status"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (reply(500), UnavailableError),
        (reply(404, error_body("invalid_identifier")), NotFoundError),
        (httpx.ReadTimeout("slow"), ProviderTimeoutError),
        (reply(200, b"not json"), InternalError),
        (reply(200, [1]), InternalError),
    ],
)
async def test_failed_confirmation_raises_the_confirmations_error(
    api: FakeApi,
    client: TransportClient,
    answer: httpx.Response | Exception,
    expected: type[CancelError],
) -> None:
    api.on("PUT", CANCEL, reply(400, error_body("invalid_status")))
    api.on("GET", SHIPMENT_PATH, answer)

    error = await failure(client)

    assert type(error) is expected
    assert "get shipment" in error.message


def labels_page(*labels: dict[str, Any], page: int = 1, pages: int = 1) -> httpx.Response:
    return reply(200, {"labels": list(labels), "page": page, "pages": pages, "total": 9})


async def test_void_opt_in_voids_active_labels_then_cancels_again(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", CANCEL, reply(400, error_body("invalid_status")), reply(204))
    api.on("GET", SHIPMENT_PATH, shipment("label_purchased"))
    api.on(
        "GET",
        "/v2/labels",
        labels_page(label("se-1"), label("se-2", "voided", voided=True), label("se-3", "error")),
    )
    api.on("PUT", "/v2/labels/se-1/void", reply(200, {"approved": True, "message": "ok"}))

    outcome = await provider(client, void_labels=True).cancel(REQUEST)

    assert outcome == CancelOutcome("cancelled")
    assert [(r.method, r.url.path) for r in api.requests] == [
        ("PUT", CANCEL),
        ("GET", SHIPMENT_PATH),
        ("GET", "/v2/labels"),
        ("PUT", "/v2/labels/se-1/void"),
        ("PUT", CANCEL),
    ]
    for request in api.requests:
        assert_authenticated(request)
    listing = api.calls("GET", "/v2/labels")[0]
    assert listing.url.params["shipment_id"] == SHIPMENT
    first, second = api.calls("PUT", CANCEL)
    assert first.headers["Idempotency-Key"] == "idem-1"
    # The refused attempt must not be replayed for the second one, yet stay deterministic.
    assert second.headers["Idempotency-Key"] == "idem-1:after-void"
    void = api.calls("PUT", "/v2/labels/se-1/void")[0]
    assert void.headers["Idempotency-Key"] == "idem-1:void:se-1"


async def test_void_flow_reads_every_page_of_labels(api: FakeApi, client: TransportClient) -> None:
    api.on("PUT", CANCEL, reply(400, error_body("invalid_status")), reply(204))
    api.on("GET", SHIPMENT_PATH, shipment("label_purchased"))
    api.on(
        "GET",
        "/v2/labels",
        labels_page(label("se-1"), pages=2),
        labels_page(label("se-2"), page=2, pages=2),
    )
    api.on("PUT", "/v2/labels/se-1/void", reply(200, {"approved": True, "message": "ok"}))
    api.on("PUT", "/v2/labels/se-2/void", reply(200, {"approved": True, "message": "ok"}))

    await provider(client, void_labels=True).cancel(REQUEST)

    pages = [r.url.params["page"] for r in api.calls("GET", "/v2/labels")]
    assert pages == ["1", "2"]
    assert len(api.calls("PUT", "/v2/labels/se-2/void")) == 1


async def test_label_already_voided_counts_as_voided(api: FakeApi, client: TransportClient) -> None:
    api.on("PUT", CANCEL, reply(400, error_body("invalid_status")), reply(204))
    api.on("GET", SHIPMENT_PATH, shipment("label_purchased"))
    api.on("GET", "/v2/labels", labels_page(label("se-1")))
    answer = {"approved": False, "message": "already", "reason_code": "label_already_voided"}
    api.on("PUT", "/v2/labels/se-1/void", reply(200, answer))

    outcome = await provider(client, void_labels=True).cancel(REQUEST)

    assert outcome.outcome == "cancelled"


async def test_refused_void_is_a_conflict_with_both_answers(
    api: FakeApi, client: TransportClient
) -> None:
    body = error_body("invalid_status")
    api.on("PUT", CANCEL, reply(400, body))
    api.on("GET", SHIPMENT_PATH, shipment("label_purchased"))
    api.on("GET", "/v2/labels", labels_page(label("se-1")))
    answer = {"approved": False, "message": "in transit", "reason_code": "label_already_used"}
    api.on("PUT", "/v2/labels/se-1/void", reply(200, answer))

    error = await failure(client, void_labels=True)

    assert isinstance(error, ConflictError)
    assert "se-1" in error.message
    assert "in transit" in error.message
    assert error.provider_code == "label_already_used"
    assert error.provider_errors == [*body["errors"], answer]
    assert len(api.calls("PUT", CANCEL)) == 1


async def test_failed_void_call_raises_its_mapped_error(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", CANCEL, reply(400, error_body("invalid_status")))
    api.on("GET", SHIPMENT_PATH, shipment("label_purchased"))
    api.on("GET", "/v2/labels", labels_page(label("se-1")))
    api.on("PUT", "/v2/labels/se-1/void", reply(503))

    error = await failure(client, void_labels=True)

    assert isinstance(error, UnavailableError)
    assert "void label" in error.message


async def test_cancel_refused_again_after_voiding_is_a_conflict_without_a_loop(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("PUT", CANCEL, reply(400, error_body("invalid_status")))
    api.on("GET", SHIPMENT_PATH, shipment("label_purchased"))
    api.on("GET", "/v2/labels", labels_page(label("se-1")))
    api.on("PUT", "/v2/labels/se-1/void", reply(200, {"approved": True, "message": "ok"}))

    error = await failure(client, void_labels=True)

    assert isinstance(error, ConflictError)
    assert "label not voided" in error.message
    assert len(api.calls("PUT", CANCEL)) == 2
    assert len(api.calls("PUT", "/v2/labels/se-1/void")) == 1


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("refused"), NetworkError),
        (httpx.RemoteProtocolError("bad frame"), NetworkError),
        (httpx.ConnectTimeout("slow connect"), ProviderTimeoutError),
        (httpx.ReadTimeout("slow read"), ProviderTimeoutError),
    ],
)
async def test_transport_failures_are_retryable_errors(
    api: FakeApi, client: TransportClient, exc: Exception, expected: type[CancelError]
) -> None:
    api.on("PUT", CANCEL, exc)

    error = await failure(client)

    assert type(error) is expected
    assert error.retryable
    assert error.__cause__ is exc


async def test_api_key_echoed_by_shipstation_is_redacted(
    api: FakeApi, client: TransportClient
) -> None:
    body = error_body(
        "unauthorized",
        error_type="security",
        field_name="API-Key",
        field_value=API_KEY,
    )
    body["errors"][0]["message"] = f"key {API_KEY} is not valid"
    api.on("PUT", CANCEL, reply(400, body))

    error = await failure(client)

    assert isinstance(error, AuthError)
    everything = f"{error} {error.message} {error.provider_code} {error.provider_errors!r}"
    assert API_KEY not in everything
    assert "REDACTED" in everything


@pytest.mark.parametrize("answer", [reply(401), httpx.ConnectError("no route"), reply(500)])
async def test_api_key_is_never_in_error_text(
    api: FakeApi, client: TransportClient, answer: httpx.Response | Exception
) -> None:
    api.on("PUT", CANCEL, answer)

    error = await failure(client)

    assert API_KEY not in f"{error!s} {error!r} {error.provider_errors!r}"
