"""MVMNT freight TMS: ``POST /shipments/{id}/cancel`` with an OAuth2 Bearer token.

Facts of the API this adapter relies on:

- Tokens come from the OAuth2 client-credentials grant: a form-encoded ``POST`` of
  ``grant_type=client_credentials``, ``client_id``, ``client_secret`` to the token URL answers
  ``{"access_token": <JWT>, "token_type": "Bearer", "expires_in": 3600}``. An account may
  instead be given a long-lived static token.
- The cancel takes ``?by=id|key`` (how to look the shipment up) and ``{"reason": ...}`` of at
  most 1000 characters; it answers 200 with the shipment, whose ``status`` is then
  ``CANCELED``. ``GET /shipments/{id}`` (same ``by``) answers the shipment.
- A delivered or already cancelled shipment answers 409 (``application/problem+json``).
  Error bodies are ``{"error": code, "message": ...}``, sometimes nested as
  ``{"error": {"code", "message"}}``; problem+json adds ``title``/``detail``.
- 429 carries ``Retry-After`` and ``X-RateLimit-Reset`` (a unix time).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Self

import httpx
from pydantic import SecretStr, model_validator

from consumer.core.errors import AuthError, CancelError, InternalError, RateLimitedError
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


class MvmntSettings(ProviderSettingsBase):
    """[providers.NAME]: an MVMNT account, by OAuth2 client credentials or a static token."""

    kind: Literal["mvmnt"]
    """The adapter this account uses: "mvmnt"."""
    token_url: str | None = None
    """OAuth2 token endpoint of the client-credentials grant; needs client_id and
    client_secret."""
    client_id: str | None = None
    """OAuth2 client id; tokens are fetched with it and refreshed before they expire."""
    client_secret: SecretStr | None = None
    """OAuth2 client secret. Keep it in the environment: "${VAR}"."""
    access_token: SecretStr | None = None
    """A static bearer token, instead of token_url, client_id and client_secret. Keep it in the
    environment: "${VAR}"."""

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> Self:
        has_client = self.client_id is not None or self.client_secret is not None
        if self.access_token is not None and has_client:
            raise ValueError("set either access_token or client_id/client_secret, not both")
        if self.access_token is None and not (
            self.token_url and self.client_id and self.client_secret
        ):
            raise ValueError("set access_token, or token_url with client_id and client_secret")
        return self


REASON_MAX_CHARS: Final = 1000
STATUS_CANCELED: Final = "CANCELED"
STATUS_DELIVERED: Final = "DELIVERED"

# A cached token is replaced this much before it expires, so a call never carries a token
# that dies in flight: 10% of its lifetime, at most a minute.
_EARLY_REFRESH_FRACTION: Final = 0.1
_EARLY_REFRESH_MAX_SECONDS: Final = 60.0
# When the token endpoint omits expires_in: short, since a 401 refreshes anyway.
_UNKNOWN_LIFETIME_SECONDS: Final = 300.0
# Recent tokens stay known so that a body echoing one can still be redacted.
_REMEMBERED_TOKENS: Final = 4

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float


class ClientCredentials:
    """OAuth2 client-credentials tokens of one account, shared by all its concurrent calls.

    At most one token request is in flight: callers that find no fresh token queue on a
    lock and take the token the first of them fetched.
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        client: HttpClient,
        http_timeout: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._client = client
        self._http_timeout = http_timeout
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self._issued: deque[str] = deque(maxlen=_REMEMBERED_TOKENS)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self._client_secret, *self._issued)

    async def token(self) -> str:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        async with self._lock:
            return self._fresh() or await self._fetch()

    async def replace(self, rejected: str) -> str:
        """A token other than ``rejected``, which the API refused before it was due to expire."""
        async with self._lock:
            fresh = self._fresh()
            if fresh is not None and fresh != rejected:
                return fresh
            return await self._fetch()

    def _fresh(self) -> str | None:
        token = self._token
        if token is None or self._clock() >= token.refresh_at:
            return None
        return token.value

    async def _fetch(self) -> str:
        what = "mvmnt token request"
        started = self._clock()
        response = await send(
            self._client,
            "POST",
            self._token_url,
            what=what,
            http_timeout=self._http_timeout,
            headers={"Accept": "application/json"},
            form={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
            error_body=error_body,
        )
        if not response.is_success:
            raise self._error(response, what)
        body = success_object(response, what)
        value = text_field(body, "access_token")
        if value is None:
            raise InternalError(
                f"{what}: HTTP {response.status_code} without an access_token",
                http_status=response.status_code,
            )
        token_type = text_field(body, "token_type")
        if token_type is not None and token_type.lower() != "bearer":
            raise AuthError(
                f"{what}: token_type {token_type[:40]!r} is not Bearer",
                http_status=response.status_code,
            )
        self._issued.append(value)
        lifetime = _lifetime(body.get("expires_in"))
        early = min(_EARLY_REFRESH_MAX_SECONDS, _EARLY_REFRESH_FRACTION * lifetime)
        # Counted from before the request: the token's life began no earlier than that.
        self._token = _Token(value, started + lifetime - early)
        return value

    def _error(self, response: httpx.Response, what: str) -> CancelError:
        status = response.status_code
        # Any 4xx but 429 means the credentials or the token URL are wrong: no retry helps.
        error_class: type[CancelError]
        if status == 429:
            error_class = RateLimitedError
        elif status >= 500:
            error_class = error_class_for_status(status)
        else:
            error_class = AuthError
        return error_from_response(
            error_class, what, response, read_error(response, error_body), secrets=self.secrets
        )


def _lifetime(expires_in: Any) -> float:
    if isinstance(expires_in, bool):
        return _UNKNOWN_LIFETIME_SECONDS
    if isinstance(expires_in, int | float | str):
        try:
            seconds = float(expires_in)
        except ValueError:
            return _UNKNOWN_LIFETIME_SECONDS
        if 0 < seconds < float("inf"):
            return seconds
    return _UNKNOWN_LIFETIME_SECONDS


class MvmntProvider:
    """One MVMNT account."""

    def __init__(
        self,
        name: str,
        settings: MvmntSettings,
        client: HttpClient,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self._settings = settings
        self._client = client
        self._base_url = settings.base_url.rstrip("/")
        self._static_token: str | None = None
        self._credentials: ClientCredentials | None = None
        if settings.access_token is not None:
            self._static_token = settings.access_token.get_secret_value()
        elif settings.token_url and settings.client_id and settings.client_secret:
            self._credentials = ClientCredentials(
                token_url=settings.token_url,
                client_id=settings.client_id,
                client_secret=settings.client_secret.get_secret_value(),
                client=client,
                http_timeout=settings.timeout_seconds,
                clock=clock,
            )
        else:  # MvmntSettings' validator already refuses this
            raise ValueError("mvmnt settings need access_token or client credentials")

    @property
    def kind(self) -> str:
        return "mvmnt"

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        path = f"/shipments/{path_segment(request.shipment_id)}"
        params = {"by": request.lookup} if request.lookup else None
        body = {"reason": request.reason[:REASON_MAX_CHARS]} if request.reason else {}
        response = await self._call(
            "POST",
            f"{path}/cancel",
            "cancel",
            params=params,
            json=body,
            idempotency_key=request.idempotency_key,
        )
        if response.is_success:
            shipment = success_object(response, "mvmnt cancel")
            return CancelOutcome(
                "cancelled",
                provider_status=text_field(shipment, "status"),
                provider_request_id=request_id(response),
            )
        refusal = self._error(response, "cancel")
        if response.status_code != 409:
            raise refusal
        return await self._afterconflict_keeping(path, params, refusal)

    async def _afterconflict_keeping(
        self, path: str, params: Mapping[str, str] | None, refusal: CancelError
    ) -> CancelOutcome:
        """A 409 means delivered or already cancelled: the shipment's status tells which."""
        response = await self._call("GET", path, "get shipment", params=params)
        if not response.is_success:
            raise self._error(response, "get shipment")
        status = text_field(success_object(response, "mvmnt get shipment"), "status")
        if status == STATUS_CANCELED:
            return CancelOutcome(
                "already_cancelled",
                provider_status=STATUS_CANCELED,
                provider_request_id=refusal.provider_request_id or request_id(response),
            )
        if status == STATUS_DELIVERED:
            raise conflict_keeping("shipment delivered", refusal)
        raise conflict_keeping(f"cancel refused: shipment status is {status!r}", refusal)

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Mapping[str, str] | None,
        json: Any = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key

        async def attempt(token: str) -> httpx.Response:
            return await send(
                self._client,
                method,
                self._base_url,
                path=path,
                what=f"mvmnt {what}",
                http_timeout=self._settings.timeout_seconds,
                headers={**headers, "Authorization": f"Bearer {token}"},
                params=params,
                json=json,
                error_body=error_body,
            )

        if self._credentials is None:
            return await attempt(self._static_token or "")
        token = await self._credentials.token()
        response = await attempt(token)
        if response.status_code == 401:
            # Revoked or expired early: one fresh token, one more try; a second 401 is final.
            response = await attempt(await self._credentials.replace(token))
        return response

    def _secrets(self) -> tuple[str, ...]:
        if self._credentials is not None:
            return self._credentials.secrets
        return (self._static_token or "",)

    def _error(self, response: httpx.Response, what: str) -> CancelError:
        return error_from_response(
            error_class_for_status(response.status_code),
            f"mvmnt {what}",
            response,
            read_error(response, error_body),
            secrets=self._secrets(),
        )


def error_body(body: dict[str, Any]) -> ErrorBody:
    """Any of MVMNT's error shapes, and its token endpoint's (OAuth's): ``{"error": code,
    "message"}``, ``{"error": {"code", "message"}}``, problem+json ``{"code"?, "title",
    "detail"}``, ``{"error", "error_description"}``. The whole body is the one error; the
    request id is the body's ``request_id`` when it has one, else the ``x-request-id``
    header's."""
    nested = body.get("error")
    if isinstance(nested, dict):
        code, message = text_field(nested, "code"), text_field(nested, "message")
    else:
        code, message = text_field(body, "error"), None
    code = code or text_field(body, "code")
    for key in ("message", "detail", "error_description", "title"):
        message = message or text_field(body, key)
    return ErrorBody(
        code=code, message=message, request_id=text_field(body, "request_id"), errors=(body,)
    )
