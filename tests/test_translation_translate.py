"""Specs for `sopy.translation.translate`, the pairing of the codecs for one hop (pure, no
network): a provider stream cut anywhere translates to the same client bytes (a chat stream
with two interleaved tool calls into the same Responses events, by property); a provider error
inside a stream, an unreadable event or one over the size limit ends the client's stream as its
format ends an error; a whole answer to a client that asked for a stream comes as its events;
usage is the provider's; the count_tokens estimate is as documented.
"""

import itertools
import os
import re
from typing import Any

import anthropic.types
import openai.types.responses
import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sopy.errors import UpstreamError
from sopy.messages import TokenCounts
from sopy.provider_kinds import WireFormat
from sopy.translation import translate
from sopy.translation.items import (
    Conversation,
    FunctionTool,
    Image,
    Message,
    Role,
    Text,
    ToolCall,
    ToolResult,
)
from sopy.translation.sse import MAX_EVENT_BYTES

MESSAGE_EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
    anthropic.types.RawMessageStreamEvent
)
MESSAGES_PAYLOAD = {
    "model": "m",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
}


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


CHAT_STREAM = b"".join(
    [
        chat_chunk({"role": "assistant", "content": "Hello "}),
        chat_chunk({"content": "there"}),
        chat_chunk({}, "stop"),
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n',
        b"data: [DONE]\n\n",
    ]
)


def messages_client() -> translate.StreamTranslation:
    conversation = translate.client_conversation(WireFormat.MESSAGES, MESSAGES_PAYLOAD)
    return translate.StreamTranslation(
        WireFormat.MESSAGES, WireFormat.CHAT, conversation, MESSAGES_PAYLOAD
    )


def messages_events(written: bytes) -> list[Any]:
    """Each event written for a Messages client, parsed by the SDK (an error event as the
    error it carries)."""
    events = []
    for line in written.split(b"\n"):
        if line.startswith(b"data: "):
            data = line[6:]
            if orjson.loads(data)["type"] == "error":
                events.append(anthropic.types.ErrorResponse.model_validate_json(data))
            else:
                events.append(MESSAGE_EVENTS.validate_json(data))
    return events


def translated(chunks: list[bytes]) -> tuple[bytes, translate.StreamTranslation]:
    stream = messages_client()
    written = b"".join(stream.feed(chunk) for chunk in chunks) + stream.end()
    return written, stream


def test_a_chat_stream_cut_at_any_byte_gives_the_same_messages_stream() -> None:
    whole, stream = translated([CHAT_STREAM])

    for cut in range(1, len(CHAT_STREAM)):
        split, _ = translated([CHAT_STREAM[:cut], CHAT_STREAM[cut:]])
        assert split == whole, cut
    events = messages_events(whole)
    assert events[0].type == "message_start"
    assert events[-1].type == "message_stop"
    assert stream.tokens == TokenCounts(input_tokens=7, output_tokens=2)
    assert stream.provider_failure is None


def test_a_provider_error_inside_the_stream_ends_the_clients_as_an_error() -> None:
    error = b'data: {"error": {"message": "overloaded now", "type": "server_error"}}\n\n'

    written, stream = translated([chat_chunk({"role": "assistant", "content": "Hi"}), error])

    assert b"event: error" in written and b"overloaded now" in written
    assert stream.ended
    assert stream.provider_failure is not None and "overloaded now" in stream.provider_failure
    assert messages_events(written)[-1].type == "error"


def test_an_unreadable_event_ends_the_clients_stream_and_the_rest_is_ignored() -> None:
    stream = messages_client()

    written = stream.feed(chat_chunk({"role": "assistant", "content": "Hi"}))
    written += stream.feed(b"data: {not json\n\n")

    assert stream.ended and stream.provider_failure is not None
    assert messages_events(written)[-1].type == "error"
    assert stream.feed(chat_chunk({"content": "more"})) == b"" and stream.end() == b""


def test_an_event_over_the_limit_ends_the_clients_stream_without_holding_it() -> None:
    stream = messages_client()

    written = stream.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 1))

    assert stream.ended
    assert b"over the gateway's limit" in written


def test_a_stream_that_broke_off_ends_with_the_gateways_words() -> None:
    stream = messages_client()
    stream.feed(chat_chunk({"role": "assistant", "content": "Hi"}))

    written = stream.end("broke off, request id 0123")

    assert messages_events(written)[-1].type == "error"
    assert b"broke off, request id 0123" in written


def test_a_whole_answer_to_a_client_that_asked_for_a_stream_comes_as_its_events() -> None:
    conversation = translate.client_conversation(WireFormat.MESSAGES, MESSAGES_PAYLOAD)
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }

    answer = translate.whole_answer(
        WireFormat.MESSAGES,
        WireFormat.CHAT,
        conversation,
        MESSAGES_PAYLOAD,
        200,
        orjson.dumps(completion),
    )

    assert answer.stream
    events = messages_events(answer.body)
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    texts = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert texts == ["Hello"]
    assert answer.tokens == TokenCounts(input_tokens=3, output_tokens=1)


