"""Specs for the Anthropic Messages ingress (`POST /v1/messages`, `/v1/messages/count_tokens`):
the official `anthropic` SDK against a live Sopy. A Sopy key is accepted as `x-api-key` or as
`Authorization: Bearer`; every error the gateway answers on these routes is in Anthropic's shape
(`{"type": "error", "error": {"type", "message"}}`) with Anthropic's type for its status and a
`request-id` header; providers of kind `anthropic` serve them as sent, others translated
(tests/test_translation_gateway.py has those).
"""

import socket
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import attrs
import httpx
import jsonschema
import pytest
import trio

from sopy.docs.openapi import openapi_document
from sopy.errors import (
    AuthenticationFailed,
    ErrorShape,
    InternalError,
    InvalidJson,
    InvalidRequest,
    ModelNotFound,
    NoBackendAvailable,
    PayloadTooLarge,
    ProviderKindMismatch,
    RequestTimeout,
    ServerBusy,
    SopyError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from sopy.keys import hash_user_key
from sopy.messages import ProviderRoute
from sopy.provider_kinds import WireFormat
from sopy.routing.native_routes import Translation, model_routes, translation_for
from sopy.routing.route_table import RouteTable
from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream
from tests.conftest import SopyUnderTest
from tests.gateway import (
    USER_KEY,
    Gateway,
    make_anthropic,
    start_gateway,
    start_gateway_with,
)

ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def message_body(model: str = "claude-test", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 50, "messages": [user("hi")], **extra}


def anthropic_error(response: httpx.Response) -> dict[str, Any]:
    """The `error` of an Anthropic-shaped error body, checked for its shape and request id."""
    body = response.json()
    assert body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"}, body
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["request-id"] == response.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    return error


# -- the Anthropic rendering of Sopy's errors --------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "anthropic_type"),
    [
        (InvalidJson("bad json"), 400, "invalid_request_error"),
        (InvalidRequest("no model", param="model"), 400, "invalid_request_error"),
        (ProviderKindMismatch("wrong kind"), 400, "invalid_request_error"),
        (AuthenticationFailed("no key"), 401, "authentication_error"),
        (ModelNotFound("no such model"), 404, "not_found_error"),
        (RequestTimeout("slow body"), 408, "invalid_request_error"),
        (PayloadTooLarge("too big"), 413, "request_too_large"),
        (UpstreamRateLimited("held off"), 429, "rate_limit_error"),
        (UpstreamError("broke"), 502, "api_error"),
        (NoBackendAvailable("none ready"), 503, "overloaded_error"),
        (ServerBusy("busy"), 503, "overloaded_error"),
        (UpstreamTimeout("too slow"), 504, "timeout_error"),
        (InternalError("bug"), 500, "api_error"),
    ],
)
def test_each_error_renders_in_anthropics_shape_with_anthropics_type_for_its_status(
    error: SopyError, status: int, anthropic_type: str
) -> None:
    assert error.status == status
    assert error.body(ErrorShape.ANTHROPIC) == {
        "type": "error",
        "error": {"type": anthropic_type, "message": error.message},
    }
    assert error.body(ErrorShape.ANTHROPIC, "0123abcd")["request_id"] == "0123abcd"
    assert error.body(ErrorShape.OPENAI) == error.openai_body()


# -- which providers serve the Messages routes -------------------------------------------------


def provider(name: str, kind: str, urls: tuple[str, ...] = ("http://backend",)) -> ProviderRoute:
    return ProviderRoute(name, urls, (1,) * len(urls), f"sk-{name}", kind=kind)


def table_with(chains: dict[str, tuple[ProviderRoute, ...]]) -> RouteTable:
    key_ids = {hash_user_key(USER_KEY): 1}
    return RouteTable(1, key_ids, frozenset(), chains, b"", {})


def test_every_provider_of_a_chain_serves_messages_in_order_anthropic_ones_natively() -> None:
    chain = (
        provider("claude", "anthropic"),
        provider("gpt", "openai"),
        provider("azure", "azure"),
        provider("vllm", "openai-chat"),
    )
    table = table_with({"claude-x": chain})

    routes = model_routes(table, "claude-x", "/v1/messages")

    assert [route.provider for route in routes] == ["claude", "gpt", "azure", "vllm"]
    to_chat = Translation(WireFormat.MESSAGES, WireFormat.CHAT)
    assert [translation_for(route.kind, "/v1/messages") for route in routes] == [
        None,
        to_chat,
        to_chat,
        to_chat,
    ]


