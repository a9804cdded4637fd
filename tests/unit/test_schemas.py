from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from consumer.core import headers
from consumer.core.events import CancelFailed, OrderCancelled, ShipmentCancelled, result_event_id
from consumer.core.examples import ORDER_CANCELLED_EXAMPLE
from consumer.core.parking import ParkedShipment
from consumer.tools.schemas import (
    ASYNCAPI_FILE,
    JSON_SCHEMA_DIALECT,
    SCHEMA_BASE_URL,
    asyncapi_document,
    main,
    render_schemas,
    to_yaml,
)

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"

EXAMPLES_DIR = SCHEMAS_DIR.parent / "examples"


def example_file(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES_DIR / name).read_text(encoding="utf-8"))
    return loaded


# The complete example of each contract that the docs show (examples/), with its schema.
EXAMPLES: list[tuple[str, type[BaseModel], dict[str, Any]]] = [
    ("order.cancelled.v1.json", OrderCancelled, example_file("order-cancelled.json")),
    ("shipment.cancelled.v1.json", ShipmentCancelled, example_file("shipment-cancelled.json")),
    ("shipment.cancel_failed.v1.json", CancelFailed, example_file("shipment-cancel-failed.json")),
    ("shipment.cancel_retry.v1.json", ParkedShipment, example_file("shipment-cancel-retry.json")),
]
EXAMPLE_IDS = [name for name, _, _ in EXAMPLES]


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(render_schemas()[name])
    return loaded


# --- generated files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(render_schemas()))
def test_schema_file_on_disk_matches_the_models(name: str) -> None:
    path = SCHEMAS_DIR / name
    assert path.exists(), f"schemas/{name} is missing: run `make schemas`"
    assert path.read_text(encoding="utf-8") == render_schemas()[name], (
        f"schemas/{name} is stale (the models changed): run `make schemas`"
    )


def test_schemas_dir_holds_only_generated_files() -> None:
    on_disk = {path.name for path in SCHEMAS_DIR.iterdir() if path.is_file()}
    assert on_disk == set(render_schemas()), "schemas/ is generated: run `make schemas`"


def test_rendering_is_deterministic() -> None:
    assert render_schemas() == render_schemas()


def test_generator_writes_every_file_to_the_chosen_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path / "out")]) == 0

    written = {path.name: path.read_text(encoding="utf-8") for path in (tmp_path / "out").iterdir()}
    assert written == render_schemas()
    assert "asyncapi.yaml" in capsys.readouterr().out


# --- JSON Schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_IDS)
def test_json_schema_declares_dialect_and_a_stable_id(name: str) -> None:
    text = render_schemas()[name]
    document = json.loads(text)
    assert document["$schema"] == JSON_SCHEMA_DIALECT
    assert document["$id"] == f"{SCHEMA_BASE_URL}{name}"
    assert document["type"] == "object"
    assert text.endswith("}\n")
    assert text.startswith('{\n  "$schema"')


@pytest.mark.parametrize(("name", "model", "example"), EXAMPLES, ids=EXAMPLE_IDS)
def test_each_example_validates_against_its_model(
    name: str, model: type[BaseModel], example: dict[str, Any]
) -> None:
    event = model.model_validate_json(json.dumps(example))
    assert event.model_dump(mode="json")["event_type"] == example["event_type"]


@pytest.mark.parametrize(("name", "model", "example"), EXAMPLES, ids=EXAMPLE_IDS)
def test_each_example_fits_its_json_schema(
    name: str, model: type[BaseModel], example: dict[str, Any]
) -> None:
    document = schema(name)
    # Complete: every field the schema knows, optional ones included.
    assert set(example) == set(document["properties"])
    assert document["properties"]["event_type"]["const"] == example["event_type"]
    assert document["properties"]["schema_version"]["const"] == 1


def test_the_input_example_file_is_the_one_the_code_builds_events_from() -> None:
    assert example_file("order-cancelled.json") == ORDER_CANCELLED_EXAMPLE


@pytest.mark.parametrize(("name", "model", "example"), EXAMPLES[1:3], ids=EXAMPLE_IDS[1:3])
def test_each_result_example_has_the_id_the_processor_would_give_it(
    name: str, model: type[BaseModel], example: dict[str, Any]
) -> None:
    source = uuid.UUID(example["source_event_id"])
    expected = result_event_id(source, example["provider"], example["shipment_id"])
    assert example["event_id"] == str(expected)
    assert example["source_event_id"] == ORDER_CANCELLED_EXAMPLE["event_id"]


def test_input_schema_requires_only_what_the_model_requires() -> None:
    # Producers may leave out `reason` and `lookup`; extra fields are allowed.
    document = schema("order.cancelled.v1.json")
    assert document["required"] == [
        "event_id",
        "event_type",
        "schema_version",
        "occurred_at",
        "order_id",
        "shipments",
    ]
    assert document["$defs"]["ShipmentRef"]["required"] == ["provider", "shipment_id"]
    assert "additionalProperties" not in document
    assert document["properties"]["shipments"]["maxItems"] == 50
    assert document["properties"]["order_id"]["maxLength"] == 128


@pytest.mark.parametrize("name", ["shipment.cancelled.v1.json", "shipment.cancel_failed.v1.json"])
def test_result_schema_marks_every_written_field_required(name: str) -> None:
    # dump_event writes every field, so readers may count on each key being there.
    document = schema(name)
    assert set(document["required"]) == set(document["properties"])
    assert document["additionalProperties"] is False