def test_an_unreadable_whole_answer_is_an_upstream_error() -> None:
    conversation = translate.client_conversation(
        WireFormat.MESSAGES, {**MESSAGES_PAYLOAD, "stream": False}
    )

    with pytest.raises(UpstreamError):
        translate.whole_answer(
            WireFormat.MESSAGES, WireFormat.CHAT, conversation, MESSAGES_PAYLOAD, 200, b"[1]"
        )


def test_an_error_answer_keeps_the_providers_status_in_the_clients_shape() -> None:
    conversation = translate.client_conversation(WireFormat.MESSAGES, MESSAGES_PAYLOAD)
    body = orjson.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}})

    answer = translate.whole_answer(
        WireFormat.MESSAGES, WireFormat.CHAT, conversation, MESSAGES_PAYLOAD, 429, body
    )

    assert answer.status == 429
    error = anthropic.types.ErrorResponse.model_validate_json(answer.body)
    assert error.error.type == "rate_limit_error" and error.error.message == "slow down"


def test_a_chat_stream_request_asks_its_provider_for_the_usage_chunk() -> None:
    conversation = Conversation("m", (Message(Role.USER, (Text("hi"),)),), stream=True)

    path, body = translate.upstream_request(WireFormat.CHAT, conversation, "upstream-name")

    assert path == "/v1/chat/completions"
    sent = orjson.loads(body)
    assert sent["model"] == "upstream-name"
    assert sent["stream_options"] == {"include_usage": True}


def test_the_token_estimate_counts_bytes_over_four_plus_messages_and_images() -> None:
    tool = FunctionTool("get_weather", parameters={"type": "object"})
    conversation = Conversation(
        "m",
        (
            Message(Role.USER, (Text("héllo"), Image("https://example.com/a.png"))),  # 6 bytes
            Message(Role.ASSISTANT, (ToolCall("c1", "get_weather", "{}"),)),  # 11 + 2
            Message(Role.USER, (ToolResult("c1", (Text("sunny"),)),)),  # 5
        ),
        system="sys",  # 3
        tools=(tool,),
    )
    tool_bytes = len(orjson.dumps(
        {"name": "get_weather", "description": None, "parameters": {"type": "object"},
         "strict": None}
    ))  # fmt: skip
    size = 6 + 11 + 2 + 5 + 3 + tool_bytes

    estimate = translate.estimate_input_tokens(conversation)

    assert (
        estimate == -(-size // 4) + 3 * translate.MESSAGE_OVERHEAD_TOKENS + translate.IMAGE_TOKENS
    )


TOOL_STREAM = b"".join(
    [
        chat_chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}},
                ],
            }
        ),
        chat_chunk(
            {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                             "function": {"name": "get_time", "arguments": ""}}]}
        ),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chat_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"zone":'}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chat_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"UTC"}'}}]}),
        chat_chunk({}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]
)  # fmt: skip
RESPONSES_PAYLOAD = {"model": "m", "input": "call both", "stream": True}
_RANDOM_IDS = re.compile(rb'"(resp|msg|fc|rs)_[0-9a-f]+"')
RESPONSE_EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
    openai.types.responses.ResponseStreamEvent
)


def responses_bytes(chunks: list[bytes]) -> bytes:
    """A Responses client's stream for the chat chunks, its random ids blanked out."""
    conversation = translate.client_conversation(WireFormat.RESPONSES, RESPONSES_PAYLOAD)
    stream = translate.StreamTranslation(
        WireFormat.RESPONSES, WireFormat.CHAT, conversation, RESPONSES_PAYLOAD
    )
    written = b"".join(stream.feed(chunk) for chunk in chunks) + stream.end()
    return _RANDOM_IDS.sub(rb'"\1_ID"', written)


@settings(max_examples=int(os.environ.get("SOPY_FUZZ_EXAMPLES", "100")), deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TOOL_STREAM)), max_size=12))
def test_a_chat_stream_cut_anywhere_gives_the_same_responses_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(TOOL_STREAM)]
    chunks = [TOOL_STREAM[start:end] for start, end in itertools.pairwise(bounds)]

    assert responses_bytes(chunks) == responses_bytes([TOOL_STREAM])


def test_two_interleaved_chat_tool_calls_become_two_whole_responses_function_calls() -> None:
    written = responses_bytes([TOOL_STREAM])

    events = [
        RESPONSE_EVENTS.validate_json(line[6:])
        for line in written.split(b"\n")
        if line.startswith(b"data: ")
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [(item.name, item.arguments) for item in done] == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_time", '{"zone":"UTC"}'),
    ]
    assert events[-1].type == "response.completed"
