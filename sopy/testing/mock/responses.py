"""OpenAI's Responses API as the mock upstream serves it: create (JSON, SSE, WebSocket mode), the
stateful follow-ups on stored responses, `input_tokens` and `compact`.

A `ResponseStore` belongs to one `MockUpstream`: responses are stored with their input items
unless `store` is false, and `previous_response_id` must name a response this very instance
stored, else a 404, as OpenAI answers for an id of another project. Response ids carry the
mock's name (`resp_<name>_<n>`), so a test sees which backend made each one. The streamed
events are built once (`ResponseRun.events`) and sent as SSE (`event:` + `data:` lines, no
`[DONE]`) or as one WebSocket message each.
"""

import base64
import urllib.parse
from typing import Any

import attrs
import orjson

from sopy.testing.mock.exchange import Exchange, send_parts
from sopy.testing.mock.http import (
    RouteError,
    json_object,
    required_string,
    sse_event,
)
from sopy.testing.mock.text import (
    CREATED,
    pieces_of,
    reply_text,
    text_of,
    token_count,
    tool_arguments,
    tool_asked_for,
    tool_names,
)


@attrs.define
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    background: bool


class ResponseStore:
    """The responses one mock instance made and stored, by id."""

    def __init__(self) -> None:
        self.responses: dict[str, StoredResponse] = {}

    def get(self, response_id: str) -> StoredResponse:
        stored = self.responses.get(response_id)
        if stored is None:
            raise RouteError(404, f"Response with id '{response_id}' not found.")
        return stored


@attrs.frozen
class ResponseRun:
    """One answered `response.create`: the final response and every event that streams it."""

    response: dict[str, Any]
    events: list[dict[str, Any]]


def run_response(
    upstream_name: str, number: int, payload: dict[str, Any], store: ResponseStore
) -> ResponseRun:
    """Answer one Responses request body, storing it unless `store` is false."""
    model = required_string(payload, "model")
    previous_id = payload.get("previous_response_id")
    if previous_id is not None and (
        not isinstance(previous_id, str) or previous_id not in store.responses
    ):
        raise RouteError(
            404,
            f"Previous response with id '{previous_id}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    prefix = f"{upstream_name}_{number}"
    input_items = _input_items(payload.get("input"), prefix)
    said = _last_user_text(input_items)
    called = tool_asked_for(tool_names(payload), said or "")
    if called is not None:
        arguments = orjson.dumps(tool_arguments(said or "")).decode()
        item: dict[str, Any] = {
            "id": f"fc_{prefix}",
            "type": "function_call",
            "call_id": f"call_{prefix}",
            "name": called,
            "arguments": arguments,
            "status": "completed",
        }
        pieces = pieces_of(arguments.replace(",", ", "))
    else:
        text = reply_text(upstream_name, said)
        if isinstance(previous_id, str):
            text += f" after {previous_id}"
        pieces = pieces_of(text)
        part = {"type": "output_text", "text": "".join(pieces), "annotations": [], "logprobs": []}
        item = {
            "id": f"msg_{prefix}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [part],
        }
    instructions = payload.get("instructions")
    input_tokens = sum(token_count(_item_text(i)) for i in input_items)
    input_tokens += token_count(instructions) if isinstance(instructions, str) else 0
    response = _response_object(f"resp_{prefix}", model, payload, item, input_tokens, len(pieces))
    stored = payload.get("store") is not False
    if stored:
        store.responses[response["id"]] = StoredResponse(
            response, input_items, payload.get("background") is True
        )
    return ResponseRun(response, _events(response, item, pieces))


def _response_object(
    response_id: str,
    model: str,
    payload: dict[str, Any],
    item: dict[str, Any],
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "background": payload.get("background") is True,
        "error": None,
        "incomplete_details": None,
        "instructions": payload.get("instructions"),
        "max_output_tokens": payload.get("max_output_tokens"),
        "model": model,
        "output": [item],
        "parallel_tool_calls": payload.get("parallel_tool_calls", True),
        "previous_response_id": payload.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": payload.get("store") is not False,
        "temperature": payload.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": payload.get("tool_choice", "auto"),
        "tools": payload.get("tools", []),
        "top_p": payload.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "metadata": payload.get("metadata") or {},
    }


def _events(
    response: dict[str, Any], item: dict[str, Any], pieces: list[str]
) -> list[dict[str, Any]]:
    """The Responses stream as OpenAI sends it, `sequence_number` counting from 0."""
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
    ]
    item_id = item["id"]
    where = {"item_id": item_id, "output_index": 0}
    if item["type"] == "function_call":
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "arguments": "", "status": "in_progress"},
            }
        )
        events += [
            {"type": "response.function_call_arguments.delta", **where, "delta": piece}
            for piece in pieces
        ]
        events.append(
            {
                "type": "response.function_call_arguments.done",
                **where,
                "name": item["name"],
                "arguments": item["arguments"],
            }
        )
    else:
        text = item["content"][0]["text"]
        empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        in_part = {**where, "content_index": 0}
        events += [
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            },
            {"type": "response.content_part.added", **in_part, "part": empty_part},
            *(
                {"type": "response.output_text.delta", **in_part, "delta": p, "logprobs": []}
                for p in pieces
            ),
            {"type": "response.output_text.done", **in_part, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **in_part, "part": item["content"][0]},
        ]
    events += [
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response},
    ]
    return [{**event, "sequence_number": number} for number, event in enumerate(events)]


