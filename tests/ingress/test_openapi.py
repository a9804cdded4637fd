"""schemas/ingress-openapi.yaml describes what the app really serves and answers.

The file itself is generated (``make schemas``); tests/unit/test_schemas.py fails when it
drifts from ``ingress_openapi_document()``."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from consumer.core.events import OrderCancelled
from consumer.ingress.openapi import (
    INGRESS_OPENAPI_FILE,
    SIGNATURE_PATTERN,
    ingress_openapi_document,
)
from consumer.ingress.publisher import RecordRejected
from consumer.ingress.responses import Accepted, Error, InvalidEvent
from consumer.ingress.server import RETRY_AFTER_SECONDS, ROUTE
from consumer.ingress.signature import (
    SIGNATURE_HEADER,
    SOURCE_HEADER,
    SignatureFailure,
    compute_signature,
    parse_signature_header,
    sign,
)
from consumer.tools.schemas import render_schemas
from tests.ingress.helpers import (
    RecordingPublisher,
    Telemetry,
    event_body,
    ingress_settings,
    make_app,
    signed_headers,
)

DOCUMENT: Any = ingress_openapi_document()
POST = DOCUMENT["paths"][ROUTE]["post"]
MODELS: dict[str, type[BaseModel]] = {
    "Accepted": Accepted,
    "Error": Error,
    "InvalidEvent": InvalidEvent,
}

Client = TestClient[Any, Any]
Scenario = Callable[[Client, RecordingPublisher], Awaitable[int]]


def test_document_is_openapi_3_1_and_generated_into_schemas() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    text = render_schemas()[INGRESS_OPENAPI_FILE]
    assert text.startswith("openapi: '3.1.0'\n")
    assert f"  {ROUTE}:\n    post:\n" in text


def test_yaml_file_parses_back_to_the_document() -> None:
    assert yaml.safe_load(render_schemas()[INGRESS_OPENAPI_FILE]) == DOCUMENT


async def test_documented_paths_and_methods_are_the_apps_routes() -> None:
    app = make_app(RecordingPublisher(), Telemetry())
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(path, method) for path, item in DOCUMENT["paths"].items() for method in item}
    assert documented == served


async def _accepted(client: Client, publisher: RecordingPublisher) -> int:
    body = event_body()
    return (await client.post(ROUTE, data=body, headers=signed_headers(body))).status


async def _unauthenticated(client: Client, publisher: RecordingPublisher) -> int:
    body = event_body()
    headers = signed_headers(body, secret=b"wrong-secret-0000000000")
    return (await client.post(ROUTE, data=body, headers=headers)).status


async def _too_large(client: Client, publisher: RecordingPublisher) -> int:
    body = event_body(reason="x" * 999, order_id="y" * 128) * 400
    return (await client.post(ROUTE, data=body, headers=signed_headers(body))).status


async def _wrong_type(client: Client, publisher: RecordingPublisher) -> int:
    body = event_body()
    headers = {**signed_headers(body), "Content-Type": "text/plain"}
    return (await client.post(ROUTE, data=body, headers=headers)).status


async def _invalid(client: Client, publisher: RecordingPublisher) -> int:
    body = event_body(shipments=[])
    return (await client.post(ROUTE, data=body, headers=signed_headers(body))).status


async def _conflict(client: Client, publisher: RecordingPublisher) -> int:
    await _accepted(client, publisher)
    body = event_body(reason="another reason")
    return (await client.post(ROUTE, data=body, headers=signed_headers(body))).status


async def _refused_for_good(client: Client, publisher: RecordingPublisher) -> int:
    publisher.failure = RecordRejected("TopicAuthorizationFailedError", too_large=False)
    return await _accepted(client, publisher)


async def _bug(client: Client, publisher: RecordingPublisher) -> int:
    publisher.failure = RuntimeError("a bug")
    return await _accepted(client, publisher)


async def _broker_down(client: Client, publisher: RecordingPublisher) -> int:
    publisher.fail_with_broker_down()
    body = event_body()
    response = await client.post(ROUTE, data=body, headers=signed_headers(body))
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    return response.status


SCENARIOS: list[Scenario] = [
    _accepted,
    _unauthenticated,
    _too_large,
    _wrong_type,
    _invalid,
    _conflict,
    _refused_for_good,
    _bug,
    _broker_down,
]


async def test_every_status_the_webhook_answers_is_documented_and_vice_versa() -> None:
    seen = set()
    for scenario in SCENARIOS:
        publisher = RecordingPublisher()
        app = make_app(publisher, Telemetry(), settings=ingress_settings())
        async with TestClient(TestServer(app)) as client:
            seen.add(str(await scenario(client, publisher)))
    assert seen == set(POST["responses"])


@pytest.mark.parametrize("status", sorted(POST["responses"]))
def test_each_documented_example_fits_its_model(status: str) -> None:
    media = POST["responses"][status]["content"]["application/json"]
    model = MODELS[media["schema"]["$ref"].rsplit("/", 1)[1]]
    model.model_validate(media["example"])


def test_request_example_is_a_valid_event_and_refers_to_the_generated_schema() -> None:
    media = POST["requestBody"]["content"]["application/json"]
    OrderCancelled.model_validate(media["example"])
    assert media["schema"]["$ref"].removeprefix("./") in render_schemas()


def test_signature_and_source_headers_are_required_and_named_as_in_code() -> None:
    params = {p["name"]: p for p in POST["parameters"]}
    assert params[SIGNATURE_HEADER]["required"] is True
    assert params[SOURCE_HEADER]["required"] is True
    parse_signature_header(params[SIGNATURE_HEADER]["example"])
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert {s["name"] for s in schemes.values()} == {SIGNATURE_HEADER, SOURCE_HEADER}


_DIGEST = compute_signature(b"secret-0123456789", 1795255200, b"{}")


@pytest.mark.parametrize(
    "header",
    [
        sign(b"secret-0123456789", b"{}", 1795255200),
        f"t=1795255200, v1={_DIGEST}",
        f"v1={_DIGEST},t=1795255200",
        f" v1={_DIGEST.upper()} , t=1795255200 , v0=whatever",
        sign([b"old-secret-0123456", b"new-secret-0123456"], b"{}", 1795255200),
    ],
)
def test_documented_signature_pattern_matches_what_the_parser_accepts(header: str) -> None:
    parse_signature_header(header)
    assert re.search(SIGNATURE_PATTERN, header)


@pytest.mark.parametrize(
    "header",
    ["garbage", f"v1={_DIGEST}", "t=1795255200", f"t=1795255200,v1={_DIGEST[:-1]}"],
)
def test_documented_signature_pattern_refuses_headers_without_t_or_v1(header: str) -> None:
    assert not re.search(SIGNATURE_PATTERN, header)


def test_401_codes_in_the_document_are_the_signature_failures() -> None:
    codes = DOCUMENT["components"]["schemas"]["SignatureFailure"]["enum"]
    assert codes == [failure.value for failure in SignatureFailure]


def test_503_documents_retry_after() -> None:
    retry_after = POST["responses"]["503"]["headers"]["Retry-After"]
    assert retry_after["schema"]["const"] == RETRY_AFTER_SECONDS


def test_local_refs_resolve() -> None:
    refs = list(_refs(DOCUMENT))
    assert refs
    for ref in refs:
        if ref.startswith("#/"):
            target = DOCUMENT
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
        else:
            assert ref.removeprefix("./") in render_schemas(), ref


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []
