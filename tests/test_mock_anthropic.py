"""Specs for the mock upstream's Anthropic Messages routes and its modes: the official
`anthropic` SDK, pointed straight at the mock, parses each answer and streamed event; strict
mode refuses what Anthropic refuses; chat-only mode serves chat and models alone."""

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from sopy.testing.mock_upstream import MockUpstream

NAME = "claude-mock"
STRICT_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
}


async def serve(mock: MockUpstream, nursery: trio.Nursery) -> str:
    origin: str = await nursery.start(mock.serve)
    return origin


@pytest.fixture
def mock() -> MockUpstream:
    return MockUpstream(NAME, anthropic_strict=True)


@pytest.fixture
async def origin(mock: MockUpstream, nursery: trio.Nursery) -> str:
    return await serve(mock, nursery)


@pytest.fixture
async def client(origin: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # The Anthropic SDK's base URL is the origin: it adds /v1 itself.
    async with anthropic.AsyncAnthropic(
        base_url=origin, api_key="sk-ant-test", max_retries=0
    ) as client:
        yield client


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def test_create_answers_a_message_with_usage(
    client: anthropic.AsyncAnthropic, mock: MockUpstream
) -> None:
    message = await client.messages.create(
        model="claude-test", max_tokens=100, system="be brief", messages=[user("hello there")]
    )

    assert message.id == f"msg_{NAME}_1"
    assert message.model == "claude-test"
    assert message.content[0].type == "text"
    assert message.content[0].text == f"Hello from {NAME}: you said hello there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 7)
    assert message.usage.cache_read_input_tokens == 0
    request = mock.requests[-1]
    # The anthropic SDK (2.x) sends its API key as a bearer token.
    assert request.headers["authorization"] == "Bearer sk-ant-test"
    assert request.headers["anthropic-version"]


async def test_stream_sends_anthropics_events_in_order(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model="claude-test", max_tokens=100, messages=[user("hi")]
    ) as stream:
        events = [event.type async for event in stream if not event.type.endswith("text")]
        final = await stream.get_final_message()

    assert events == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 6,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert final.content[0].text == f"Hello from {NAME}: you said hi"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6


async def test_stream_has_event_lines_and_a_ping(origin: str) -> None:
    body = {"model": "claude-test", "max_tokens": 5, "messages": [user("hi")], "stream": True}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{origin}/v1/messages", json=body, headers=STRICT_HEADERS)

    assert response.text.startswith("event: message_start\ndata: {")
    assert "event: ping\n" in response.text
    assert response.text.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')


async def test_a_named_tool_is_used(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="claude-test",
        max_tokens=100,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[user("use get_weather for Paris")],
    )

    (block,) = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"text": "use get_weather for Paris"})
    assert message.stop_reason == "tool_use"


async def test_a_streamed_tool_use_sends_input_json(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model="claude-test",
        max_tokens=100,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[user("use get_weather")],
    ) as stream:
        deltas = [event.delta.type async for event in stream if event.type == "content_block_delta"]
        final = await stream.get_final_message()

    assert set(deltas) == {"input_json_delta"}
    assert final.content[0].input == {"text": "use get_weather"}  # type: ignore[union-attr]


async def test_count_tokens_counts_the_words_of_messages_and_system(
    client: anthropic.AsyncAnthropic,
) -> None:
    counted = await client.messages.count_tokens(
        model="claude-test", system="be brief", messages=[user("three words here")]
    )

    assert counted.input_tokens == 5


async def test_strict_mode_takes_the_key_in_x_api_key(origin: str) -> None:
    body = {"model": "claude-test", "max_tokens": 5, "messages": [user("x")]}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{origin}/v1/messages", json=body, headers=STRICT_HEADERS)

    assert response.status_code == 200
    assert response.json()["type"] == "message"


async def test_strict_mode_requires_a_credential(origin: str) -> None:
    body = {"model": "claude-test", "max_tokens": 5, "messages": [user("x")]}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{origin}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}
        )

    assert response.status_code == 401
    assert response.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "x-api-key header is required"},
        "request_id": response.headers["request-id"],
    }


