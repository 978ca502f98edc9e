"""The Anthropic Messages codec (sopy.translation.messages) against the `anthropic` SDK's own
types: every request, answer, stream event and error it writes is validated by the SDK's pydantic
models, and every stream it writes is accumulated by the SDK's own stream accumulator.

Property tests (bounded for CI; SOPY_FUZZ_EXAMPLES runs longer): requests survive a write/read
round trip; any IR event sequence, blocks interleaved, is written as a stream the SDK accepts and
reads back to the same blocks; an Anthropic stream split at any byte boundary reads the same.
"""

import base64
import itertools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import ErrorResponse, RawMessageStreamEvent
from anthropic.types import Message as SdkMessage
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sopy.errors import InvalidField, InvalidRequest, UpstreamError
from sopy.translation import messages
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
from sopy.translation.sse import SseReader

EXAMPLES = int(os.environ.get("SOPY_FUZZ_EXAMPLES", "100"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
STREAM_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)
CREATE_PARAMS = pydantic.TypeAdapter(MessageCreateParamsNonStreaming)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()


def request(**fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }


def conversation(**fields: Any) -> Conversation:
    given: dict[str, Any] = {"model": "gpt-x", "messages": (Message(Role.USER, (Text("hi"),)),)}
    return Conversation(**{**given, **fields})


def materialized(value: object) -> object:
    """The SDK's TypedDicts validate their iterables lazily: walk them to validate all."""
    if isinstance(value, dict):
        return {key: materialized(item) for key, item in value.items()}
    if isinstance(value, list | Iterator):
        return [materialized(item) for item in value]
    return value


def valid_create_params(body: dict[str, Any]) -> None:
    materialized(CREATE_PARAMS.validate_python(body))


def stream_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(event.name, orjson.loads(event.data)) for event in SseReader().feed(data)]


def sdk_message(data: bytes) -> SdkMessage:
    """The SDK's own reading of a Messages stream: every event validated, named as its type,
    at most one content block open, in index order; then accumulated as the SDK does."""
    snapshot = None
    json_buffers: dict[int, bytes] = {}
    open_index: int | None = None
    next_index = 0
    events = stream_events(data)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "message_stop"
    for name, body in events:
        event = STREAM_EVENT.validate_python(body)
        assert name == event.type
        if event.type == "content_block_start":
            assert open_index is None and event.index == next_index
            open_index = event.index
        elif event.type == "content_block_delta":
            assert event.index == open_index
        elif event.type == "content_block_stop":
            assert event.index == open_index
            open_index, next_index = None, next_index + 1
        elif event.type in ("message_delta", "message_stop"):
            assert open_index is None
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_buffers)
    assert snapshot is not None
    return snapshot


def read_stream(data: bytes, chunks: Sequence[int] = ()) -> list[StreamEvent]:
    """The IR events of an Anthropic stream, fed to the reader cut at the `chunks` offsets."""
    reader, sse = messages.StreamReader(), SseReader()
    events: list[StreamEvent] = []
    cuts = [0, *sorted(chunks), len(data)]
    for start, end in itertools.pairwise(cuts):
        for event in sse.feed(data[start:end]):
            events.extend(reader.feed(event))
    events.extend(reader.end())
    return events


# Reading a Messages client's request.


def test_system_prompt_as_string_or_text_blocks_with_cache_control_ignored() -> None:
    assert messages.read_request(request(system="Be brief.")).system == "Be brief."
    blocks = [
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."},
    ]
    read = messages.read_request(request(system=blocks, cache_control={"type": "ephemeral"}))
    assert read.system == "You are Claude Code.\n\nBe brief."


def test_a_claude_code_request_reads_whole() -> None:
    """Claude Code always sends `context_management` (it cannot be turned off), adaptive
    thinking with an effort, cached system blocks and tools: all of it translates."""
    body = request(
        system=[
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
        ],
        tools=[
            {
                "name": "Bash",
                "description": "Run a command",
                "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
                "cache_control": {"type": "ephemeral"},
            }
        ],
        metadata={"user_id": "user_abc_session_1"},
        thinking={"type": "adaptive"},
        output_config={"effort": "medium"},
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        temperature=1,
        stream=True,
    )
    read = messages.read_request(body)
    assert (read.system, read.user, read.stream) == (
        "You are Claude Code.",
        "user_abc_session_1",
        True,
    )
    assert (read.reasoning_effort, read.reasoning_budget) == ("medium", None)
    assert [tool.name for tool in read.tools] == ["Bash"]


def test_system_messages_inside_messages_join_the_system_prompt() -> None:
    body = request(
        system="First.",
        messages=[
            {"role": "system", "content": "Second."},
            {"role": "user", "content": "hi"},
        ],
    )
    read = messages.read_request(body)
    assert read.system == "First.\n\nSecond."
    assert read.messages == (Message(Role.USER, (Text("hi"),)),)


def test_content_blocks_of_every_translatable_kind() -> None:
    body = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig1"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"a": [1]}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "seen"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "failed"},
                            {
                                "type": "image",
                                "source": {"type": "url", "url": "https://x.test/e.png"},
                            },
                        ],
                    },
                ],
            },
        ]
    )
    assert messages.read_request(body).messages == (
        Message(
            Role.USER,
            (
                Text("look"),
                Image(f"data:image/png;base64,{PNG}"),
                Image("https://x.test/a.jpg"),
            ),
        ),
        Message(
            Role.ASSISTANT,
            (
                Reasoning("hmm", "sig1"),
                Reasoning("", "opaque", redacted=True),
                ToolCall("toolu_1", "look", '{"a":[1]}'),
            ),
        ),
        Message(
            Role.USER,
            (
                ToolResult("toolu_1", (Text("seen"),)),
                ToolResult(
                    "toolu_2", (Text("failed"), Image("https://x.test/e.png")), is_error=True
                ),
            ),
        ),
    )


def test_tools_tool_choice_and_parallel_tool_use() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = request(
        tools=[
            {"name": "weather", "description": "Weather now", "input_schema": schema},
            {"type": "custom", "name": "exact", "input_schema": schema, "strict": True},
        ],
        tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
    )
    read = messages.read_request(body)
    assert read.tools == (
        FunctionTool("weather", "Weather now", schema),
        FunctionTool("exact", None, schema, strict=True),
    )
    assert read.tool_choice == ToolChoice(ToolChoiceMode.NAMED, "weather", parallel=False)
    choices = {"auto": ToolChoiceMode.AUTO, "any": ToolChoiceMode.REQUIRED}
    for kind, mode in {**choices, "none": ToolChoiceMode.NONE}.items():
        read = messages.read_request(request(tool_choice={"type": kind}))
        assert read.tool_choice == ToolChoice(mode)