def sse_events(run: ResponseRun) -> list[bytes]:
    return [sse_event(event, event=event["type"]) for event in run.events]


def _input_items(raw: object, prefix: str) -> list[dict[str, Any]]:
    """The request's input as stored input items, each with an id, messages in part form."""
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise RouteError(400, "'input' must be a string or a list of items.", param="input")
    items = []
    for index, item in enumerate(raw):
        kind = item.get("type", "message")
        stored = {**item, "type": kind, "id": item.get("id") or f"in_{prefix}_{index}"}
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                part_type = "output_text" if item.get("role") == "assistant" else "input_text"
                stored["content"] = [{"type": part_type, "text": content}]
            stored.setdefault("status", "completed")
        items.append(stored)
    return items


def _item_text(item: dict[str, Any]) -> str:
    if item["type"] == "message":
        return text_of(item.get("content"))
    output = item.get("output")
    return output if isinstance(output, str) else ""


def _last_user_text(items: list[dict[str, Any]]) -> str | None:
    said = [_item_text(i) for i in items if i["type"] == "message" and i.get("role") == "user"]
    return said[-1] if said else None


async def create(exchange: Exchange, store: ResponseStore) -> None:
    """POST /v1/responses: JSON, or with stream=true the SSE event sequence."""
    payload = json_object(exchange.request.body)
    run = run_response(exchange.upstream_name, exchange.number, payload, store)
    if payload.get("stream") is not True:
        await exchange.response.json(200, run.response)
        return
    await send_parts(exchange, sse_events(run))


async def retrieve(exchange: Exchange, store: ResponseStore, response_id: str) -> None:
    await exchange.response.json(200, store.get(response_id).response)


async def delete(exchange: Exchange, store: ResponseStore, response_id: str) -> None:
    store.get(response_id)
    del store.responses[response_id]
    await exchange.response.json(200, {"id": response_id, "object": "response", "deleted": True})


async def cancel(exchange: Exchange, store: ResponseStore, response_id: str) -> None:
    """Only a background response may be cancelled, as at OpenAI; it is then `cancelled`."""
    stored = store.get(response_id)
    if not stored.background:
        raise RouteError(400, "Only responses created with background=true can be cancelled.")
    stored.response = {**stored.response, "status": "cancelled"}
    await exchange.response.json(200, stored.response)


async def input_items(exchange: Exchange, store: ResponseStore, response_id: str) -> None:
    """The stored input items, newest first unless `order=asc`, `limit` (default 20) at most."""
    query = urllib.parse.parse_qs(exchange.request.query)
    items = list(store.get(response_id).input_items)
    if query.get("order", ["desc"])[0] == "desc":
        items.reverse()
    after = query.get("after", [None])[0]
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(query.get("limit", ["20"])[0])
    page = items[:limit]
    await exchange.response.json(
        200,
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        },
    )


async def count_input_tokens(exchange: Exchange) -> None:
    """POST /v1/responses/input_tokens: the words of the input and instructions."""
    payload = json_object(exchange.request.body)
    required_string(payload, "model")
    items = _input_items(payload.get("input", []), "count")
    instructions = payload.get("instructions")
    count = sum(token_count(_item_text(item)) for item in items)
    count += token_count(instructions) if isinstance(instructions, str) else 0
    await exchange.response.json(200, {"object": "response.input_tokens", "input_tokens": count})


async def compact(exchange: Exchange, store: ResponseStore) -> None:
    """POST /v1/responses/compact: the user messages, then one compaction item."""
    payload = json_object(exchange.request.body)
    model = required_string(payload, "model")
    prefix = f"{exchange.upstream_name}_{exchange.number}"
    items = _input_items(payload.get("input", []), prefix)
    previous_id = payload.get("previous_response_id")
    if isinstance(previous_id, str):
        items = store.get(previous_id).input_items + items
    users = [i for i in items if i["type"] == "message" and i.get("role") == "user"]
    summary = f"{model} compacted {len(items)} items".encode()
    compaction = {
        "id": f"cmp_{prefix}",
        "type": "compaction",
        "encrypted_content": base64.b64encode(summary).decode(),
    }
    input_tokens = sum(token_count(_item_text(item)) for item in items)
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 1,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + 1,
    }
    await exchange.response.json(
        200,
        {
            "id": f"cmp_{prefix}",
            "object": "response.compaction",
            "created_at": CREATED,
            "output": [*users, compaction],
            "usage": usage,
        },
    )