async def test_strict_mode_requires_the_version_header(origin: str) -> None:
    body = {"model": "claude-test", "max_tokens": 5, "messages": [user("x")]}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{origin}/v1/messages", json=body, headers={"x-api-key": "sk-ant-test"}
        )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in response.json()["error"]["message"]
    assert response.headers["request-id"] == response.json()["request_id"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"model": "claude-test", "messages": [user("x")]}, "max_tokens"),
        (
            {"model": "claude-test", "max_tokens": 5, "messages": [user("a"), user("b")]},
            "alternate",
        ),
        (
            {
                "model": "claude-test",
                "max_tokens": 5,
                "messages": [{"role": "system", "content": "s"}, user("x")],
            },
            "system",
        ),
        ({"max_tokens": 5, "messages": [user("x")]}, "model"),
    ],
)
async def test_strict_mode_refuses_malformed_requests(
    client: anthropic.AsyncAnthropic, body: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.post("/v1/messages", body=body, cast_to=httpx.Response)

    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert complaint in refused.value.message


async def test_strict_mode_serves_no_openai_route(origin: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{origin}/v1/chat/completions", json={})

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


async def test_the_default_mode_serves_messages_without_strict_checks(
    nursery: trio.Nursery,
) -> None:
    origin = await serve(MockUpstream(NAME), nursery)
    async with anthropic.AsyncAnthropic(base_url=origin, api_key="k", max_retries=0) as client:
        message = await client.post(
            "/v1/messages",
            body={"model": "claude-test", "messages": [user("a"), user("b")]},
            cast_to=anthropic.types.Message,
            options={"headers": {"anthropic-version": anthropic.Omit()}},
        )

    assert message.content[0].text == f"Hello from {NAME}: you said b"  # type: ignore[union-attr]


async def test_chat_only_mode_serves_chat_and_models_and_404s_the_rest(
    nursery: trio.Nursery,
) -> None:
    origin = await serve(MockUpstream(NAME, chat_only=True), nursery)
    async with openai.AsyncOpenAI(
        base_url=f"{origin}/v1", api_key="sk-test", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        models = await client.models.list()
        with pytest.raises(openai.NotFoundError) as embeddings:
            await client.embeddings.create(model="m", input="x")
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="m", input="x")
    async with httpx.AsyncClient() as http:
        messages = await http.post(f"{origin}/v1/messages", json={})

    assert completion.choices[0].message.content == f"Hello from {NAME}: you said hi"
    assert [model.id for model in models.data] == ["mock-model"]
    assert "Unknown route: POST /v1/embeddings" in embeddings.value.message
    assert messages.status_code == 404
    assert "error" in messages.json()


def test_chat_only_and_strict_anthropic_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exclude"):
        MockUpstream(NAME, chat_only=True, anthropic_strict=True)


# -- what the translation tests lean on: tool calls from the chat-only mock, strict checks ------

CHAT_TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]


@pytest.fixture
async def chat_only(nursery: trio.Nursery) -> AsyncIterator[openai.AsyncOpenAI]:
    origin = await serve(MockUpstream(NAME, chat_only=True), nursery)
    async with openai.AsyncOpenAI(
        base_url=f"{origin}/v1", api_key="sk-test", max_retries=0
    ) as client:
        yield client


async def test_chat_only_mode_calls_the_tools_the_user_names(
    chat_only: openai.AsyncOpenAI,
) -> None:
    completion = await chat_only.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "call get_time"}],
        tools=CHAT_TOOLS,  # type: ignore[arg-type]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_time"
    assert call.function.arguments == '{"text":"call get_time"}'


async def test_chat_only_mode_streams_two_tool_calls_interleaved_with_a_usage_chunk(
    chat_only: openai.AsyncOpenAI,
) -> None:
    stream = await chat_only.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "call get_weather and get_time"}],
        tools=CHAT_TOOLS,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    deltas = [
        call
        for chunk in chunks
        if chunk.choices
        for call in chunk.choices[0].delta.tool_calls or []
    ]
    indices = [call.index for call in deltas]
    assert indices[:2] == [0, 1] and indices[2:4] == [0, 1], "both open, then interleaved"
    names = {call.index: call.function.name for call in deltas if call.function and call.id}
    assert names == {0: "get_weather", 1: "get_time"}
    for index in (0, 1):
        pieces = [c.function.arguments or "" for c in deltas if c.index == index and c.function]
        assert "".join(pieces) == '{"text":"call get_weather and get_time"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_chat_only_mode_answers_a_tool_result_with_its_text(
    chat_only: openai.AsyncOpenAI,
) -> None:
    completion = await chat_only.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "call get_time"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
        ],
        tools=CHAT_TOOLS,  # type: ignore[arg-type]
    )

    assert completion.choices[0].message.content == f"Hello from {NAME}: you said noon"


async def test_chat_only_mode_refuses_a_tool_message_that_answers_no_call(
    chat_only: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await chat_only.chat.completions.create(
            model="m",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
            ],
        )

    assert "must be a response to a preceeding message with 'tool_calls'" in refused.value.message


async def test_faults_may_come_as_a_header(chat_only: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await chat_only.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-faults": '{"status": 429}'},
        )


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"stream_options": {"include_usage": True}}, "stream_options: Extra inputs"),
        ({"tools": [{"name": "get_weather"}]}, "tools.0.input_schema: Field required"),
        (
            {
                "messages": [
                    user("hi"),
                    {"role": "assistant", "content": "ok"},
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}],
                    },
                ]
            },
            "unexpected `tool_use_id`",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "image_url"),
    ],
)
async def test_strict_mode_refuses_what_anthropic_refuses(
    client: anthropic.AsyncAnthropic, extra: dict[str, Any], says: str
) -> None:
    body: dict[str, Any] = {"model": "claude-test", "max_tokens": 10, "messages": [user("hi")]}
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(**body, extra_body=extra)

    assert says in refused.value.message
