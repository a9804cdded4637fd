"""The circuit breaker of a provider account: closed, open, half-open with one probe."""

from __future__ import annotations

import logging

import pytest

from consumer.core.breaker import CircuitBreaker, CircuitState


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def state(circuit: CircuitBreaker) -> CircuitState:
    """Read afresh: the state changes behind mypy's back."""
    return circuit.state


def breaker(clock: Clock, threshold: int = 3, cooldown: float = 30.0) -> CircuitBreaker:
    return CircuitBreaker("ss-main", threshold, cooldown, clock)


def opened(clock: Clock, cooldown: float = 30.0) -> CircuitBreaker:
    circuit = breaker(clock, cooldown=cooldown)
    for _ in range(3):
        circuit.failed()
    assert state(circuit) is CircuitState.OPEN
    return circuit


def changes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage().split(":")[0] for r in caplog.records if r.name == "consumer.core.breaker"
    ]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumer.core.breaker")


def test_opens_after_the_threshold_of_consecutive_failures() -> None:
    clock = Clock()
    circuit = breaker(clock)
    circuit.failed()
    circuit.failed()
    assert state(circuit) is CircuitState.CLOSED
    assert circuit.blocked_until() is None
    circuit.failed()
    assert state(circuit) is CircuitState.OPEN
    assert circuit.blocked_until() == 1030.0


def test_a_success_resets_the_count() -> None:
    circuit = breaker(Clock())
    circuit.failed()
    circuit.failed()
    circuit.succeeded()
    circuit.failed()
    circuit.failed()
    assert state(circuit) is CircuitState.CLOSED


def test_open_blocks_for_the_cooldown_then_lets_one_probe_go() -> None:
    clock = Clock()
    circuit = opened(clock)
    clock.now = 1029.9
    assert circuit.blocked_until() == 1030.0
    clock.now = 1030.0
    assert state(circuit) is CircuitState.HALF_OPEN
    assert circuit.blocked_until() is None, "the probe"
    assert circuit.blocked_until() == 1060.0, "one probe at a time"
    clock.now = 1045.0
    assert circuit.blocked_until() == 1060.0


def test_a_probe_that_never_reports_expires() -> None:
    clock = Clock()
    circuit = opened(clock)
    clock.now = 1030.0
    assert circuit.blocked_until() is None
    clock.now = 1060.0
    assert circuit.blocked_until() is None, "a new probe once the first one's time is up"
    assert state(circuit) is CircuitState.HALF_OPEN


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    circuit = opened(clock)
    clock.now = 1030.0
    assert circuit.blocked_until() is None
    clock.now = 1031.0
    circuit.failed()
    assert state(circuit) is CircuitState.OPEN
    assert circuit.blocked_until() == 1061.0


def test_a_successful_probe_closes() -> None:
    clock = Clock()
    circuit = opened(clock)
    clock.now = 1030.0
    assert circuit.blocked_until() is None
    circuit.succeeded()
    assert state(circuit) is CircuitState.CLOSED
    assert circuit.blocked_until() is None
    assert circuit.blocked_until() is None, "no probe limit once closed"
    circuit.failed()
    circuit.failed()
    assert state(circuit) is CircuitState.CLOSED, "the count starts again"


def test_failures_while_open_do_not_extend_the_cooldown() -> None:
    clock = Clock()
    circuit = opened(clock)
    clock.now = 1010.0
    circuit.failed()  # a call that was already on its way
    assert circuit.blocked_until() == 1030.0


def test_each_state_change_logs_exactly_one_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    circuit = breaker(clock)
    circuit.failed()
    circuit.failed()
    assert changes(caplog) == []
    circuit.failed()
    circuit.failed()
    circuit.blocked_until()
    assert changes(caplog) == ["circuit opened"]
    clock.now = 1030.0
    circuit.blocked_until()
    circuit.blocked_until()
    assert changes(caplog) == ["circuit opened", "circuit half-open"]
    circuit.failed()
    clock.now = 1060.0
    circuit.blocked_until()
    circuit.succeeded()
    circuit.succeeded()
    assert changes(caplog) == [
        "circuit opened",
        "circuit half-open",
        "circuit opened",
        "circuit half-open",
        "circuit closed",
    ]


def test_state_change_lines_name_the_provider(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    circuit = opened(clock)
    clock.now = 1030.0
    circuit.blocked_until()
    circuit.succeeded()
    opened_line, half_open, closed = (
        r for r in caplog.records if r.name == "consumer.core.breaker"
    )
    assert opened_line.levelno == logging.WARNING
    assert opened_line.__dict__["provider"] == "ss-main"
    assert opened_line.__dict__["failures"] == 3
    assert opened_line.__dict__["cooldown_seconds"] == 30.0
    for line in (half_open, closed):
        assert (line.levelno, line.__dict__["provider"]) == (logging.INFO, "ss-main")
