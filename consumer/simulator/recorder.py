"""What the simulator saw: counters for /_admin/stats, a ring buffer of recent requests and
the log of every provider call for /_admin/calls.

Records keep raw bytes and decode only when someone reads them, so recording stays cheap
under load. Header values are never kept (they hold credentials), only header names; form
fields that look like secrets are masked.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, NamedTuple
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


class ProviderCall(NamedTuple):
    at: float
    provider: str
    method: str
    path: str
    # None for a call never answered: refused, hanging, or given up by the client.
    status: int | None


# Plain tuples in the log: a tuple of atomic values drops out of the garbage collector's
# tracking, a NamedTuple instance does not, and the log has no bound.
_Call = tuple[float, str, str, str, int | None]


class CallSlot(NamedTuple):
    log: list[_Call]
    position: int


class CallLog:
    """Every provider call, admin requests not included, in the order they arrived."""

    def __init__(self) -> None:
        self._calls: list[_Call] = []

    def begin(self, at: float, provider: str, method: str, path: str) -> CallSlot:
        self._calls.append((at, provider, method, path, None))
        return CallSlot(self._calls, len(self._calls) - 1)

    def answered(self, slot: CallSlot, status: int) -> None:
        at, provider, method, path, _ = slot.log[slot.position]
        slot.log[slot.position] = (at, provider, method, path, status)

    def calls(self, provider: str | None = None) -> list[ProviderCall]:
        return [ProviderCall(*call) for call in self._calls if provider in (None, call[1])]

    def to_json(self, provider: str | None = None) -> list[dict[str, Any]]:
        return [
            {"at": at, "provider": name, "method": method, "path": path, "status": status}
            for at, name, method, path, status in self._calls
            if provider in (None, name)
        ]

    def reset(self) -> None:
        # A new list: calls still in flight answer into the old one, which nobody reads.
        self._calls = []


class Recorder:
    def __init__(self, log_size: int) -> None:
        self._log: deque[RequestRecord] = deque(maxlen=log_size)
        self.call_log = CallLog()
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
        self.call_log.reset()
        self.requests_total = 0
        self.token_requests = 0
        self._status_counts.clear()
        for calls in self._cancel_calls.values():
            calls.clear()
