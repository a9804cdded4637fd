"""The MVMNT adapter against a recording fake of its API and OAuth2 token endpoint."""

from __future__ import annotations

import asyncio
import time
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
from consumer.providers.mvmnt import MvmntProvider, MvmntSettings
from tests.providers.provider_fakes import (
    STATUS_CATEGORIES,
    FakeApi,
    FakeClock,
    client_spans,
    form_of,
    json_of,
    reply,
)

BASE = "https://mvmnt.test/v1"
TOKEN_URL = "https://auth.mvmnt.test/oauth2/token"
TOKEN_PATH = "/oauth2/token"
CLIENT_ID = "client-abc"
CLIENT_SECRET = "s3cret-client-value-42"
STATIC_TOKEN = "static-jwt-token-value-99"
SHIPMENT = "SHP-12345"
CANCEL = f"/v1/shipments/{SHIPMENT}/cancel"
SHIPMENT_PATH = f"/v1/shipments/{SHIPMENT}"
REQUEST = CancelRequest(
    shipment_id=SHIPMENT, idempotency_key="idem-1", reason="Customer changed mind", lookup="key"
)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def client(api: FakeApi) -> AsyncIterator[TransportClient]:
    async with api.client() as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def oauth_provider(client: TransportClient, clock: FakeClock | None = None) -> MvmntProvider:
    settings = MvmntSettings(
        kind="mvmnt",
        base_url=BASE,
        token_url=TOKEN_URL,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    return MvmntProvider("mvmnt-main", settings, client, clock=clock or FakeClock())


def static_provider(client: TransportClient) -> MvmntProvider:
    settings = MvmntSettings(kind="mvmnt", base_url=BASE, access_token=STATIC_TOKEN)
    return MvmntProvider("mvmnt-static", settings, client)


def tokens(*values: str, expires_in: Any = 3600) -> list[httpx.Response]:
    return [
        reply(200, {"access_token": v, "token_type": "Bearer", "expires_in": expires_in})
        for v in values
    ]


def shipment(status: str) -> dict[str, Any]:
    return {"id": "550e8400-e29b-41d4-a716-446655440000", "key": SHIPMENT, "status": status}


def cancelled(**headers: str) -> httpx.Response:
    return reply(200, shipment("CANCELED"), headers=headers)


def bearer(request: httpx.Request) -> str:
    return request.headers["Authorization"].removeprefix("Bearer ")


async def failure(provider: MvmntProvider, request: CancelRequest = REQUEST) -> CancelError:
    with pytest.raises(CancelError) as caught:
        await provider.cancel(request)
    return caught.value


def text_of(error: CancelError) -> str:
    return f"{error!s} {error!r} {error.message} {error.provider_code} {error.provider_errors!r}"


# --- the cancel call -------------------------------------------------------------------


async def test_cancel_fetches_a_token_then_posts_with_bearer_lookup_and_reason(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", TOKEN_PATH, *tokens("tok-1"))
    api.on("POST", CANCEL, cancelled(**{"X-Request-Id": "req-9"}))

    outcome = await oauth_provider(client).cancel(REQUEST)

    assert outcome == CancelOutcome(
        "cancelled", provider_status="CANCELED", provider_request_id="req-9"
    )
    token_call, cancel_call = api.requests
    assert str(token_call.url) == TOKEN_URL
    assert token_call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form_of(token_call) == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
    }
    assert cancel_call.method == "POST"
    assert cancel_call.url.path == CANCEL
    assert dict(cancel_call.url.params) == {"by": "key"}
    assert cancel_call.headers["Authorization"] == "Bearer tok-1"
    assert cancel_call.headers["Idempotency-Key"] == "idem-1"
    assert cancel_call.headers["Accept"] == "application/json"
    assert cancel_call.headers["Content-Type"] == "application/json"
    assert json_of(cancel_call) == {"reason": "Customer changed mind"}


async def test_without_lookup_or_reason_sends_no_by_and_an_empty_object(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", CANCEL, cancelled())

    await static_provider(client).cancel(CancelRequest(shipment_id=SHIPMENT, idempotency_key="k"))

    [call] = api.requests
    assert "by" not in call.url.params
    assert json_of(call) == {}


async def test_reason_is_cut_to_1000_characters(api: FakeApi, client: TransportClient) -> None:
    api.on("POST", CANCEL, cancelled())
    long_reason = "é" * 999 + "xyz"

    await static_provider(client).cancel(
        CancelRequest(shipment_id=SHIPMENT, idempotency_key="k", reason=long_reason)
    )

    assert json_of(api.requests[0]) == {"reason": "é" * 999 + "x"}


async def test_shipment_id_is_sent_as_one_encoded_path_segment(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", "/v1/shipments/a/b?c/cancel", cancelled())

    await static_provider(client).cancel(CancelRequest(shipment_id="a/b?c", idempotency_key="k"))

    assert api.requests[0].url.raw_path == b"/v1/shipments/a%2Fb%3Fc/cancel"


def test_kind_is_mvmnt(client: TransportClient) -> None:
    assert static_provider(client).kind == "mvmnt"


async def test_static_token_is_used_without_a_token_request(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", CANCEL, cancelled())

    await static_provider(client).cancel(REQUEST)

    [call] = api.requests
    assert call.headers["Authorization"] == f"Bearer {STATIC_TOKEN}"


@pytest.mark.parametrize("body", [b"", b"<html>ok</html>", b"[]"])
async def test_success_without_a_json_object_is_internal(
    api: FakeApi, client: TransportClient, body: bytes
) -> None:
    api.on("POST", CANCEL, reply(200, body))

    error = await failure(static_provider(client))

    assert isinstance(error, InternalError)
    assert "not a JSON object" in error.message


# --- tokens ----------------------------------------------------------------------------


async def test_one_token_serves_many_calls(api: FakeApi, client: TransportClient) -> None:
    api.on("POST", TOKEN_PATH, *tokens("tok-1", "tok-2"))
    api.on("POST", CANCEL, cancelled())
    provider = oauth_provider(client)

    for _ in range(5):
        await provider.cancel(REQUEST)

    assert len(api.calls("POST", TOKEN_PATH)) == 1
    assert {bearer(r) for r in api.calls("POST", CANCEL)} == {"tok-1"}


async def test_concurrent_calls_share_one_token_request(
    api: FakeApi, client: TransportClient
) -> None:
    api.delay = 0.01
    api.on("POST", TOKEN_PATH, *tokens("tok-1", "tok-2"))
    api.on("POST", CANCEL, cancelled())
    provider = oauth_provider(client)

    await asyncio.gather(*(provider.cancel(REQUEST) for _ in range(20)))

    assert len(api.calls("POST", TOKEN_PATH)) == 1
    assert {bearer(r) for r in api.calls("POST", CANCEL)} == {"tok-1"}


@pytest.mark.parametrize(
    ("expires_in", "refreshed_at"),
    [
        # An hour-long token is replaced a minute early...
        (3600, 3540.0),
        # ...a short one 10% early.
        (100, 90.0),
        ("120", 108.0),
        # Without a usable lifetime, five minutes less 10% (a 401 would refresh sooner).
        (None, 270.0),
        ("soon", 270.0),
        (True, 270.0),
    ],
)
async def test_token_is_replaced_shortly_before_it_expires(
    api: FakeApi, client: TransportClient, clock: FakeClock, expires_in: Any, refreshed_at: float
) -> None:
    api.on("POST", TOKEN_PATH, *tokens("tok-1", "tok-2", expires_in=expires_in))
    api.on("POST", CANCEL, cancelled())
    provider = oauth_provider(client, clock)
    start = clock.now

    await provider.cancel(REQUEST)
    clock.now = start + refreshed_at - 0.5
    await provider.cancel(REQUEST)
    clock.now = start + refreshed_at
    await provider.cancel(REQUEST)

    assert [bearer(r) for r in api.calls("POST", CANCEL)] == ["tok-1", "tok-1", "tok-2"]


async def test_a_401_refreshes_the_token_once_and_retries(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", TOKEN_PATH, *tokens("tok-1", "tok-2"))
    unauthorized = {"error": "unauthorized", "message": "Invalid or expired access token"}
    api.on("POST", CANCEL, reply(401, unauthorized), cancelled())

    outcome = await oauth_provider(client).cancel(REQUEST)

    assert outcome.outcome == "cancelled"
    first, second = api.calls("POST", CANCEL)
    assert (bearer(first), bearer(second)) == ("tok-1", "tok-2")
    assert second.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
    assert json_of(second) == json_of(first)
    assert len(api.calls("POST", TOKEN_PATH)) == 2


async def test_a_second_401_is_an_auth_error(api: FakeApi, client: TransportClient) -> None:
    api.on("POST", TOKEN_PATH, *tokens("tok-1", "tok-2", "tok-3"))
    body = {"error": "unauthorized", "message": "Invalid or expired access token"}
    api.on("POST", CANCEL, reply(401, body))

    error = await failure(oauth_provider(client))

    assert isinstance(error, AuthError)
    assert error.http_status == 401
    assert error.provider_code == "unauthorized"
    assert len(api.calls("POST", CANCEL)) == 2
    assert len(api.calls("POST", TOKEN_PATH)) == 2


async def test_concurrent_401s_with_one_token_refresh_it_once(
    api: FakeApi, client: TransportClient
) -> None:
    api.delay = 0.01
    api.on("POST", TOKEN_PATH, *tokens("tok-1", "tok-2", "tok-3"))

    def by_token(request: httpx.Request) -> httpx.Response:
        return reply(401) if bearer(request) == "tok-1" else cancelled()

    api.on("POST", CANCEL, by_token)
    provider = oauth_provider(client)

    outcomes = await asyncio.gather(*(provider.cancel(REQUEST) for _ in range(10)))

    assert {o.outcome for o in outcomes} == {"cancelled"}
    assert len(api.calls("POST", TOKEN_PATH)) == 2


async def test_static_token_rejected_is_an_auth_error_without_retry(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", CANCEL, reply(401, {"error": "unauthorized", "message": "expired"}))

    error = await failure(static_provider(client))

    assert isinstance(error, AuthError)
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (reply(400, {"error": "invalid_client"}), AuthError),
        (reply(401, {"error": "invalid_client", "error_description": "bad secret"}), AuthError),
        (reply(403), AuthError),
        (reply(404, b"<html>no</html>"), AuthError),
        (reply(429, headers={"Retry-After": "5"}), RateLimitedError),
        (reply(500), UnavailableError),
        (reply(503), UnavailableError),
        (reply(200, b"<html>login</html>"), InternalError),
        (reply(200, {"token_type": "Bearer", "expires_in": 3600}), InternalError),
        (reply(200, {"access_token": "t", "token_type": "mac"}), AuthError),
        (httpx.ConnectError("refused"), NetworkError),
        (httpx.ReadTimeout("slow"), ProviderTimeoutError),
    ],
)
async def test_token_endpoint_failures_map_without_calling_the_api(
    api: FakeApi,
    client: TransportClient,
    answer: httpx.Response | Exception,
    expected: type[CancelError],
) -> None:
    api.on("POST", TOKEN_PATH, answer)

    error = await failure(oauth_provider(client))

    assert type(error) is expected
    assert "mvmnt token request" in error.message
    assert not api.calls("POST", CANCEL)
    assert CLIENT_SECRET not in text_of(error)


async def test_token_endpoint_error_details_are_kept(api: FakeApi, client: TransportClient) -> None:
    body = {"error": "invalid_client", "error_description": "Client authentication failed"}
    api.on("POST", TOKEN_PATH, reply(401, body))

    error = await failure(oauth_provider(client))

    assert error.provider_code == "invalid_client"
    assert "Client authentication failed" in error.message
    assert error.provider_errors == [body]


async def test_token_endpoint_rate_limit_carries_retry_after(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", TOKEN_PATH, reply(429, headers={"Retry-After": "5"}))

    error = await failure(oauth_provider(client))

    assert error.retry_after == 5.0


async def test_a_failed_token_request_is_retried_on_the_next_call(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", TOKEN_PATH, reply(503), *tokens("tok-1"))
    api.on("POST", CANCEL, cancelled())
    provider = oauth_provider(client)

    await failure(provider)
    outcome = await provider.cancel(REQUEST)

    assert outcome.outcome == "cancelled"


# --- error answers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    STATUS_CATEGORIES,
)
async def test_each_error_status_maps_to_its_category(
    api: FakeApi, client: TransportClient, status: int, expected: type[CancelError]
) -> None:
    api.on("POST", CANCEL, reply(status, headers={"X-Request-Id": "req-5"}))

    error = await failure(static_provider(client))

    assert type(error) is expected
    assert error.http_status == status
    assert error.provider_request_id == "req-5"
    assert error.retryable is (status >= 429)


@pytest.mark.parametrize(
    ("body", "code", "detail"),
    [
        ({"error": "bad_request", "message": "Invalid request parameters"},
         "bad_request", "Invalid request parameters"),
        ({"error": {"code": "validation_error", "message": "reason too long"}},
         "validation_error", "reason too long"),
        ({"type": "about:blank", "title": "Unprocessable", "status": 422,
          "detail": "reason must be a string"}, None, "reason must be a string"),
        ({"title": "Unprocessable", "code": "unprocessable"}, "unprocessable", "Unprocessable"),
    ],
)  # fmt: skip
async def test_every_error_body_shape_yields_code_message_and_the_whole_body(
    api: FakeApi, client: TransportClient, body: dict[str, Any], code: str | None, detail: str
) -> None:
    problem = "title" in body
    content_type = "application/problem+json" if problem else "application/json"
    api.on("POST", CANCEL, reply(422, body, content_type=content_type))

    error = await failure(static_provider(client))

    assert isinstance(error, RejectedError)
    assert error.provider_code == code
    assert error.message.endswith(detail)
    assert error.provider_errors == [body]


async def test_the_calls_span_names_mvmnts_error_code_and_the_request_id_header(
    api: FakeApi, client: TransportClient
) -> None:
    body = {"error": {"code": "validation_error", "message": "reason too long"}}
    api.on("POST", CANCEL, reply(422, body, headers={"X-Request-Id": "req-5"}))

    with client_spans() as spans:
        error = await failure(static_provider(client))

    [cancel] = spans.attributes()
    assert cancel["provider.error_code"] == error.provider_code == "validation_error"
    assert cancel["provider.request_id"] == error.provider_request_id == "req-5"
    assert error.message.endswith(": reason too long")
    assert error.provider_errors == [body]


async def test_the_token_requests_span_names_the_oauth_error(
    api: FakeApi, client: TransportClient
) -> None:
    body = {"error": "invalid_client", "error_description": "Client authentication failed"}
    api.on("POST", TOKEN_PATH, reply(401, body, headers={"X-Request-Id": "req-6"}))

    with client_spans() as spans:
        error = await failure(oauth_provider(client))

    [token] = spans.attributes()
    assert token["provider.error_code"] == error.provider_code == "invalid_client"
    assert token["provider.request_id"] == error.provider_request_id == "req-6"


@pytest.mark.parametrize("body", [b"", b"<html>oops</html>", b"[1]", b'{"error": 5}', b"\xff{"])
async def test_garbage_error_body_still_maps_by_status(
    api: FakeApi, client: TransportClient, body: bytes
) -> None:
    api.on("POST", CANCEL, reply(404, body, content_type="text/plain"))

    error = await failure(static_provider(client))

    assert isinstance(error, NotFoundError)
    assert error.message.startswith("mvmnt cancel: HTTP 404 Not Found")
    assert error.provider_code is None


async def test_429_waits_for_retry_after(api: FakeApi, client: TransportClient) -> None:
    body = {"error": "rate_limit_exceeded", "message": "Too many requests."}
    api.on("POST", CANCEL, reply(429, body, headers={"Retry-After": "60"}))

    error = await failure(static_provider(client))

    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 60.0
    assert error.provider_code == "rate_limit_exceeded"


async def test_429_without_retry_after_waits_for_the_rate_limit_reset(
    api: FakeApi, client: TransportClient
) -> None:
    reset = str(int(time.time()) + 30)
    headers = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    api.on("POST", CANCEL, reply(429, headers=headers))

    error = await failure(static_provider(client))

    assert error.retry_after is not None
    assert 25.0 <= error.retry_after <= 31.0


# --- 409: delivered or already cancelled -----------------------------------------------

CONFLICT_BODY = {"error": "conflict", "message": "Shipment is delivered or already canceled"}


def conflict() -> httpx.Response:
    return reply(409, CONFLICT_BODY, content_type="application/problem+json")


async def test_409_on_a_cancelled_shipment_is_already_cancelled(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", TOKEN_PATH, *tokens("tok-1"))
    api.on("POST", CANCEL, conflict())
    api.on("GET", SHIPMENT_PATH, reply(200, shipment("CANCELED"), headers={"X-Request-Id": "g"}))

    outcome = await oauth_provider(client).cancel(REQUEST)

    assert outcome == CancelOutcome(
        "already_cancelled", provider_status="CANCELED", provider_request_id="g"
    )
    [get] = api.calls("GET", SHIPMENT_PATH)
    assert dict(get.url.params) == {"by": "key"}
    assert get.headers["Authorization"] == "Bearer tok-1"
    assert get.content == b""


async def test_409_on_a_delivered_shipment_is_a_conflict_keeping_details(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", CANCEL, conflict())
    api.on("GET", SHIPMENT_PATH, reply(200, shipment("DELIVERED")))

    error = await failure(static_provider(client))

    assert isinstance(error, ConflictError)
    assert error.message.startswith("shipment delivered")
    assert error.http_status == 409
    assert error.provider_code == "conflict"
    assert error.provider_errors == [CONFLICT_BODY]


async def test_409_in_any_other_state_is_a_conflict(api: FakeApi, client: TransportClient) -> None:
    api.on("POST", CANCEL, conflict())
    api.on("GET", SHIPMENT_PATH, reply(200, shipment("IN_TRANSIT")))

    error = await failure(static_provider(client))

    assert isinstance(error, ConflictError)
    assert "'IN_TRANSIT'" in error.message
    assert error.provider_errors == [CONFLICT_BODY]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (reply(404, {"error": "not_found", "message": "Resource not found"}), NotFoundError),
        (reply(503), UnavailableError),
        (reply(200, b"nope"), InternalError),
        (httpx.ConnectError("reset"), NetworkError),
    ],
)
async def test_failed_confirmation_raises_the_confirmations_error(
    api: FakeApi,
    client: TransportClient,
    answer: httpx.Response | Exception,
    expected: type[CancelError],
) -> None:
    api.on("POST", CANCEL, conflict())
    api.on("GET", SHIPMENT_PATH, answer)

    error = await failure(static_provider(client))

    assert type(error) is expected
    assert "get shipment" in error.message


async def test_confirmation_read_also_refreshes_a_rejected_token(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", TOKEN_PATH, *tokens("tok-1", "tok-2"))
    api.on("POST", CANCEL, conflict())
    api.on("GET", SHIPMENT_PATH, reply(401), reply(200, shipment("CANCELED")))

    outcome = await oauth_provider(client).cancel(REQUEST)

    assert outcome.outcome == "already_cancelled"
    assert [bearer(r) for r in api.calls("GET", SHIPMENT_PATH)] == ["tok-1", "tok-2"]


# --- transport and secrets -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("refused"), NetworkError),
        (httpx.ReadError("reset by peer"), NetworkError),
        (httpx.ConnectTimeout("slow connect"), ProviderTimeoutError),
        (httpx.WriteTimeout("slow write"), ProviderTimeoutError),
        (httpx.PoolTimeout("no connection free"), ProviderTimeoutError),
    ],
)
async def test_transport_failures_are_retryable_errors(
    api: FakeApi, client: TransportClient, exc: Exception, expected: type[CancelError]
) -> None:
    api.on("POST", CANCEL, exc)

    error = await failure(static_provider(client))

    assert type(error) is expected
    assert error.retryable
    assert error.__cause__ is exc


async def test_secrets_echoed_by_the_token_endpoint_are_redacted(
    api: FakeApi, client: TransportClient
) -> None:
    body = {
        "error": "invalid_client",
        "error_description": f"unknown secret {CLIENT_SECRET}",
        "echo": {"client_secret": CLIENT_SECRET},
    }
    api.on("POST", TOKEN_PATH, reply(401, body))

    error = await failure(oauth_provider(client))

    assert CLIENT_SECRET not in text_of(error)
    assert "REDACTED" in error.message


async def test_a_token_echoed_by_the_api_is_redacted(api: FakeApi, client: TransportClient) -> None:
    api.on("POST", TOKEN_PATH, *tokens("tok-one-secret", "tok-two-secret"))
    first = {"error": "unauthorized", "message": "tok-one-secret"}
    second = {"error": {"code": "unauthorized", "message": "bad tok-two-secret"}}
    api.on("POST", CANCEL, reply(401, first), reply(401, second))

    error = await failure(oauth_provider(client))

    assert "tok-one-secret" not in text_of(error)
    assert "tok-two-secret" not in text_of(error)


async def test_a_static_token_echoed_by_the_api_is_redacted(
    api: FakeApi, client: TransportClient
) -> None:
    api.on("POST", CANCEL, reply(400, {"error": "bad_request", "message": STATIC_TOKEN}))

    error = await failure(static_provider(client))

    assert STATIC_TOKEN not in text_of(error)
