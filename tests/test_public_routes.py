"""The public route table (`sopy.routing.public_routes`): one declaration that both the HTTP
front dispatches with and the OpenAPI document is generated from, so neither can drift.

Given the table, the document describes exactly its routes with the statuses of the error
classes each names and the limits of the `Settings` defaults; the dispatcher finds each route's
handler; and a real gateway answers every table route as documented.
"""

from typing import Any

import httpx
import pytest
import trio

from sopy.docs.openapi import openapi_document
from sopy.errors import ErrorShape, MethodNotAllowed, NotFound, anthropic_error_type
from sopy.routing.public_routes import (
    PUBLIC_ROUTES,
    PublicDispatcher,
    PublicHandler,
    PublicRoute,
    Reply,
)
from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream
from tests.conftest import SopyUnderTest
from tests.gateway import (
    AUTH,
    Gateway,
    chat,
    make_anthropic,
    start_gateway_with,
)

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

# Each handler key stands for itself: the dispatcher must hand back what the front mapped.
HANDLERS = {handler: handler.name for handler in PublicHandler}


def documented_public_operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in openapi_document()["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS and "admin" not in operation["tags"]
    }


def concrete_path(route: PublicRoute, values: dict[str, str] | None = None) -> str:
    """The route's path with each parameter's value from `values`, else `sopy`."""
    path = route.path
    for name in route.path_parameters:
        path = path.replace(f"{{{name}}}", (values or {}).get(name, "sopy"))
    return path


def route(method: str, path: str, handler: PublicHandler, **fields: Any) -> PublicRoute:
    """A route for a dispatcher spec; only method, path and handler matter to dispatching."""
    return PublicRoute(
        method=method,
        path=path,
        handler=handler,
        operation_id=f"{method} {path}",
        tag="gateway",
        summary="a route",
        reply=Reply("ok", {"application/json": "Message"}),
        **fields,
    )


# -- the table and the OpenAPI document -------------------------------------------------------


def test_the_document_describes_exactly_the_table_routes() -> None:
    documented = documented_public_operations()

    assert set(documented) == {(route.method, route.path) for route in PUBLIC_ROUTES}
    for entry in PUBLIC_ROUTES:
        operation = documented[(entry.method, entry.path)]
        assert operation["operationId"] == entry.operation_id
        assert operation["summary"] == entry.summary
        assert operation["tags"] == [entry.tag]
        assert ("security" in operation) == entry.needs_key
        parameters = [parameter["name"] for parameter in operation.get("parameters", [])]
        assert parameters == entry.path_parameters


def test_each_operation_answers_the_statuses_of_its_error_classes_and_no_others() -> None:
    documented = documented_public_operations()

    for entry in PUBLIC_ROUTES:
        responses = documented[(entry.method, entry.path)]["responses"]
        expected = {str(entry.reply.status)} | {str(error.status) for error in entry.answers}
        assert set(responses) == expected, entry.path
        for error in entry.answers:
            description = responses[str(error.status)]["description"]
            assert f"`{error.code}`" in description, (entry.path, error)
            if entry.error_shape is ErrorShape.ANTHROPIC:
                assert f"`{anthropic_error_type(error.status)}`" in description
            assert error.__doc__ is not None
            assert error.__doc__.split()[0] in description, (entry.path, error)


def test_a_route_that_needs_a_key_documents_the_401() -> None:
    documented = documented_public_operations()

    for entry in PUBLIC_ROUTES:
        responses = documented[(entry.method, entry.path)]["responses"]
        assert ("401" in responses) == entry.needs_key, entry.path


def test_the_limits_quoted_are_the_settings_defaults() -> None:
    defaults = Settings()
    chat_errors = documented_public_operations()[("POST", "/v1/chat/completions")]["responses"]

    too_large = chat_errors["413"]["description"]
    assert f"{defaults.max_body_bytes // (1024 * 1024)} MiB" in too_large
    assert "`--max-body-bytes`" in too_large
    assert "`SOPY_MAX_BODY_BYTES`" in too_large
    slow = chat_errors["408"]["description"]
    assert f"{defaults.body_timeout:g} by default" in slow
    assert "`SOPY_BODY_TIMEOUT`" in slow
    busy = chat_errors["503"]["description"]
    assert f"{defaults.max_concurrent_requests} by default" in busy
    assert "`--max-concurrent-requests`" in busy
    for entry in PUBLIC_ROUTES:
        responses = documented_public_operations()[(entry.method, entry.path)]["responses"]
        assert "`server_busy`" in responses["503"]["description"], entry.path


def test_every_schema_the_table_names_is_in_the_document() -> None:
    schemas = openapi_document()["components"]["schemas"]
    tags = {tag["name"] for tag in openapi_document()["tags"]}

    for entry in PUBLIC_ROUTES:
        named = {name for name in entry.reply.content.values() if name is not None}
        assert named <= set(schemas), entry.path
        assert entry.request_body is None or entry.request_body in schemas, entry.path
        assert entry.tag in tags, entry.path


# -- dispatching ------------------------------------------------------------------------------


