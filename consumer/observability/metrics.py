"""The processor's OpenTelemetry instruments, named so Prometheus shows the contract's names.

The Prometheus exporter turns ``messaging.client.consumed.messages`` with unit ``{message}``
into ``messaging_client_consumed_messages_total``: dots become underscores, a unit in braces
adds nothing, ``s`` adds ``_seconds`` and a counter gets ``_total``.

One ``Metrics`` is built per service from its meter provider and passed down; the default
records into a no-op provider, so code and tests that do not care pay next to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    Meter,
    MeterProvider,
    NoOpMeterProvider,
    Observation,
)
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_SYSTEM,
)

# Seconds; the semantic conventions' advice for HTTP and messaging durations, then longer
# steps for end-to-end times that include retries and backoff.
_SHORT_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_LONG_SECONDS = (*_SHORT_SECONDS, 15, 30, 60, 120, 300)

PROVIDER = "provider"
OUTCOME = "outcome"
CATEGORY = "category"
REASON = "reason"
LIMITER = "limiter"
NONE = "none"
KAFKA = "kafka"
# Kafka's operation names in the messaging conventions.
POLL = "poll"
SEND = "send"
PROCESS = "process"


class Observed(Protocol):
    """What the observable gauges read from a running processor, at collection time."""

    @property
    def events_in_flight(self) -> int: ...

    def lag(self) -> Mapping[tuple[str, int], int]:
        """High watermark minus position, per assigned (topic, partition)."""
        ...

    def readiness(self) -> tuple[bool, str]: ...

    def back_pressure(self) -> Mapping[str, AccountPressure]:
        """Per provider account."""
        ...


@dataclass(frozen=True, slots=True)
class AccountPressure:
    parked: int
    oldest_parked_seconds: float
    circuit_state: int
    # None for an account without a rate limit.
    pace_per_minute: float | None


class Tally:
    """A monotonic counter summed in a plain dict and reported when metrics are collected.

    ``add`` is a dict update (well under a microsecond) where the SDK counter locks and
    hashes its attributes (about 5 µs); these counters move several times per event. A
    collection on another thread (the OTLP reader) copies the dict, atomic under the GIL.
    """

    __slots__ = ("_counts",)

    def __init__(self, meter: Meter, name: str, *, unit: str, description: str) -> None:
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: int, attributes: Mapping[str, str] | None = None) -> None:
        key = tuple(attributes.items()) if attributes else ()
        self._counts[key] = self._counts.get(key, 0) + amount

    def _observe(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count, dict(key)) for key, count in self._counts.copy().items()]


def duration_histogram(
    meter: Meter, name: str, description: str, buckets: Sequence[float] = _SHORT_SECONDS
) -> Histogram:
    """A histogram of durations in seconds (Prometheus: ``<name>_seconds``)."""
    return meter.create_histogram(
        name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
    )


class Metrics:
    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = (meter_provider or NoOpMeterProvider()).get_meter("consumer")
        self.consumed = Tally(
            meter,
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Input records consumed.",
        )
        self.sent = Tally(
            meter,
            "messaging.client.sent.messages",
            unit="{message}",
            description="Records produced (results and DLQ copies) and acknowledged.",
        )
        self.process_duration = duration_histogram(
            meter,
            "messaging.process.duration",
            "Handler time per input event, publishing its results included.",
            _LONG_SECONDS,
        )
        self.event_duration = duration_histogram(
            meter,
            "cancel_processor.event.duration",
            "Input record timestamp to all of its results acknowledged.",
            _LONG_SECONDS,
        )
        self.results = Tally(
            meter,
            "cancel_processor.results",
            unit="{result}",
            description="Result events published, by provider account, outcome and category.",
        )
        self.dlq_records = Tally(
            meter,
            "cancel_processor.dlq.records",
            unit="{record}",
            description="Input records sent to the dead-letter topic, by error category.",
        )
        self.http_duration = duration_histogram(
            meter,
            "http.client.request.duration",
            "Provider HTTP calls, retries and token requests included.",
        )
        self.retries = Tally(
            meter,
            "cancel_processor.provider.retries",
            unit="{retry}",
            description="Retries scheduled after a transient provider failure.",
        )
        self.rate_limiter_wait = duration_histogram(
            meter,
            "cancel_processor.rate_limiter.wait.duration",
            "Time waiting for a provider account's call slot or rate-limit token.",
            (0.0, *_LONG_SECONDS),
        )
        self.parks = Tally(
            meter,
            "cancel_processor.parks",
            unit="{shipment}",
            description="Shipments parked in the retry topic, by provider account and reason.",
        )
        self._observed: Observed | None = None
        self._consumed_attributes: dict[tuple[str, int, str], dict[str, str]] = {}
        self._built_attributes: dict[tuple[str, ...], dict[str, str]] = {}
        meter.create_observable_gauge(
            "cancel_processor.events.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{event}",
            description="Events dispatched and not finished.",
        )
        meter.create_observable_gauge(
            "cancel_processor.consumer.lag",
            callbacks=[self._observe_lag],
            unit="{message}",
            description="High watermark minus position, per assigned partition.",
        )
        meter.create_observable_gauge(
            "cancel_processor.ready",
            callbacks=[self._observe_ready],
            description="1 when /readyz answers 200.",
        )

        meter.create_observable_gauge(
            "cancel_processor.parked.shipments",
            callbacks=[self._observe_parked],
            unit="{shipment}",
            description="Shipments parked now, per provider account (held or on their way back).",
        )
        meter.create_observable_gauge(
            "cancel_processor.parked.oldest_age",
            callbacks=[self._observe_oldest],
            unit="s",
            description="Time since the oldest parked shipment was first parked, per account.",
        )
        meter.create_observable_gauge(
            "cancel_processor.circuit.state",
            callbacks=[self._observe_circuit],
            description="Circuit breaker per provider account: 0 closed, 1 half-open, 2 open.",
        )
        meter.create_observable_gauge(
            "cancel_processor.provider.pace_per_minute",
            callbacks=[self._observe_pace],
            description="Requests per minute the account allows itself now (adaptive).",
        )

    def observe(self, observed: Observed | None) -> None:
        """Let the gauges read this processor (``None``: report nothing)."""
        self._observed = observed

    # Attribute sets are built once per distinct value and reused: no per-event dicts.

    def consumed_attributes(self, topic: str, partition: int, group: str) -> dict[str, str]:
        key = (topic, partition, group)
        found = self._consumed_attributes.get(key)
        if found is None:
            found = self._consumed_attributes[key] = {
                MESSAGING_SYSTEM: KAFKA,
                MESSAGING_OPERATION_NAME: POLL,
                MESSAGING_DESTINATION_NAME: topic,
                MESSAGING_DESTINATION_PARTITION_ID: str(partition),
                MESSAGING_CONSUMER_GROUP_NAME: group,
            }
        return found

    def sent_attributes(self, topic: str) -> dict[str, str]:
        """Of ``messaging.client.sent.messages``: a record produced to ``topic``."""
        return self._messaging(SEND, topic)

    def process_attributes(self, topic: str) -> dict[str, str]:
        """Of ``messaging.process.duration``: a record of ``topic`` handled."""
        return self._messaging(PROCESS, topic)

    def _messaging(self, operation: str, topic: str) -> dict[str, str]:
        return self._attributes(
            MESSAGING_SYSTEM,
            KAFKA,
            MESSAGING_OPERATION_NAME,
            operation,
            MESSAGING_DESTINATION_NAME,
            topic,
        )

    def result_attributes(self, provider: str, outcome: str, category: str) -> dict[str, str]:
        """``provider`` must be a configured account or ``none``: events name anything."""
        return self._attributes(PROVIDER, provider, OUTCOME, outcome, CATEGORY, category)

    def category_attributes(self, category: str) -> dict[str, str]:
        return self._attributes(CATEGORY, category)

    def retry_attributes(self, provider: str, category: str) -> dict[str, str]:
        return self._attributes(PROVIDER, provider, CATEGORY, category)

    def park_attributes(self, provider: str, reason: str) -> dict[str, str]:
        return self._attributes(PROVIDER, provider, REASON, reason)

    def limiter_attributes(self, provider: str, limiter: str) -> dict[str, str]:
        """Of the rate-limiter wait: ``limiter`` is ``slot`` (concurrency cap) or
        ``token`` (rate limit)."""
        return self._attributes(PROVIDER, provider, LIMITER, limiter)

    def _attributes(self, *names_and_values: str) -> dict[str, str]:
        """``{name: value, ...}`` from alternating names and values, built once per set."""
        found = self._built_attributes.get(names_and_values)
        if found is None:
            found = self._built_attributes[names_and_values] = dict(
                zip(names_and_values[::2], names_and_values[1::2], strict=True)
            )
        return found

    def _observe_in_flight(self, _: CallbackOptions) -> Iterable[Observation]:
        if self._observed is None:
            return ()
        return (Observation(self._observed.events_in_flight),)

    def _observe_lag(self, _: CallbackOptions) -> Iterable[Observation]:
        if self._observed is None:
            return ()
        return [
            Observation(
                lag,
                {MESSAGING_DESTINATION_NAME: topic, MESSAGING_DESTINATION_PARTITION_ID: str(p)},
            )
            for (topic, p), lag in self._observed.lag().items()
        ]

    def _observe_ready(self, _: CallbackOptions) -> Iterable[Observation]:
        if self._observed is None:
            return ()
        ready, _reason = self._observed.readiness()
        return (Observation(1 if ready else 0),)

    def _pressure(self) -> Mapping[str, AccountPressure]:
        return {} if self._observed is None else self._observed.back_pressure()

    def _observe_parked(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(p.parked, {PROVIDER: a}) for a, p in self._pressure().items()]

    def _observe_oldest(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(p.oldest_parked_seconds, {PROVIDER: a}) for a, p in self._pressure().items()
        ]

    def _observe_circuit(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(p.circuit_state, {PROVIDER: a}) for a, p in self._pressure().items()]

    def _observe_pace(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(p.pace_per_minute, {PROVIDER: a})
            for a, p in self._pressure().items()
            if p.pace_per_minute is not None
        ]
