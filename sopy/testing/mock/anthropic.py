"""Anthropic's Messages API as the mock upstream serves it: `POST /v1/messages` (JSON and SSE)
and `POST /v1/messages/count_tokens`, with errors in Anthropic's shape.

In strict mode (`MockUpstream(anthropic_strict=True)`) the request is checked as Anthropic
checks it: a credential, in `x-api-key` or `Authorization: Bearer` (401 otherwise), an
`anthropic-version` header (400), and a
well-formed body: a string `model`, an integer `max_tokens` (not for count_tokens), `messages`
whose roles are only `user` and `assistant`, alternating and starting with `user`, and a system
prompt only as the top-level `system`. Without strict mode only what the mock needs is checked.
A tool is used when `tools` are given and the last user message names one.
"""

from typing import Any

import orjson

from sopy.testing.mock.exchange import Exchange, send_parts
from sopy.testing.mock.http import (
    RouteError,
    json_object,
    sse_event,
)
from sopy.testing.mock.text import (
    pieces_of,
    reply_text,
    text_of,
    token_count,
    tool_arguments,
    tool_asked_for,
    tool_names,
)


def check_headers(exchange: Exchange) -> None:
    """Anthropic's header checks, for strict mode.

    The credential may come as `x-api-key` or as `Authorization: Bearer`, which is how the
    `anthropic` SDK (2.x) sends an API key; tests read `requests` to see which form arrived.
    """
    headers = exchange.request.headers
    bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not (headers.get("x-api-key") or bearer):
        raise RouteError(401, "x-api-key header is required", error_type="authentication_error")
    if not headers.get("anthropic-version"):
        raise RouteError(400, "anthropic-version: header is required")


def _checked_body(exchange: Exchange, *, strict: bool, needs_max_tokens: bool) -> dict[str, Any]:
    payload = json_object(exchange.request.body)
    if not isinstance(payload.get("model"), str):
        raise RouteError(400, "model: Field required")
    if needs_max_tokens and strict:
        max_tokens = payload.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RouteError(400, "max_tokens: Field required")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RouteError(400, "messages: Field required")
    if strict:
        _check_roles(messages)
    return payload


def _check_roles(messages: list[dict[str, Any]]) -> None:
    if not messages:
        raise RouteError(400, "messages: at least one message is required")
    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "system":
            raise RouteError(
                400,
                f'messages.{index}.role: Unexpected role "system". The Messages API accepts a '
                'top-level `system` parameter, not "system" as an input message role.',
            )
        if role not in ("user", "assistant"):
            raise RouteError(400, f"messages.{index}.role: Input should be 'user' or 'assistant'")
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise RouteError(
                400,
                f'messages.{index}: roles must alternate between "user" and "assistant", '
                'starting with "user"',
            )
        if not isinstance(message.get("content"), str | list):
            raise RouteError(400, f"messages.{index}.content: Field required")


def _input_tokens(payload: dict[str, Any]) -> int:
    count = sum(token_count(text_of(m.get("content"))) for m in payload["messages"])
    return count + token_count(text_of(payload.get("system")))


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    said = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    return said[-1] if said else None


async def count_tokens(exchange: Exchange, *, strict: bool) -> None:
    payload = _checked_body(exchange, strict=strict, needs_max_tokens=False)
    await exchange.response.json(200, {"input_tokens": _input_tokens(payload)})


async def create_message(exchange: Exchange, *, strict: bool) -> None:
    """POST /v1/messages: a Message, or with stream=true Anthropic's event stream."""
    payload = _checked_body(exchange, strict=strict, needs_max_tokens=True)
    model = payload["model"]
    said = _last_user_text(payload["messages"]) or ""
    called = tool_asked_for(tool_names(payload), said)
    prefix = f"{exchange.upstream_name}_{exchange.number}"
    block: dict[str, Any]
    if called is not None:
        block = {"type": "tool_use", "id": f"toolu_{prefix}", "name": called}
        block["input"] = tool_arguments(said)
        pieces = pieces_of(orjson.dumps(block["input"]).decode().replace(",", ", "))
        stop_reason = "tool_use"
    else:
        pieces = pieces_of(reply_text(exchange.upstream_name, said or None))
        block = {"type": "text", "text": "".join(pieces)}
        stop_reason = "end_turn"
    usage = {
        "input_tokens": _input_tokens(payload),
        "output_tokens": len(pieces),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    message = {
        "id": f"msg_{prefix}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    if payload.get("stream") is not True:
        await exchange.response.json(200, message)
        return
    events = stream_events(message, pieces)
    await send_parts(exchange, [sse_event(e, event=e["type"]) for e in events])


def stream_events(message: dict[str, Any], pieces: list[str]) -> list[dict[str, Any]]:
    """Anthropic's stream of one message with one content block, in order."""
    block = message["content"][0]
    started = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**message["usage"], "output_tokens": 1},
    }
    if block["type"] == "tool_use":
        empty_block = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
    else:
        empty_block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
    return [
        {"type": "message_start", "message": started},
        {"type": "content_block_start", "index": 0, "content_block": empty_block},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
        {"type": "message_stop"},
    ]