def test_sampling_stop_sequences_thinking_output_config_and_user() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    body = request(
        temperature=0.5,
        top_p=1,
        stop_sequences=["\n\nHuman:"],
        stream=True,
        thinking={"type": "enabled", "budget_tokens": 2048},
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": schema}},
        metadata={"user_id": "u-1"},
        service_tier="auto",
    )
    read = messages.read_request(body)
    assert (read.temperature, read.top_p, read.stop, read.stream) == (
        0.5,
        1.0,
        ("\n\nHuman:",),
        True,
    )
    assert (read.reasoning_budget, read.reasoning_effort, read.user) == (2048, "high", "u-1")
    assert read.response_format == JsonSchemaFormat(messages.RESPONSE_FORMAT_NAME, schema)
    assert read.max_output_tokens == 100
    for kind in ("adaptive", "disabled", "between_tools"):
        assert messages.read_request(request(thinking={"type": kind})).reasoning_budget is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"mcp_servers": []}, "mcp_servers"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0]"),
        (
            {"tools": [{"name": "t", "input_schema": {"type": "object"}, "input_examples": []}]},
            "tools[0].input_examples",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "read this"},
                            {
                                "type": "document",
                                "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                            },
                        ],
                    }
                ]
            },
            "messages[0].content[1]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages[0].content[0].source",
        ),
    ],
)
def test_features_the_ir_cannot_carry_are_refused_naming_the_field(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(UntranslatableField) as refused:
        messages.read_request(request(**fields))
    assert refused.value.param == param
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": []}, "max_tokens"),
        (request(max_tokens="5"), "max_tokens"),
        (
            request(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages[0].content[0].text",
        ),
        (request(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
        (request(temperature=True), "temperature"),
        (request(tool_choice={"type": "sometimes"}), "tool_choice.type"),
        (request(thinking={"type": "enabled"}), "thinking.budget_tokens"),
        (request(stop_sequences=["ok", 3]), "stop_sequences[1]"),
        (request(tools=[{"name": "t"}]), "tools[0].input_schema"),
    ],
)
def test_malformed_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        messages.read_request(body)
    assert refused.value.param == param
    assert not isinstance(refused.value, UntranslatableField)


# Writing a request for an Anthropic provider.


def test_max_tokens_defaults_when_the_client_set_none() -> None:
    body = messages.write_request(conversation())
    assert body["max_tokens"] == messages.DEFAULT_MAX_TOKENS == 4096
    assert "thinking" not in body
    valid_create_params(body)
    assert messages.write_request(conversation(max_output_tokens=7))["max_tokens"] == 7


@pytest.mark.parametrize(
    ("effort", "max_tokens", "thinking", "sent_max_tokens"),
    [
        ("minimal", None, None, 4096),
        ("none", None, None, 4096),
        ("low", None, 1024, 4096 + 1024),
        ("medium", None, 4096, 4096 + 4096),
        ("high", None, 16384, 4096 + 16384),
        ("high", 50000, 16384, 50000),
        ("high", 8000, 7999, 8000),  # cut to fit under the client's limit
        ("low", 1000, None, 1000),  # not even Anthropic's minimum fits
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget(
    effort: str, max_tokens: int | None, thinking: int | None, sent_max_tokens: int
) -> None:
    body = messages.write_request(
        conversation(reasoning_effort=effort, max_output_tokens=max_tokens)
    )
    assert body["max_tokens"] == sent_max_tokens
    expected = None if thinking is None else {"type": "enabled", "budget_tokens": thinking}
    assert body.get("thinking") == expected
    valid_create_params(body)


def test_an_effort_anthropic_has_no_budget_for_is_refused() -> None:
    with pytest.raises(UntranslatableField) as refused:
        messages.write_request(conversation(reasoning_effort="ludicrous"))
    assert refused.value.param == "reasoning_effort"


def test_written_request_carries_every_field_the_sdk_knows() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    body = messages.write_request(
        conversation(
            system="Be brief.",
            messages=(
                Message(Role.USER, (Text("look"), Image("https://x.test/a.png", detail="low"))),
                Message(
                    Role.ASSISTANT,
                    (
                        Text(""),  # a chat assistant's empty content: Anthropic refuses it
                        Reasoning("unsigned, from a chat provider"),
                        ToolCall("call_1", "find", '{"q": "x"}'),
                        ToolCall("call_2", "noargs", ""),
                    ),
                ),
                Message(
                    Role.USER,
                    (
                        Text("and then?"),
                        ToolResult("call_1", (Text("found"),)),
                        ToolResult("call_2", (), is_error=True),
                    ),
                ),
            ),
            tools=(
                FunctionTool("find", "Find things", schema, strict=True),
                FunctionTool("noargs"),
            ),
            tool_choice=ToolChoice(ToolChoiceMode.REQUIRED, parallel=False),
            temperature=0.2,
            stop=("END",),
            user="u-1",
            stream=True,
            response_format=JsonSchemaFormat("answer", schema, strict=True),
        )
    )
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "find", "input": {"q": "x"}},
                {"type": "tool_use", "id": "call_2", "name": "noargs", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": [{"type": "text", "text": "found"}],
                },
                {"type": "tool_result", "tool_use_id": "call_2", "is_error": True},
                {"type": "text", "text": "and then?"},
            ],
        },
    ]
    assert body["tools"] == [
        {"name": "find", "description": "Find things", "input_schema": schema, "strict": True},
        {"name": "noargs", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert (body["temperature"], body["stop_sequences"]) == (0.2, ["END"])
    assert (body["metadata"], body["stream"]) == ({"user_id": "u-1"}, True)
    assert "top_p" not in body
    valid_create_params({key: value for key, value in body.items() if key != "stream"})


def test_inline_images_become_base64_sources_of_anthropic_media_types() -> None:
    image = Message(Role.USER, (Image(f"data:image/png;base64,{PNG}"),))
    body = messages.write_request(conversation(messages=(image,)))
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    ]
    valid_create_params(body)
    svg = Message(Role.USER, (Text("see"), Image("data:image/svg+xml;base64,PHN2Zz4=")))
    with pytest.raises(UntranslatableField) as refused:
        messages.write_request(conversation(messages=(svg,)))
    assert refused.value.param == "messages[0].content[1]"


def test_a_temperature_above_anthropics_range_is_refused() -> None:
    assert messages.write_request(conversation(temperature=1))["temperature"] == 1
    with pytest.raises(UntranslatableField) as refused:
        messages.write_request(conversation(temperature=1.5))
    assert refused.value.param == "temperature"


def test_tool_call_arguments_that_are_no_json_object_are_refused() -> None:
    call = Message(Role.ASSISTANT, (ToolCall("call_1", "f", "[1, 2]"),))
    with pytest.raises(InvalidField) as refused:
        messages.write_request(conversation(messages=(call,)))
    assert refused.value.param == "messages[0].content[0]"
    assert "call_1" in refused.value.message


# Reading an Anthropic provider's answer.


def anthropic_message(**fields: Any) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
        **fields,
    }