@pytest.mark.parametrize("kind", ["anthropic", "openai-chat"])
def test_another_openai_route_for_a_model_mapped_only_to_other_kinds_is_a_400_naming_it(
    kind: str,
) -> None:
    table = table_with({"model-x": (provider("other", kind),)})

    with pytest.raises(ProviderKindMismatch) as refused:
        model_routes(table, "model-x", "/v1/embeddings")

    assert refused.value.status == 400
    assert refused.value.param == "model"
    message = refused.value.message
    assert f"provider 'other', which is of kind '{kind}'" in message
    assert "/v1/embeddings" in message and "kind 'openai' or 'azure'" in message


def test_another_openai_route_skips_the_providers_that_do_not_serve_it_in_order() -> None:
    chain = (provider("vllm", "openai-chat"), provider("gpt", "openai"), provider("az", "azure"))
    table = table_with({"model-x": chain})

    routes = model_routes(table, "model-x", "/v1/embeddings")

    assert [route.provider for route in routes] == ["gpt", "az"]
    assert {translation_for(route.kind, "/v1/embeddings") for route in routes} == {None}


def test_an_unmapped_model_on_the_messages_routes_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound):
        model_routes(table_with({}), "claude-x", "/v1/messages")


# -- who may call: x-api-key or Bearer ---------------------------------------------------------


def test_a_sopy_key_is_accepted_as_x_api_key_or_as_bearer() -> None:
    table = table_with({})

    assert table.authenticate_anthropic(USER_KEY.encode(), None) == 1
    assert table.authenticate_anthropic(None, f"Bearer {USER_KEY}".encode()) == 1
    # Claude Code sends x-api-key; a stray Authorization header does not override it.
    assert table.authenticate_anthropic(USER_KEY.encode(), b"Bearer sk-something-else") == 1


@pytest.mark.parametrize(
    ("x_api_key", "authorization"),
    [(None, None), (b"", None), (b"sk-wrong", None), (None, b"Bearer sk-wrong"), (None, b"sk")],
)
def test_a_missing_or_wrong_key_is_a_401(
    x_api_key: bytes | None, authorization: bytes | None
) -> None:
    with pytest.raises(AuthenticationFailed) as refused:
        table_with({}).authenticate_anthropic(x_api_key, authorization)

    if x_api_key is None and authorization is None:
        assert "x-api-key" in refused.value.message


# -- the OpenAPI document ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_openapi_documents_the_anthropic_routes_with_anthropics_errors_and_x_api_key(
    path: str,
) -> None:
    document = openapi_document()
    operation = document["paths"][path]["post"]

    assert operation["tags"] == ["anthropic"]
    assert {"apiKeyAuth": []} in operation["security"]
    assert document["components"]["securitySchemes"]["apiKeyAuth"]["name"] == "x-api-key"
    errors = {status: r for status, r in operation["responses"].items() if status != "200"}
    assert set(errors) == {"400", "401", "403", "404", "408", "413", "429", "502", "503", "504"}
    for response in errors.values():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/AnthropicError"}
    assert "`not_found_error` (`model_not_found`)" in errors["404"]["description"]
    assert "`unsupported_provider_kind`" in errors["400"]["description"]
    assert "`overloaded_error`" in errors["503"]["description"]
    assert "`permission_error` (`model_not_allowed`)" in errors["403"]["description"]
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]["404"]
    assert chat["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")


def test_the_documented_anthropic_error_schema_accepts_what_the_gateway_sends() -> None:
    schema = openapi_document()["components"]["schemas"]["AnthropicError"]
    body = ModelNotFound("no such model").body(ErrorShape.ANTHROPIC, "0123abcd")

    jsonschema.validate(body, schema)


# -- a live gateway, with the anthropic SDK ----------------------------------------------------


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})


