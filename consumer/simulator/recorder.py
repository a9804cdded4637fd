"""What the simulator saw: counters for /_admin/stats and a ring buffer of recent requests.

Records keep raw bytes and decode only when someone reads them, so recording stays cheap
under load. Header values are never kept (they hold credentials), only header names; form
fields that look like secrets are masked.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

PROVIDERS = ("shipstation", "mvmnt")
# Bodies are kept up to this size, so a full log stays small whatever clients send.
MAX_KEPT_BODY = 64 * 1024
_SECRET_MARKERS = ("secret", "password", "token")


@dataclass(slots=True)
class RequestRecord:
    at: float
    request_id: str
    method: str
    path: str
    query_string: str
    header_names: tuple[str, ...]
    content_type: str
    idempotency_key: str | None
    body: bytes = b""
    body_size: int = 0
    # None until answered; stays None for a request that never was (hang, disconnect).
    status: int | None = None

    def keep_body(self, body: bytes) -> None:
        self.body = body[:MAX_KEPT_BODY]
        self.body_size = len(body)

    def to_json(self) -> dict[str, Any]:
        query: dict[str, str | list[str]] = {
            name: values[0] if len(values) == 1 else values
            for name, values in parse_qs(self.query_string, keep_blank_values=True).items()
        }
        entry: dict[str, Any] = {
            "at": self.at,
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "query": query,
            "headers": list(self.header_names),
            "content_type": self.content_type or None,
            "idempotency_key": self.idempotency_key,
            "body_size": self.body_size,
            "status": self.status,
        }
        if len(self.body) < self.body_size:
            entry["body_truncated"] = True
        elif self.body and self.content_type == "application/json":
            try:
                entry["json"] = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                entry["json_error"] = True
        elif self.body and self.content_type == "application/x-www-form-urlencoded":
            form = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
            entry["form"] = {
                name: "***" if any(m in name.lower() for m in _SECRET_MARKERS) else values[-1]
                for name, values in form.items()
            }
        return entry


class Recorder:
    def __init__(self, log_size: int) -> None:
        self._log: deque[RequestRecord] = deque(maxlen=log_size)
        self.requests_total = 0
        self.token_requests = 0
        # Requests being handled now, including hanging ones; 0 again once clients give up.
        self.in_flight = 0
        self._status_counts: Counter[int] = Counter()
        self._cancel_calls: dict[str, dict[str, int]] = {name: {} for name in PROVIDERS}

    def begin(self, record: RequestRecord) -> None:
        self.requests_total += 1
        self.in_flight += 1
        self._log.append(record)

    def answered(self, record: RequestRecord, status: int) -> None:
        record.status = status
        self._status_counts[status] += 1

    def end(self) -> None:
        """Called for every ``begin``, whether the request was answered or abandoned."""
        self.in_flight -= 1

    def count_cancel(self, provider: str, shipment_id: str) -> None:
        calls = self._cancel_calls[provider]
        calls[shipment_id] = calls.get(shipment_id, 0) + 1

    def calls(self, provider: str, shipment_id: str) -> int:
        if provider not in self._cancel_calls:
            raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")
        return self._cancel_calls[provider].get(shipment_id, 0)

    def stats(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "cancel_calls": {name: dict(calls) for name, calls in self._cancel_calls.items()},
            "status_counts": {str(status): n for status, n in sorted(self._status_counts.items())},
            "token_requests": self.token_requests,
            "in_flight": self.in_flight,
        }

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` requests, oldest first."""
        records = list(self._log)[-limit:] if limit > 0 else []
        return [record.to_json() for record in records]

    def reset(self) -> None:
        self._log.clear()
        self.requests_total = 0
        self.token_requests = 0
        self._status_counts.clear()
        for calls in self._cancel_calls.values():
            calls.clear()