def test_answer_usage_counts_cache_reads_and_writes_as_input() -> None:
    body = anthropic_message(
        usage={
            "input_tokens": 10,
            "output_tokens": 50,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 7,
            "output_tokens_details": {"thinking_tokens": 20},
        }
    )
    SdkMessage.model_validate(body)
    assert messages.read_answer(body).usage == Usage(
        input_tokens=117,
        output_tokens=50,
        cache_read_tokens=100,
        cache_write_tokens=7,
        reasoning_tokens=20,
    )


def test_answer_blocks_and_stop_reasons() -> None:
    body = anthropic_message(
        content=[
            {"type": "thinking", "thinking": "so", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}},
        ],
        stop_reason="tool_use",
    )
    answer = messages.read_answer(SdkMessage.model_validate(body).to_dict())
    assert answer.parts == (
        Reasoning("so", "sig"),
        Reasoning("", "opaque", redacted=True),
        Text("Calling."),
        ToolCall("toolu_1", "f", '{"x":1}'),
    )
    assert (answer.id, answer.model, answer.stop_reason) == (
        "msg_01",
        "claude-x",
        StopReason.TOOL_USE,
    )
    stopped = messages.read_answer(
        anthropic_message(stop_reason="stop_sequence", stop_sequence="##")
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == (StopReason.STOP_SEQUENCE, "##")
    for reason, expected in [
        ("refusal", StopReason.CONTENT_FILTER),
        ("max_tokens", StopReason.MAX_TOKENS),
        ("pause_turn", StopReason.MAX_TOKENS),
        ("model_context_window_exceeded", StopReason.MAX_TOKENS),
    ]:
        assert messages.read_answer(anthropic_message(stop_reason=reason)).stop_reason is expected


def test_a_malformed_answer_is_the_providers_error() -> None:
    with pytest.raises(UpstreamError):
        messages.read_answer({"id": "x"})
    with pytest.raises(UpstreamError):
        messages.read_answer(anthropic_message(content=[{"type": "server_tool_use", "id": "s"}]))


# Writing an answer for a Messages client.


def test_written_answer_is_an_sdk_message_with_anthropic_usage() -> None:
    answer = Answer(
        id="chatcmpl-9",
        model="gpt-x",
        parts=(
            Reasoning("thought"),
            Text("Let me look."),
            ToolCall("call_1", "find", '{"q": "x"}'),
            ToolCall("call_2", "noargs", ""),
        ),
        stop_reason=StopReason.TOOL_USE,
        usage=Usage(input_tokens=120, output_tokens=30, cache_read_tokens=100, reasoning_tokens=9),
    )
    written = SdkMessage.model_validate(messages.write_answer(answer, conversation()))
    assert written.id == "msg_chatcmpl-9"
    assert written.stop_reason == "tool_use"
    assert [block.type for block in written.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert written.content[2].input == {"q": "x"}  # type: ignore[union-attr]
    assert written.content[3].input == {}  # type: ignore[union-attr]
    assert written.usage.input_tokens == 20
    assert written.usage.cache_read_input_tokens == 100
    assert written.usage.output_tokens_details is not None
    assert written.usage.output_tokens_details.thinking_tokens == 9


def test_written_answer_names_the_stop_sequence() -> None:
    answer = Answer("a", "m", (Text("x"),), StopReason.STOP_SEQUENCE, stop_sequence="##")
    written = SdkMessage.model_validate(messages.write_answer(answer, conversation()))
    assert (written.stop_reason, written.stop_sequence) == ("stop_sequence", "##")
    refused = Answer("a", "m", (Text("no"),), StopReason.CONTENT_FILTER)
    assert messages.write_answer(refused, conversation())["stop_reason"] == "refusal"


def test_broken_tool_arguments_from_a_provider_are_a_bad_gateway() -> None:
    answer = Answer("a", "m", (ToolCall("call_1", "f", '{"q": '),), StopReason.TOOL_USE)
    with pytest.raises(UpstreamError) as failed:
        messages.write_answer(answer, conversation())
    assert failed.value.status == 502
    assert "call_1" in failed.value.message


# Errors.


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_errors_are_written_with_anthropics_type_for_the_status(
    status: int, error_type: str
) -> None:
    error = ProviderError(status, "upstream said no", "server_error", code="x")
    written = ErrorResponse.model_validate(messages.write_error(error))
    assert (written.error.type, written.error.message) == (error_type, "upstream said no")


def test_provider_errors_are_read_from_anthropics_shape_or_kept_as_text() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert messages.read_error(529, body) == ProviderError(529, "Overloaded", "overloaded_error")
    assert messages.read_error(502, b"<html>bad gateway</html>") == ProviderError(
        502, "<html>bad gateway</html>", "api_error"
    )
    assert messages.read_error(429, b"").error_type == "rate_limit_error"


# Reading an Anthropic provider's stream.


def anthropic_sse(*bodies: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (body["type"].encode(), orjson.dumps(body)) for body in bodies
    )


def block_delta(index: int, **delta: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


# As Anthropic documents its streams: ping, thinking with a signature, text, tool calls.
DOCUMENTED_STREAM = anthropic_sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-x",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 3,
                "output_tokens": 1,
            },
        },
    },
    {"type": "ping"},
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    block_delta(0, type="thinking_delta", thinking="Let me"),
    block_delta(0, type="signature_delta", signature="EqQB"),
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    block_delta(1, type="text_delta", text="Okay"),
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    },
    block_delta(2, type="input_json_delta", partial_json=""),
    block_delta(2, type="input_json_delta", partial_json='{"city": "Par'),
    block_delta(2, type="input_json_delta", partial_json='is"}'),
    {"type": "content_block_stop", "index": 2},
    {
        "type": "content_block_start",
        "index": 3,
        "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    },
    {"type": "content_block_stop", "index": 3},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 89},
    },
    {"type": "message_stop"},
)