def sdk(
    gateway: Gateway, key: str = USER_KEY, as_header: str = "bearer"
) -> anthropic.AsyncAnthropic:
    """The anthropic SDK pointed at the gateway (its base URL is the origin: it adds /v1),
    sending `key` as a bearer token (the SDK's way) or as `x-api-key` (Claude Code's)."""
    if as_header == "x-api-key":
        return anthropic.AsyncAnthropic(
            base_url=gateway.root_url,
            api_key=None,
            default_headers={"x-api-key": key},
            max_retries=0,
        )
    return anthropic.AsyncAnthropic(base_url=gateway.root_url, api_key=key, max_retries=0)


@pytest.fixture
async def raw(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.root_url, headers=ANTHROPIC_VERSION) as http:
        yield http


@pytest.mark.parametrize("as_header", ["x-api-key", "bearer"])
async def test_a_wrong_key_is_an_anthropic_authentication_error(
    gateway: Gateway, as_header: str
) -> None:
    async with sdk(gateway, "sk-not-a-sopy-key", as_header) as client:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await client.messages.create(**message_body())
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.count_tokens(model="claude-test", messages=[user("hi")])

    assert refused.value.status_code == 401
    error = anthropic_error(refused.value.response)
    assert error["type"] == "authentication_error"
    assert "Incorrect API key" in error["message"]
    assert refused.value.request_id == refused.value.response.headers["x-request-id"]
    assert not gateway.upstreams("openai")[0].requests


async def test_a_request_without_a_key_is_told_both_ways_to_send_one(
    raw: httpx.AsyncClient,
) -> None:
    response = await raw.post("/v1/messages", json=message_body())

    assert response.status_code == 401
    error = anthropic_error(response)
    assert error["type"] == "authentication_error"
    assert "x-api-key" in error["message"] and "Bearer" in error["message"]


async def test_an_unmapped_model_is_an_anthropic_not_found_error(gateway: Gateway) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.create(**message_body("claude-unmapped"))
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.count_tokens(model="claude-unmapped", messages=[user("hi")])

    error = anthropic_error(missing.value.response)
    assert error["type"] == "not_found_error"
    assert "claude-unmapped" in error["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "could not parse the JSON body"),
        (b"[]", "must be a JSON object"),
        (b'{"max_tokens": 5, "messages": []}', "model parameter"),
        (b'{"model": 7, "messages": []}', "'model' must be a non-empty string"),
    ],
)
async def test_a_malformed_body_is_an_anthropic_invalid_request_error(
    raw: httpx.AsyncClient, body: bytes, says: str
) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = await raw.post(
            path, content=body, headers={"x-api-key": USER_KEY, "content-type": "application/json"}
        )

        assert response.status_code == 400, path
        error = anthropic_error(response)
        assert error["type"] == "invalid_request_error"
        assert says in error["message"]


async def test_a_body_over_the_limit_is_an_anthropic_request_too_large(
    sopy: SopyUnderTest, nursery: trio.Nursery, settings: Settings
) -> None:
    await sopy.stop()
    sopy.settings = attrs.evolve(settings, max_body_bytes=1024)
    await sopy.start()
    gateway = await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})

    async with sdk(gateway) as client:
        with pytest.raises(anthropic.APIStatusError) as refused:
            await client.messages.create(**message_body(system="x" * 2000))

    assert refused.value.status_code == 413
    assert anthropic_error(refused.value.response)["type"] == "request_too_large"


async def test_the_openai_routes_keep_openai_shaped_errors(raw: httpx.AsyncClient) -> None:
    response = await raw.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": []})

    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert "request-id" not in response.headers


# -- a live gateway with a provider of kind anthropic (the strict mock behind it) --------------


async def claude_gateway(
    sopy: SopyUnderTest, nursery: trio.Nursery, claude_backends: tuple[str, ...] | None = None
) -> Gateway:
    """Sopy with `claude-test` mapped to provider `claude` of kind anthropic (a strict mock, or
    the backend URLs `claude_backends`), `gpt-4.1` to provider `openai`, and `gpt-or-claude` to
    `openai` with `claude` as its fallback."""
    claude_mocks = [] if claude_backends else [MockUpstream("claude-0", anthropic_strict=True)]
    upstreams = {"claude": claude_mocks, "openai": [MockUpstream("openai-0")]}
    models = {"claude-test": "claude", "gpt-4.1": "openai", "gpt-or-claude": "openai"}
    gateway = await start_gateway_with(
        sopy, nursery, upstreams, models, fallbacks={"gpt-or-claude": ["claude"]}
    )
    await make_anthropic(gateway, "claude")
    for url in claude_backends or ():
        await gateway.admin_ok("add_backend", provider="claude", url=url)
    return gateway


