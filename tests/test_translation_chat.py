"""The Chat Completions codec (`sopy.translation.chat`): a chat client's request into the
internal representation and a chat provider's request out of it, answers and streams both ways,
errors. What it writes is checked with the `openai` SDK's own types; the stream reader is
checked against every way of cutting a stream into chunks.

CI runs a bounded number of examples; set SOPY_FUZZ_EXAMPLES for a longer run (see README).
"""

import os
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params

from sopy.errors import InvalidRequest, UpstreamError
from sopy.translation import chat
from sopy.translation.items import (
    Answer,
    BlockClosed,
    BlockDelta,
    BlockKind,
    BlockOpened,
    Conversation,
    FunctionTool,
    Image,
    JsonObject,
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
from sopy.translation.sse import SseReader

EXAMPLES = int(os.environ.get("SOPY_FUZZ_EXAMPLES", "100"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

IMAGE = "data:image/png;base64,iVBORw0KGgo="


def chat_request(*messages: JsonObject, **fields: Any) -> JsonObject:
    return {"model": "gpt-test", "messages": list(messages), **fields}


def user(content: Any) -> JsonObject:
    return {"role": "user", "content": content}


def read_stream(data: bytes, cuts: Iterable[int] = ()) -> list[StreamEvent]:
    """A provider's stream through `SseReader` and `chat.StreamReader`, cut at `cuts`."""
    sse = SseReader()
    reader = chat.StreamReader()
    events: list[StreamEvent] = []
    start = 0
    for end in [*cuts, len(data)]:
        for event in sse.feed(data[start:end]):
            events.extend(reader.feed(event))
        start = end
    events.extend(reader.end())
    return events


def sse(*chunks: JsonObject | str) -> bytes:
    return b"".join(
        b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n\n"
        for c in chunks
    )


def chunk(delta: JsonObject | None = None, finish: str | None = None, **extra: Any) -> JsonObject:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
        **extra,
    }


def client_chunks(data: bytes) -> list[JsonObject | str]:
    """What a chat client reads from a stream: each event's data, parsed."""
    out: list[JsonObject | str] = []
    for event in SseReader().feed(data):
        text = event.data.decode()
        out.append(text if text == "[DONE]" else orjson.loads(event.data))
    return out


# --- a client's request ---------------------------------------------------------------------


def test_system_and_developer_messages_join_into_the_system_prompt() -> None:
    conversation = chat.read_request(
        chat_request(
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            user("Hi"),
        )
    )
    assert conversation.system == "Be brief.\n\nAnswer in French."
    assert conversation.messages == (Message(Role.USER, (Text("Hi"),)),)


def test_a_system_message_after_the_conversation_began_is_untranslatable() -> None:
    body = chat_request(user("Hi"), {"role": "system", "content": "Now be rude."})
    with pytest.raises(UntranslatableField) as raised:
        chat.read_request(body)
    assert raised.value.param == "messages[1].role"
    assert raised.value.status == 400


def test_tool_messages_join_one_user_message_with_the_user_message_after_them() -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    conversation = chat.read_request(
        chat_request(
            user("Use tools"),
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "one", "name": "f"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
            user("Thanks; and now?"),
            {"role": "assistant", "content": "Done."},
        )
    )
    assert conversation.messages == (
        Message(Role.USER, (Text("Use tools"),)),
        Message(
            Role.ASSISTANT,
            (ToolCall("c1", "f", '{"a":1}'), ToolCall("c2", "g", "{}")),
        ),
        Message(
            Role.USER,
            (
                ToolResult("c1", (Text("one"),)),
                ToolResult("c2", (Text("two"),)),
                Text("Thanks; and now?"),
            ),
        ),
        Message(Role.ASSISTANT, (Text("Done."),)),
    )


def test_tool_messages_before_an_assistant_message_are_a_user_message_of_their_own() -> None:
    conversation = chat.read_request(
        chat_request(
            {"role": "tool", "tool_call_id": "c1", "content": "out"},
            {"role": "assistant", "content": "ok"},
        )
    )
    assert conversation.messages == (
        Message(Role.USER, (ToolResult("c1", (Text("out"),)),)),
        Message(Role.ASSISTANT, (Text("ok"),)),
    )


def test_user_content_parts_keep_text_and_images_in_order() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    conversation = chat.read_request(chat_request(user(content)))
    assert conversation.messages[0].parts == (
        Text("What is this?"),
        Image(IMAGE, "low"),
        Image("https://example.com/a.png"),
    )


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ],
)
def test_audio_and_file_parts_are_untranslatable(part: JsonObject) -> None:
    with pytest.raises(UntranslatableField) as raised:
        chat.read_request(chat_request(user([{"type": "text", "text": "hi"}, part])))
    assert raised.value.param == "messages[0].content[1].type"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"top_k": 5}, "top_k"),
        ({"messages": [{"role": "user", "content": "Hi", "name": "ann"}]}, "messages[0].name"),
    ],
)
def test_fields_that_would_change_the_answer_are_refused_by_name(
    fields: JsonObject, param: str
) -> None:
    with pytest.raises(UntranslatableField) as raised:
        chat.read_request(chat_request(user("Hi"), **fields))
    assert raised.value.param == param
    assert param in raised.value.message