def test_a_provider_stream_reads_as_ir_blocks_with_usage() -> None:
    for name, body in stream_events(DOCUMENTED_STREAM):
        if name != "ping":
            STREAM_EVENT.validate_python(body)
    start_usage = Usage(
        input_tokens=128, output_tokens=1, cache_read_tokens=100, cache_write_tokens=3
    )
    assert read_stream(DOCUMENTED_STREAM) == [
        StreamStarted("msg_1", "claude-x", usage=start_usage),
        BlockOpened(0, BlockKind.REASONING),
        BlockDelta(0, text="Let me"),
        BlockDelta(0, signature="EqQB"),
        BlockClosed(0),
        BlockOpened(1, BlockKind.TEXT),
        BlockDelta(1, text="Okay"),
        BlockClosed(1),
        BlockOpened(2, BlockKind.TOOL_CALL, "toolu_1", "get_weather"),
        BlockDelta(2, text='{"city": "Par'),
        BlockDelta(2, text='is"}'),
        BlockClosed(2),
        BlockOpened(3, BlockKind.TOOL_CALL, "toolu_2", "now"),
        BlockDelta(3, text="{}"),  # a call without arguments has the empty object
        BlockClosed(3),
        UsageReported(
            Usage(input_tokens=128, output_tokens=89, cache_read_tokens=100, cache_write_tokens=3)
        ),
        StreamStopped(StopReason.TOOL_USE),
    ]


def test_stream_reader_numbers_blocks_itself_and_closes_them_at_the_stop() -> None:
    reader = messages.StreamReader()
    start = {
        "type": "message_start",
        "message": anthropic_message(content=[], usage={"input_tokens": 1, "output_tokens": 0}),
    }
    events: list[StreamEvent] = []
    for body in [
        start,
        {"type": "content_block_start", "index": 5, "content_block": {"type": "text", "text": "a"}},
        {
            "type": "content_block_start",
            "index": 9,
            "content_block": {"type": "redacted_thinking", "data": "zz"},
        },
        {"type": "content_block_delta", "index": 5, "delta": {"type": "text_delta", "text": "b"}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 3},
        },
    ]:
        events.extend(reader.feed(sse(body)))
    assert events[1:] == [
        BlockOpened(0, BlockKind.TEXT),
        BlockDelta(0, text="a"),
        BlockOpened(1, BlockKind.REASONING),
        BlockDelta(1, signature="zz"),
        BlockDelta(0, text="b"),
        UsageReported(Usage(input_tokens=1, output_tokens=3)),
        BlockClosed(0),
        BlockClosed(1),
        StreamStopped(StopReason.END_TURN),
    ]
    assert reader.feed(sse({"type": "message_stop"})) == []
    assert reader.end() == []


