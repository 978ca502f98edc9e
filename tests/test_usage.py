"""Specs for usage records: every model request that reaches a provider is recorded with the
token counts the provider reported (whole answers and streams, every API), written by the usage
actor to `sopy_usage.db` and kept across restarts; `get_usage` filters and groups them over
JSON lines, REST and `sopy admin`; `/admin/usage/events` streams each record live.
"""

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio_websocket

from sopy.actors.usage_store import usage_database_path
from sopy.testing.mock_upstream import MockUpstream
from tests.conftest import SopyUnderTest
from tests.gateway import USER_KEY, Gateway, chat, make_anthropic, start_gateway, start_gateway_with

ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}
WS_AUTH = [(b"authorization", f"Bearer {USER_KEY}".encode())]
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(
        sopy, nursery, {"gpt-4.1": "openai", "gpt-4o": "azure", "claude-x": "anthropic"}
    )


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as http:
        yield http


def openai_counts(usage: dict[str, Any]) -> dict[str, int]:
    """A chat/completions/embeddings `usage` object in the record's terms."""
    return {
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage.get("completion_tokens", 0),
        "cached_input_tokens": 0,
        "reasoning_tokens": 0,
    }


async def usage_totals(gateway: Gateway, **filters: Any) -> dict[str, Any]:
    report = await gateway.admin_ok("get_usage", **filters)
    (totals,) = report["groups"]
    return dict(totals)


def counts(totals: dict[str, Any]) -> dict[str, int]:
    return {field: totals[field] for field in TOKEN_FIELDS}


def sse_data(body: str) -> list[Any]:
    return [
        orjson.loads(line[5:])
        for line in body.splitlines()
        if line.startswith("data:") and line.strip() != "data: [DONE]"
    ]