def test_neutral_values_and_fields_that_do_not_change_the_answer_are_accepted() -> None:
    body = chat_request(
        user("Hi"),
        n=1,
        logprobs=False,
        modalities=["text"],
        frequency_penalty=0,
        presence_penalty=0.0,
        logit_bias={},
        metadata={"a": "b"},
        store=False,
        service_tier="auto",
        seed=7,
        user="end-user-1",
    )
    conversation = chat.read_request(body)
    assert conversation.user == "end-user-1"


def test_max_completion_tokens_and_max_tokens_both_set_the_limit() -> None:
    def limit(**fields: Any) -> int | None:
        return chat.read_request(chat_request(user("Hi"), **fields)).max_output_tokens

    assert limit() is None
    assert limit(max_tokens=50) == 50
    assert limit(max_completion_tokens=60) == 60
    assert limit(max_tokens=70, max_completion_tokens=70) == 70
    with pytest.raises(InvalidRequest) as raised:
        limit(max_tokens=70, max_completion_tokens=80)
    assert raised.value.param == "max_tokens"
    with pytest.raises(InvalidRequest) as raised:
        limit(max_tokens=0)
    assert raised.value.param == "max_tokens"


def test_stop_is_a_string_or_a_list() -> None:
    assert chat.read_request(chat_request(user("Hi"), stop="END")).stop == ("END",)
    assert chat.read_request(chat_request(user("Hi"), stop=["a", "b"])).stop == ("a", "b")
    with pytest.raises(InvalidRequest) as raised:
        chat.read_request(chat_request(user("Hi"), stop=["a", 1]))
    assert raised.value.param == "stop[1]"


def test_response_formats() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}

    def response_format(value: JsonObject) -> JsonSchemaFormat | None:
        return chat.read_request(chat_request(user("Hi"), response_format=value)).response_format

    assert response_format({"type": "text"}) is None
    assert response_format({"type": "json_object"}) == JsonSchemaFormat(chat.JSON_OBJECT_FORMAT)
    assert response_format(
        {"type": "json_schema", "json_schema": {"name": "X", "schema": schema, "strict": True}}
    ) == JsonSchemaFormat("X", schema, strict=True)


def test_tools_and_tool_choice() -> None:
    tool = {
        "type": "function",
        "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}},
    }
    conversation = chat.read_request(
        chat_request(
            user("Hi"),
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "weather"}},
            parallel_tool_calls=False,
        )
    )
    assert conversation.tools == (FunctionTool("weather", "d", {"type": "object"}),)
    assert conversation.tool_choice == ToolChoice(ToolChoiceMode.NAMED, "weather", False)
    for mode in ("auto", "none", "required"):
        body = chat_request(user("Hi"), tools=[tool], tool_choice=mode)
        assert chat.read_request(body).tool_choice == ToolChoice(ToolChoiceMode(mode))
    with pytest.raises(UntranslatableField) as raised:
        chat.read_request(
            chat_request(user("Hi"), tools=[tool, {"type": "custom", "custom": {"name": "x"}}])
        )
    assert raised.value.param == "tools[1].type"


