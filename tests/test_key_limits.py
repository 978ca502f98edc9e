"""Specs for per-key controls on the real gateway: `rpm`, `tpm`, `max_parallel`,
`token_budget` (with `reset_usage`, and across a restart), `expires_at` and the `models`
allow-list on every route and through fallbacks; `update_user_api_key` applies from the next
request and shows in replies and events; refusals and tokens by type in `/metrics`."""

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from sopy import keys
from sopy.cli.main import command_payload
from sopy.codec import parse_admin_command
from sopy.config.database import MIGRATIONS, SOPY_APPLICATION_ID, ConfigDatabase
from sopy.messages import KeyLimits, UpdateUserApiKey, UserApiKeyAdded
from sopy.testing.mock.faults import RandomFault
from sopy.testing.mock_upstream import MockUpstream
from tests.admin_connection import open_events
from tests.conftest import SopyUnderTest
from tests.gateway import Gateway, chat, make_anthropic, start_gateway, start_gateway_with

ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(
        sopy, nursery, {"gpt-4.1": "openai", "gpt-4o": "azure", "claude-x": "anthropic"}
    )


async def limited_key(gateway: Gateway, **limits: Any) -> tuple[str, int]:
    """A new user key with `limits`: the key and its id."""
    created = await gateway.admin_ok("add_user_api_key", description="limited", **limits)
    return created["api_key"], created["id"]