def sse(body: dict[str, Any]) -> Any:
    from sopy.translation.sse import SseEvent

    return SseEvent(body["type"], orjson.dumps(body))


def test_an_error_event_fails_the_stream() -> None:
    data = DOCUMENTED_STREAM.split(b"event: content_block_start")[0] + anthropic_sse(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    events = read_stream(data)
    assert events[-1] == StreamFailed("Overloaded", "overloaded_error")
    assert len([event for event in events if isinstance(event, StreamFailed)]) == 1


def test_a_stream_that_breaks_off_closes_its_blocks_and_fails() -> None:
    data = DOCUMENTED_STREAM.split(b"event: content_block_stop")[0]
    events = read_stream(data)
    assert events[-2:] == [
        BlockClosed(0),
        StreamFailed("the provider's stream ended before the answer was complete"),
    ]


def test_a_malformed_event_fails_the_stream() -> None:
    reader = messages.StreamReader()
    from sopy.translation.sse import SseEvent

    failed = reader.feed(
        SseEvent("content_block_delta", b'{"type":"content_block_delta","index":0')
    )
    assert len(failed) == 1 and isinstance(failed[0], StreamFailed)
    assert reader.end() == []


# Writing a stream for a Messages client.


def write_stream(events: Sequence[StreamEvent], request_: Conversation | None = None) -> bytes:
    writer = messages.StreamWriter(request_ or conversation())
    return writer.write(events) + writer.finish()


def test_two_tool_calls_interleaved_by_a_chat_provider_are_written_one_after_the_other() -> None:
    events: list[StreamEvent] = [
        StreamStarted("chatcmpl-1", "gpt-x"),
        BlockOpened(0, BlockKind.TEXT),
        BlockDelta(0, text="Checking both."),
        BlockClosed(0),
        BlockOpened(1, BlockKind.TOOL_CALL, "call_a", "weather"),
        BlockOpened(2, BlockKind.TOOL_CALL, "call_b", "time"),
        BlockDelta(1, text='{"city":'),
        BlockDelta(2, text='{"zone":'),
        BlockDelta(2, text='"UTC"}'),
        BlockClosed(2),
        BlockDelta(1, text='"Paris"}'),
        BlockClosed(1),
        StreamStopped(StopReason.TOOL_USE),
        UsageReported(Usage(input_tokens=50, output_tokens=20, cache_read_tokens=40)),
    ]
    data = write_stream(events)
    message = sdk_message(data)
    assert message.id == "msg_chatcmpl-1"
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].id == "call_a"  # type: ignore[union-attr]
    assert message.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.content[2].input == {"zone": "UTC"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 20)
    assert message.usage.cache_read_input_tokens == 40


def test_blocks_still_open_at_the_stop_are_closed_before_message_delta() -> None:
    data = write_stream(
        [
            StreamStarted("c", "gpt-x"),
            BlockOpened(0, BlockKind.TOOL_CALL, "call_a", "a"),
            BlockOpened(1, BlockKind.TOOL_CALL, "call_b", "b"),
            BlockDelta(1, text="{}"),
            BlockDelta(0, text='{"x": 1}'),
            StreamStopped(StopReason.TOOL_USE),
        ]
    )
    message = sdk_message(data)
    inputs = [block.input for block in message.content]  # type: ignore[union-attr]
    assert inputs == [{"x": 1}, {}]


def test_message_delta_waits_for_the_usage_that_follows_the_stop() -> None:
    writer = messages.StreamWriter(conversation())
    head = writer.write(
        [
            StreamStarted("c", "gpt-x"),
            BlockOpened(0, BlockKind.TEXT),
            BlockDelta(0, text="hi"),
            BlockClosed(0),
            StreamStopped(StopReason.END_TURN),
        ]
    )
    assert b"message_delta" not in head
    tail = writer.write([UsageReported(Usage(input_tokens=3, output_tokens=1))])
    assert [name for name, _ in stream_events(tail)] == ["message_delta", "message_stop"]
    assert writer.finish() == b""
    assert sdk_message(head + tail).usage.output_tokens == 1