def test_wants_stream_usage_reads_stream_options() -> None:
    assert chat.wants_stream_usage({"stream": True, "stream_options": {"include_usage": True}})
    assert not chat.wants_stream_usage({"stream": True})
    assert not chat.wants_stream_usage({"stream": True, "stream_options": {}})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": "Hi"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"messages": [user("Hi")]}, "model"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [user([{"type": "video"}])]}, "messages[0].content[0].type"),
        ({"model": "m", "messages": [user("Hi")], "temperature": "hot"}, "temperature"),
    ],
)
def test_malformed_requests_name_the_field(body: JsonObject, param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        chat.read_request(body)
    assert raised.value.param == param
    assert not isinstance(raised.value, UntranslatableField)


# --- a provider's request -------------------------------------------------------------------


def validated_request(body: JsonObject) -> JsonObject:
    """`body` as the `openai` SDK's request type takes it (its messages and tools checked)."""
    params_type = (
        completion_create_params.CompletionCreateParamsStreaming
        if body.get("stream")
        else completion_create_params.CompletionCreateParamsNonStreaming
    )
    validated: JsonObject = pydantic.TypeAdapter(params_type).validate_python(body)
    list(validated["messages"])
    list(validated.get("tools", ()))
    return validated


def test_provider_request_uses_max_tokens_and_asks_for_stream_usage() -> None:
    conversation = Conversation(
        model="llama",
        messages=(Message(Role.USER, (Text("Hi"),)),),
        system="Be brief.",
        max_output_tokens=100,
        stream=True,
    )
    body = chat.write_request(conversation)
    validated_request(body)
    assert body == {
        "model": "llama",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 100,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_reasoning_effort_is_sent_only_when_set() -> None:
    base = Conversation(model="m", messages=(Message(Role.USER, (Text("Hi"),)),))
    assert "reasoning_effort" not in chat.write_request(base)
    assert "reasoning_effort" not in chat.write_request(attrs.evolve(base, reasoning_budget=2048))
    body = chat.write_request(attrs.evolve(base, reasoning_effort="low"))
    assert body["reasoning_effort"] == "low"


def test_tool_results_become_tool_messages_and_their_images_follow_in_a_user_message() -> None:
    conversation = Conversation(
        model="m",
        messages=(
            Message(Role.USER, (Text("Look at the file"),)),
            Message(
                Role.ASSISTANT,
                (
                    Reasoning("I should read it", signature="sig"),
                    Text("Reading."),
                    ToolCall("c1", "read", '{"path":"a.png"}'),
                    ToolCall("c2", "read", '{"path":"b.txt"}'),
                ),
            ),
            Message(
                Role.USER,
                (
                    ToolResult("c1", (Text("an image:"), Image(IMAGE))),
                    ToolResult("c2", (Text("line 1"), Text("line 2")), is_error=True),
                    Text("What do you see?"),
                ),
            ),
        ),
    )
    body = chat.write_request(conversation)
    validated_request(body)
    assert body["messages"] == [
        {"role": "user", "content": "Look at the file"},
        {
            "role": "assistant",
            "content": "Reading.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"path":"a.png"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"path":"b.txt"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "an image:"},
        {"role": "tool", "tool_call_id": "c2", "content": "line 1\n\nline 2"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": IMAGE}},
                {"type": "text", "text": "What do you see?"},
            ],
        },
    ]


def test_tool_choice_is_sent_only_with_tools() -> None:
    message = Message(Role.USER, (Text("Hi"),))
    without_tools = Conversation(
        model="m", messages=(message,), tool_choice=ToolChoice(ToolChoiceMode.AUTO, parallel=False)
    )
    assert "tool_choice" not in chat.write_request(without_tools)
    with_tools = attrs.evolve(
        without_tools,
        tools=(FunctionTool("f"),),
        tool_choice=ToolChoice(ToolChoiceMode.NAMED, "f", parallel=False),
    )
    body = chat.write_request(with_tools)
    validated_request(body)
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["parallel_tool_calls"] is False
    assert body["tools"] == [{"type": "function", "function": {"name": "f"}}]


def test_an_image_in_an_assistant_message_is_untranslatable() -> None:
    conversation = Conversation(
        model="m",
        messages=(Message(Role.ASSISTANT, (Text("here"), Image(IMAGE))),),
    )
    with pytest.raises(UntranslatableField) as raised:
        chat.write_request(conversation)
    assert raised.value.param == "messages[0].content[1]"


names = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8)
texts = st.text(min_size=1, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)
images = st.builds(
    Image,
    url=st.sampled_from([IMAGE, "https://example.com/a.png"]),
    detail=st.none() | st.sampled_from(["auto", "low", "high"]),
)


@st.composite
def user_messages(draw: st.DrawFn) -> Message:
    results = draw(
        st.lists(
            st.builds(
                ToolResult, call_id=names, content=st.tuples() | st.tuples(st.builds(Text, texts))
            ),
            max_size=2,
        )
    )
    others = draw(st.lists(st.builds(Text, texts) | images, max_size=3))
    return Message(Role.USER, (*results, *others))


@st.composite
def assistant_messages(draw: st.DrawFn) -> Message:
    text = draw(st.lists(st.builds(Text, texts), max_size=1))
    calls = draw(st.lists(st.builds(ToolCall, names, names, st.text(max_size=10)), max_size=2))
    return Message(Role.ASSISTANT, (*text, *calls))


@st.composite
def expressible_conversations(draw: st.DrawFn) -> Conversation:
    """Conversations the chat format carries whole: user and assistant turns alternate (chat
    merges a user message into the tool results before it), at most one text per assistant turn
    and tool result, no reasoning, images or errors in tool results."""
    turns = draw(st.integers(1, 5))
    messages = tuple(
        draw(user_messages() if turn % 2 == 0 else assistant_messages()) for turn in range(turns)
    )
    tools = draw(
        st.lists(
            st.builds(
                FunctionTool,
                name=names,
                description=st.none() | texts,
                parameters=st.none() | st.dictionaries(names, json_values, max_size=3),
                strict=st.none() | st.booleans(),
            ),
            max_size=2,
        )
    )
    tool_choice = None
    if tools:
        mode = draw(st.none() | st.sampled_from(ToolChoiceMode))
        if mode is not None:
            tool_choice = ToolChoice(
                mode,
                name=tools[0].name if mode is ToolChoiceMode.NAMED else None,
                parallel=draw(st.none() | st.booleans()),
            )
    response_format = draw(
        st.none()
        | st.just(JsonSchemaFormat(chat.JSON_OBJECT_FORMAT))
        | st.builds(
            JsonSchemaFormat,
            name=names,
            schema=st.dictionaries(names, json_values, max_size=3),
            strict=st.none() | st.booleans(),
            description=st.none() | texts,
        )
    )
    return Conversation(
        model=draw(names),
        messages=messages,
        system=draw(st.none() | st.text(max_size=12)),
        tools=tuple(tools),
        tool_choice=tool_choice,
        max_output_tokens=draw(st.none() | st.integers(1, 100_000)),
        temperature=draw(st.none() | st.floats(0, 2)),
        top_p=draw(st.none() | st.floats(0, 1)),
        stop=tuple(draw(st.lists(texts, max_size=3))),
        stream=draw(st.booleans()),
        response_format=response_format,
        reasoning_effort=draw(st.none() | st.sampled_from(["minimal", "low", "medium", "high"])),
        user=draw(st.none() | names),
    )


@PROPERTY_SETTINGS
@given(expressible_conversations())
def test_a_written_request_reads_back_as_the_same_conversation(conversation: Conversation) -> None:
    body = orjson.loads(orjson.dumps(chat.write_request(conversation)))
    validated_request(body)
    assert chat.read_request(body) == conversation


# --- a provider's answer --------------------------------------------------------------------


def completion(message: JsonObject, finish: str = "stop", **extra: Any) -> JsonObject:
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        **extra,
    }


