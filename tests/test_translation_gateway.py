"""Specs for translation through the gateway (issue 14), with the official SDKs on the client's
side and the strict mocks on the provider's: a Responses or Messages client on a chat-only
provider (kind `openai-chat`), a chat client on an Anthropic provider (kind `anthropic`). Every
event the client gets is parsed by its SDK's own typed models; errors reach the client in its
own shape and status; usage records hold the provider's counts.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import trio

from sopy.testing.mock import RandomFault
from sopy.testing.mock_upstream import MockUpstream
from sopy.translation.translate import IMAGE_TOKENS, MESSAGE_OVERHEAD_TOKENS
from tests.conftest import SopyUnderTest
from tests.gateway import USER_KEY, Gateway, make_kind, start_gateway_with

CHAT_MODEL = "chat-model"  # provider `chat`, kind openai-chat, a chat-only mock
CLAUDE_MODEL = "claude-model"  # provider `claude`, kind anthropic, a strict Anthropic mock
FAULTS = "x-mock-faults"

WEATHER = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    upstreams = {
        "chat": [MockUpstream("chat-0", chat_only=True)],
        "claude": [MockUpstream("claude-0", anthropic_strict=True)],
    }
    models = {CHAT_MODEL: "chat", CLAUDE_MODEL: "claude"}
    gateway = await start_gateway_with(sopy, nursery, upstreams, models)
    await make_kind(gateway, "chat", "openai-chat")
    await make_kind(gateway, "claude", "anthropic")
    return gateway


@pytest.fixture
async def oai(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=USER_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def claude_sdk(gateway: Gateway) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.root_url, api_key=USER_KEY, max_retries=0
    ) as client:
        yield client


def chat_mock(gateway: Gateway) -> MockUpstream:
    return gateway.upstreams("chat")[0]


def claude_mock(gateway: Gateway) -> MockUpstream:
    return gateway.upstreams("claude")[0]


def sent(upstream: MockUpstream) -> dict[str, Any]:
    """The body of the upstream's last request."""
    body: dict[str, Any] = orjson.loads(upstream.requests[-1].body)
    return body


RESPONSES_TOOL = {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}
MESSAGES_TOOLS = [
    {"name": "get_weather", "description": "The weather", "input_schema": WEATHER},
    {"name": "get_time", "description": "The time", "input_schema": WEATHER},
]
CHAT_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": WEATHER},
}


# -- the Responses API on a chat-only provider ---------------------------------------------------