def test_without_usage_the_stream_ends_at_finish() -> None:
    writer = messages.StreamWriter(conversation())
    head = writer.write([StreamStarted("c", ""), StreamStopped(StopReason.MAX_TOKENS)])
    message = sdk_message(head + writer.finish())
    assert (message.model, message.stop_reason, message.content) == ("gpt-x", "max_tokens", [])


def test_a_failed_or_unfinished_stream_ends_with_an_error_event() -> None:
    failed = write_stream(
        [
            StreamStarted("c", "m"),
            BlockOpened(0, BlockKind.TEXT),
            StreamFailed("boom", "server_error"),
        ]
    )
    name, body = stream_events(failed)[-1]
    assert name == "error"
    assert ErrorResponse.model_validate(body).error.type == "api_error"
    unfinished = write_stream([StreamStarted("c", "m"), BlockOpened(0, BlockKind.TEXT)])
    name, body = stream_events(unfinished)[-1]
    assert name == "error"
    ErrorResponse.model_validate(body)


# Properties.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
texts = st.text(min_size=1, max_size=20)
images = st.builds(
    Image,
    st.one_of(
        st.builds(
            lambda media_type, data: f"data:{media_type};base64,{base64.b64encode(data).decode()}",
            st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]),
            st.binary(max_size=12),
        ),
        st.builds(lambda path: f"https://images.test/{path}.png", st.text("abc", max_size=5)),
    ),
)
tool_calls = st.builds(
    ToolCall, texts, texts, json_objects.map(lambda value: orjson.dumps(value).decode())
)
reasonings = st.one_of(
    st.builds(Reasoning, st.text(max_size=20), texts),
    st.builds(lambda data: Reasoning("", data, redacted=True), texts),
)
tool_results = st.builds(
    ToolResult,
    texts,
    st.lists(st.builds(Text, texts) | images, max_size=2).map(tuple),
    st.booleans(),
)
user_messages = st.builds(
    lambda results, others: Message(Role.USER, (*results, *others)),
    st.lists(tool_results, max_size=2),
    st.lists(st.builds(Text, texts) | images, max_size=3),
).filter(lambda message: message.parts)
assistant_messages = st.builds(
    Message,
    st.just(Role.ASSISTANT),
    st.lists(st.builds(Text, texts) | tool_calls | reasonings, min_size=1, max_size=4).map(tuple),
)
tool_choices = st.one_of(
    st.none(),
    st.builds(ToolChoice, st.just(ToolChoiceMode.NONE)),
    st.builds(
        ToolChoice,
        st.sampled_from([ToolChoiceMode.AUTO, ToolChoiceMode.REQUIRED]),
        st.none(),
        st.none() | st.booleans(),
    ),
    st.builds(ToolChoice, st.just(ToolChoiceMode.NAMED), texts, st.none() | st.booleans()),
)
floats = st.none() | st.floats(0, 1)
expressible_conversations = st.builds(
    Conversation,
    model=texts,
    messages=st.lists(user_messages | assistant_messages, max_size=4).map(tuple),
    system=st.none() | texts,
    tools=st.lists(
        st.builds(FunctionTool, texts, st.none() | texts, json_objects, st.none() | st.booleans()),
        max_size=2,
    ).map(tuple),
    tool_choice=tool_choices,
    max_output_tokens=st.integers(1, 100_000),
    temperature=floats,
    top_p=floats,
    stop=st.lists(texts, max_size=2).map(tuple),
    stream=st.booleans(),
    response_format=st.none()
    | st.builds(JsonSchemaFormat, st.just(messages.RESPONSE_FORMAT_NAME), json_objects),
    reasoning_budget=st.none() | st.integers(1024, 50_000),
    user=st.none() | texts,
)


@PROPERTY_SETTINGS
@given(expressible_conversations)
def test_requests_survive_a_write_read_round_trip(conversation_: Conversation) -> None:
    body = messages.write_request(conversation_)
    valid_create_params({key: value for key, value in body.items() if key != "stream"})
    assert messages.read_request(orjson.loads(orjson.dumps(body))) == conversation_