def test_answer_with_reasoning_tool_calls_and_cache_usage() -> None:
    body = completion(
        {
            "role": "assistant",
            "reasoning_content": "think",
            "reasoning": "think",
            "content": "Calling.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{x"}},
            ],
        },
        finish="tool_calls",
        usage={
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
    )
    answer = chat.read_answer(body)
    assert answer == Answer(
        id="chatcmpl-9",
        model="m",
        parts=(
            Reasoning("think"),
            Text("Calling."),
            ToolCall("c1", "f", "{}"),
            ToolCall("c2", "g", "{x"),
        ),
        stop_reason=StopReason.TOOL_USE,
        usage=Usage(100, 20, cache_read_tokens=60, cache_write_tokens=30, reasoning_tokens=5),
        created=1700000000,
    )


@pytest.mark.parametrize(
    ("message", "finish", "extra", "stop"),
    [
        ({"content": "a"}, "stop", {}, (StopReason.END_TURN, None)),
        ({"content": "a"}, "length", {}, (StopReason.MAX_TOKENS, None)),
        ({"content": "a"}, "content_filter", {}, (StopReason.CONTENT_FILTER, None)),
        ({"content": "a"}, "stop", {"stop_reason": "END"}, (StopReason.STOP_SEQUENCE, "END")),
        (
            {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
            "stop",
            {},
            (StopReason.TOOL_USE, None),
        ),
    ],
)
def test_finish_reasons(
    message: JsonObject, finish: str, extra: JsonObject, stop: tuple[StopReason, str | None]
) -> None:
    body = completion({"role": "assistant", **message}, finish)
    body["choices"][0].update(extra)
    answer = chat.read_answer(body)
    assert (answer.stop_reason, answer.stop_sequence) == stop


def test_deepseek_cache_hits_and_ollama_reasoning_are_read() -> None:
    body = completion(
        {"role": "assistant", "reasoning": "hmm", "content": "x"},
        usage={"prompt_tokens": 10, "completion_tokens": 2, "prompt_cache_hit_tokens": 4},
    )
    answer = chat.read_answer(body)
    assert answer.parts == (Reasoning("hmm"), Text("x"))
    assert answer.usage == Usage(10, 2, cache_read_tokens=4)


def test_content_given_as_text_parts_and_a_refusal_are_read_as_text() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert chat.read_answer(completion({"role": "assistant", "content": parts})).parts == (
        Text("ab"),
    )
    refused = completion({"role": "assistant", "content": None, "refusal": "I can't."})
    assert chat.read_answer(refused).parts == (Text("I can't."),)
    data = sse(chunk({"content": [{"type": "text", "text": "a"}]}), chunk({"refusal": "b"}))
    assert read_stream(data)[1:3] == [BlockOpened(0, BlockKind.TEXT), BlockDelta(0, "a")]
    assert read_stream(data)[3] == BlockDelta(0, "b")


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "choices": []},
        {"choices": [{"finish_reason": "stop"}]},
        {"error": "x"},
        {"choices": [{"message": {"content": [{"type": "thinking", "thinking": []}]}}]},
        {"choices": [{"message": {"content": 5}}]},
    ],
)
def test_a_malformed_answer_is_an_upstream_error(body: JsonObject) -> None:
    with pytest.raises(UpstreamError):
        chat.read_answer(body)