def test_exact_paths_find_their_handler_and_head_is_served_as_get() -> None:
    dispatcher = PublicDispatcher(PUBLIC_ROUTES, HANDLERS)

    assert dispatcher.handler_for("POST", "/v1/chat/completions") == "PROXY"
    assert dispatcher.handler_for("GET", "/v1/models") == "MODELS"
    assert dispatcher.handler_for("HEAD", "/healthz") == "HEALTH"
    assert dispatcher.handler_for("HEAD", "/hello/sopy") == "HELLO_NAME"


def test_a_trailing_parameter_takes_the_rest_of_the_path_and_subpaths_reach_their_route() -> None:
    dispatcher = PublicDispatcher(PUBLIC_ROUTES, HANDLERS)

    assert dispatcher.handler_for("GET", "/hello/org/model") == "HELLO_NAME"
    assert dispatcher.handler_for("GET", "/docs/") == "DOCS"
    assert dispatcher.handler_for("GET", "/docs/assets/swagger-ui.css") == "DOCS"
    with pytest.raises(NotFound):
        dispatcher.handler_for("GET", "/hello/")
    with pytest.raises(NotFound):
        dispatcher.handler_for("GET", "/docsx")


def test_a_parameter_inside_a_path_is_one_segment_and_the_most_literal_template_wins() -> None:
    routes = (
        route("GET", "/v1/responses/{id}", PublicHandler.HELLO_NAME),
        route("POST", "/v1/responses/{id}/cancel", PublicHandler.PROXY),
    )
    dispatcher = PublicDispatcher(
        routes, {PublicHandler.HELLO_NAME: "get", PublicHandler.PROXY: "cancel"}
    )

    assert dispatcher.handler_for("POST", "/v1/responses/resp_1/cancel") == "cancel"
    assert dispatcher.handler_for("GET", "/v1/responses/resp_1") == "get"
    with pytest.raises(MethodNotAllowed) as refused:
        dispatcher.handler_for("POST", "/v1/responses/resp_1")
    assert refused.value.allowed == ["GET"]
    with pytest.raises(NotFound):
        dispatcher.handler_for("GET", "/v1/responses/")


def test_a_trailing_id_parameter_is_one_segment_when_its_route_says_so() -> None:
    dispatcher = PublicDispatcher(PUBLIC_ROUTES, HANDLERS)

    assert dispatcher.handler_for("GET", "/v1/responses/resp_1") == "RESPONSE_FOLLOW_UP"
    assert dispatcher.handler_for("DELETE", "/v1/responses/resp_1") == "RESPONSE_FOLLOW_UP"
    with pytest.raises(MethodNotAllowed) as refused:
        dispatcher.handler_for("DELETE", "/v1/responses/resp_1/cancel")
    assert refused.value.allowed == ["POST"]
    with pytest.raises(NotFound):
        dispatcher.handler_for("GET", "/v1/responses/resp_1/elsewhere")


def test_a_known_path_with_another_method_is_a_405_listing_the_allowed_ones() -> None:
    routes = (
        route("GET", "/v1/things", PublicHandler.MODELS),
        route("POST", "/v1/things", PublicHandler.PROXY),
        route("GET", "/hello/{name}", PublicHandler.HELLO_NAME),
    )
    handlers = {PublicHandler.MODELS: "list", PublicHandler.PROXY: "add"}
    dispatcher = PublicDispatcher(routes, {**handlers, PublicHandler.HELLO_NAME: "hello"})

    with pytest.raises(MethodNotAllowed) as on_exact:
        dispatcher.handler_for("DELETE", "/v1/things")
    with pytest.raises(MethodNotAllowed) as on_template:
        dispatcher.handler_for("POST", "/hello/sopy")

    assert on_exact.value.allowed == ["GET", "POST"]
    assert on_exact.value.response_headers() == [(b"allow", b"GET, POST")]
    assert on_template.value.allowed == ["GET"]


def test_a_literal_path_owns_it_over_a_template_that_matches_it() -> None:
    routes = (
        route("GET", "/hello/{name}", PublicHandler.HELLO_NAME),
        route("POST", "/hello/world", PublicHandler.PROXY),
    )
    dispatcher = PublicDispatcher(
        routes, {PublicHandler.HELLO_NAME: "hello", PublicHandler.PROXY: "post"}
    )

    assert dispatcher.handler_for("POST", "/hello/world") == "post"
    assert dispatcher.handler_for("GET", "/hello/there") == "hello"
    for method in ("GET", "DELETE"):
        with pytest.raises(MethodNotAllowed) as refused:
            dispatcher.handler_for(method, "/hello/world")
        assert refused.value.allowed == ["POST"]


def test_an_unknown_path_is_a_404_naming_the_keyed_routes_and_the_docs() -> None:
    dispatcher = PublicDispatcher(PUBLIC_ROUTES, HANDLERS)

    with pytest.raises(NotFound) as missing:
        dispatcher.handler_for("GET", "/v2/nothing")

    message = missing.value.message
    assert message.startswith("Unknown request URL: GET /v2/nothing.")
    for entry in PUBLIC_ROUTES:
        if entry.needs_key:
            assert f"{entry.method} {entry.path}" in message
        elif entry.path != "/":
            assert entry.path not in message.replace("GET /docs lists", ""), message
    assert "GET /docs lists every route" in message


