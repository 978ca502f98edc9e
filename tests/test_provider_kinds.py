"""Provider kinds: each provider takes its credential the way its kind says, as the upstream
sees it; the kind is set with add_admin_auth and shown wherever the credential's entry is."""

from typing import Any

import pytest
import trio

from sopy.docs.openapi import openapi_document
from sopy.provider_kinds import PROVIDER_KINDS
from sopy.routing.forwarded_headers import upstream_request_headers
from sopy.testing.mock_upstream import MockUpstream
from tests.admin_connection import AdminConnection, open_events
from tests.conftest import SopyUnderTest
from tests.gateway import USER_KEY, Gateway, chat, start_gateway_with
from tests.test_admin_events import next_message
from tests.test_cli_admin import _sopy_admin

KINDS = {
    "gpt-openai": "openai",
    "gpt-azure": "azure",
    "gpt-chat": "openai-chat",
    "claude-anthropic": "anthropic",
}


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    """One provider of each kind, named after it, each with one mock upstream."""
    upstreams = {
        kind: [MockUpstream(kind, chat_only=kind == "openai-chat")] for kind in KINDS.values()
    }
    gateway = await start_gateway_with(sopy, nursery, upstreams, KINDS)
    for kind, provider in gateway.providers.items():
        await gateway.admin_ok(
            "add_admin_auth", name=kind, credentials=provider.credential, replace=True, kind=kind
        )
    return gateway


