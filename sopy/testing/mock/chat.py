"""Chat completions as OpenAI shapes them, JSON and server-sent events (`data: [DONE]` last).

Pure payload building: `server.MockUpstream` parses the request here, decides on faults and
sends what these functions build.
"""

from typing import Any

import attrs
import orjson

from sopy.testing.mock.faults import Faults, parse_faults
from sopy.testing.mock.http import RouteError, json_object
from sopy.testing.mock.text import CREATED, text_of


@attrs.frozen
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    faults: Faults


def parse_chat_request(body: bytes) -> ChatRequest:
    payload = json_object(body)
    model = payload.get("model")
    messages = payload.get("messages")
    if not isinstance(model, str):
        raise RouteError(400, "'model' must be a string.", param="model")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RouteError(400, "'messages' must be a list of objects.", param="messages")
    stream_options = payload.get("stream_options")
    return ChatRequest(
        model=model,
        messages=messages,
        stream=payload.get("stream") is True,
        include_usage=isinstance(stream_options, dict)
        and stream_options.get("include_usage") is True,
        faults=parse_faults(payload.get("mock")),
    )


def last_user_text(messages: list[dict[str, Any]]) -> str | None:
    said = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    return said[-1] if said else None


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


def _stream_choice(delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
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