def test_a_route_without_a_handler_or_a_handler_without_a_route_is_refused() -> None:
    without_proxy: dict[PublicHandler, str] = {
        key: name for key, name in HANDLERS.items() if key is not PublicHandler.PROXY
    }
    one_route = (route("GET", "/", PublicHandler.HELLO_WORLD),)

    with pytest.raises(ValueError, match="PROXY"):
        PublicDispatcher(PUBLIC_ROUTES, without_proxy)
    with pytest.raises(ValueError, match="MODELS"):
        PublicDispatcher(one_route, HANDLERS)


# -- live: a real gateway answers every table route as documented ----------------------------


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    """`gpt-4.1` on provider `openai`, with a fallback of kind anthropic for the Anthropic
    routes (the mock serves both APIs)."""
    upstreams = {"openai": [MockUpstream("openai-0")], "claude": [MockUpstream("claude-0")]}
    models = {"gpt-4.1": "openai", "sopy": "openai"}
    gateway = await start_gateway_with(
        sopy, nursery, upstreams, models, fallbacks={"gpt-4.1": ["claude"]}
    )
    await make_anthropic(gateway, "claude")
    return gateway


_UPLOAD = {"model": "gpt-4.1"}, {"file": ("a.wav", b"RIFF", "audio/wav")}
# A request each route with a body answers with success (httpx keyword arguments).
EXAMPLE_REQUESTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"json": chat("gpt-4.1")},
    "/v1/completions": {"json": {"model": "gpt-4.1", "prompt": "hi"}},
    "/v1/embeddings": {"json": {"model": "gpt-4.1", "input": "hi"}},
    "/v1/moderations": {"json": {"model": "gpt-4.1", "input": "hi"}},
    "/v1/images/generations": {"json": {"model": "gpt-4.1", "prompt": "a cat"}},
    "/v1/images/edits": {"data": _UPLOAD[0], "files": {"image": ("a.png", b"PNG", "image/png")}},
    "/v1/audio/transcriptions": {"data": _UPLOAD[0], "files": _UPLOAD[1]},
    "/v1/audio/translations": {"data": _UPLOAD[0], "files": _UPLOAD[1]},
    "/v1/audio/speech": {"json": {"model": "gpt-4.1", "input": "hi", "voice": "alloy"}},
    # In the background, so that it can be cancelled.
    "/v1/responses": {"json": {"model": "gpt-4.1", "input": "hi", "background": True}},
    "/v1/responses/input_tokens": {"json": {"model": "gpt-4.1", "input": "hi"}},
    "/v1/responses/compact": {"json": {"model": "gpt-4.1", "input": "hi"}},
    "/v1/messages": {"json": {**chat("gpt-4.1"), "max_tokens": 9}},
    "/v1/messages/count_tokens": {"json": chat("gpt-4.1")},
}


async def request(
    http: httpx.AsyncClient, entry: PublicRoute, values: dict[str, str] | None = None
) -> httpx.Response:
    example = EXAMPLE_REQUESTS[entry.path] if entry.request_body is not None else {}
    return await http.request(entry.method, concrete_path(entry, values), **example)


def documents(content: dict[str, str | None], media_type: str) -> bool:
    """Whether `media_type` is one of `content`'s, directly or by a range such as `audio/*`."""
    return media_type in content or f"{media_type.split('/')[0]}/*" in content


async def test_every_table_route_answers_its_documented_success(gateway: Gateway) -> None:
    async with gateway.client() as http:
        # The stored-response routes need a response that exists.
        made = await http.post("/v1/responses", **EXAMPLE_REQUESTS["/v1/responses"])
        values = {"response_id": made.json()["id"]}
        for entry in PUBLIC_ROUTES:
            if entry.reply.status == 101:
                continue  # a websocket upgrade: tests/test_responses_websocket.py
            response = await request(http, entry, values)

            assert response.status_code == entry.reply.status, (entry.path, response.text)
            media_type = response.headers["content-type"].split(";")[0]
            assert documents(dict(entry.reply.content), media_type), entry.path
            assert response.headers["x-request-id"]


async def test_exactly_the_routes_that_need_a_key_refuse_a_request_without_one(
    gateway: Gateway,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.root_url) as http:
        for entry in PUBLIC_ROUTES:
            response = await request(http, entry)

            assert (response.status_code == 401) == entry.needs_key, (entry.path, response.text)


async def test_another_method_on_a_table_route_is_a_405_naming_the_table_methods(
    gateway: Gateway,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.root_url, headers=AUTH) as http:
        for entry in PUBLIC_ROUTES:
            methods = sorted({route.method for route in PUBLIC_ROUTES if route.path == entry.path})
            other = next(method for method in ("DELETE", "PUT") if method not in methods)
            refused = await http.request(other, concrete_path(entry))

            assert refused.status_code == 405, entry.path
            assert refused.headers["allow"] == ", ".join(methods), entry.path