def client_for(gateway: Gateway, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway.root_url, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def error_of(answer: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = answer.json()["error"]
    return error


async def concurrently(
    http: httpx.AsyncClient, bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    """The answers to posting every body to chat completions at once."""
    answers: list[httpx.Response] = []

    async def post(body: dict[str, Any]) -> None:
        answers.append(await http.post("/v1/chat/completions", json=body))

    async with trio.open_nursery() as nursery:
        for body in bodies:
            nursery.start_soon(post, body)
    return answers


def statuses(answers: list[httpx.Response]) -> list[int]:
    return sorted(answer.status_code for answer in answers)


async def test_rpm_5_admits_exactly_5_of_20_concurrent_requests_then_429_with_headers(
    gateway: Gateway,
) -> None:
    key, _ = await limited_key(gateway, rpm=5)
    async with client_for(gateway, key) as http:
        answers = await concurrently(http, [chat() for _ in range(20)])
        refused = await http.post("/v1/chat/completions", json=chat())

    assert statuses(answers) == [200] * 5 + [429] * 15
    assert refused.status_code == 429
    assert error_of(refused)["code"] == "rate_limit_exceeded"
    headers = refused.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert len(gateway.upstreams("openai")[0].requests) == 5


async def test_tpm_reserves_before_the_call_and_never_overshoots_by_more_than_one_request(
    gateway: Gateway,
) -> None:
    tpm = 1000
    key, _ = await limited_key(gateway, tpm=tpm)
    # Slow answers: every decision is taken before any request has settled.
    body = chat(max_tokens=300, mock={"headers_delay": 0.5})
    estimate = len(orjson.dumps(body)) // 4 + 300
    async with client_for(gateway, key) as http:
        answers = await concurrently(http, [body for _ in range(10)])
        # Settled with the mock's real (small) counts, the window has room for more.
        after = await http.post("/v1/chat/completions", json=chat(max_tokens=300))

    admitted = statuses(answers).count(200)
    assert admitted * estimate <= tpm + estimate
    assert admitted == -(-tpm // estimate)  # as many as found room under the limit
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert error_of(refused)["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-tokens"] == str(tpm)
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(refused.headers["retry-after"]) >= 1
    assert after.status_code == 200


async def test_max_parallel_holds_under_concurrency(gateway: Gateway) -> None:
    key, _ = await limited_key(gateway, max_parallel=2)
    slow = chat(mock={"headers_delay": 0.5})
    async with client_for(gateway, key) as http:
        answers = await concurrently(http, [slow for _ in range(6)])
        again = await concurrently(http, [chat() for _ in range(2)])
    assert statuses(answers) == [200, 200, 429, 429, 429, 429]
    assert statuses(again) == [200, 200]


async def test_a_budget_stops_a_key_and_reset_usage_restores_it(gateway: Gateway) -> None:
    key, key_id = await limited_key(gateway, token_budget=10)
    async with client_for(gateway, key) as http:
        spent = await http.post("/v1/chat/completions", json=chat(content="one two three four"))
        usage = spent.json()["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] >= 10
        stopped = await http.post("/v1/chat/completions", json=chat())
        assert stopped.status_code == 429
        assert error_of(stopped)["code"] == "insufficient_quota"
        assert error_of(stopped)["type"] == "insufficient_quota"

        reset = await gateway.admin_ok("update_user_api_key", id=key_id, reset_usage=True)
        assert reset["usage_reset_at"] >= int(time.time()) - 1
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_a_spent_budget_survives_a_restart(gateway: Gateway, sopy: SopyUnderTest) -> None:
    key, _ = await limited_key(gateway, token_budget=10)
    async with client_for(gateway, key) as http:
        spent = await http.post("/v1/chat/completions", json=chat(content="one two three four"))
    usage = spent.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] >= 10
    await sopy.restart()
    async with client_for(gateway, key) as http:
        stopped = await http.post("/v1/chat/completions", json=chat())
    assert stopped.status_code == 429
    assert error_of(stopped)["code"] == "insufficient_quota"


async def test_an_expired_key_gets_401_key_expired_on_every_route(gateway: Gateway) -> None:
    key, key_id = await limited_key(gateway, expires_at=int(time.time()) + 3600)
    async with client_for(gateway, key) as http:
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
        await gateway.admin_ok("update_user_api_key", id=key_id, expires_at=int(time.time()) - 1)
        expired = await http.post("/v1/chat/completions", json=chat())
        listed = await http.get("/v1/models")
    assert expired.status_code == 401
    assert error_of(expired)["code"] == "key_expired"
    assert listed.status_code == 401


async def test_the_allow_list_blocks_a_model_on_every_route(gateway: Gateway) -> None:
    await make_anthropic(gateway, "anthropic")
    key, _ = await limited_key(gateway, models=["gpt-4.1"])
    async with client_for(gateway, key) as http:
        allowed = await http.post("/v1/chat/completions", json=chat("gpt-4.1"))
        answers = {
            "chat": await http.post("/v1/chat/completions", json=chat("gpt-4o")),
            "responses": await http.post("/v1/responses", json={"model": "gpt-4o", "input": "hi"}),
            "embeddings": await http.post(
                "/v1/embeddings", json={"model": "gpt-4o", "input": "hi"}
            ),
        }
        message = {"model": "claude-x", "max_tokens": 5, "messages": [chat()["messages"][0]]}
        messages = await http.post("/v1/messages", json=message, headers=ANTHROPIC_VERSION)
    assert allowed.status_code == 200
    for route, answer in answers.items():
        assert answer.status_code == 403, route
        assert error_of(answer)["code"] == "model_not_allowed", route
    assert messages.status_code == 403
    assert messages.json()["error"]["type"] == "permission_error"
    assert not gateway.upstreams("azure")[0].requests
    assert not gateway.upstreams("anthropic")[0].requests


async def test_the_allow_list_holds_through_fallbacks(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    # The primary answers every chat completion with a 503: each request falls back.
    failing = MockUpstream("primary-0", failure_rate=1.0, fault_kinds=[RandomFault.STATUS_503])
    upstreams = {"primary": [failing], "backup": [MockUpstream("backup-0")]}
    gateway = await start_gateway_with(
        sopy,
        nursery,
        upstreams,
        {"cheap": "primary", "dear": "primary"},
        fallbacks={"cheap": ["backup"], "dear": ["backup"]},
    )
    key, _ = await limited_key(gateway, models=["cheap"])
    async with client_for(gateway, key) as http:
        fell_back = await http.post("/v1/chat/completions", json=chat("cheap"))
        refused = await http.post("/v1/chat/completions", json=chat("dear"))
    assert fell_back.status_code == 200
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "model_not_allowed"
    # Neither the provider nor its fallback ever saw the model the key may not use.
    for provider in ("primary", "backup"):
        assert [r for r in gateway.upstreams(provider)[0].requests if b"dear" in r.body] == []


async def test_a_websocket_connection_cannot_switch_to_a_model_the_key_may_not_use(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    upstreams = {"openai": [MockUpstream("openai-0", websocket=True)]}
    gateway = await start_gateway_with(
        sopy, nursery, upstreams, {"gpt-4.1": "openai", "gpt-4o": "openai"}
    )
    key, _ = await limited_key(gateway, models=["gpt-4.1"])
    url = gateway.base_url.replace("http://", "ws://") + "/responses"
    headers = [(b"authorization", f"Bearer {key}".encode())]
    async with trio_websocket.open_websocket_url(url, extra_headers=headers) as connection:
        allowed = {"type": "response.create", "model": "gpt-4.1", "input": "hi"}
        await connection.send_message(orjson.dumps(allowed).decode())
        with trio.fail_after(10):
            while orjson.loads(await connection.get_message())["type"] != "response.completed":
                pass
        switched = {"type": "response.create", "model": "gpt-4o", "input": "hi"}
        await connection.send_message(orjson.dumps(switched).decode())
        with trio.fail_after(10):
            refused = orjson.loads(await connection.get_message())
    assert refused["type"] == "error"
    assert refused["error"]["code"] == "model_not_allowed"
    sent = gateway.upstreams("openai")[0].websocket_messages
    assert len(sent) == 1 and "gpt-4o" not in sent[0]


async def test_an_update_applies_on_the_next_request_and_shows_in_replies_and_events(
    gateway: Gateway, sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    key, key_id = await limited_key(gateway, models=["gpt-4.1"], rpm=100)
    ws = await open_events(nursery, sopy.settings.admin_socket)
    snapshot = orjson.loads(await ws.get_message())
    (shown,) = [k for k in snapshot["snapshot"]["user_api_keys"] if k["id"] == key_id]
    assert (shown["models"], shown["rpm"]) == (["gpt-4.1"], 100)

    async with client_for(gateway, key) as http:
        assert (await http.post("/v1/chat/completions", json=chat("gpt-4o"))).status_code == 403
        updated = await gateway.admin_ok("update_user_api_key", id=key_id, models=None, tpm=5000)
        assert (await http.post("/v1/chat/completions", json=chat("gpt-4o"))).status_code == 200

    assert (updated["models"], updated["rpm"], updated["tpm"]) == (None, 100, 5000)
    assert await gateway.admin_ok("get_user_api_key", id=key_id) == updated
    listed = await gateway.admin_ok("list_user_api_keys")
    assert updated in listed
    with trio.fail_after(5):
        event = orjson.loads(await ws.get_message())
    assert event["kind"] == "user_api_key_updated"
    assert event["entity"] == {
        "id": key_id, "rpm": 100, "tpm": 5000, "max_parallel": None, "token_budget": None,
        "expires_at": None, "models": None, "usage_reset": False, "limit_failure": "closed",
    }  # fmt: skip
    assert key not in str(event)


async def test_update_is_also_a_rest_route_and_refuses_bad_limits(gateway: Gateway) -> None:
    _, key_id = await limited_key(gateway)
    async with gateway.sopy.admin_rest() as rest:
        changed = await rest.patch("/admin/user_api_key", json={"id": key_id, "max_parallel": 3})
        bad = await rest.patch("/admin/user_api_key", json={"id": key_id, "rpm": 0})
        empty = await rest.patch("/admin/user_api_key", json={"id": key_id, "models": []})
    assert changed.status_code == 200
    assert changed.json()["result"]["max_parallel"] == 3
    assert (bad.status_code, bad.json()["error"]["field"]) == (400, "rpm")
    assert (empty.status_code, empty.json()["error"]["field"]) == (400, "models")


async def test_metrics_count_refusals_by_reason_and_tokens_by_type(gateway: Gateway) -> None:
    key, _ = await limited_key(gateway, rpm=1, models=["gpt-4.1"])
    async with client_for(gateway, key) as http:
        answer = await http.post("/v1/chat/completions", json=chat())
        await http.post("/v1/chat/completions", json=chat())
        await http.post("/v1/chat/completions", json=chat("gpt-4o"))
        text = (await http.get("/metrics")).text

    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert values[("sopy_limit_refusals_total", (("reason", "rpm"),))] == 1
    assert values[("sopy_limit_refusals_total", (("reason", "model"),))] == 1
    usage = answer.json()["usage"]
    labels = (("model", "gpt-4.1"), ("provider", "openai"))
    assert values[("sopy_tokens_total", (*labels, ("type", "input")))] == usage["prompt_tokens"]
    output = ("sopy_tokens_total", (*labels, ("type", "output")))
    assert values[output] == usage["completion_tokens"]
    assert ("sopy_tokens_total", (*labels, ("type", "reasoning"))) in values


def test_the_cli_sends_limits_and_clears_them_with_null() -> None:
    flags = ["--id", "3", "--rpm", "null", "--tpm", "9000", "--models", "gpt-4.1, gpt-4o"]
    payload = command_payload("update-user-api-key", [*flags, "--reset-usage"])
    assert parse_admin_command(payload) == UpdateUserApiKey(
        id=3, rpm=None, tpm=9000, models=("gpt-4.1", "gpt-4o"), reset_usage=True
    )


def test_keys_stored_before_limits_migrate_unlimited_counting_from_their_creation(
    workdir: Path,
) -> None:
    path = workdir / "old.db"
    connection = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:6]:
        connection.executescript(migration)
    connection.executescript(
        f"""
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version (version) VALUES (6);
        PRAGMA application_id = {SOPY_APPLICATION_ID};
        INSERT INTO user_api_keys (key_hash, prefix, description, active, created_at)
            VALUES ('{keys.hash_user_key("sk-user-old-key")}', 'sk-u', 'old', 1, 100);
        INSERT INTO config_events (version, at, event) VALUES
            (1, 1.0, '{{"kind":"user_api_key_added","id":1,"prefix":"sk-u","description":"old"}}');
        UPDATE meta SET value = 1 WHERE key = 'config_version';
        """
    )
    connection.close()
    os.chmod(path, 0o600)

    database = ConfigDatabase.open(path)
    try:
        (key,) = database.load_snapshot().user_api_keys
        journal = database.journal_since(0)
    finally:
        database.close()
    assert key.limits == KeyLimits(usage_reset_at=100)
    assert key.limits.unlimited
    assert journal is not None
    assert journal[0].change == UserApiKeyAdded(1, "sk-u", "old")


async def test_a_key_with_an_allow_list_sees_only_its_models(gateway: Gateway) -> None:
    key, _ = await limited_key(gateway, models=["gpt-4o"])
    async with client_for(gateway, key) as http:
        listed = await http.get("/v1/models")
        allowed = await http.get("/v1/models/gpt-4o")
        hidden = await http.get("/v1/models/gpt-4.1")
    async with gateway.client() as unlimited:
        everything = await unlimited.get("/v1/models")

    assert [model["id"] for model in listed.json()["data"]] == ["gpt-4o"]
    assert listed.json()["object"] == "list"
    assert allowed.json()["id"] == "gpt-4o"
    assert hidden.status_code == 404
    assert error_of(hidden)["code"] == "model_not_found"
    assert len(everything.json()["data"]) == 3


async def test_a_budget_given_later_counts_from_then_across_restarts(
    gateway: Gateway, sopy: SopyUnderTest
) -> None:
    key, key_id = await limited_key(gateway)
    long_prompt = chat(content="one two three four five six seven eight")
    async with client_for(gateway, key) as http:
        assert (await http.post("/v1/chat/completions", json=long_prompt)).status_code == 200
    given = await gateway.admin_ok("update_user_api_key", id=key_id, token_budget=10)
    await sopy.restart()
    async with client_for(gateway, key) as http:
        counted_from_now = await http.post("/v1/chat/completions", json=long_prompt)
        stopped = await http.post("/v1/chat/completions", json=chat())
        raised = await gateway.admin_ok("update_user_api_key", id=key_id, token_budget=1000)
        room_again = await http.post("/v1/chat/completions", json=chat())
    # The tokens spent before the key had a budget do not count against it.
    assert counted_from_now.status_code == 200
    assert error_of(stopped)["code"] == "insufficient_quota"
    # Changing a budget the key has keeps its count.
    assert raised["usage_reset_at"] == given["usage_reset_at"]
    assert room_again.status_code == 200
