"""Specs for the mock upstream's Responses API: the official `openai` SDK, pointed straight at
the mock, parses each answer and each streamed event with its own typed models; the stored
follow-ups only work on the mock that made the response; the WebSocket mode speaks the same
events, one JSON message each."""

from collections.abc import AsyncIterator

import httpx
import openai
import orjson
import pytest
import trio
import trio_websocket
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseTextDeltaEvent,
)

from sopy.testing.mock_upstream import MockUpstream

NAME = "alpha"
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 7,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
}


async def serve(mock: MockUpstream, nursery: trio.Nursery) -> str:
    origin: str = await nursery.start(mock.serve)
    return f"{origin}/v1"


@pytest.fixture
def mock() -> MockUpstream:
    return MockUpstream(NAME)


@pytest.fixture
async def base_url(mock: MockUpstream, nursery: trio.Nursery) -> str:
    return await serve(mock, nursery)


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0) as client:
        yield client


async def test_create_answers_a_response_named_after_the_mock(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="gpt-test", input="tell me", instructions="hi")

    assert response.id == f"resp_{NAME}_1"
    assert response.model == "gpt-test"
    assert response.status == "completed"
    assert response.output_text == f"Hello from {NAME}: you said tell me"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 7)


async def test_stream_sends_the_event_sequence_with_increasing_numbers(
    client: openai.AsyncOpenAI,
) -> None:
    async with client.responses.stream(model="gpt-test", input="tell me") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()

    assert [event.type for event in events] == TEXT_EVENTS
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(events)))
    deltas = [event.delta for event in events if isinstance(event, ResponseTextDeltaEvent)]
    assert "".join(deltas) == f"Hello from {NAME}: you said tell me"
    assert isinstance(events[-1], ResponseCompletedEvent)
    assert final.output_text == "".join(deltas)


async def test_stream_has_event_lines_and_no_done(base_url: str) -> None:
    body = {"model": "gpt-test", "input": "hi", "stream": True}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{base_url}/responses", json=body)

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("event: response.created\ndata: {")
    assert "[DONE]" not in response.text


async def test_stream_faults_apply_to_the_responses_stream(base_url: str) -> None:
    body = {"model": "gpt-test", "input": "hi", "stream": True, "mock": {"reset_after": 3}}
    received: list[str] = []

    with pytest.raises(httpx.RemoteProtocolError):
        async with (
            httpx.AsyncClient() as http,
            http.stream("POST", f"{base_url}/responses", json=body) as response,
        ):
            async for line in response.aiter_lines():
                received.append(line)

    assert sum(line.startswith("event: ") for line in received) == 3


async def test_an_injected_status_is_an_openai_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as refused:
        await client.responses.create(
            model="gpt-test", input="hi", extra_body={"mock": {"status": 429, "retry_after": 0}}
        )

    assert refused.value.response.headers["retry-after"] == "0"
    assert refused.value.code == "rate_limit_exceeded"


async def test_a_named_tool_is_called(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="gpt-test", input="call get_weather for Paris", tools=[WEATHER_TOOL]
    )

    (call,) = response.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert orjson.loads(call.arguments) == {"text": "call get_weather for Paris"}


async def test_a_streamed_tool_call_sends_its_arguments(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(
        model="gpt-test", input="call get_weather", tools=[WEATHER_TOOL]
    ) as stream:
        events = [event async for event in stream]

    types = [event.type for event in events]
    assert "response.function_call_arguments.delta" in types
    done = [e for e in events if isinstance(e, ResponseFunctionCallArgumentsDoneEvent)]
    assert orjson.loads(done[0].arguments) == {"text": "call get_weather"}
    assert [event.sequence_number for event in events] == list(range(len(events)))


async def test_stored_responses_are_retrieved_listed_and_deleted(
    client: openai.AsyncOpenAI,
) -> None:
    created = await client.responses.create(
        model="gpt-test", input=[{"role": "user", "content": "first"}]
    )

    retrieved = await client.responses.retrieve(created.id)
    items = await client.responses.input_items.list(created.id)
    await client.responses.delete(created.id)

    assert retrieved.output_text == created.output_text
    (item,) = items.data
    assert item.type == "message"
    assert item.content[0].text == "first"  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)