@pytest.fixture
async def claude(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await claude_gateway(sopy, nursery)


def strict_mock(gateway: Gateway) -> MockUpstream:
    return gateway.upstreams("claude")[0]


async def test_messages_create_answers_through_the_anthropic_provider(claude: Gateway) -> None:
    async with sdk(claude) as client:
        message = await client.messages.create(**message_body(system="be brief"))

    assert message.type == "message"
    assert message.model == "claude-test"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from claude-0: you said hi"
    seen = strict_mock(claude).requests[-1]
    assert seen.path == "/v1/messages"
    # The provider's credential as Anthropic takes it; never the client's Sopy key.
    assert seen.headers["x-api-key"] == claude.providers["claude"].credential
    assert USER_KEY not in str(seen.headers)
    assert seen.headers["anthropic-version"]


async def test_a_key_sent_as_x_api_key_is_served_and_gets_the_default_anthropic_version(
    claude: Gateway,
) -> None:
    async with httpx.AsyncClient(base_url=claude.root_url) as http:
        response = await http.post(
            "/v1/messages", json=message_body(), headers={"x-api-key": USER_KEY}
        )

    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"
    seen = strict_mock(claude).requests[-1]
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["x-api-key"] == claude.providers["claude"].credential


async def test_messages_stream_relays_anthropics_events_one_by_one(claude: Gateway) -> None:
    client = sdk(claude, USER_KEY, "x-api-key")
    async with client, client.messages.stream(**message_body()) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()

    kinds = [event.type for event in events if event.type != "text"]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        *["content_block_delta"] * (len(kinds) - 6),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    texts = [event.text for event in events if event.type == "text"]
    assert "".join(texts) == final.content[0].text == "Hello from claude-0: you said hi"
    assert len(texts) > 1
    assert final.stop_reason == "end_turn"


async def test_messages_count_tokens_answers_through_the_anthropic_provider(
    claude: Gateway,
) -> None:
    async with sdk(claude) as client:
        counted = await client.messages.count_tokens(
            model="claude-test", messages=[user("three words here")]
        )

    assert counted.input_tokens == 3
    assert strict_mock(claude).requests[-1].path == "/v1/messages/count_tokens"


async def test_the_first_provider_of_a_model_serves_its_messages_translated_if_need_be(
    claude: Gateway,
) -> None:
    async with sdk(claude) as client:
        message = await client.messages.create(**message_body("gpt-or-claude"))

    assert message.content[0].text == "Hello from openai-0: you said hi"
    assert claude.upstreams("openai")[0].requests[-1].path == "/v1/chat/completions"
    assert not strict_mock(claude).requests


async def test_a_stream_that_breaks_off_ends_with_an_anthropic_error_event(
    claude: Gateway,
) -> None:
    body = message_body(extra_body={"mock": {"reset_after": 4}})

    async with sdk(claude) as client, client.messages.stream(**body) as stream:
        with pytest.raises(anthropic.APIStatusError) as broken:
            async for _event in stream:
                pass

    error = broken.value.body
    assert isinstance(error, dict)
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    assert "broke off before its end" in error["error"]["message"]
    assert error["request_id"] in error["error"]["message"]


async def test_an_unreachable_anthropic_backend_is_an_anthropic_api_error(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    gateway = await claude_gateway(sopy, nursery, claude_backends=(dead_url(),))

    async with sdk(gateway) as client:
        with pytest.raises(anthropic.InternalServerError) as failed:
            await client.messages.create(**message_body())

    assert failed.value.status_code == 502
    error = anthropic_error(failed.value.response)
    assert error["type"] == "api_error"
    assert "Provider 'claude' could not answer" in error["message"]


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"
