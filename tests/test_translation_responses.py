"""The Responses API codec (`sopy.translation.responses`): a client's request read into the
internal representation, and answers, whole or streamed, written back as the official `openai`
SDK parses them: every object and event goes through the SDK's own models, and whole streams
through its client (`responses.create`/`responses.stream` over an in-memory transport) or its
stream accumulator. Pure: no sockets, no gateway.

CI runs a bounded number of property examples; SOPY_FUZZ_EXAMPLES sets how many.
"""

import os
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from sopy.errors import InvalidRequest
from sopy.translation.items import (
    Answer,
    BlockClosed,
    BlockDelta,
    BlockKind,
    BlockOpened,
    Conversation,
    FunctionTool,
    Image,
    JsonSchemaFormat,
    Message,
    Part,
    ProviderError,
    Reasoning,
    Role,
    StopReason,
    StreamEvent,
    StreamFailed,
    StreamStarted,
    StreamStopped,
    Text,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolResult,
    UntranslatableField,
    Usage,
    UsageReported,
)
from sopy.translation.responses import (
    StreamWriter,
    answer_items,
    read_request,
    write_answer,
    write_error,
)
from sopy.translation.sse import SseReader

EXAMPLES = int(os.environ.get("SOPY_FUZZ_EXAMPLES", "100"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}


def sdk_client(answer: bytes, content_type: str) -> openai.OpenAI:
    """The official client, answered by `answer` through an in-memory transport."""

    def handler(_request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": content_type}, content=answer)

    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://sopy.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        max_retries=0,
        _strict_response_validation=True,
    )


def stream_bytes(writer: StreamWriter, events: list[StreamEvent]) -> bytes:
    return b"".join(writer.write([event]) for event in events) + writer.finish()


def parsed_events(data: bytes) -> list[Any]:
    """Every event of a Responses stream, validated by the SDK's own event models; each
    `event:` line names its data's type, and no `[DONE]` ends it."""
    events = []
    for sse in SseReader().feed(data):
        assert sse.data != b"[DONE]"
        event = STREAM_EVENT.validate_json(sse.data)
        assert sse.name == event.type
        events.append(event)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    return events


def accumulated(events: list[Any], tools: list[Any] | None = None) -> Response:
    """The final response the SDK's stream accumulator (`responses.stream`) assembles (it
    raises on a stream that breaks its rules)."""
    state: ResponseStreamState[Any] = ResponseStreamState(
        input_tools=tools or [], text_format=openai.omit
    )
    final = None
    for event in events:
        for handled in state.handle_event(event):
            if handled.type in ("response.completed", "response.incomplete"):
                final = handled.response
    assert final is not None
    return final


def conversation(**fields: Any) -> Conversation:
    return Conversation(model="gpt-test", messages=(Message(Role.USER, (Text("hi"),)),), **fields)


# --- read_request --------------------------------------------------------------------------


def test_string_input_is_one_user_message() -> None:
    assert read_request({"model": "gpt-test", "input": "hi"}) == conversation()


def test_a_coding_agent_turn_reads_into_turns() -> None:
    body = {
        "model": "gpt-test",
        "instructions": "You are a coding agent.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Sandbox: read-only."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is in README?"}],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "Read the file."}],
                "encrypted_content": "opaque",
            },
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Reading.", "annotations": []}],
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "shell",
                "arguments": '{"cmd":"cat README"}',
                "status": "completed",
            },
            {
                "type": "function_call",
                "call_id": "call_2",
                "name": "shell",
                "arguments": '{"cmd":"ls"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "# Sopy"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "README.md"}],
            },
            {"role": "user", "content": "Thanks; now summarise."},
        ],
    }

    assert read_request(body).messages == (
        Message(Role.USER, (Text("What is in README?"),)),
        Message(
            Role.ASSISTANT,
            (
                Reasoning("Read the file.", signature="opaque"),
                Text("Reading."),
                ToolCall("call_1", "shell", '{"cmd":"cat README"}'),
                ToolCall("call_2", "shell", '{"cmd":"ls"}'),
            ),
        ),
        Message(
            Role.USER,
            (
                ToolResult("call_1", (Text("# Sopy"),)),
                ToolResult("call_2", (Text("README.md"),)),
                Text("Thanks; now summarise."),
            ),
        ),
    )
    assert read_request(body).system == "You are a coding agent.\n\nSandbox: read-only."