async def upstream_headers(
    gateway: Gateway, model: str, headers: dict[str, str] | None = None
) -> dict[str, str]:
    """The headers the provider of `model` received for one request in its own API: a chat
    completion, or for kind anthropic a message."""
    path, body = (
        (
            "/v1/messages",
            {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        )
        if KINDS[model] == "anthropic"
        else ("/v1/chat/completions", chat(model))
    )
    async with gateway.client() as http:
        response = await http.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    received = gateway.upstreams(KINDS[model])[0].requests[-1].headers
    return received


async def test_an_openai_provider_gets_a_bearer_credential(gateway: Gateway) -> None:
    headers = await upstream_headers(gateway, "gpt-openai")

    assert headers["authorization"] == f"Bearer {gateway.providers['openai'].credential}"
    assert "api-key" not in headers and "x-api-key" not in headers


async def test_an_openai_chat_provider_gets_a_bearer_credential_as_openai(
    gateway: Gateway,
) -> None:
    headers = await upstream_headers(gateway, "gpt-chat")

    assert headers["authorization"] == f"Bearer {gateway.providers['openai-chat'].credential}"
    assert "api-key" not in headers and "x-api-key" not in headers


async def test_an_azure_provider_gets_an_api_key_header_and_no_authorization(
    gateway: Gateway,
) -> None:
    headers = await upstream_headers(gateway, "gpt-azure")

    assert headers["api-key"] == gateway.providers["azure"].credential
    assert "authorization" not in headers and "x-api-key" not in headers


async def test_an_anthropic_provider_gets_x_api_key_and_the_default_version(
    gateway: Gateway,
) -> None:
    headers = await upstream_headers(gateway, "claude-anthropic")

    assert headers["x-api-key"] == gateway.providers["anthropic"].credential
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers and "api-key" not in headers


async def test_an_anthropic_provider_gets_the_clients_own_version(gateway: Gateway) -> None:
    headers = await upstream_headers(
        gateway, "claude-anthropic", {"anthropic-version": "2024-10-22"}
    )

    assert headers["anthropic-version"] == "2024-10-22"


async def test_a_client_credential_in_any_form_never_reaches_the_upstream(
    gateway: Gateway,
) -> None:
    sent = {"api-key": "sk-client-own-1", "x-api-key": "sk-client-own-2"}
    for model, kind in KINDS.items():
        # On the Messages route an `x-api-key` is how a client sends its Sopy key.
        own = sent if kind != "anthropic" else {"api-key": "sk-client-own-1", "x-api-key": USER_KEY}
        headers = await upstream_headers(gateway, model, own)
        assert "sk-client-own" not in str(headers)
        assert USER_KEY not in str(headers)


@pytest.mark.parametrize(
    ("model", "kind"), [("claude-anthropic", "anthropic"), ("gpt-chat", "openai-chat")]
)
async def test_an_openai_route_that_does_not_translate_is_a_400_naming_the_kind(
    gateway: Gateway, model: str, kind: str
) -> None:
    async with gateway.client() as http:
        for path, body in (
            ("/v1/embeddings", {"model": model, "input": "hi"}),
            ("/v1/completions", {"model": model, "prompt": "hi"}),
            ("/v1/responses/compact", {"model": model, "input": "hi"}),
        ):
            response = await http.post(path, json=body)

            assert response.status_code == 400, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "unsupported_provider_kind" and error["param"] == "model"
            assert f"provider '{kind}', which is of kind '{kind}'" in error["message"]
            assert "kind 'openai' or 'azure'" in error["message"]
    assert gateway.upstreams(kind)[0].requests == []


def test_every_kind_has_a_credential_header_form() -> None:
    for kind in PROVIDER_KINDS:
        forwarded = dict(upstream_request_headers([], "sk-x", kind))
        assert b"sk-x" in forwarded[PROVIDER_KINDS[kind].credential_header]


async def test_kind_is_shown_by_add_get_list_and_events(
    sopy: SopyUnderTest, nursery: trio.Nursery, admin: AdminConnection
) -> None:
    added = await admin.ok(
        "add_admin_auth", name="az", credentials="sk-azure-credential-0001", kind="azure"
    )
    await admin.ok("add_admin_auth", name="oa", credentials="sk-openai-0001")
    ws = await open_events(nursery, sopy.settings.admin_socket)
    snapshot = await next_message(ws)
    await admin.ok(
        "add_admin_auth", name="oa", credentials="sk-anthr-0001", kind="anthropic", replace=True
    )
    event = await next_message(ws)

    assert added == {"name": "az", "credentials": "sk-...0001", "kind": "azure"}
    assert (await admin.ok("get_admin_auth", name="az"))["kind"] == "azure"
    assert await admin.ok("list_admin_auth") == [
        {"name": "az", "kind": "azure"},
        {"name": "oa", "kind": "anthropic"},
    ]
    assert [(a["name"], a["kind"]) for a in snapshot["snapshot"]["admin_auth"]] == [
        ("az", "azure"),
        ("oa", "openai"),
    ]
    assert event["kind"] == "admin_auth_added"
    assert event["entity"] == {"name": "oa", "replaced": True, "provider_kind": "anthropic"}


async def test_kind_over_rest(sopy: SopyUnderTest) -> None:
    async with sopy.admin_rest() as rest:
        added = await rest.post(
            "/admin/admin_auth", json={"name": "az", "credentials": "sk-az-0002", "kind": "azure"}
        )
        listed = await rest.get("/admin/admin_auth")
        got = await rest.get("/admin/admin_auth/az")

    assert added.status_code == 201 and added.json()["result"]["kind"] == "azure"
    assert listed.json()["result"] == [{"name": "az", "kind": "azure"}]
    assert got.json()["result"]["kind"] == "azure"


@pytest.mark.parametrize("kind", ["bedrock", "", "OpenAI", 3])
async def test_an_unknown_kind_is_refused_naming_the_field(
    admin: AdminConnection, kind: Any
) -> None:
    error = await admin.error("add_admin_auth", name="p", credentials="sk-p-0001", kind=kind)

    assert error["code"] == "invalid_field"
    assert error["field"] == "kind"
    assert "kind" in error["message"]
    assert await admin.ok("list_admin_auth") == []


def test_openapi_lists_the_kinds() -> None:
    schemas = openapi_document()["components"]["schemas"]

    assert schemas["AddAdminAuthRequest"]["properties"]["kind"] == {
        "type": "string",
        "enum": list(PROVIDER_KINDS),
        "default": "openai",
    }
    assert set(PROVIDER_KINDS) == {"openai", "azure", "openai-chat", "anthropic"}


@pytest.mark.parametrize("kind", ["azure", "openai-chat"])
async def test_sopy_admin_cli_sets_and_shows_the_kind(sopy: SopyUnderTest, kind: str) -> None:
    added = await _sopy_admin(
        sopy, "add_admin_auth", "--name", "az", "--credentials", "sk-az-0003", "--kind", kind
    )
    listed = await _sopy_admin(sopy, "list_admin_auth")

    assert added.returncode == 0, added.stderr
    assert listed.stdout.decode().splitlines() == ["name  kind", f"az    {kind}".rstrip()]