# --- a provider's stream --------------------------------------------------------------------


def test_text_stream_with_finish_then_usage_then_done() -> None:
    data = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        {**chunk(), "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
        "[DONE]",
    )
    assert read_stream(data) == [
        StreamStarted("chatcmpl-1", "m", 1),
        BlockOpened(0, BlockKind.TEXT),
        BlockDelta(0, "Hel"),
        BlockDelta(0, "lo"),
        BlockClosed(0),
        StreamStopped(StopReason.END_TURN),
        UsageReported(Usage(5, 2)),
    ]


def test_two_parallel_tool_calls_interleaved_keep_their_blocks_straight() -> None:
    def call(index: int, **fields: Any) -> JsonObject:
        return chunk({"tool_calls": [{"index": index, **fields}]})

    data = sse(
        chunk({"role": "assistant", "reasoning_content": "plan"}),
        chunk({"content": "Two calls."}),
        call(1, id="b", type="function", function={"name": "g", "arguments": ""}),
        call(0, id="a", type="function", function={"name": "f", "arguments": '{"x"'}),
        call(1, function={"arguments": '{"y":'}),
        call(0, function={"arguments": ":1}"}),
        # A server that repeats id and name on a later delta.
        call(1, id="b", type="function", function={"name": "g", "arguments": "2}"}),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    assert read_stream(data) == [
        StreamStarted("chatcmpl-1", "m", 1),
        BlockOpened(0, BlockKind.REASONING),
        BlockDelta(0, "plan"),
        BlockClosed(0),
        BlockOpened(1, BlockKind.TEXT),
        BlockDelta(1, "Two calls."),
        BlockClosed(1),
        BlockOpened(2, BlockKind.TOOL_CALL, call_id="b", name="g"),
        BlockOpened(3, BlockKind.TOOL_CALL, call_id="a", name="f"),
        BlockDelta(3, '{"x"'),
        BlockDelta(2, '{"y":'),
        BlockDelta(3, ":1}"),
        BlockDelta(2, "2}"),
        BlockClosed(2),
        BlockClosed(3),
        StreamStopped(StopReason.TOOL_USE),
    ]


def test_whole_arguments_in_one_delta_and_calls_without_index() -> None:
    data = sse(
        chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x":1}'}}]}),
        chunk({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"function": {"arguments": ""}}]}),
        chunk({}, "stop"),
        "[DONE]",
    )
    assert read_stream(data) == [
        StreamStarted("chatcmpl-1", "m", 1),
        BlockOpened(0, BlockKind.TOOL_CALL, call_id="a", name="f"),
        BlockDelta(0, '{"x":1}'),
        BlockOpened(1, BlockKind.TOOL_CALL, call_id="b", name="g"),
        BlockDelta(1, "{}"),
        BlockClosed(0),
        BlockClosed(1),
        StreamStopped(StopReason.TOOL_USE),
    ]


def test_an_error_inside_the_stream_fails_it() -> None:
    data = sse(
        chunk({"content": "par"}),
        {"error": {"message": "overloaded", "type": "server_error"}},
        chunk({"content": "never"}),
    )
    assert read_stream(data) == [
        StreamStarted("chatcmpl-1", "m", 1),
        BlockOpened(0, BlockKind.TEXT),
        BlockDelta(0, "par"),
        BlockClosed(0),
        StreamFailed("overloaded", "server_error"),
    ]


def test_a_stream_that_breaks_off_closes_its_blocks_and_fails() -> None:
    events = read_stream(sse(chunk({"content": "par"})))
    assert events[-2:] == [BlockClosed(0), events[-1]]
    assert isinstance(events[-1], StreamFailed)