def test_cancel_failed_schema_keeps_error_details_and_categories() -> None:
    document = schema("shipment.cancel_failed.v1.json")
    error = document["$defs"]["ErrorDetail"]
    assert set(error["required"]) == {
        "category",
        "retryable",
        "message",
        "http_status",
        "provider_code",
        "provider_request_id",
        "provider_errors",
    }
    assert "rate_limited" in document["$defs"]["ErrorCategory"]["enum"]
    assert document["properties"]["span_id"]["pattern"] == "^[0-9a-f]{16}$"


# --- AsyncAPI ---------------------------------------------------------------------------------


def test_asyncapi_describes_the_five_topics() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    channels = document["channels"]
    assert isinstance(channels, dict)
    addresses = {channel["address"] for channel in channels.values()}
    assert addresses == {
        "orders.cancelled",
        "shipments.cancelled",
        "shipments.cancel-failed",
        "orders.cancelled.dlq",
        "orders.cancelled.retry",
    }


def test_asyncapi_operations_receive_input_and_send_results() -> None:
    document: Any = asyncapi_document()
    actions = set()
    for operation in document["operations"].values():
        channel_id = operation["channel"]["$ref"].removeprefix("#/channels/")
        actions.add((document["channels"][channel_id]["address"], operation["action"]))
    assert actions == {
        ("orders.cancelled", "receive"),
        ("shipments.cancelled", "send"),
        ("shipments.cancel-failed", "send"),
        ("orders.cancelled.dlq", "send"),
        # The processor parks shipments in the retry topic and reads them back itself.
        ("orders.cancelled.retry", "send"),
        ("orders.cancelled.retry", "receive"),
    }


def test_asyncapi_refs_resolve() -> None:
    document: Any = asyncapi_document()
    local_files = set(render_schemas())
    refs = list(_refs(document))
    assert refs
    for ref in refs:
        if ref.startswith("#/"):
            target = document
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
        else:
            assert ref.removeprefix("./") in local_files, ref


def test_asyncapi_payloads_are_the_generated_json_schemas() -> None:
    messages: Any = asyncapi_document()["components"]
    payloads = {
        message["name"]: message["payload"].get("$ref") for message in messages["messages"].values()
    }
    assert payloads == {
        "order.cancelled": "./order.cancelled.v1.json",
        "shipment.cancelled": "./shipment.cancelled.v1.json",
        "shipment.cancel_failed": "./shipment.cancel_failed.v1.json",
        "order.cancelled.dead_letter": None,
        "shipment.cancel_retry": "./shipment.cancel_retry.v1.json",
    }


def test_asyncapi_record_key_is_the_order_id() -> None:
    messages: Any = asyncapi_document()["components"]
    for message_id in (
        "orderCancelled",
        "shipmentCancelled",
        "shipmentCancelFailed",
        "cancelRetry",
    ):
        key = messages["messages"][message_id]["bindings"]["kafka"]["key"]
        assert key["type"] == "string"
        assert "order_id" in key["description"]


def test_asyncapi_headers_use_the_shared_header_names() -> None:
    messages: Any = asyncapi_document()["components"]
    result_headers = messages["messages"]["shipmentCancelFailed"]["headers"]["properties"]
    assert set(result_headers) == {
        headers.TRACEPARENT,
        headers.TRACESTATE,
        headers.CONTENT_TYPE,
        headers.EVENT_TYPE,
        headers.SOURCE_EVENT_ID,
    }
    dlq_headers = messages["messages"]["deadLetter"]["headers"]
    assert set(dlq_headers["required"]) == {
        "dlq-source-topic",
        "dlq-source-partition",
        "dlq-source-offset",
        "dlq-error-category",
        "dlq-error-message",
        "dlq-failed-at",
    }


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


# --- the YAML emitter -------------------------------------------------------------------------


def test_yaml_quotes_strings_that_would_read_back_as_something_else() -> None:
    text = to_yaml(
        {
            "version": "3.0.0",
            "flag": "true",
            "no": "No",
            "ref": "./order.cancelled.v1.json",
            "pointer": "#/components/messages/x",
            "colon": "key: value",
            "comment": "a #b",
            "quote": "it's",
            "newline": "two\nlines",
            "empty": "",
            "plain": "order.cancelled topic, v1",
        }
    )
    assert text == (
        "version: '3.0.0'\n"
        "flag: 'true'\n"
        "'no': 'No'\n"
        "ref: './order.cancelled.v1.json'\n"
        "pointer: '#/components/messages/x'\n"
        "colon: 'key: value'\n"
        "comment: 'a #b'\n"
        "quote: it's\n"
        'newline: "two\\nlines"\n'
        "empty: ''\n"
        "plain: order.cancelled topic, v1\n"
    )


def test_yaml_nests_mappings_and_lists_in_block_style() -> None:
    text = to_yaml(
        {
            "a": {"b": [1, True, None], "c": []},
            "d": [{"e": "f", "g": {"h": False}}, ["i"]],
            "j": {},
        }
    )
    assert text == (
        "a:\n"
        "  b:\n"
        "    - 1\n"
        "    - true\n"
        "    - null\n"
        "  c: []\n"
        "d:\n"
        "  - e: f\n"
        "    g:\n"
        "      h: false\n"
        "  - - i\n"
        "j: {}\n"
    )


def test_asyncapi_file_is_readable_yaml_text() -> None:
    text = render_schemas()[ASYNCAPI_FILE]
    assert text.startswith("asyncapi: '3.0.0'\n")
    assert "  ordersCancelled:\n    address: orders.cancelled\n" in text
    assert "        $ref: './order.cancelled.v1.json'\n" in text
