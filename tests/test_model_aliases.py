"""Model aliases, the configuration side: `add_model_mapping` names the model each provider of
the chain knows (`upstream_model` for `provider`, `fallback_upstream_models` for fallbacks; the
client's model name by default), shown wherever the mapping is, and filled into the routes."""

from typing import Any

import attrs
import httpx
import pytest
import trio

from sopy.docs.openapi import openapi_document
from sopy.routing.route_table import RouteTable
from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream
from tests.admin_connection import AdminConnection, open_events
from tests.conftest import SopyUnderTest
from tests.gateway import AUTH, Gateway, chat, start_gateway_with
from tests.test_admin_events import next_message
from tests.test_cli_admin import _sopy_admin
from tests.test_openai_routes import _closed_port_url as closed_port_url

ALIASED: dict[str, Any] = {
    "model_name": "gpt-4o",
    "provider": "openai",
    "fallbacks": ["azure", "backup"],
    "upstream_model": "gpt-4o-2024-08-06",
    "fallback_upstream_models": {"azure": "my-gpt-4o-deployment"},
}


async def test_a_mapping_without_aliases_sends_every_provider_the_clients_name(
    admin: AdminConnection,
) -> None:
    added = await admin.ok("add_model_mapping", model_name="m", provider="p", fallbacks=["q"])

    assert added["upstream_model"] == "m"
    assert added["fallback_upstream_models"] == {}


async def test_aliases_are_shown_by_add_get_list_events_and_the_snapshot(
    sopy: SopyUnderTest, nursery: trio.Nursery, admin: AdminConnection
) -> None:
    ws = await open_events(nursery, sopy.settings.admin_socket)
    await next_message(ws)

    added = await admin.ok("add_model_mapping", **ALIASED)
    event = await next_message(ws)
    ws_after = await open_events(nursery, sopy.settings.admin_socket)
    snapshot = await next_message(ws_after)

    shown = {key: added[key] for key in ALIASED}
    assert shown == ALIASED
    assert await admin.ok("get_model_mapping", model_name="gpt-4o") == added
    assert await admin.ok("list_model_mappings") == [added]
    assert event["kind"] == "model_mapping_added"
    assert event["entity"] == {**ALIASED, "replaced": False}
    assert snapshot["snapshot"]["model_mappings"] == [added]


async def test_aliases_over_rest(sopy: SopyUnderTest) -> None:
    async with sopy.admin_rest() as rest:
        added = await rest.post("/admin/model_mapping", json=ALIASED)
        got = await rest.get("/admin/model_mapping/gpt-4o")

    assert added.status_code == 201
    assert got.json()["result"]["upstream_model"] == "gpt-4o-2024-08-06"
    assert got.json()["result"]["fallback_upstream_models"] == {"azure": "my-gpt-4o-deployment"}


async def test_sopy_admin_cli_takes_the_aliases(sopy: SopyUnderTest) -> None:
    added = await _sopy_admin(
        sopy,
        "--json",
        "add-model-mapping",
        "--model-name",
        "gpt-4o",
        "--provider",
        "openai",
        "--fallbacks",
        "azure,backup",
        "--upstream-model",
        "gpt-4o-2024-08-06",
        "--fallback-upstream-models",
        "azure=my-gpt-4o-deployment, backup=gpt-4o-mini",
    )

    assert added.returncode == 0, added.stderr
    async with await sopy.admin() as admin:
        mapping = await admin.ok("get_model_mapping", model_name="gpt-4o")
    assert mapping["upstream_model"] == "gpt-4o-2024-08-06"
    assert mapping["fallback_upstream_models"] == {
        "azure": "my-gpt-4o-deployment",
        "backup": "gpt-4o-mini",
    }


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"upstream_model": "has space"}, "upstream_model", "letters, digits"),
        ({"upstream_model": 4}, "upstream_model", "string"),
        ({"fallback_upstream_models": {"azure": "x"}}, "fallback_upstream_models", "azure"),
        ({"fallback_upstream_models": ["azure"]}, "fallback_upstream_models", "object"),
        (
            {"fallbacks": ["azure"], "fallback_upstream_models": {"azure": ""}},
            "fallback_upstream_models",
            "1-256",
        ),
    ],
)
async def test_a_bad_alias_is_refused_naming_the_field(
    admin: AdminConnection, fields: dict[str, Any], field: str, words: str
) -> None:
    error = await admin.error("add_model_mapping", model_name="m", provider="p", **fields)

    assert error["code"] == "invalid_field"
    assert error["field"] == field
    assert words in error["message"]
    assert await admin.ok("list_model_mappings") == []


async def test_replacing_with_other_aliases_is_a_change_and_with_the_same_none(
    sopy: SopyUnderTest, admin: AdminConnection
) -> None:
    await admin.ok("add_model_mapping", **ALIASED)
    assert sopy.running is not None and sopy.running.feed.latest is not None
    version = sopy.running.feed.latest.version

    await admin.ok("add_model_mapping", **ALIASED, replace=True)
    unchanged = sopy.running.feed.latest.version
    renamed = await admin.ok(
        "add_model_mapping", **{**ALIASED, "upstream_model": "gpt-4o-mini"}, replace=True
    )

    assert unchanged == version
    assert renamed["upstream_model"] == "gpt-4o-mini"
    assert sopy.running.feed.latest.version == version + 1