def test_a_provider_stream_cut_anywhere_reads_the_same() -> None:
    call = {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}
    data = b": keep-alive\r\n\r\n" + sse(
        chunk({"role": "assistant", "reasoning_content": "hm"}),
        chunk({"content": "caf\u00e9 "}),
        chunk({"tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"k": "\u00e9"}'}}]}),
        chunk({}, "tool_calls"),
        {**chunk(), "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
        "[DONE]",
    ).replace(b"\n", b"\r\n")
    whole = read_stream(data)
    assert [type(event).__name__ for event in whole] == [
        "StreamStarted",
        "BlockOpened",
        "BlockDelta",
        "BlockClosed",
        "BlockOpened",
        "BlockDelta",
        "BlockClosed",
        "BlockOpened",
        "BlockDelta",
        "BlockClosed",
        "StreamStopped",
        "UsageReported",
    ]
    for cut in range(len(data) + 1):
        assert read_stream(data, [cut]) == whole
    assert read_stream(data, range(len(data))) == whole


def test_an_error_event_fails_the_stream() -> None:
    data = sse(chunk({"content": "a"})) + b'event: error\ndata: {"message": "busy"}\n\n'
    assert read_stream(data)[-1] == StreamFailed("busy")


def test_a_stream_that_is_not_json_fails() -> None:
    events = read_stream(sse(chunk({"content": "a"}), "{not json"))
    assert isinstance(events[-1], StreamFailed)


def test_done_without_a_finish_reason_stops_the_stream() -> None:
    assert read_stream(sse(chunk({"content": "a"}), "[DONE]"))[-2:] == [
        BlockClosed(0),
        StreamStopped(StopReason.END_TURN),
    ]


def test_content_that_is_not_text_fails_the_stream() -> None:
    events = read_stream(sse(chunk({"content": [{"type": "image_url"}]})))
    assert isinstance(events[-1], StreamFailed)


def test_a_tool_call_without_a_name_fails_the_stream() -> None:
    events = read_stream(sse(chunk({"tool_calls": [{"index": 0, "id": "a"}]})))
    assert isinstance(events[-1], StreamFailed)


# --- a client's answer and stream -----------------------------------------------------------

REQUEST = Conversation(model="claude-x", messages=(Message(Role.USER, (Text("Hi"),)),))


def test_written_answer_is_a_valid_chat_completion() -> None:
    answer = Answer(
        id="msg_01",
        model="claude-x",
        parts=(Reasoning("think", "sig"), Text("Hello "), Text("there"), ToolCall("t1", "f", "{}")),
        stop_reason=StopReason.TOOL_USE,
        usage=Usage(10, 5, cache_read_tokens=3, cache_write_tokens=2, reasoning_tokens=1),
        created=1700000000,
    )
    body = chat.write_answer(answer, REQUEST)
    completion_ = ChatCompletion.model_validate(body)
    assert completion_.id == "chatcmpl-msg_01"
    message = completion_.choices[0].message
    assert message.content == "Hello there"
    assert message.tool_calls is not None and message.tool_calls[0].id == "t1"
    assert body["choices"][0]["message"]["reasoning_content"] == "think"
    assert completion_.choices[0].finish_reason == "tool_calls"
    assert completion_.usage is not None
    assert completion_.usage.prompt_tokens_details is not None
    assert completion_.usage.prompt_tokens_details.cached_tokens == 3
    # It reads back as one text, the reasoning without its signature.
    assert chat.read_answer(body) == attrs.evolve(
        answer,
        id="chatcmpl-msg_01",
        parts=(Reasoning("think"), Text("Hello there"), ToolCall("t1", "f", "{}")),
    )


def test_an_answer_without_tool_calls_or_reasoning_has_plain_content() -> None:
    answer = Answer("chatcmpl-a", "m", (), StopReason.MAX_TOKENS)
    body = chat.write_answer(answer, REQUEST)
    ChatCompletion.model_validate(body)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["model"] == "m"


def sdk_stream(data: bytes) -> tuple[list[ChatCompletionChunk], ChatCompletionStreamState]:
    """Every chunk of a written stream parsed by the SDK's chunk type, and the SDK's own
    accumulation of them; the stream must end with `[DONE]`."""
    state = ChatCompletionStreamState()
    chunks = []
    events = SseReader().feed(data)
    assert events[-1].data == b"[DONE]"
    for event in events[:-1]:
        parsed = ChatCompletionChunk.model_validate_json(event.data)
        chunks.append(parsed)
        list(state.handle_chunk(parsed))
    return chunks, state


def test_written_stream_numbers_tool_calls_in_the_order_they_open() -> None:
    writer = chat.StreamWriter(REQUEST, include_usage=True)
    data = writer.write(
        [
            StreamStarted("msg_1", "claude-x", 1700000000, usage=Usage(input_tokens=10)),
            BlockOpened(0, BlockKind.TEXT),
            BlockDelta(0, "Calling two."),
            BlockClosed(0),
            BlockOpened(1, BlockKind.TOOL_CALL, call_id="a", name="f"),
            BlockOpened(2, BlockKind.TOOL_CALL, call_id="b", name="g"),
            BlockDelta(2, '{"y":'),
            BlockDelta(1, '{"x":1}'),
            BlockDelta(2, "2}"),
            BlockClosed(1),
            BlockClosed(2),
            StreamStopped(StopReason.TOOL_USE),
        ]
    )
    data += writer.write([UsageReported(Usage(output_tokens=7))]) + writer.finish()
    chunks, state = sdk_stream(data)
    assert {c.id for c in chunks} == {"chatcmpl-msg_1"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (10, 7)
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    message = state.current_completion_snapshot.choices[0].message
    assert message.content == "Calling two."
    assert message.tool_calls is not None
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]  # type: ignore[union-attr]
    assert calls == [("a", "f", '{"x":1}'), ("b", "g", '{"y":2}')]


def test_written_stream_has_no_usage_chunk_unless_asked() -> None:
    writer = chat.StreamWriter(REQUEST, include_usage=False)
    data = writer.write(
        [StreamStarted("chatcmpl-7", "m"), StreamStopped(StopReason.END_TURN)]
    ) + writer.write([UsageReported(Usage(1, 1))])
    data += writer.finish()
    chunks, _ = sdk_stream(data)
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[0].id == "chatcmpl-7"


def test_a_failed_stream_ends_with_an_openai_error_and_no_done() -> None:
    writer = chat.StreamWriter(REQUEST)
    data = writer.write(
        [
            StreamStarted("x", "m"),
            BlockOpened(0, BlockKind.TEXT),
            BlockDelta(0, "par"),
            StreamFailed("overloaded", "server_error"),
            BlockDelta(0, "never"),
        ]
    )
    data += writer.finish()
    read = client_chunks(data)
    assert read[-1] == {
        "error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}
    }
    assert "[DONE]" not in read and len(read) == 3


def test_a_stream_that_never_stopped_ends_with_an_error() -> None:
    writer = chat.StreamWriter(REQUEST)
    data = writer.write([StreamStarted("x", "m"), BlockOpened(0, BlockKind.TEXT)])
    data += writer.finish()
    last = client_chunks(data)[-1]
    assert isinstance(last, dict) and last["error"]["type"] == "server_error"


@st.composite
def answer_streams(draw: st.DrawFn) -> list[StreamEvent]:
    """A streamed answer as any reader may give it: reasoning and text runs, then tool calls
    opened in turn whose argument deltas interleave, a stop, maybe usage after it."""
    events: list[StreamEvent] = [
        StreamStarted(draw(names), draw(names), draw(st.integers(1, 2**31)))
    ]
    block = 0
    for kind in draw(st.lists(st.sampled_from([BlockKind.TEXT, BlockKind.REASONING]), max_size=3)):
        events.append(BlockOpened(block, kind))
        events.extend(BlockDelta(block, t) for t in draw(st.lists(texts, min_size=1, max_size=3)))
        events.append(BlockClosed(block))
        block += 1
    calls = draw(st.lists(st.tuples(names, names), max_size=3, unique_by=lambda c: c[0]))
    pieces = {block + i: draw(st.lists(texts, max_size=3)) for i in range(len(calls))}
    for i, (call_id, name) in enumerate(calls):
        events.append(BlockOpened(block + i, BlockKind.TOOL_CALL, call_id=call_id, name=name))
    while any(pieces.values()):
        index = draw(st.sampled_from([i for i, left in pieces.items() if left]))
        events.append(BlockDelta(index, pieces[index].pop(0)))
    events.extend(BlockClosed(block + i) for i in range(len(calls)))
    stops = [StopReason.TOOL_USE, StopReason.MAX_TOKENS] if calls else list(StopReason)[:3]
    events.append(StreamStopped(draw(st.sampled_from([s for s in stops if s in _CHAT_STOPS]))))
    usage = draw(st.none() | st.builds(Usage, *[st.integers(0, 10**6)] * 5))
    if usage is not None:
        events.append(UsageReported(usage))
    return events


_CHAT_STOPS = {
    StopReason.END_TURN,
    StopReason.MAX_TOKENS,
    StopReason.TOOL_USE,
    StopReason.CONTENT_FILTER,
}


def collected(events: Sequence[StreamEvent]) -> tuple[list[Part], object, Usage | None]:
    """What a stream says, however its blocks were cut: its parts (adjacent texts or
    reasonings as one), its stop, its usage."""
    kinds: dict[int, BlockOpened] = {}
    pieces: dict[int, list[str]] = {}
    stop: object = None
    usage = None
    for event in events:
        if isinstance(event, BlockOpened):
            kinds[event.index] = event
            pieces[event.index] = []
        elif isinstance(event, BlockDelta):
            pieces[event.index].append(event.text)
        elif isinstance(event, StreamStopped):
            stop = event
        elif isinstance(event, UsageReported):
            usage = event.usage
    parts: list[Part] = []
    for index in sorted(kinds):
        opened, text = kinds[index], "".join(pieces[index])
        if opened.kind is BlockKind.TOOL_CALL:
            parts.append(ToolCall(opened.call_id or "", opened.name or "", text))
        elif parts and type(parts[-1]) is (Text if opened.kind is BlockKind.TEXT else Reasoning):
            parts[-1] = type(parts[-1])(parts[-1].text + text)  # type: ignore[union-attr]
        else:
            parts.append(Text(text) if opened.kind is BlockKind.TEXT else Reasoning(text))
    return parts, stop, usage


@PROPERTY_SETTINGS
@given(answer_streams(), st.booleans(), st.data())
def test_a_written_stream_is_valid_and_reads_back_the_same_whatever_its_chunks(
    events: list[StreamEvent], include_usage: bool, data: st.DataObject
) -> None:
    writer = chat.StreamWriter(REQUEST, include_usage=include_usage)
    stream = writer.write(events) + writer.finish()
    _, state = sdk_stream(stream)
    message = state.current_completion_snapshot.choices[0].message
    parts, stop, usage = collected(events)
    assert message.content == "".join(p.text for p in parts if isinstance(p, Text))

    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    read = read_stream(stream, cuts)
    assert read == read_stream(stream)
    started = events[0]
    assert isinstance(started, StreamStarted)
    assert read[0] == StreamStarted(f"chatcmpl-{started.id}", started.model, started.created)
    assert collected(read) == (parts, stop, usage if include_usage else None)


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    """Answers in the shape a chat completion carries: reasoning, one text, tool calls."""
    calls = draw(st.lists(st.builds(ToolCall, names, names, st.text(max_size=10)), max_size=2))
    stops = [StopReason.TOOL_USE] if calls else sorted(_CHAT_STOPS - {StopReason.TOOL_USE}, key=str)
    return Answer(
        id=f"chatcmpl-{draw(names)}",
        model=draw(names),
        parts=(
            *draw(st.lists(st.builds(Reasoning, texts), max_size=1)),
            *draw(st.lists(st.builds(Text, texts), max_size=1)),
            *calls,
        ),
        stop_reason=draw(st.sampled_from(stops)),
        usage=draw(st.none() | st.builds(Usage, *[st.integers(0, 10**6)] * 5)),
        created=draw(st.integers(1, 2**31)),
    )


@PROPERTY_SETTINGS
@given(answers())
def test_a_written_answer_is_valid_and_reads_back_the_same(answer: Answer) -> None:
    body = orjson.loads(orjson.dumps(chat.write_answer(answer, REQUEST)))
    ChatCompletion.model_validate(body)
    assert chat.read_answer(body) == answer


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            b'{"error": {"message": "bad", "type": "invalid_request_error", "param": "messages",'
            b' "code": "invalid_value"}}',
            ProviderError(400, "bad", "invalid_request_error", "invalid_value", "messages"),
        ),
        (
            400,
            b'{"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}',
            ProviderError(400, "too long", "BadRequestError", "400"),
        ),
        (
            404,
            b'{"error": "model not found"}',
            ProviderError(404, "model not found", "invalid_request_error"),
        ),
        (
            422,
            b'{"detail": [{"msg": "x"}]}',
            ProviderError(422, '[{"msg":"x"}]', "invalid_request_error"),
        ),
        (
            429,
            b'[{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}]',
            ProviderError(429, "quota", "rate_limit_error", "429"),
        ),
        (
            502,
            b"<html>Bad Gateway</html>",
            ProviderError(502, "<html>Bad Gateway</html>", "server_error"),
        ),
        (503, b"", ProviderError(503, "The provider answered 503.", "server_error")),
    ],
)
def test_provider_errors_are_read_from_every_shape(
    status: int, body: bytes, expected: ProviderError
) -> None:
    assert chat.read_error(status, body) == expected


def test_written_errors_have_openai_shape_and_types() -> None:
    anthropic = ProviderError(529, "Overloaded", "overloaded_error")
    assert chat.write_error(anthropic) == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": None}
    }
    openai = ProviderError(400, "bad", "invalid_request_error", "c", "p")
    assert chat.write_error(openai) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "p", "code": "c"}
    }
