"""The processor's series as scraped from /metrics, with the exact label set each carries.

The contract's labels, plus what the semantic conventions require on top (``messaging_system``
and ``messaging_operation_name`` on the messaging metrics, ``server_port`` on HTTP client
durations) and ``limiter`` on rate-limiter waits. The ingress series belong to the ingress.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

_MESSAGING = {"messaging_system", "messaging_operation_name"}

SERIES_LABELS: Mapping[str, frozenset[str]] = {
    "messaging_client_consumed_messages_total": frozenset(
        {
            *_MESSAGING,
            "messaging_destination_name",
            "messaging_destination_partition_id",
            "messaging_consumer_group_name",
        }
    ),
    "messaging_client_sent_messages_total": frozenset({*_MESSAGING, "messaging_destination_name"}),
    "messaging_process_duration_seconds_count": frozenset(
        {*_MESSAGING, "messaging_destination_name"}
    ),
    "cancel_processor_event_duration_seconds_count": frozenset(),
    "cancel_processor_results_total": frozenset({"provider", "outcome", "category"}),
    "cancel_processor_dlq_records_total": frozenset({"category"}),
    "cancel_processor_events_in_flight": frozenset(),
    "http_client_request_duration_seconds_count": frozenset(
        {
            "provider",
            "http_request_method",
            "http_response_status_code",
            "error_type",
            "server_address",
            "server_port",
        }
    ),
    "cancel_processor_provider_retries_total": frozenset({"provider", "category"}),
    "cancel_processor_rate_limiter_wait_duration_seconds_count": frozenset({"provider", "limiter"}),
    "cancel_processor_consumer_lag": frozenset(
        {"messaging_destination_name", "messaging_destination_partition_id"}
    ),
    "cancel_processor_ready": frozenset(),
}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text page: name -> [(labels, value)]."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def label_sets(scraped: Samples, names: Iterable[str] = SERIES_LABELS) -> dict[str, set[str]]:
    """The labels each series carries, over all of its samples."""
    return {
        name: {label for labels, _ in scraped.get(name, []) for label in labels} for name in names
    }


def label_values(scraped: Samples, name: str, label: str) -> set[str]:
    return {labels[label] for labels, _ in scraped.get(name, []) if label in labels}