@st.composite
def ir_streams(draw: st.DrawFn, interleaved: bool) -> list[StreamEvent]:
    """An IR stream as a provider's reader gives it: blocks opened in index order, their
    deltas and closes interleaved at will (or one block after the other)."""
    kinds = draw(st.lists(st.sampled_from(list(BlockKind)), max_size=4))
    per_block: list[list[StreamEvent]] = []
    for index, kind in enumerate(kinds):
        if kind is BlockKind.TOOL_CALL:
            arguments = orjson.dumps(draw(json_objects)).decode()
            cuts = sorted(draw(st.lists(st.integers(0, len(arguments)), max_size=3)))
            pieces = [
                arguments[a:b] for a, b in zip([0, *cuts], [*cuts, len(arguments)], strict=True)
            ]
            opened = BlockOpened(index, kind, draw(texts), draw(texts))
        else:
            pieces = draw(st.lists(st.text(max_size=10), max_size=3))
            opened = BlockOpened(index, kind)
        block: list[StreamEvent] = [opened, *(BlockDelta(index, text=piece) for piece in pieces)]
        if kind is BlockKind.REASONING and draw(st.booleans()):
            block.append(BlockDelta(index, signature=draw(texts)))
        per_block.append([*block, BlockClosed(index)])
    events: list[StreamEvent] = [StreamStarted(draw(texts), draw(texts))]
    if interleaved:
        opened_count = 0
        while any(per_block):
            ready = [
                index
                for index, block in enumerate(per_block)
                if block and (index < opened_count or index == opened_count)
            ]
            chosen = draw(st.sampled_from(ready))
            if chosen == opened_count:
                opened_count += 1
            events.append(per_block[chosen].pop(0))
    else:
        events.extend(event for block in per_block for event in block)
    uncached, cache_read, cache_write, output = (draw(st.integers(0, 1000)) for _ in range(4))
    usage = Usage(
        input_tokens=uncached + cache_read + cache_write,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=draw(st.integers(0, output)),
    )
    stop = StreamStopped(draw(st.sampled_from(list(StopReason))))
    events.extend(
        [stop, UsageReported(usage)] if draw(st.booleans()) else [UsageReported(usage), stop]
    )
    return events


def blocks_of(
    events: Sequence[StreamEvent],
) -> list[tuple[BlockKind, str | None, str | None, str, str | None]]:
    """Each block's kind, call id, name, text and last signature, in order of opening."""
    blocks: dict[int, list[Any]] = {}
    for event in events:
        if isinstance(event, BlockOpened):
            blocks[event.index] = [event.kind, event.call_id, event.name, "", None]
        elif isinstance(event, BlockDelta):
            blocks[event.index][3] += event.text
            if event.signature is not None:
                blocks[event.index][4] = event.signature
    return [tuple(blocks[index]) for index in sorted(blocks)]  # type: ignore[misc]


@PROPERTY_SETTINGS
@given(ir_streams(interleaved=True))
def test_any_ir_stream_is_written_as_a_stream_the_sdk_accepts(events: list[StreamEvent]) -> None:
    message = sdk_message(write_stream(events))
    expected = blocks_of(events)
    assert len(message.content) == len(expected)
    for block, (kind, call_id, name, text, signature) in zip(
        message.content, expected, strict=True
    ):
        if kind is BlockKind.TEXT:
            assert block.type == "text" and block.text == text
        elif kind is BlockKind.REASONING:
            assert block.type == "thinking" and block.thinking == text
            assert block.signature == (signature or "")
        else:
            assert block.type == "tool_use"
            assert (block.id, block.name, block.input) == (call_id, name, orjson.loads(text))
    usage = next(event.usage for event in events if isinstance(event, UsageReported))
    assert message.usage.output_tokens == usage.output_tokens
    assert (
        message.usage.input_tokens
        == usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    )


@PROPERTY_SETTINGS
@given(ir_streams(interleaved=False), st.data())
def test_a_provider_stream_split_anywhere_reads_the_same(
    events: list[StreamEvent], data: st.DataObject
) -> None:
    stream = write_stream(events)
    whole = read_stream(stream)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    assert read_stream(stream, cuts) == whole
    # And the IR read back is the IR written: the same blocks, stop and usage.
    read_blocks = blocks_of(whole)
    for (kind, call_id, name, text, signature), read in zip(
        blocks_of(events), read_blocks, strict=True
    ):
        if kind is BlockKind.TOOL_CALL and not text:
            text = "{}"
        assert (kind, call_id, name, text, signature) == read
    stop = next(event for event in events if isinstance(event, StreamStopped))
    assert [event for event in whole if isinstance(event, StreamStopped)] == [stop]
    usage = next(event.usage for event in events if isinstance(event, UsageReported))
    assert [event.usage for event in whole if isinstance(event, UsageReported)] == [usage]
