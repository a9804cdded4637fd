"""MVMNT's OAuth2 client-credentials tokens: issued, remembered with their expiry, checked."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import orjson

_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
# Expired tokens are dropped once this many are remembered, so long runs stay bounded.
_PRUNE_ABOVE = 1024


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class TokenStore:
    def __init__(
        self,
        ttl_seconds: int,
        static_token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = ttl_seconds
        self._static = static_token
        self._clock = clock
        self._signing_key = secrets.token_bytes(32)
        self._expiry: dict[str, float] = {}

    @property
    def ttl_seconds(self) -> int:
        return self._ttl

    def issue(self, client_id: str) -> str:
        """A signed JWT, so clients that peek at ``exp`` see the real expiry."""
        now = self._clock()
        expires_at = now + self._ttl
        claims = {
            "iss": "mvmnt-simulator",
            "sub": client_id,
            "iat": int(now),
            "exp": int(expires_at),
            "jti": secrets.token_hex(8),
        }
        signing_input = _HEADER + b"." + _b64url(orjson.dumps(claims))
        signature = hmac.new(self._signing_key, signing_input, hashlib.sha256).digest()
        token = (signing_input + b"." + _b64url(signature)).decode("ascii")
        if len(self._expiry) >= _PRUNE_ABOVE:
            self._expiry = {t: exp for t, exp in self._expiry.items() if exp > now}
        self._expiry[token] = expires_at
        return token

    def is_valid(self, token: str) -> bool:
        if self._static is not None and hmac.compare_digest(token, self._static):
            return True
        expires_at = self._expiry.get(token)
        return expires_at is not None and self._clock() < expires_at
