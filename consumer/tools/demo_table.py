"""The demo's results: read from their records, checked against what a sample expects, and
printed as rows that fit a 100-column terminal.

A row holds the short fields; a result's detail (an error message) goes on the lines below
it, wrapped at word boundaries under the ``case`` column and shortened past two lines.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from aiokafka import ConsumerRecord

from consumer.core import headers as h

WIDTH = 100
# The widest value each column takes for the demo's samples ("failed: unknown_provider").
_COLUMNS = (
    ("order", 7),
    ("case", 17),
    ("provider", 11),
    ("shipment", 18),
    ("result", 24),
    ("tries", 5),
)
_GAP = "  "
_DETAIL_INDENT = " " * (_COLUMNS[0][1] + len(_GAP))
_DETAIL_LINES = 2

DEAD_LETTERED = "dead-lettered"


@dataclass(frozen=True, slots=True)
class Result:
    """One result record as the demo shows it."""

    order: str
    # "cancelled", "already_cancelled", "failed: <error category>" or DEAD_LETTERED.
    result: str
    provider: str = "-"
    shipment: str = "-"
    # None for a dead letter: it is a copy of the input, no provider was called.
    tries: int | None = None
    detail: str = ""


def read_result(record: ConsumerRecord[bytes, bytes], dlq_topic: str) -> Result:
    order = (record.key or b"").decode(errors="replace")
    if record.topic == dlq_topic:
        reason = dict(record.headers).get(h.DLQ_ERROR_MESSAGE, b"")
        return Result(order, DEAD_LETTERED, detail=reason.decode(errors="replace"))
    event = orjson.loads(record.value or b"{}")
    provider = event.get("provider") or "-"
    shipment = event.get("shipment_id") or "-"
    error = event.get("error")
    if error is None:
        return Result(order, event["outcome"], provider, shipment, event["attempts"])
    retryable = " (retryable)" if error.get("retryable") else ""
    return Result(
        order,
        f"failed: {error['category']}",
        provider,
        shipment,
        event["attempts"],
        f"{error['message']}{retryable}",
    )


def header() -> list[str]:
    return [_row(*(name for name, _ in _COLUMNS)), _row(*("-" * width for _, width in _COLUMNS))]


def rows(case: str, result: Result) -> list[str]:
    """The result's row, then its detail wrapped under the ``case`` column."""
    tries = "-" if result.tries is None else str(result.tries)
    row = _row(result.order, case, result.provider, result.shipment, result.result, tries)
    detail = textwrap.wrap(
        result.detail,
        width=WIDTH,
        initial_indent=_DETAIL_INDENT,
        subsequent_indent=_DETAIL_INDENT,
        max_lines=_DETAIL_LINES,
        placeholder=" …",
        # Whole words only: a shipment id or a field path cut in two reads as another one.
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [row, *detail]


def _row(*cells: str) -> str:
    padded = (cell.ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    return _GAP.join(padded).rstrip()


@dataclass(frozen=True, slots=True)
class Expected:
    """One result record a sample must produce."""

    result: str
    # None: any number of provider calls.
    tries: int | None = None

    def matches(self, result: Result) -> bool:
        return result.result == self.result and (self.tries is None or self.tries == result.tries)

    def __str__(self) -> str:
        if self.tries is None:
            return self.result
        return f"{self.result} after {self.tries} {'try' if self.tries == 1 else 'tries'}"


def complete(expected: Sequence[Expected], got: Sequence[Result]) -> bool:
    """Whether as many results arrived as the sample produces (right or wrong)."""
    return len(got) >= len(expected)


def problem(expected: Sequence[Expected], got: Sequence[Result]) -> str | None:
    """What is wrong with a sample's results, for people; None when they are as expected."""
    wanted = ", ".join(map(str, expected))
    if not got:
        return f"nothing arrived (expected {wanted})"
    actual = ", ".join(_label(result) for result in got)
    if not complete(expected, got):
        return f"{len(got)} of {len(expected)} results arrived: {actual} (expected {wanted})"
    if len(got) > len(expected) or not _all_match(expected, got):
        return f"got {actual}, expected {wanted}"
    return None


def _all_match(expected: Sequence[Expected], got: Sequence[Result]) -> bool:
    unmatched = list(got)
    # The exact expectations first: a looser one must not take the result they need.
    for want in sorted(expected, key=lambda e: e.tries is None):
        found = next((result for result in unmatched if want.matches(result)), None)
        if found is None:
            return False
        unmatched.remove(found)
    return True


def _label(result: Result) -> str:
    if result.tries is None:
        return result.result
    return str(Expected(result.result, result.tries))