def test_user_messages_in_a_row_stay_apart() -> None:
    body = {
        "model": "gpt-test",
        "input": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    }

    assert read_request(body).messages == (
        Message(Role.USER, (Text("one"),)),
        Message(Role.USER, (Text("two"),)),
    )


def test_system_and_developer_messages_join_instructions_in_order() -> None:
    body = {
        "model": "gpt-test",
        "instructions": "A",
        "input": [
            {"role": "system", "content": "B"},
            {"role": "user", "content": "hi"},
            {
                "role": "developer",
                "content": [
                    {"type": "input_text", "text": "C"},
                    {"type": "input_text", "text": "D"},
                ],
            },
        ],
    }

    assert read_request(body) == conversation(system="A\n\nB\n\nC\n\nD")


def test_images_by_url_keep_their_detail() -> None:
    body = {
        "model": "gpt-test",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,iVBORw0KGgo=",
                        "detail": "low",
                    },
                    {"type": "input_image", "image_url": "https://example.com/cat.jpg"},
                ],
            }
        ],
    }

    assert read_request(body).messages == (
        Message(
            Role.USER,
            (
                Text("What is this?"),
                Image("data:image/png;base64,iVBORw0KGgo=", detail="low"),
                Image("https://example.com/cat.jpg"),
            ),
        ),
    )


def test_tool_output_parts_carry_text_and_images() -> None:
    body = {
        "model": "gpt-test",
        "input": [
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [
                    {"type": "input_text", "text": "screenshot:"},
                    {
                        "type": "input_image",
                        "image_url": "https://example.com/s.png",
                        "detail": "auto",
                    },
                ],
            }
        ],
    }

    assert read_request(body).messages == (
        Message(
            Role.USER,
            (
                ToolResult(
                    "c", (Text("screenshot:"), Image("https://example.com/s.png", detail="auto"))
                ),
            ),
        ),
    )


def test_flat_function_tools_and_request_settings_are_read() -> None:
    body = {
        "model": "gpt-test",
        "input": "hi",
        "tools": [WEATHER_TOOL, {"type": "function", "name": "noop"}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "text": {
            "format": {
                "type": "json_schema",
                "name": "weather",
                "strict": True,
                "schema": {"type": "object"},
            },
            "verbosity": "medium",
        },
        "max_output_tokens": 300,
        "temperature": 0.5,
        "top_p": 1,
        "reasoning": {"effort": "low", "summary": "auto"},
        "stream": True,
        "safety_identifier": "user-7",
    }

    assert read_request(body) == conversation(
        tools=(
            FunctionTool("get_weather", "The weather in a city", WEATHER_TOOL["parameters"], False),
            FunctionTool("noop"),
        ),
        tool_choice=ToolChoice(ToolChoiceMode.NAMED, name="get_weather", parallel=False),
        response_format=JsonSchemaFormat("weather", {"type": "object"}, strict=True),
        max_output_tokens=300,
        temperature=0.5,
        top_p=1.0,
        reasoning_effort="low",
        stream=True,
        user="user-7",
    )


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", ToolChoice(ToolChoiceMode.AUTO)),
        ("none", ToolChoice(ToolChoiceMode.NONE)),
        ("required", ToolChoice(ToolChoiceMode.REQUIRED)),
        (None, None),
    ],
)
def test_tool_choice_modes(tool_choice: str | None, expected: ToolChoice | None) -> None:
    body = {"model": "gpt-test", "input": "hi", "tools": [WEATHER_TOOL], "tool_choice": tool_choice}

    assert read_request(body).tool_choice == expected


def test_tool_choice_without_tools_is_left_out() -> None:
    body = {"model": "gpt-test", "input": "hi", "tool_choice": "auto", "parallel_tool_calls": True}

    assert read_request(body) == conversation()


def test_json_object_format_is_a_schema_format_without_schema() -> None:
    body = {"model": "gpt-test", "input": "hi", "text": {"format": {"type": "json_object"}}}

    assert read_request(body).response_format == JsonSchemaFormat("json_object")
    plain = {"model": "gpt-test", "input": "hi", "text": {"format": {"type": "text"}}}
    assert read_request(plain).response_format is None


