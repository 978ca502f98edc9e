"""Chat completions as OpenAI shapes them, JSON and server-sent events (`data: [DONE]` last).

Pure payload building: `server.MockUpstream` parses the request here, decides on faults and
sends what these functions build.

Tools: when the request offers function `tools` and the last user message names some of them,
the answer calls each named tool (`finish_reason: tool_calls`), with `{"text": <what the user
said>}` as arguments; a stream opens every call first, then interleaves their argument pieces,
as some servers do, so a reader must keep the calls apart by `index`. When the last message is
a tool result, the answer echoes it. Every `tool` message must answer a call of the assistant
message before it (400 otherwise, as OpenAI answers).
"""

from typing import Any

import attrs
import orjson

from sopy.testing.mock.faults import Faults, parse_faults
from sopy.testing.mock.http import RouteError, json_object
from sopy.testing.mock.text import CREATED, pieces_of, text_of, tool_arguments, tool_asked_for


@attrs.frozen
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    faults: Faults
    tools: tuple[str, ...] = ()


def parse_chat_request(body: bytes) -> ChatRequest:
    payload = json_object(body)
    model = payload.get("model")
    messages = payload.get("messages")
    if not isinstance(model, str):
        raise RouteError(400, "'model' must be a string.", param="model")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RouteError(400, "'messages' must be a list of objects.", param="messages")
    _check_tool_messages(messages)
    stream_options = payload.get("stream_options")
    return ChatRequest(
        model=model,
        messages=messages,
        stream=payload.get("stream") is True,
        include_usage=isinstance(stream_options, dict)
        and stream_options.get("include_usage") is True,
        faults=parse_faults(payload.get("mock")),
        tools=_function_names(payload.get("tools")),
    )


def _function_names(tools: object) -> tuple[str, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise RouteError(400, "'tools' must be a list.", param="tools")
    names = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (
            isinstance(tool, dict)
            and tool.get("type") == "function"
            and isinstance(function, dict)
            and isinstance(function.get("name"), str)
        ):
            raise RouteError(
                400, "Each tool must be a function with a name.", param=f"tools[{index}]"
            )
        names.append(function["name"])
    return tuple(names)


def _check_tool_messages(messages: list[dict[str, Any]]) -> None:
    """Each `tool` message answers a call of the latest assistant message, as OpenAI checks."""
    called: set[object] = set()
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            calls = message.get("tool_calls") or []
            called = {call.get("id") for call in calls if isinstance(call, dict)}
        elif message.get("role") == "tool" and message.get("tool_call_id") not in called:
            raise RouteError(
                400,
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                "message with 'tool_calls'.",
                param=f"messages.[{index}].role",
            )


def last_user_text(messages: list[dict[str, Any]]) -> str | None:
    said = [text_of(m.get("content")) for m in messages if m.get("role") in ("user", "tool")]
    return said[-1] if said else None


def tools_called(chat: ChatRequest) -> list[str]:
    """The tools the last user message names, unless the last message is a tool's result."""
    if not chat.tools or not chat.messages or chat.messages[-1].get("role") != "user":
        return []
    said = text_of(chat.messages[-1].get("content"))
    named = []
    remaining = list(chat.tools)
    while (name := tool_asked_for(remaining, said)) is not None:
        named.append(name)
        remaining.remove(name)
    return named


def tool_calls(chat: ChatRequest, number: int, names: list[str]) -> list[dict[str, Any]]:
    said = text_of(chat.messages[-1].get("content"))
    arguments = orjson.dumps(tool_arguments(said)).decode()
    return [
        {
            "id": f"call_mock_{number}_{index}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for index, name in enumerate(names)
    ]


def tool_call_completion(
    completion_id: str, model: str, calls: list[dict[str, Any]], usage: dict[str, int]
) -> dict[str, Any]:
    completion = chat_completion(completion_id, model, "", usage)
    choice = completion["choices"][0]
    choice["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
    choice["finish_reason"] = "tool_calls"
    return completion


def tool_call_stream_events(
    completion_id: str, chat: ChatRequest, calls: list[dict[str, Any]], usage: dict[str, int]
) -> list[bytes]:
    """A streamed answer calling `calls`: each call opened (id, name, empty arguments), then
    their argument pieces interleaved, then `finish_reason: tool_calls`."""
    usage_placeholder: dict[str, Any] = {"usage": None} if chat.include_usage else {}
    opened = [
        {"index": index, "id": call["id"], "type": "function",
         "function": {"name": call["function"]["name"], "arguments": ""}}
        for index, call in enumerate(calls)
    ]  # fmt: skip
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": [opened[0]]},
        *({"tool_calls": [call]} for call in opened[1:]),
    ]
    pieces = [pieces_of(call["function"]["arguments"]) for call in calls]
    for step in range(max(len(p) for p in pieces)):
        for index, call_pieces in enumerate(pieces):
            if step < len(call_pieces):
                piece = {"index": index, "function": {"arguments": call_pieces[step]}}
                deltas.append({"tool_calls": [piece]})
    choices = [_stream_choice(delta, None) for delta in deltas]
    choices.append(_stream_choice({}, "tool_calls"))
    events = [
        _chunk_event(completion_id, chat.model, [choice], usage_placeholder) for choice in choices
    ]
    if chat.include_usage:
        events.append(_chunk_event(completion_id, chat.model, [], {"usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def chat_usage(messages: list[dict[str, Any]], pieces: list[str]) -> dict[str, int]:
    prompt = sum(len(text_of(m.get("content")).split()) for m in messages)
    completion = len(pieces)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion(
    completion_id: str, model: str, content: str, usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def chat_stream_events(
    completion_id: str, chat: ChatRequest, pieces: list[str], usage: dict[str, int]
) -> list[bytes]:
    """Every server-sent event of a streamed completion, in order, ending with `[DONE]`."""
    # With include_usage, OpenAI puts `"usage": null` on every chunk but the last.
    usage_placeholder: dict[str, Any] = {"usage": None} if chat.include_usage else {}
    deltas = [{"role": "assistant", "content": pieces[0]}] + [{"content": p} for p in pieces[1:]]
    choices = [_stream_choice(delta, None) for delta in deltas] + [_stream_choice({}, "stop")]
    events = [
        _chunk_event(completion_id, chat.model, [choice], usage_placeholder) for choice in choices
    ]
    if chat.include_usage:
        events.append(_chunk_event(completion_id, chat.model, [], {"usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def _stream_choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish_reason}


def _chunk_event(
    completion_id: str, model: str, choices: list[dict[str, Any]], extra: dict[str, Any]
) -> bytes:
    chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": choices,
        **extra,
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"