async def test_a_chat_answer_is_recorded_with_the_providers_counts(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    answer = await client.post("/v1/chat/completions", json=chat(content="one two three"))

    totals = await usage_totals(gateway)
    assert totals["requests"] == 1
    assert counts(totals) == openai_counts(answer.json()["usage"])


async def test_a_chat_stream_is_counted_without_the_client_seeing_a_usage_chunk(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    whole = await client.post("/v1/chat/completions", json=chat(content="four five"))

    streamed = await client.post(
        "/v1/chat/completions", json=chat(content="four five", stream=True)
    )

    events = sse_data(streamed.text)
    assert events and all(event["choices"] for event in events)
    # As OpenAI does with include_usage, chunks carry `"usage": null`; none carries counts.
    assert all(event.get("usage") is None for event in events)
    assert streamed.text.endswith("data: [DONE]\n\n")
    totals = await usage_totals(gateway)
    assert totals["requests"] == 2
    assert counts(totals) == {
        field: 2 * value for field, value in openai_counts(whole.json()["usage"]).items()
    }


async def test_a_chat_stream_that_asked_for_usage_keeps_its_usage_chunk(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    body = chat(content="six seven eight", stream=True, stream_options={"include_usage": True})

    streamed = await client.post("/v1/chat/completions", json=body)

    final = sse_data(streamed.text)[-1]
    assert final["choices"] == []
    assert counts(await usage_totals(gateway)) == openai_counts(final["usage"])


async def test_a_legacy_completion_stream_is_counted_too(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    whole = await client.post("/v1/completions", json={"model": "gpt-4.1", "prompt": "a b c"})

    streamed = await client.post(
        "/v1/completions", json={"model": "gpt-4.1", "prompt": "a b c", "stream": True}
    )

    assert all(event["choices"] for event in sse_data(streamed.text))
    expected = openai_counts(whole.json()["usage"])
    assert counts(await usage_totals(gateway)) == {f: 2 * v for f, v in expected.items()}


async def test_embeddings_are_counted(client: httpx.AsyncClient, gateway: Gateway) -> None:
    answer = await client.post(
        "/v1/embeddings", json={"model": "gpt-4.1", "input": ["one two", "three"]}
    )

    assert counts(await usage_totals(gateway)) == openai_counts(answer.json()["usage"])


async def test_responses_whole_and_streamed_are_counted(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    whole = await client.post("/v1/responses", json={"model": "gpt-4.1", "input": "x y z"})
    streamed = await client.post(
        "/v1/responses", json={"model": "gpt-4.1", "input": "x y z", "stream": True}
    )

    completed = [e for e in sse_data(streamed.text) if e["type"] == "response.completed"]
    reported = [whole.json()["usage"], completed[0]["response"]["usage"]]
    totals = await usage_totals(gateway)
    assert totals["requests"] == 2
    assert totals["input_tokens"] == sum(usage["input_tokens"] for usage in reported)
    assert totals["output_tokens"] == sum(usage["output_tokens"] for usage in reported)


async def test_anthropic_messages_whole_and_streamed_are_counted(
    gateway: Gateway,
) -> None:
    await make_anthropic(gateway, "anthropic")
    body = {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    async with gateway.client() as http:
        whole = await http.post("/v1/messages", json=body, headers=ANTHROPIC_VERSION)
        streamed = await http.post(
            "/v1/messages", json={**body, "stream": True}, headers=ANTHROPIC_VERSION
        )

    events = sse_data(streamed.text)
    start = next(e for e in events if e["type"] == "message_start")["message"]["usage"]
    delta = next(e for e in events if e["type"] == "message_delta")["usage"]
    totals = await usage_totals(gateway, provider="anthropic")
    assert totals["requests"] == 2
    assert totals["input_tokens"] == whole.json()["usage"]["input_tokens"] + start["input_tokens"]
    assert (
        totals["output_tokens"] == whole.json()["usage"]["output_tokens"] + delta["output_tokens"]
    )


async def test_usage_survives_a_restart_in_a_private_file(
    client: httpx.AsyncClient, gateway: Gateway, sopy: SopyUnderTest
) -> None:
    answer = await client.post("/v1/chat/completions", json=chat(content="kept for later"))

    await sopy.restart()

    path = usage_database_path(sopy.settings.db_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert counts(await usage_totals(gateway)) == openai_counts(answer.json()["usage"])


async def test_a_stream_cut_short_is_recorded_with_what_was_seen_and_flagged(
    gateway: Gateway, sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    async with events(sopy, nursery) as usage_events, gateway.client() as http:
        body = chat(stream=True, stream_options={"include_usage": True}, mock={"reset_after": 1})
        await http.post("/v1/chat/completions", json=body)
        record = await next_record(usage_events)

    assert record["cut_short"] is True
    assert record["tokens_from_provider"] is False
    assert record["status"] == 200


async def test_get_usage_filters_and_groups_over_json_lines_and_rest(
    client: httpx.AsyncClient, gateway: Gateway, sopy: SopyUnderTest
) -> None:
    one = (await client.post("/v1/chat/completions", json=chat("gpt-4.1", "a b"))).json()
    two = (await client.post("/v1/chat/completions", json=chat("gpt-4o", "a b c d"))).json()
    three = (await client.post("/v1/chat/completions", json=chat("gpt-4o", "e"))).json()

    grouped = await gateway.admin_ok("get_usage", group_by=["provider", "model", "key_id"])
    async with sopy.admin_rest() as rest:
        by_rest = await rest.get("/admin/usage", params={"group_by": "provider,model,key_id"})
        filtered = await rest.get("/admin/usage", params={"model": "gpt-4o", "key_id": "1"})
        none_yet = await rest.get("/admin/usage", params={"since": "4102444800"})
        wrong = await rest.get("/admin/usage", params={"group_by": "colour"})

    assert grouped == by_rest.json()["result"]
    assert grouped["groups"] == [
        {
            "provider": "azure",
            "model": "gpt-4o",
            "key_id": 1,
            "requests": 2,
            **{
                f: a + b
                for (f, a), b in zip(
                    openai_counts(two["usage"]).items(),
                    openai_counts(three["usage"]).values(),
                    strict=True,
                )
            },
        },
        {
            "provider": "openai",
            "model": "gpt-4.1",
            "key_id": 1,
            "requests": 1,
            **openai_counts(one["usage"]),
        },
    ]
    (azure,) = filtered.json()["result"]["groups"]
    assert azure["requests"] == 2
    assert none_yet.json()["result"]["groups"] == [
        {"requests": 0, **dict.fromkeys(TOKEN_FIELDS, 0)}
    ]
    assert wrong.status_code == 400
    assert "day" in wrong.json()["error"]["message"]


async def test_get_usage_by_day_and_time_window(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    before = int(time.time()) - 60
    await client.post("/v1/chat/completions", json=chat())

    by_day = await gateway.admin_ok("get_usage", group_by=["day"], since=before)
    nothing = await gateway.admin_ok("get_usage", group_by=["day"], until=1)

    (today,) = by_day["groups"]
    assert len(today["day"]) == len("2026-12-01") and today["requests"] == 1
    assert nothing["groups"] == []


async def _sopy_admin(sopy: SopyUnderTest, *args: str) -> bytes:
    result = await trio.run_process(
        [sys.executable, "-m", "sopy", "admin", *args],
        env={"SOPY_ADMIN_SOCKET": str(sopy.settings.admin_socket), "PATH": "/usr/bin:/bin"},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_sopy_admin_get_usage(client: httpx.AsyncClient, sopy: SopyUnderTest) -> None:
    await client.post("/v1/chat/completions", json=chat(content="p q r"))

    raw = await _sopy_admin(sopy, "--json", "get-usage", "--group-by", "model,provider")
    table = await _sopy_admin(sopy, "get-usage", "--model", "gpt-4.1", "--group-by", "model")

    (group,) = orjson.loads(raw)["result"]["groups"]
    assert (group["model"], group["provider"], group["requests"]) == ("gpt-4.1", "openai", 1)
    header, row = table.decode().splitlines()
    assert header.split() == ["model", "requests", *TOKEN_FIELDS]
    assert row.split()[:2] == ["gpt-4.1", "1"]


@asynccontextmanager
async def events(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    stream = await trio.open_unix_socket(str(sopy.settings.admin_socket))
    ws = await trio_websocket.wrap_client_stream(nursery, stream, "sopy", "/admin/usage/events")
    try:
        yield ws
    finally:
        await ws.aclose()


async def next_record(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        message = orjson.loads(await ws.get_message())
    assert message["type"] == "usage"
    record: dict[str, Any] = message["record"]
    return record


async def test_each_record_streams_live_over_the_admin_websocket(
    gateway: Gateway, sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    async with events(sopy, nursery) as usage_events, gateway.client() as http:
        first = await http.post("/v1/chat/completions", json=chat(content="live one"))
        await http.post("/v1/chat/completions", json=chat("gpt-4o", stream=True))
        whole, streamed = await next_record(usage_events), await next_record(usage_events)

    assert whole["request_id"] == first.headers["x-request-id"]
    assert (whole["model"], whole["provider"], whole["key_id"]) == ("gpt-4.1", "openai", 1)
    assert whole["route"] == "/v1/chat/completions" and whole["status"] == 200
    assert whole["tokens"] == openai_counts(first.json()["usage"])
    assert whole["tokens_from_provider"] is True and whole["cut_short"] is False
    assert streamed["provider"] == "azure" and streamed["first_token_ms"] is not None
    assert streamed["tokens_from_provider"] is True and streamed["cut_short"] is False
    assert "sk-" not in orjson.dumps([whole, streamed]).decode()


async def test_each_response_of_a_websocket_mode_connection_is_recorded(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    upstreams = {"openai": [MockUpstream("openai-0", websocket=True)]}
    gateway = await start_gateway_with(sopy, nursery, upstreams, {"gpt-4.1": "openai"})
    url = gateway.base_url.replace("http://", "ws://") + "/responses"
    completed = []
    async with (
        events(sopy, nursery) as usage_events,
        trio_websocket.open_websocket_url(url, extra_headers=WS_AUTH) as connection,
    ):
        for text in ("tell me", "tell me more please"):
            request = {"type": "response.create", "model": "gpt-4.1", "input": text}
            await connection.send_message(orjson.dumps(request).decode())
            with trio.fail_after(10):
                while (event := orjson.loads(await connection.get_message()))["type"] != (
                    "response.completed"
                ):
                    pass
            completed.append(event["response"]["usage"])
        records = [await next_record(usage_events), await next_record(usage_events)]

    for record, usage in zip(records, completed, strict=True):
        assert (record["model"], record["provider"], record["status"]) == ("gpt-4.1", "openai", 200)
        assert record["tokens"]["input_tokens"] == usage["input_tokens"]
        assert record["tokens"]["output_tokens"] == usage["output_tokens"]
    assert (await usage_totals(gateway))["requests"] == 2