def test_fields_that_do_not_change_the_answer_are_ignored() -> None:
    body = {
        "model": "gpt-test",
        "input": "hi",
        "previous_response_id": "resp_abc",
        "store": True,
        "metadata": {"ticket": "7"},
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "prompt_cache_key": "thread-1",
        "service_tier": "auto",
        "background": False,
        "client_metadata": {"x": "y"},
    }

    assert read_request(body) == conversation()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"tools": [WEATHER_TOOL, {"type": "file_search", "vector_store_ids": []}]},
            "tools[1].type",
        ),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
        ({"tools": [{"type": "image_generation"}]}, "tools[0].type"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
        ({"tools": [{"type": "local_shell"}]}, "tools[0].type"),
        ({"tools": [{"type": "custom", "name": "patch"}]}, "tools[0].type"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "web_search_preview"}},
            "tool_choice.type",
        ),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}
                ]
            },
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "input[0].content[0].type",
        ),
    ],
)
def test_what_no_provider_format_carries_is_refused_by_name(
    extra: dict[str, Any], param: str
) -> None:
    body = {"model": "gpt-test", "input": "hi", **extra}

    with pytest.raises(UntranslatableField) as refused:
        read_request(body)

    assert refused.value.param == param
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "gpt-test", "input": ["hi"]}, "input[0]"),
        ({"model": "gpt-test", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": "gpt-test", "input": [{"content": "x"}]}, "input[0].type"),
        (
            {"model": "gpt-test", "input": [{"type": "function_call", "name": "f"}]},
            "input[0].call_id",
        ),
        ({"model": "gpt-test", "input": "hi", "temperature": "hot"}, "temperature"),
        ({"model": "gpt-test", "input": "hi", "max_output_tokens": 1.5}, "max_output_tokens"),
        ({"model": "gpt-test", "input": "hi", "stream": "yes"}, "stream"),
        ({"model": "gpt-test", "input": "hi", "reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"model": "gpt-test", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"model": "gpt-test", "input": "hi", "text": {"format": {"type": "json_schema"}}},
            "text.format.name",
        ),
    ],
)
def test_malformed_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        read_request(body)

    assert refused.value.param == param
    assert not isinstance(refused.value, UntranslatableField)


def test_chat_shaped_tool_gets_a_hint_of_the_flat_shape() -> None:
    body = {
        "model": "gpt-test",
        "input": "hi",
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    }

    with pytest.raises(InvalidRequest, match="flat") as refused:
        read_request(body)

    assert refused.value.param == "tools[0].name"


# --- write_answer --------------------------------------------------------------------------


def tool_answer(stop_reason: StopReason = StopReason.TOOL_USE) -> Answer:
    return Answer(
        id="chatcmpl-1",
        model="provider-model",
        parts=(
            Reasoning("The user wants weather.", signature="sig-1"),
            Text("Let me check."),
            ToolCall("call_a", "get_weather", '{"city":"Paris"}'),
            ToolCall("call_b", "get_weather", '{"city":"Oslo"}'),
        ),
        stop_reason=stop_reason,
        usage=Usage(
            input_tokens=120,
            output_tokens=40,
            cache_read_tokens=100,
            cache_write_tokens=8,
            reasoning_tokens=12,
        ),
        created=1_700_000_000,
    )


def test_whole_answer_is_a_response_the_sdk_parses() -> None:
    request = read_request(
        {
            "model": "gpt-test",
            "input": "weather?",
            "tools": [WEATHER_TOOL],
            "instructions": "Be brief.",
            "temperature": 0.2,
            "max_output_tokens": 500,
            "parallel_tool_calls": True,
        }
    )

    body = write_answer(
        tool_answer(),
        request,
        response_id="resp_given",
        previous_response_id="resp_before",
        store=True,
        metadata={"k": "v"},
    )

    response = Response.model_validate(body)
    assert response.id == "resp_given"
    assert response.status == "completed"
    assert response.created_at == 1_700_000_000
    assert response.model == "provider-model"
    assert [item.type for item in response.output] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    reasoning, message, call_a, call_b = response.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert reasoning.summary[0].text == "The user wants weather."
    assert reasoning.encrypted_content == "sig-1"
    assert response.output_text == "Let me check."
    assert call_a.type == "function_call" and call_b.type == "function_call"
    assert (call_a.call_id, call_a.name, call_a.arguments) == (
        "call_a",
        "get_weather",
        '{"city":"Paris"}',
    )
    assert call_a.id is not None and call_a.id.startswith("fc_") and call_a.status == "completed"
    assert call_a.id != call_b.id
    assert response.usage is not None
    assert response.usage.input_tokens == 120
    assert response.usage.input_tokens_details.cached_tokens == 100
    assert response.usage.output_tokens_details.reasoning_tokens == 12
    assert response.usage.total_tokens == 160
    assert response.instructions == "Be brief."
    assert response.temperature == 0.2
    assert response.max_output_tokens == 500
    assert response.tool_choice == "auto"
    assert response.parallel_tool_calls is True
    assert response.tools[0].type == "function" and response.tools[0].name == "get_weather"
    assert response.previous_response_id == "resp_before"
    assert response.metadata == {"k": "v"}
    assert body["store"] is True


def test_answer_reaches_the_sdk_client_as_a_response() -> None:
    request = read_request({"model": "gpt-test", "input": "weather?", "tools": [WEATHER_TOOL]})
    body = orjson.dumps(write_answer(tool_answer(), request))

    response = sdk_client(body, "application/json").responses.create(
        model="gpt-test",
        input="weather?",
        tools=[WEATHER_TOOL],
    )

    assert response.output_text == "Let me check."
    assert [item.call_id for item in response.output if item.type == "function_call"] == [
        "call_a",
        "call_b",
    ]


@pytest.mark.parametrize(
    ("stop_reason", "status", "reason"),
    [
        (StopReason.END_TURN, "completed", None),
        (StopReason.STOP_SEQUENCE, "completed", None),
        (StopReason.TOOL_USE, "completed", None),
        (StopReason.MAX_TOKENS, "incomplete", "max_output_tokens"),
        (StopReason.CONTENT_FILTER, "incomplete", "content_filter"),
    ],
)
def test_stop_reasons_become_status(
    stop_reason: StopReason, status: str, reason: str | None
) -> None:
    response = Response.model_validate(write_answer(tool_answer(stop_reason), conversation()))

    assert response.status == status
    assert (response.incomplete_details.reason if response.incomplete_details else None) == reason


def test_request_settings_are_echoed() -> None:
    request = conversation(
        tools=(FunctionTool("f", parameters={"type": "object"}),),
        tool_choice=ToolChoice(ToolChoiceMode.NAMED, name="f", parallel=False),
        response_format=JsonSchemaFormat("w", {"type": "object"}, strict=True),
        reasoning_effort="high",
        top_p=0.9,
    )

    response = Response.model_validate(write_answer(tool_answer(), request))

    assert response.tool_choice.type == "function"
    assert response.tool_choice.name == "f"
    assert response.parallel_tool_calls is False
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert response.reasoning is not None and response.reasoning.effort == "high"
    assert response.top_p == 0.9
    json_object = conversation(response_format=JsonSchemaFormat("json_object"))
    echoed = Response.model_validate(write_answer(tool_answer(), json_object))
    assert echoed.text is not None and echoed.text.format is not None
    assert echoed.text.format.type == "json_object"


def test_response_ids_are_new_and_unguessable_when_not_given() -> None:
    ids = {write_answer(tool_answer(), conversation())["id"] for _ in range(50)}

    assert len(ids) == 50
    assert all(id_.startswith("resp_") and len(id_) >= 40 for id_ in ids)


def test_an_answer_without_usage_has_none() -> None:
    answer = Answer(id="x", model="m", parts=(Text("hi"),), stop_reason=StopReason.END_TURN)

    response = Response.model_validate(write_answer(answer, conversation()))

    assert response.usage is None
    assert response.output_text == "hi"


def test_answer_items_are_the_assistant_turn() -> None:
    assert answer_items(tool_answer()) == (Message(Role.ASSISTANT, tool_answer().parts),)
    empty = Answer(id="x", model="m", parts=(), stop_reason=StopReason.END_TURN)
    assert answer_items(empty) == ()


def test_written_items_read_back_as_the_same_turn() -> None:
    """A client sends the output of one response as input of the next (store=False)."""
    output = write_answer(tool_answer(), conversation())["output"]
    for item in output:
        item.pop("status")

    turn = read_request({"model": "gpt-test", "input": output}).messages

    assert turn == answer_items(tool_answer())


@pytest.mark.parametrize(
    ("error", "expected_type"),
    [
        (ProviderError(429, "Slow down", "rate_limit_error"), "rate_limit_error"),
        (ProviderError(529, "Overloaded", "overloaded_error"), "server_error"),
        (ProviderError(404, "No model", "not_found_error"), "invalid_request_error"),
        (
            ProviderError(400, "Bad", "invalid_request_error", code="bad", param="x"),
            "invalid_request_error",
        ),
        (ProviderError(500, "Boom", "server_error"), "server_error"),
    ],
)
def test_errors_take_openai_shape(error: ProviderError, expected_type: str) -> None:
    assert write_error(error) == {
        "error": {
            "message": error.message,
            "type": expected_type,
            "param": error.param,
            "code": error.code,
        }
    }


# --- StreamWriter --------------------------------------------------------------------------


def text_stream(stop_reason: StopReason = StopReason.END_TURN) -> list[StreamEvent]:
    return [
        StreamStarted("chatcmpl-1", "provider-model", created=1_700_000_000),
        BlockOpened(0, BlockKind.TEXT),
        BlockDelta(0, "Hel"),
        BlockDelta(0, "lo"),
        BlockClosed(0),
        StreamStopped(stop_reason),
        UsageReported(Usage(input_tokens=9, output_tokens=2, cache_read_tokens=4)),
    ]


def test_text_stream_is_the_exact_event_sequence() -> None:
    writer = StreamWriter(conversation(stream=True), response_id="resp_given")

    events = parsed_events(stream_bytes(writer, text_stream()))

    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert {event.response.id for event in events if hasattr(event, "response")} == {"resp_given"}
    completed = events[-1].response
    assert completed.output_text == "Hello"
    assert completed.usage.input_tokens == 9
    assert completed.usage.input_tokens_details.cached_tokens == 4
    assert completed.model == "provider-model"
    assert writer.response_id == "resp_given"


def test_usage_after_the_stop_is_in_the_completed_response() -> None:
    """A chat provider's usage chunk comes after its finish reason; Anthropic's input tokens
    come with the start."""
    events = [
        StreamStarted("msg_1", "claude", usage=Usage(input_tokens=9)),
        BlockOpened(0, BlockKind.TEXT),
        BlockClosed(0),
        StreamStopped(StopReason.END_TURN),
        UsageReported(Usage(output_tokens=3, reasoning_tokens=1)),
    ]

    completed = parsed_events(stream_bytes(StreamWriter(conversation()), events))[-1].response

    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (9, 3)
    assert completed.usage.output_tokens_details.reasoning_tokens == 1


def test_stream_reaches_the_sdk_stream_helper() -> None:
    writer = StreamWriter(conversation(stream=True))
    client = sdk_client(stream_bytes(writer, text_stream()), "text/event-stream")

    with client.responses.stream(model="gpt-test", input="hi") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()

    assert deltas == ["Hel", "lo"]
    assert final.output_text == "Hello"
    assert final.id == writer.response_id


def two_tool_calls_at_once() -> list[StreamEvent]:
    """As a chat provider streams two parallel tool calls: their deltas alternate."""
    return [
        StreamStarted("chatcmpl-2", "provider-model"),
        BlockOpened(0, BlockKind.TOOL_CALL, call_id="call_a", name="get_weather"),
        BlockOpened(1, BlockKind.TOOL_CALL, call_id="call_b", name="get_weather"),
        BlockDelta(0, '{"city":'),
        BlockDelta(1, '{"city":'),
        BlockDelta(1, '"Oslo"}'),
        BlockDelta(0, '"Paris"}'),
        BlockClosed(1),
        BlockClosed(0),
        StreamStopped(StopReason.TOOL_USE),
    ]


def test_interleaved_tool_calls_stream_as_items_one_after_the_other() -> None:
    events = parsed_events(stream_bytes(StreamWriter(conversation()), two_tool_calls_at_once()))

    item_events = [event for event in events if hasattr(event, "output_index")]
    assert [(event.type, event.output_index) for event in item_events] == [
        ("response.output_item.added", 0),
        ("response.function_call_arguments.delta", 0),
        ("response.function_call_arguments.delta", 0),
        ("response.function_call_arguments.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
    ]
    done = [event.item for event in events if event.type == "response.output_item.done"]
    assert [(item.call_id, item.arguments) for item in done] == [
        ("call_a", '{"city":"Paris"}'),
        ("call_b", '{"city":"Oslo"}'),
    ]
    final = accumulated(events, [WEATHER_TOOL])
    assert [item.arguments for item in final.output if item.type == "function_call"] == [
        '{"city":"Paris"}',
        '{"city":"Oslo"}',
    ]


def test_interleaved_tool_calls_reach_the_sdk_stream_helper() -> None:
    writer = StreamWriter(conversation())
    client = sdk_client(stream_bytes(writer, two_tool_calls_at_once()), "text/event-stream")

    with client.responses.stream(model="gpt-test", input="hi", tools=[WEATHER_TOOL]) as stream:
        argument_done = [
            event.arguments
            for event in stream
            if event.type == "response.function_call_arguments.done"
        ]
        final = stream.get_final_response()

    assert argument_done == ['{"city":"Paris"}', '{"city":"Oslo"}']
    assert [item.call_id for item in final.output if item.type == "function_call"] == [
        "call_a",
        "call_b",
    ]


def test_reasoning_streams_as_a_summary() -> None:
    events = [
        StreamStarted("msg_1", "claude"),
        BlockOpened(0, BlockKind.REASONING),
        BlockDelta(0, "Think"),
        BlockDelta(0, "ing."),
        BlockDelta(0, signature="sig-1"),
        BlockClosed(0),
        BlockOpened(1, BlockKind.TEXT),
        BlockDelta(1, "Done."),
        BlockClosed(1),
        StreamStopped(StopReason.END_TURN),
    ]

    parsed = parsed_events(stream_bytes(StreamWriter(conversation()), events))

    assert [event.type for event in parsed][2:9] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    reasoning = parsed[8].item
    assert reasoning.summary[0].text == "Thinking."
    assert reasoning.encrypted_content == "sig-1"
    assert accumulated(parsed).output_text == "Done."


@pytest.mark.parametrize(
    ("stop_reason", "reason"),
    [(StopReason.MAX_TOKENS, "max_output_tokens"), (StopReason.CONTENT_FILTER, "content_filter")],
)
def test_a_cut_answer_ends_as_incomplete(stop_reason: StopReason, reason: str) -> None:
    events = parsed_events(stream_bytes(StreamWriter(conversation()), text_stream(stop_reason)))

    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == reason
    assert events[-1].response.output[0].content[0].text == "Hello"


def test_provider_error_in_the_stream_ends_as_failed() -> None:
    writer = StreamWriter(conversation())
    data = writer.write(
        [StreamStarted("x", "m"), BlockOpened(0, BlockKind.TEXT), BlockDelta(0, "Hal")]
    )
    data += writer.write([StreamFailed("Overloaded", "overloaded_error")])

    assert writer.finish() == b""
    events = parsed_events(data)
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error.code == "server_error"
    assert failed.error.message == "Overloaded"
    assert failed.output[0].status == "incomplete"
    assert writer.answer() is None


def test_rate_limit_in_the_stream_keeps_its_code() -> None:
    writer = StreamWriter(conversation())
    data = writer.write([StreamFailed("Slow down", "rate_limit_error")])

    events = parsed_events(data)
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    assert events[-1].response.error.code == "rate_limit_exceeded"


def test_a_stream_that_never_stopped_ends_as_failed() -> None:
    writer = StreamWriter(conversation())
    data = writer.write(text_stream()[:3]) + writer.finish()

    events = parsed_events(data)
    assert events[-1].type == "response.failed"
    assert "ended before" in events[-1].response.error.message
    assert writer.answer() is None


def test_the_assembled_answer_is_what_was_streamed() -> None:
    writer = StreamWriter(conversation())
    stream_bytes(writer, [*two_tool_calls_at_once(), UsageReported(Usage(5, 7))])

    assert writer.answer() == Answer(
        id=writer.response_id,
        model="provider-model",
        parts=(
            ToolCall("call_a", "get_weather", '{"city":"Paris"}'),
            ToolCall("call_b", "get_weather", '{"city":"Oslo"}'),
        ),
        stop_reason=StopReason.TOOL_USE,
        usage=Usage(5, 7),
        created=writer.answer().created,
    )


def test_lifecycle_events_echo_the_request() -> None:
    request = conversation(system="Be brief.", tools=(FunctionTool("f"),), max_output_tokens=50)
    writer = StreamWriter(
        request, previous_response_id="resp_before", store=True, metadata={"k": "v"}
    )

    events = parsed_events(stream_bytes(writer, text_stream()))

    for event in (events[0], events[1], events[-1]):
        assert event.response.instructions == "Be brief."
        assert event.response.tools[0].name == "f"
        assert event.response.max_output_tokens == 50
        assert event.response.previous_response_id == "resp_before"
        assert event.response.metadata == {"k": "v"}
    assert events[0].response.status == "in_progress"


# --- properties ----------------------------------------------------------------------------

KINDS = st.sampled_from([BlockKind.TEXT, BlockKind.TOOL_CALL, BlockKind.REASONING])
PIECES = st.lists(st.text(max_size=8), max_size=4)


@st.composite
def ir_streams(draw: Callable[..., Any]) -> tuple[list[StreamEvent], list[Part]]:
    """A well-formed IR stream as the stream readers make one: blocks numbered in the order
    they open, each opened once and closed once before the stop, deltas of several blocks
    interleaved at random; with the parts the whole answer must have."""
    blocks = draw(st.lists(st.tuples(KINDS, PIECES), max_size=5))
    events: list[StreamEvent] = [StreamStarted("up-1", "provider-model")]
    remaining = [list(pieces) for _, pieces in blocks]
    opened = 0
    live: list[int] = []
    while opened < len(blocks) or live:
        choices = [*live, *([opened] if opened < len(blocks) else [])]
        index = draw(st.sampled_from(choices))
        if index == opened:
            kind = blocks[index][0]
            call = (f"call_{index}", "f") if kind is BlockKind.TOOL_CALL else (None, None)
            events.append(BlockOpened(index, kind, *call))
            live.append(index)
            opened += 1
        elif remaining[index]:
            events.append(BlockDelta(index, remaining[index].pop(0)))
        else:
            events.append(BlockClosed(index))
            live.remove(index)
    events.append(StreamStopped(draw(st.sampled_from(list(StopReason)))))
    if draw(st.booleans()):
        events.append(UsageReported(Usage(input_tokens=3, output_tokens=4)))
    parts: list[Part] = []
    for index, (kind, pieces) in enumerate(blocks):
        text = "".join(pieces)
        if kind is BlockKind.TEXT:
            parts.append(Text(text))
        elif kind is BlockKind.TOOL_CALL:
            parts.append(ToolCall(f"call_{index}", "f", text))
        else:
            parts.append(Reasoning(text))
    return events, parts


@PROPERTY_SETTINGS
@given(ir_streams(), st.data())
def test_any_stream_written_in_any_batches_is_well_formed(
    stream: tuple[list[StreamEvent], list[Part]], data: st.DataObject
) -> None:
    events, parts = stream
    cuts = sorted(data.draw(st.sets(st.integers(0, len(events)), max_size=4)))
    writer = StreamWriter(conversation())
    written = b""
    for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
        written += writer.write(events[start:end])
    written += writer.finish()

    parsed = parsed_events(written)
    open_index = None
    for event in parsed:  # one item at a time, in output order
        if event.type == "response.output_item.added":
            assert open_index is None
            open_index = event.output_index
        elif event.type == "response.output_item.done":
            assert event.output_index == open_index
            open_index = None
        elif hasattr(event, "output_index"):
            assert event.output_index == open_index
    assert parsed[-1].type in ("response.completed", "response.incomplete")
    answer = writer.answer()
    assert answer is not None and list(answer.parts) == parts
    final = parsed[-1].response
    assert len(final.output) == len(parts)
    texts = [part.text for part in parts if isinstance(part, Text)]
    assert final.output_text == "".join(texts)
    assert accumulated(parsed).output_text == "".join(texts)


ANSWER_PARTS = st.lists(
    st.one_of(
        st.builds(Text, st.text(max_size=20)),
        st.builds(
            ToolCall, st.text(min_size=1, max_size=8), st.text(max_size=8), st.text(max_size=20)
        ),
        st.builds(Reasoning, st.text(max_size=20), st.none() | st.text(min_size=1, max_size=8)),
    ),
    min_size=1,
    max_size=5,
)


@PROPERTY_SETTINGS
@given(ANSWER_PARTS, st.sampled_from(list(StopReason)))
def test_any_written_answer_is_valid_and_reads_back_as_its_turn(
    parts: list[Part], stop_reason: StopReason
) -> None:
    """What a client without a store sends back: the previous response's output as input."""
    answer = Answer(id="up", model="m", parts=tuple(parts), stop_reason=stop_reason)
    body = write_answer(answer, conversation())

    Response.model_validate(body)
    assert read_request({"model": "m", "input": body["output"]}).messages == answer_items(answer)
