"""``demo-traffic``: the sample stream covers every outcome with unique ids."""

from __future__ import annotations

import itertools

import orjson

from consumer.core.events import OrderCancelled
from consumer.simulator import parse_fault
from consumer.tools.traffic import sample_records


def test_one_round_covers_every_kind_of_outcome_and_ids_never_repeat() -> None:
    records = list(itertools.islice(sample_records("r1"), 40))
    keys = [key for key, _ in records]
    assert len(set(keys)) == len(keys)

    parsed = [(k, OrderCancelled.model_validate_json(v)) for k, v in records if v != b"{not json"]
    assert len(parsed) == len(records) - 2, "one record in 20 is not JSON (dead-lettered)"
    assert all(event.order_id == key for key, event in parsed)
    events = [event for _, event in parsed]
    shipments = [s for e in events for s in e.shipments]
    assert len({s.shipment_id for s in shipments}) == len(shipments)
    providers = {s.provider for s in shipments}
    assert providers == {"shipstation", "mvmnt", "fedex"}, "fedex: an unknown provider"
    faults = [parse_fault(s.shipment_id) for s in shipments]
    assert any(f.rate_limited_calls for f in faults)
    assert any(f.failing_calls for f in faults)
    assert any(f.not_found for f in faults)
    assert any(f.delivered for f in faults)
    assert any(f.labeled for f in faults)
    assert any(f.cancelled for f in faults)
    plain = [f for f in faults if f == parse_fault("se-1")]
    assert len(plain) > len(faults) / 2, "mostly plain cancels"


def test_records_are_keyed_by_order_id() -> None:
    key, value = next(sample_records("r2"))
    assert orjson.loads(value)["order_id"] == key