async def test_each_provider_of_the_chain_gets_its_own_upstream_model(
    sopy: SopyUnderTest, admin: AdminConnection
) -> None:
    await admin.ok("add_model_mapping", **ALIASED)
    await admin.ok("add_model_mapping", model_name="plain", provider="openai")
    assert sopy.running is not None and sopy.running.feed.latest is not None

    table = RouteTable.from_snapshot(sopy.running.feed.latest.snapshot)

    assert [(r.provider, r.upstream_model) for r in table.chains["gpt-4o"]] == [
        ("openai", "gpt-4o-2024-08-06"),
        ("azure", "my-gpt-4o-deployment"),
        ("backup", None),  # the client's own name: nothing to rewrite
    ]
    assert table.chains["plain"][0].upstream_model is None


async def test_models_list_shows_the_upstream_model(sopy: SopyUnderTest) -> None:
    async with await sopy.admin() as admin:
        await admin.ok("add_model_mapping", **ALIASED)
        await admin.ok("add_model_mapping", model_name="plain", provider="openai")
        await admin.ok("add_user_api_key", api_key=AUTH["authorization"].split()[1])
    async with httpx.AsyncClient(base_url=sopy.http_url, headers=AUTH) as http:
        models = (await http.get("/v1/models")).json()["data"]

    assert [(m["id"], m["owned_by"], m["upstream_model"]) for m in models] == [
        ("gpt-4o", "openai", "gpt-4o-2024-08-06"),
        ("plain", "openai", "plain"),
    ]


def test_openapi_documents_the_alias_fields() -> None:
    request = openapi_document()["components"]["schemas"]["AddModelMappingRequest"]

    assert request["properties"]["upstream_model"] == {"type": ["string", "null"], "default": None}
    assert request["properties"]["fallback_upstream_models"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {},
    }


# -- through the gateway: what each provider receives -----------------------------------------

AUDIO = b"RIFF" + bytes(range(256)) * 8


@attrs.frozen
class AliasedGateway:
    gateway: Gateway
    azure: MockUpstream
    backup: MockUpstream


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No retries: an unreachable provider hands over to its fallback at once."""
    return attrs.evolve(settings, retries=0)


@pytest.fixture
async def aliased(sopy: SopyUnderTest, nursery: trio.Nursery) -> AliasedGateway:
    """`gpt-4o` goes to `down` (unreachable; knows it as `down-name`), then `azure` (knows it
    as `my-gpt-4o-deployment`, serves its API at `/openai/v1`), then `backup` (knows it by the
    client's name); `whisper` goes to `azure`, which knows it as `whisper-deployment`."""
    azure, backup = MockUpstream("azure-0", base_path="/openai/v1"), MockUpstream("backup-0")
    gateway = await start_gateway_with(sopy, nursery, {"backup": [backup]}, {})
    azure_url = await nursery.start(azure.serve)
    await gateway.admin_ok("add_backend", provider="azure", url=azure_url + "/openai/v1")
    await gateway.admin_ok("add_admin_auth", name="azure", credentials="sk-az-1", kind="azure")
    await gateway.admin_ok("add_backend", provider="down", url=closed_port_url())
    await gateway.admin_ok(
        "add_model_mapping",
        model_name="gpt-4o",
        provider="down",
        upstream_model="down-name",
        fallbacks=["azure", "backup"],
        fallback_upstream_models={"azure": "my-gpt-4o-deployment"},
    )
    await gateway.admin_ok(
        "add_model_mapping",
        model_name="whisper",
        provider="azure",
        upstream_model="whisper-deployment",
    )
    return AliasedGateway(gateway, azure, backup)


async def test_a_fallback_is_sent_its_own_upstream_model_in_json(
    aliased: AliasedGateway,
) -> None:
    async with aliased.gateway.client() as http:
        response = await http.post("/v1/chat/completions", json=chat("gpt-4o", "hello"))

    assert response.status_code == 200, response.text
    [received] = aliased.azure.requests
    assert received.path == "/openai/v1/chat/completions"
    assert received.headers["api-key"] == "sk-az-1"
    assert received.json() == chat("my-gpt-4o-deployment", "hello")
    assert aliased.backup.requests == []


async def test_a_provider_without_an_alias_gets_the_body_as_sent(
    aliased: AliasedGateway,
) -> None:
    await aliased.gateway.admin_ok(
        "add_model_mapping", model_name="gpt-4o", provider="backup", replace=True
    )
    body = b'{"model":  "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    async with aliased.gateway.client() as http:
        response = await http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )

    assert response.status_code == 200, response.text
    assert aliased.backup.requests[-1].body == body


async def test_a_provider_is_sent_its_upstream_model_in_a_multipart_form(
    aliased: AliasedGateway,
) -> None:
    async with aliased.gateway.client() as http:
        response = await http.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper"},
            files={"file": ("speech.wav", AUDIO, "audio/wav")},
        )

    assert response.status_code == 200, response.text
    form = aliased.azure.requests[-1].form()
    assert form["model"].value == b"whisper-deployment"
    assert form["file"].value == AUDIO