async def test_responses_create_round_trips_a_function_tool_through_a_chat_only_provider(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    asked = "call get_weather"

    first = await oai.responses.create(
        model=CHAT_MODEL, input=asked, tools=[RESPONSES_TOOL], store=False
    )

    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"text": asked}
    assert sent(chat_mock(gateway))["tools"][0]["function"]["name"] == "get_weather"
    assert chat_mock(gateway).requests[-1].path == "/v1/chat/completions"

    second = await oai.responses.create(
        model=CHAT_MODEL,
        input=[
            {"role": "user", "content": asked},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[RESPONSES_TOOL],
        store=False,
    )

    assert second.output_text == "Hello from chat-0: you said sunny"
    assert second.status == "completed"
    messages = sent(chat_mock(gateway))["messages"]
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    assert messages[-2]["tool_calls"][0]["id"] == call.call_id


async def test_responses_stream_round_trips_a_function_tool_through_a_chat_only_provider(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    asked = "call get_weather"
    async with oai.responses.stream(
        model=CHAT_MODEL, input=asked, tools=[RESPONSES_TOOL], store=False
    ) as stream:
        events = [event async for event in stream]
        first = await stream.get_final_response()

    types = [event.type for event in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in types
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers))
    (call,) = first.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"text": asked}
    assert sent(chat_mock(gateway))["stream"] is True

    async with oai.responses.stream(
        model=CHAT_MODEL,
        input=[
            {"role": "user", "content": asked},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[RESPONSES_TOOL],
        store=False,
    ) as stream:
        texts = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        second = await stream.get_final_response()

    assert "".join(texts) == second.output_text == "Hello from chat-0: you said sunny"
    assert len(texts) > 1


async def test_previous_response_id_on_a_chat_only_provider_continues_the_kept_conversation(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    first = await oai.responses.create(model=CHAT_MODEL, input="my name is Ada")

    second = await oai.responses.create(
        model=CHAT_MODEL, input="what is my name?", previous_response_id=first.id
    )

    assert first.store is True and second.previous_response_id == first.id
    messages = sent(chat_mock(gateway))["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == "my name is Ada"
    assert messages[1]["content"] == first.output_text
    assert messages[2]["content"] == "what is my name?"
    third = await oai.responses.create(
        model=CHAT_MODEL, input="and again?", previous_response_id=second.id
    )
    assert third.status == "completed"
    assert len(sent(chat_mock(gateway))["messages"]) == 5


async def test_a_kept_response_is_retrieved_listed_and_deleted_like_a_stored_one(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    async with oai.responses.stream(model=CHAT_MODEL, input="hello there") as stream:
        streamed = await stream.get_final_response()

    retrieved = await oai.responses.retrieve(streamed.id)
    items = await oai.responses.input_items.list(streamed.id)

    assert retrieved.id == streamed.id
    assert retrieved.output_text == streamed.output_text
    assert [item.output[0].id for item in (retrieved, streamed)] == [streamed.output[0].id] * 2
    assert [item.type for item in items.data] == ["message"]
    await oai.responses.delete(streamed.id)
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(streamed.id)
    with pytest.raises(openai.NotFoundError):
        await oai.responses.create(model=CHAT_MODEL, input="more", previous_response_id=streamed.id)


async def test_a_response_with_store_false_is_not_kept(oai: openai.AsyncOpenAI) -> None:
    answer = await oai.responses.create(model=CHAT_MODEL, input="hi", store=False)

    assert answer.store is False
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(answer.id)


async def test_another_keys_kept_response_is_not_found(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    answer = await oai.responses.create(model=CHAT_MODEL, input="hi")
    other_key = "sk-user-test-key-0002"
    await gateway.admin_ok("add_user_api_key", api_key=other_key, description="other")
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=other_key, max_retries=0
    ) as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(answer.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.create(
                model=CHAT_MODEL, input="hi", previous_response_id=answer.id
            )


async def test_kept_responses_survive_a_restart(
    sopy: SopyUnderTest, oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    first = await oai.responses.create(model=CHAT_MODEL, input="remember me")

    await sopy.restart()

    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=USER_KEY, max_retries=0
    ) as restarted:
        second = await restarted.responses.create(
            model=CHAT_MODEL, input="who?", previous_response_id=first.id
        )
        assert second.status == "completed"
        assert sent(chat_mock(gateway))["messages"][0]["content"] == "remember me"
        assert (await restarted.responses.retrieve(first.id)).output_text == first.output_text


async def test_a_feature_the_provider_cannot_express_is_a_400_naming_the_field(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.responses.create(
            model=CHAT_MODEL, input="hi", tools=[{"type": "web_search"}], store=False
        )

    assert refused.value.status_code == 400
    assert refused.value.code == "unsupported_by_provider"
    assert refused.value.param is not None and refused.value.param.startswith("tools[0]")
    assert not chat_mock(gateway).requests


async def test_a_chat_feature_anthropic_cannot_express_is_a_400_naming_the_field(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.chat.completions.create(
            model=CLAUDE_MODEL, messages=[{"role": "user", "content": "hi"}], n=2
        )

    assert refused.value.param == "n" and refused.value.code == "unsupported_by_provider"
    assert not claude_mock(gateway).requests


# -- Anthropic Messages on a chat-only provider ---------------------------------------------------


async def test_messages_create_uses_a_tool_through_a_chat_only_provider(
    claude_sdk: anthropic.AsyncAnthropic, gateway: Gateway
) -> None:
    asked = "call get_weather"
    conversation: list[Any] = [{"role": "user", "content": asked}]

    first = await claude_sdk.messages.create(
        model=CHAT_MODEL, max_tokens=100, tools=MESSAGES_TOOLS, messages=conversation
    )

    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"text": asked}
    conversation += [
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        },
    ]

    second = await claude_sdk.messages.create(
        model=CHAT_MODEL, max_tokens=100, tools=MESSAGES_TOOLS, messages=conversation
    )

    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
    assert second.content[0].text == "Hello from chat-0: you said sunny"
    assert (
        sent(chat_mock(gateway))["max_tokens"] == 100
        or sent(chat_mock(gateway)).get("max_completion_tokens") == 100
    )


async def test_messages_stream_keeps_two_interleaved_tool_calls_apart(
    claude_sdk: anthropic.AsyncAnthropic, gateway: Gateway
) -> None:
    asked = "call get_weather and get_time"
    async with claude_sdk.messages.stream(
        model=CHAT_MODEL,
        max_tokens=100,
        tools=MESSAGES_TOOLS,
        messages=[{"role": "user", "content": asked}],
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()

    assert final.stop_reason == "tool_use"
    assert [(block.type, getattr(block, "name", None)) for block in final.content] == [
        ("tool_use", "get_weather"),
        ("tool_use", "get_time"),
    ]
    assert all(getattr(block, "input", None) == {"text": asked} for block in final.content)
    starts = [event.index for event in events if event.type == "content_block_start"]
    assert starts == [0, 1]
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


async def test_a_messages_stream_that_breaks_off_ends_with_an_anthropic_error(
    claude_sdk: anthropic.AsyncAnthropic, gateway: Gateway
) -> None:
    with pytest.raises(anthropic.APIStatusError) as broke:
        async with claude_sdk.messages.stream(
            model=CHAT_MODEL,
            max_tokens=100,
            messages=[{"role": "user", "content": "one two three four five"}],
            extra_headers={FAULTS: '{"reset_after": 2}'},
        ) as stream:
            async for _ in stream:
                pass

    assert "broke off" in str(broke.value)


async def test_count_tokens_on_a_chat_only_provider_is_a_local_estimate(
    claude_sdk: anthropic.AsyncAnthropic, gateway: Gateway
) -> None:
    text = "twelve bytes"  # 12 UTF-8 bytes
    system = "be brief"  # 8

    counted = await claude_sdk.messages.count_tokens(
        model=CHAT_MODEL,
        system=system,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.png"},
                    },
                ],
            }
        ],
    )

    assert counted.input_tokens == 5 + MESSAGE_OVERHEAD_TOKENS + IMAGE_TOKENS  # ceil(20 / 4)
    assert not chat_mock(gateway).requests


async def test_count_tokens_on_an_anthropic_provider_is_the_providers(
    claude_sdk: anthropic.AsyncAnthropic, gateway: Gateway
) -> None:
    counted = await claude_sdk.messages.count_tokens(
        model=CLAUDE_MODEL, messages=[{"role": "user", "content": "three words here"}]
    )

    assert counted.input_tokens == 3
    assert claude_mock(gateway).requests[-1].path == "/v1/messages/count_tokens"


# -- Chat Completions on an Anthropic provider ---------------------------------------------------


async def test_chat_create_through_an_anthropic_provider(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    completion = await oai.chat.completions.create(
        model=CLAUDE_MODEL,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    )

    assert completion.choices[0].message.content == "Hello from claude-0: you said hi"
    assert completion.choices[0].finish_reason == "stop"
    upstream = sent(claude_mock(gateway))
    assert upstream["system"] == "be brief"
    assert isinstance(upstream["max_tokens"], int)  # the Anthropic default filled in
    assert claude_mock(gateway).requests[-1].path == "/v1/messages"
    assert completion.usage is not None and completion.usage.prompt_tokens == 3


async def test_chat_stream_with_tools_through_an_anthropic_provider(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    asked = "call get_weather"
    stream = await oai.chat.completions.create(
        model=CLAUDE_MODEL,
        messages=[{"role": "user", "content": asked}],
        tools=[CHAT_TOOL],  # type: ignore[list-item]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    calls = [
        call
        for chunk in chunks
        if chunk.choices
        for call in chunk.choices[0].delta.tool_calls or []
    ]
    assert {call.index for call in calls} == {0}
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == {"text": asked}
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert "stream_options" not in sent(claude_mock(gateway))


async def test_chat_tool_round_trip_through_an_anthropic_provider(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    asked = "call get_weather"
    messages: list[Any] = [{"role": "user", "content": asked}]
    first = await oai.chat.completions.create(
        model=CLAUDE_MODEL,
        messages=messages,
        tools=[CHAT_TOOL],  # type: ignore[list-item]
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls
    call = message.tool_calls[0]
    messages += [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]

    second = await oai.chat.completions.create(
        model=CLAUDE_MODEL,
        messages=messages,
        tools=[CHAT_TOOL],  # type: ignore[list-item]
    )

    assert second.choices[0].message.content == "Hello from claude-0: you said nothing"
    tool_result = sent(claude_mock(gateway))["messages"][-1]["content"][0]
    assert tool_result["type"] == "tool_result" and tool_result["tool_use_id"] == call.id


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "sdk_error"),
    [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
async def test_an_upstream_error_reaches_a_responses_client_in_its_shape_and_status(
    oai: openai.AsyncOpenAI, gateway: Gateway, status: int, sdk_error: type[Exception]
) -> None:
    with pytest.raises(sdk_error) as failed:
        await oai.responses.create(
            model=CHAT_MODEL,
            input="hi",
            store=False,
            extra_headers={FAULTS: json.dumps({"status": status, "retry_after": 0})},
        )

    assert isinstance(failed.value, openai.APIStatusError)
    assert failed.value.status_code == status
    assert f"injected status {status}" in failed.value.message


@pytest.mark.parametrize(
    ("status", "sdk_error", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
    ],
)
async def test_an_upstream_error_reaches_a_messages_client_in_its_shape_and_status(
    claude_sdk: anthropic.AsyncAnthropic,
    gateway: Gateway,
    status: int,
    sdk_error: type[Exception],
    error_type: str,
) -> None:
    with pytest.raises(sdk_error) as failed:
        await claude_sdk.messages.create(
            model=CHAT_MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={FAULTS: json.dumps({"status": status, "retry_after": 0})},
        )

    assert isinstance(failed.value, anthropic.APIStatusError)
    assert failed.value.status_code == status
    body = failed.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == error_type


async def test_an_anthropic_error_reaches_a_chat_client_in_openais_shape(
    oai: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    with pytest.raises(openai.RateLimitError) as failed:
        await oai.chat.completions.create(
            model=CLAUDE_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={FAULTS: json.dumps({"status": 429, "retry_after": 0})},
        )

    assert failed.value.status_code == 429
    assert failed.value.type == "rate_limit_error"
    assert "injected status 429" in failed.value.message


# -- usage -----------------------------------------------------------------------------------------


async def test_usage_records_of_translated_requests_hold_the_providers_counts(
    oai: openai.AsyncOpenAI,
    claude_sdk: anthropic.AsyncAnthropic,
    gateway: Gateway,
    nursery: trio.Nursery,
) -> None:
    await claude_sdk.messages.create(
        model=CHAT_MODEL, max_tokens=50, messages=[{"role": "user", "content": "a b c d"}]
    )
    async with oai.responses.stream(model=CHAT_MODEL, input="e f", store=False) as stream:
        await stream.get_final_response()
    await oai.chat.completions.create(
        model=CLAUDE_MODEL, messages=[{"role": "user", "content": "g h i"}]
    )

    # What the providers counted: each upstream request sent again to a twin of its mock.
    expected = []
    for upstream, twin in (
        (chat_mock(gateway), MockUpstream("chat-0", chat_only=True)),
        (claude_mock(gateway), MockUpstream("claude-0", anthropic_strict=True)),
    ):
        url = await nursery.start(twin.serve)
        async with httpx.AsyncClient(base_url=url) as http:
            for seen in upstream.requests:
                body = {**orjson.loads(seen.body), "stream": False}
                answer = await http.post(
                    seen.path,
                    json=body,
                    headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
                )
                usage = answer.json()["usage"]
                expected.append(
                    (
                        usage.get("prompt_tokens", usage.get("input_tokens")),
                        usage.get("completion_tokens", usage.get("output_tokens")),
                    )
                )
    report = await gateway.admin_ok("get_usage", group_by=["provider"])
    totals = {group["provider"]: group for group in report["groups"]}
    assert totals["chat"]["requests"] == 2 and totals["claude"]["requests"] == 1
    recorded = [(totals[p]["input_tokens"], totals[p]["output_tokens"]) for p in ("chat", "claude")]
    assert recorded == [
        (expected[0][0] + expected[1][0], expected[0][1] + expected[1][1]),
        expected[2],
    ]


# -- fallbacks: each hop native or translated on its own, in the mapping's order ------------------


async def test_a_failing_native_provider_falls_back_to_a_translated_one_invisibly(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    failing = MockUpstream("openai-0", failure_rate=1.0, fault_kinds=[RandomFault.STATUS_500])
    upstreams = {"openai": [failing], "claude": [MockUpstream("claude-0", anthropic_strict=True)]}
    gateway = await start_gateway_with(
        sopy, nursery, upstreams, {"mixed": "openai"}, fallbacks={"mixed": ["claude"]}
    )
    await make_kind(gateway, "claude", "anthropic")

    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=USER_KEY, max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="mixed", messages=[{"role": "user", "content": "hi"}]
        )

    assert completion.choices[0].message.content == "Hello from claude-0: you said hi"
    assert failing.injected["status_500"] >= 1
    assert gateway.upstreams("claude")[0].requests[-1].path == "/v1/messages"


async def test_a_provider_whose_format_cannot_express_the_request_is_passed_over(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    upstreams = {
        "chat": [MockUpstream("chat-0", chat_only=True)],
        "openai": [MockUpstream("openai-0")],
    }
    gateway = await start_gateway_with(
        sopy, nursery, upstreams, {"mixed": "chat"}, fallbacks={"mixed": ["openai"]}
    )
    await make_kind(gateway, "chat", "openai-chat")
    body = {"model": "mixed", "input": "hi", "tools": [{"type": "web_search"}]}

    async with gateway.client() as http:
        answered = await http.post("/v1/responses", json=body)

    assert answered.status_code == 200, answered.text
    assert gateway.upstreams("openai")[0].requests[-1].path == "/v1/responses"
    assert not gateway.upstreams("chat")[0].requests


async def test_a_responses_stream_that_breaks_off_ends_with_response_failed(
    gateway: Gateway,
) -> None:
    body = {"model": CHAT_MODEL, "input": "one two three four five", "stream": True}
    async with gateway.client() as http:
        answered = await http.post(
            "/v1/responses", json=body, headers={FAULTS: '{"reset_after": 2}'}
        )

    events = [
        orjson.loads(line[6:]) for line in answered.text.splitlines() if line.startswith("data: ")
    ]
    assert events[-1]["type"] == "response.failed"
    assert "broke off" in events[-1]["response"]["error"]["message"]
    assert "[DONE]" not in answered.text


async def test_a_chat_stream_from_an_anthropic_provider_that_breaks_off_ends_with_an_error(
    gateway: Gateway,
) -> None:
    body = {
        "model": CLAUDE_MODEL,
        "messages": [{"role": "user", "content": "one two three four five"}],
        "stream": True,
    }
    async with gateway.client() as http:
        answered = await http.post(
            "/v1/chat/completions", json=body, headers={FAULTS: '{"reset_after": 3}'}
        )

    data = [line[6:] for line in answered.text.splitlines() if line.startswith("data: ")]
    assert "error" in orjson.loads(data[-1]), data[-1]
    assert "broke off" in orjson.loads(data[-1])["error"]["message"]


async def test_a_body_only_a_failed_native_provider_could_take_keeps_its_answer(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    failing = MockUpstream("openai-0", failure_rate=1.0, fault_kinds=[RandomFault.STATUS_500])
    upstreams = {"openai": [failing], "claude": [MockUpstream("claude-0", anthropic_strict=True)]}
    gateway = await start_gateway_with(
        sopy, nursery, upstreams, {"mixed": "openai"}, fallbacks={"mixed": ["claude"]}
    )
    await make_kind(gateway, "claude", "anthropic")
    # Forwarded as is to the native provider; read whole, it is malformed chat.
    body = {"model": "mixed", "messages": [{"role": "user", "content": 5}]}

    async with gateway.client() as http:
        answered = await http.post("/v1/chat/completions", json=body)

    assert answered.status_code == 500, answered.text
    assert "injected status 500" in answered.json()["error"]["message"]
    assert not gateway.upstreams("claude")[0].requests


async def test_count_tokens_never_falls_back_to_a_provider_that_cannot_count(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    upstreams = {
        "claude": [MockUpstream("claude-0", anthropic_strict=True)],
        "chat": [MockUpstream("chat-0", chat_only=True)],
    }
    gateway = await start_gateway_with(
        sopy, nursery, upstreams, {"mixed": "claude"}, fallbacks={"mixed": ["chat"]}
    )
    await make_kind(gateway, "claude", "anthropic")
    await make_kind(gateway, "chat", "openai-chat")

    # With a max_tokens, the body would read as a message to translate, were it allowed to.
    body = {"model": "mixed", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with gateway.client() as http:
        answered = await http.post(
            "/v1/messages/count_tokens", json=body, headers={FAULTS: '{"status": 500}'}
        )

    assert answered.status_code == 500, answered.text
    assert answered.json()["type"] == "error"
    assert gateway.upstreams("claude")[0].requests[-1].path == "/v1/messages/count_tokens"
    assert not gateway.upstreams("chat")[0].requests
