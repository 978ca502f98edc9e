"""Anthropic's Messages API as the mock upstream serves it: `POST /v1/messages` (JSON and SSE)
and `POST /v1/messages/count_tokens`, with errors in Anthropic's shape.

In strict mode (`MockUpstream(anthropic_strict=True)`) the request is checked as Anthropic
checks it: a credential, in `x-api-key` or `Authorization: Bearer` (401 otherwise), an
`anthropic-version` header (400), and a
well-formed body: a string `model`, an integer `max_tokens` (not for count_tokens), `messages`
whose roles are only `user` and `assistant`, alternating and starting with `user`, a system
prompt only as the top-level `system`, no field Anthropic does not know (besides the mock's own
`mock`), content blocks of Anthropic's types, tools with an `input_schema`, and every
`tool_result` answering a `tool_use` of the assistant message before it. Without strict mode
only what the mock needs is checked.
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
        _check_fields(payload)
        _check_roles(messages)
        _check_blocks(messages)
        _check_tools(payload.get("tools"))
    return payload


_KNOWN_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "tools", "tool_choice", "metadata", "thinking", "service_tier",
        "container", "mcp_servers", "context_management", "output_config", "mock",
    }
)  # fmt: skip
_BLOCK_TYPES = frozenset({"text", "image", "document", "tool_use", "tool_result", "thinking"})


def _check_fields(payload: dict[str, Any]) -> None:
    for field in payload:
        if field not in _KNOWN_FIELDS:
            raise RouteError(400, f"{field}: Extra inputs are not permitted")


def _check_blocks(messages: list[dict[str, Any]]) -> None:
    """Blocks of known types; each `tool_result` answers a `tool_use` of the message before."""
    called: set[object] = set()
    for index, message in enumerate(messages):
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        for number, block in enumerate(blocks):
            where = f"messages.{index}.content.{number}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in _BLOCK_TYPES:
                raise RouteError(400, f"{where}.type: Input tag {kind!r} is not expected")
            if kind == "tool_result" and block.get("tool_use_id") not in called:
                raise RouteError(
                    400,
                    f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message.",
                )
        called = {
            block.get("id")
            for block in blocks
            if isinstance(block, dict) and block.get("type") == "tool_use"
        }


def _check_tools(tools: object) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise RouteError(400, "tools: Input should be a valid list")
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise RouteError(400, f"tools.{index}.name: Field required")
        if not isinstance(tool.get("input_schema"), dict):
            raise RouteError(400, f"tools.{index}.input_schema: Field required")


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
