"""Model aliases, the configuration side: `add_model_mapping` names the model each provider of
the chain knows (`upstream_model` for `provider`, `fallback_upstream_models` for fallbacks; the
client's model name by default), shown wherever the mapping is, and filled into the routes."""

from typing import Any

import httpx
import pytest
import trio

from sopy.docs.openapi import openapi_document
from sopy.routing.route_table import RouteTable
from tests.admin_connection import AdminConnection, open_events
from tests.conftest import SopyUnderTest
from tests.gateway import AUTH
from tests.test_admin_events import next_message
from tests.test_cli_admin import _sopy_admin

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