async def test_previous_response_id_must_name_a_response_of_this_mock(
    client: openai.AsyncOpenAI, nursery: trio.Nursery
) -> None:
    other = MockUpstream("beta")
    async with openai.AsyncOpenAI(
        base_url=await serve(other, nursery), api_key="sk-test", max_retries=0
    ) as other_client:
        elsewhere = await other_client.responses.create(model="gpt-test", input="hi")
    first = await client.responses.create(model="gpt-test", input="hi")

    follow_up = await client.responses.create(
        model="gpt-test", input="again", previous_response_id=first.id
    )
    with pytest.raises(openai.NotFoundError) as refused:
        await client.responses.create(
            model="gpt-test", input="again", previous_response_id=elsewhere.id
        )

    assert elsewhere.id == "resp_beta_1"
    assert follow_up.previous_response_id == first.id
    assert follow_up.output_text.endswith(f"after {first.id}")
    assert refused.value.param == "previous_response_id"
    assert refused.value.code == "previous_response_not_found"


async def test_unstored_responses_cannot_be_retrieved(client: openai.AsyncOpenAI) -> None:
    created = await client.responses.create(model="gpt-test", input="hi", store=False)

    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)


async def test_only_background_responses_can_be_cancelled(client: openai.AsyncOpenAI) -> None:
    foreground = await client.responses.create(model="gpt-test", input="hi")
    background = await client.responses.create(model="gpt-test", input="hi", background=True)

    cancelled = await client.responses.cancel(background.id)
    with pytest.raises(openai.BadRequestError):
        await client.responses.cancel(foreground.id)

    assert cancelled.status == "cancelled"


async def test_input_tokens_counts_the_words_of_input_and_instructions(
    client: openai.AsyncOpenAI,
) -> None:
    counted = await client.responses.input_tokens.count(
        model="gpt-test", input="three words here", instructions="be brief"
    )

    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == 5


async def test_compact_keeps_the_user_messages_and_adds_a_compaction(
    client: openai.AsyncOpenAI,
) -> None:
    compacted = await client.responses.compact(
        model="gpt-test",
        input=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": "three"},
        ],
    )

    assert compacted.object == "response.compaction"
    assert [item.type for item in compacted.output] == ["message", "message", "compaction"]
    assert compacted.usage.input_tokens == 3


async def websocket_events(
    connection: trio_websocket.WebSocketConnection, request: dict[str, object]
) -> list[dict[str, object]]:
    await connection.send_message(orjson.dumps({"type": "response.create", **request}).decode())
    events = []
    while not events or events[-1]["type"] not in ("response.completed", "error"):
        events.append(orjson.loads(await connection.get_message()))
    return events


async def test_websocket_mode_sends_the_stream_events_one_message_each(
    mock: MockUpstream, base_url: str
) -> None:
    url = base_url.replace("http://", "ws://") + "/responses"
    async with trio_websocket.open_websocket_url(
        url, extra_headers=[("Authorization", "Bearer sk-test")]
    ) as connection:
        first = await websocket_events(connection, {"model": "gpt-test", "input": "tell me"})
        first_id = first[-1]["response"]["id"]  # type: ignore[index]
        second = await websocket_events(
            connection, {"model": "gpt-test", "input": "more", "previous_response_id": first_id}
        )
        refused = await websocket_events(
            connection, {"model": "gpt-test", "input": "x", "previous_response_id": "resp_no"}
        )

    assert [event["type"] for event in first] == TEXT_EVENTS
    assert [event["sequence_number"] for event in first] == list(range(len(TEXT_EVENTS)))
    assert second[-1]["type"] == "response.completed"
    assert refused[-1]["status"] == 404
    assert refused[-1]["error"]["code"] == "previous_response_not_found"  # type: ignore[index]
    handshake = mock.requests[-1]
    assert (handshake.method, handshake.path) == ("GET", "/v1/responses")
    assert handshake.headers["authorization"] == "Bearer sk-test"
    assert len(mock.websocket_messages) == 3


async def test_without_websocket_the_upgrade_is_refused_with_a_404(nursery: trio.Nursery) -> None:
    base_url = await serve(MockUpstream(NAME, websocket=False), nursery)
    url = base_url.replace("http://", "ws://") + "/responses"

    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(url):
            pass

    assert rejected.value.status_code == 404
    assert b"Unknown route" in (rejected.value.body or b"")
