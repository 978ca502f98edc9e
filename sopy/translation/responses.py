"""The OpenAI Responses API as a client format (Codex CLI, the OpenAI Agents SDK): a client's
`POST /v1/responses` body read into a `Conversation`, and the provider's answer, whole or
streamed, written back as the Responses API answers. The integration (`sopy.translation.translate`)
calls these by name; the gateway's own store of responses keeps `answer_items` of each answer.

Read (`read_request`), besides `model` and `input`:
- `input` as a string (one user message) or a list of items: messages of role user, assistant,
  system or developer (content a string or `input_text`/`output_text`/`refusal`/`input_image`
  parts), `function_call`, `function_call_output` (output a string or parts) and `reasoning`
  items (their summary text, `encrypted_content` as the `Reasoning` signature). Assistant items
  in a row make one assistant message; tool outputs in a row, and a user message right after
  them, make one user message.
- `instructions`, then the text of every system and developer message, in order, joined by a
  blank line, become `Conversation.system` (the representation has one system prompt, so a
  developer message in the middle of the conversation is moved to it).
- `tools` of type `function` (flat: `name`, `description`, `parameters`, `strict`),
  `tool_choice`, `parallel_tool_calls` (both left out when there are no tools: then they cannot
  change the answer, and chat servers refuse them), `text.format` (text, json_schema,
  json_object: a `JsonSchemaFormat` named "json_object" without schema), `max_output_tokens`,
  `temperature`, `top_p`, `reasoning.effort`, `stream`, `user` (else `safety_identifier`).
- Ignored, as they do not change the answer: `metadata` (the writers echo what the caller
  passes), `store` and `previous_response_id` (the gateway keeps stored responses itself and
  prepends the earlier turns; the writers echo what the caller passes), `include` (but
  logprobs), `truncation`, `prompt_cache_key`, `prompt_cache_retention`, `prompt_cache_options`,
  `service_tier`, `stream_options`, `max_tool_calls` (it bounds built-in tools only),
  `reasoning.summary`, `text.verbosity` "medium" (the default), and fields this module does not
  know (clients add their own, such as Codex's `client_metadata`).
- Refused with `UntranslatableField` naming the field: built-in tools (web_search,
  file_search, computer_use, code_interpreter, image_generation, mcp, local_shell, custom...)
  and their tool choices, their call items in `input`, `item_reference` items, images by
  `file_id`, files and audio, `background`, `conversation`, `prompt`, `context_management`,
  `moderation`, logprobs (`top_logprobs`, `include` of `message.output_text.logprobs`) and
  `text.verbosity` other than "medium".

Written: `write_answer` gives a `response` object, `StreamWriter` the Responses event stream
(`event:` and `data:` lines, `sequence_number` from 0, no `[DONE]`), `write_error` OpenAI's error
body. Each block of the answer is one output item: text a `message` (one `output_text`),
reasoning a `reasoning` item (its text as the summary, the signature as `encrypted_content`),
a tool call a `function_call`. The lifecycle responses echo the request as OpenAI does;
`previous_response_id`, `store` and `metadata`, which `read_request` leaves to the gateway, are
keyword arguments. Ids are the caller's (`response_id`, as the gateway stores them) or made
here, unguessable.

The stream never interleaves output items, as OpenAI's never does and clients expect: an item
whose block opens while an earlier one is still open (a chat provider streaming two tool calls
at once) is held back, its text gathered, and sent as one delta once the earlier item is done.
"""

import secrets
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import attrs
import orjson

from sopy.errors import InvalidField, InvalidRequest
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
    merged_usage,
)
from sopy.translation.sse import sse_event

# --- reading a request ---------------------------------------------------------------------

_REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
_TOOL_CHOICE_MODES = {
    mode.value: mode for mode in ToolChoiceMode if mode is not ToolChoiceMode.NAMED
}
# Fields that would change the answer and that no provider format here can carry; a field is
# refused when present and not null (for `background`, when true).
_REFUSED_FIELDS = ("conversation", "prompt", "moderation")
_LOGPROBS_INCLUDE = "message.output_text.logprobs"


def _text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidField(f"'{path}' must be a string", param=path)
    return value


def _optional_text(body: JsonObject, key: str, path: str) -> str | None:
    value = body.get(key)
    return None if value is None else _text(value, path)


def _object(value: object, path: str) -> JsonObject:
    if not isinstance(value, dict):
        raise InvalidField(f"'{path}' must be an object", param=path)
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidField(f"'{path}' must be an array", param=path)
    return value


def _required(body: JsonObject, key: str, path: str) -> object:
    value = body.get(key)
    if value is None:
        raise InvalidRequest(f"'{path}' is required", param=path)
    return value


def _number(body: JsonObject, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField(f"'{key}' must be a number", param=key)
    return float(value)


def _integer(body: JsonObject, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"'{key}' must be an integer", param=key)
    return value


def _untranslatable(path: str, what: str) -> UntranslatableField:
    return UntranslatableField(
        f"{what} cannot be translated for this model's provider; drop '{path}' or use a model "
        "on a provider that serves the Responses API",
        param=path,
    )


def read_request(body: JsonObject) -> Conversation:
    """The client's Responses API request as a `Conversation` (see the module docstring for
    what is read, ignored and refused)."""
    model = _text(_required(body, "model", "model"), "model")
    for key in _REFUSED_FIELDS:
        if body.get(key) is not None:
            raise _untranslatable(key, f"'{key}'")
    if body.get("background") is True:
        raise _untranslatable("background", "A background response")
    if body.get("context_management"):
        raise _untranslatable("context_management", "Server-side context management")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and top_logprobs != 0:
        raise _untranslatable("top_logprobs", "Log probabilities")
    include = body.get("include")
    if include is not None and _LOGPROBS_INCLUDE in _list(include, "include"):
        raise _untranslatable("include", "Log probabilities")

    system_texts: list[str] = []
    instructions = _optional_text(body, "instructions", "instructions")
    if instructions:
        system_texts.append(instructions)
    messages = _read_input(body.get("input"), system_texts)

    tools = _read_tools(body.get("tools"))
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidField("'stream' must be a boolean", param="stream")
    user = _optional_text(body, "user", "user")
    if user is None:
        user = _optional_text(body, "safety_identifier", "safety_identifier")
    return Conversation(
        model=model,
        messages=messages,
        system="\n\n".join(system_texts) if system_texts else None,
        tools=tools,
        tool_choice=_read_tool_choice(body) if tools else None,
        max_output_tokens=_integer(body, "max_output_tokens"),
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        stream=stream,
        response_format=_read_text_config(body.get("text")),
        reasoning_effort=_read_reasoning_effort(body.get("reasoning")),
        user=user,
    )


@attrs.define
class _Turn:
    role: Role
    parts: list[Part]

    def takes(self, role: Role) -> bool:
        """Assistant items in a row are one assistant turn; a user item joins the user turn
        before it only when that turn holds tool results alone (as chat's tool messages and the
        user message after them are one Anthropic user turn)."""
        if role is not self.role:
            return False
        return role is Role.ASSISTANT or all(isinstance(part, ToolResult) for part in self.parts)


def _read_input(value: object, system_texts: list[str]) -> tuple[Message, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (Message(Role.USER, (Text(value),)),)
    turns: list[_Turn] = []
    for index, raw in enumerate(_list(value, "input")):
        path = f"input[{index}]"
        item = _object(raw, path)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                system_texts.append(_system_text(item.get("content"), path))
            elif role in ("user", "assistant"):
                is_user = role == "user"
                parts = _message_parts(_required(item, "content", f"{path}.content"), path, is_user)
                _add(turns, Role.USER if is_user else Role.ASSISTANT, parts)
            else:
                raise InvalidField(
                    f"'{path}.role' must be user, assistant, system or developer",
                    param=f"{path}.role",
                )
        elif kind == "function_call":
            call = ToolCall(
                call_id=_text(_required(item, "call_id", f"{path}.call_id"), f"{path}.call_id"),
                name=_text(_required(item, "name", f"{path}.name"), f"{path}.name"),
                arguments=_text(item.get("arguments", ""), f"{path}.arguments"),
            )
            _add(turns, Role.ASSISTANT, [call])
        elif kind == "function_call_output":
            result = ToolResult(
                call_id=_text(_required(item, "call_id", f"{path}.call_id"), f"{path}.call_id"),
                content=_tool_output(_required(item, "output", f"{path}.output"), path),
            )
            _add(turns, Role.USER, [result])
        elif kind == "reasoning":
            _add(turns, Role.ASSISTANT, [_reasoning_item(item, path)])
        elif kind == "item_reference":
            raise _untranslatable(
                f"{path}.type", "An item_reference (an item stored by OpenAI; send the item itself)"
            )
        elif isinstance(kind, str):
            raise _untranslatable(f"{path}.type", f"An input item of type '{kind}'")
        else:
            raise InvalidRequest(f"'{path}.type' is required", param=f"{path}.type")
    return tuple(Message(turn.role, tuple(turn.parts)) for turn in turns)


def _add(turns: list[_Turn], role: Role, parts: list[Part]) -> None:
    if turns and turns[-1].takes(role):
        turns[-1].parts.extend(parts)
    else:
        turns.append(_Turn(role, parts))


def _system_text(content: object, path: str) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for index, raw in enumerate(_list(content, f"{path}.content")):
        part_path = f"{path}.content[{index}]"
        part = _object(raw, part_path)
        if part.get("type") not in ("input_text", "output_text"):
            raise _untranslatable(
                f"{part_path}.type", "A system or developer message part other than text"
            )
        texts.append(_text(part.get("text"), f"{part_path}.text"))
    return "\n\n".join(texts)


def _message_parts(content: object, path: str, is_user: bool) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)]
    parts: list[Part] = []
    for index, raw in enumerate(_list(content, f"{path}.content")):
        part_path = f"{path}.content[{index}]"
        part = _object(raw, part_path)
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append(Text(_text(part.get("text"), f"{part_path}.text")))
        elif kind == "refusal":
            parts.append(Text(_text(part.get("refusal"), f"{part_path}.refusal")))
        elif kind == "input_image" and is_user:
            parts.append(_image(part, part_path))
        else:
            raise _untranslatable(f"{part_path}.type", f"A content part of type '{kind}' here")
    return parts


def _image(part: JsonObject, path: str) -> Image:
    url = part.get("image_url")
    if url is None:
        if part.get("file_id") is not None:
            raise _untranslatable(
                f"{path}.file_id", "An image by file_id (send it as image_url, a data: URL)"
            )
        raise InvalidRequest(f"'{path}.image_url' is required", param=f"{path}.image_url")
    return Image(
        url=_text(url, f"{path}.image_url"),
        detail=_optional_text(part, "detail", f"{path}.detail"),
    )


def _tool_output(output: object, path: str) -> tuple[Text | Image, ...]:
    if isinstance(output, str):
        return (Text(output),)
    content: list[Text | Image] = []
    for index, raw in enumerate(_list(output, f"{path}.output")):
        part_path = f"{path}.output[{index}]"
        part = _object(raw, part_path)
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            content.append(Text(_text(part.get("text"), f"{part_path}.text")))
        elif kind == "input_image":
            content.append(_image(part, part_path))
        else:
            raise _untranslatable(f"{part_path}.type", f"A tool output part of type '{kind}'")
    return tuple(content)


def _reasoning_item(item: JsonObject, path: str) -> Reasoning:
    texts = [
        _text(_object(raw, f"{path}.summary[{index}]").get("text"), f"{path}.summary[{index}].text")
        for index, raw in enumerate(_list(item.get("summary", []), f"{path}.summary"))
    ]
    if not texts and item.get("content"):
        texts = [
            _text(
                _object(raw, f"{path}.content[{index}]").get("text"),
                f"{path}.content[{index}].text",
            )
            for index, raw in enumerate(_list(item["content"], f"{path}.content"))
        ]
    signature = _optional_text(item, "encrypted_content", f"{path}.encrypted_content")
    return Reasoning(text="\n\n".join(texts), signature=signature)


def _read_tools(value: object) -> tuple[FunctionTool, ...]:
    if value is None:
        return ()
    tools: list[FunctionTool] = []
    for index, raw in enumerate(_list(value, "tools")):
        path = f"tools[{index}]"
        tool = _object(raw, path)
        kind = tool.get("type")
        if kind != "function":
            raise _untranslatable(f"{path}.type", f"A tool of type '{kind}' (a built-in tool)")
        if "name" not in tool and isinstance(tool.get("function"), dict):
            raise InvalidRequest(
                f"'{path}.name' is required: Responses API tools are flat (name, description, "
                "parameters at the top level), not nested under 'function' as in chat",
                param=f"{path}.name",
            )
        parameters = tool.get("parameters")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidField(f"'{path}.strict' must be a boolean", param=f"{path}.strict")
        tools.append(
            FunctionTool(
                name=_text(_required(tool, "name", f"{path}.name"), f"{path}.name"),
                description=_optional_text(tool, "description", f"{path}.description"),
                parameters=None
                if parameters is None
                else _object(parameters, f"{path}.parameters"),
                strict=strict,
            )
        )
    return tuple(tools)


def _read_tool_choice(body: JsonObject) -> ToolChoice | None:
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidField("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    choice = body.get("tool_choice")
    if choice is None:
        return None if parallel is None else ToolChoice(ToolChoiceMode.AUTO, parallel=parallel)
    if isinstance(choice, str):
        mode = _TOOL_CHOICE_MODES.get(choice)
        if mode is None:
            raise InvalidField(
                "'tool_choice' must be auto, none, required or a function", param="tool_choice"
            )
        return ToolChoice(mode, parallel=parallel)
    choice = _object(choice, "tool_choice")
    if choice.get("type") != "function":
        raise _untranslatable("tool_choice.type", f"A tool choice of type '{choice.get('type')}'")
    name = _text(_required(choice, "name", "tool_choice.name"), "tool_choice.name")
    return ToolChoice(ToolChoiceMode.NAMED, name=name, parallel=parallel)


def _read_text_config(value: object) -> JsonSchemaFormat | None:
    if value is None:
        return None
    config = _object(value, "text")
    verbosity = config.get("verbosity")
    if verbosity is not None and verbosity != "medium":
        raise _untranslatable("text.verbosity", "A verbosity other than medium")
    raw_format = config.get("format")
    if raw_format is None:
        return None
    text_format = _object(raw_format, "text.format")
    kind = text_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonSchemaFormat(name="json_object")
    if kind == "json_schema":
        strict = text_format.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidField("'text.format.strict' must be a boolean", param="text.format.strict")
        return JsonSchemaFormat(
            name=_text(_required(text_format, "name", "text.format.name"), "text.format.name"),
            schema=_object(
                _required(text_format, "schema", "text.format.schema"), "text.format.schema"
            ),
            strict=strict,
            description=_optional_text(text_format, "description", "text.format.description"),
        )
    raise InvalidField(
        "'text.format.type' must be text, json_schema or json_object", param="text.format.type"
    )


def _read_reasoning_effort(value: object) -> str | None:
    if value is None:
        return None
    effort = _object(value, "reasoning").get("effort")
    if effort is None:
        return None
    if effort not in _REASONING_EFFORTS:
        raise InvalidField(
            f"'reasoning.effort' must be one of {', '.join(sorted(_REASONING_EFFORTS))}",
            param="reasoning.effort",
        )
    return str(effort)


# --- writing an answer ---------------------------------------------------------------------


def new_response_id() -> str:
    """An unguessable response id in OpenAI's form (the gateway's store is keyed by it)."""
    return "resp_" + secrets.token_hex(24)


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _echo(
    request: Conversation,
    previous_response_id: str | None,
    store: bool,
    metadata: dict[str, str] | None,
) -> JsonObject:
    """What a response object repeats of its request, as OpenAI's does."""
    choice = request.tool_choice
    tool_choice: object = "auto"
    if choice is not None:
        if choice.mode is ToolChoiceMode.NAMED:
            tool_choice = {"type": "function", "name": choice.name}
        else:
            tool_choice = choice.mode.value
    text_format: JsonObject = {"type": "text"}
    schema_format = request.response_format
    if schema_format is not None:
        if schema_format.schema is None:
            text_format = {"type": "json_object"}
        else:
            text_format = {
                "type": "json_schema",
                "name": schema_format.name,
                "schema": schema_format.schema,
                "strict": schema_format.strict,
                "description": schema_format.description,
            }
    return {
        "instructions": request.system,
        "tools": [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                "strict": tool.strict,
            }
            for tool in request.tools
        ],
        "tool_choice": tool_choice,
        "parallel_tool_calls": True
        if choice is None or choice.parallel is None
        else choice.parallel,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_output_tokens": request.max_output_tokens,
        "text": {"format": text_format},
        "reasoning": {"effort": request.reasoning_effort, "summary": None}
        if request.reasoning_effort is not None
        else None,
        "previous_response_id": previous_response_id,
        "store": store,
        "metadata": metadata or {},
        "user": request.user,
    }


def _usage(usage: Usage | None) -> JsonObject | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _stop_status(stop_reason: StopReason) -> tuple[str, JsonObject | None]:
    """The response's status and `incomplete_details` for a stop reason."""
    if stop_reason is StopReason.MAX_TOKENS:
        return "incomplete", {"reason": "max_output_tokens"}
    if stop_reason is StopReason.CONTENT_FILTER:
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _response(
    echo: JsonObject,
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[JsonObject],
    usage: Usage | None = None,
    incomplete_details: JsonObject | None = None,
    error: JsonObject | None = None,
) -> JsonObject:
    response: JsonObject = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete_details,
        "model": model,
        "output": output,
        "usage": _usage(usage),
    }
    response.update(echo)
    return response


def _message_item(item_id: str, text: str, status: str) -> JsonObject:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}]
        if status != "in_progress"
        else [],
    }


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> JsonObject:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _reasoning_output(item_id: str, text: str, signature: str | None, status: str) -> JsonObject:
    item: JsonObject = {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else [],
        "status": status,
    }
    if signature is not None:
        item["encrypted_content"] = signature
    return item


def _output_item(part: Part) -> JsonObject:
    if isinstance(part, Text):
        return _message_item(_item_id("msg"), part.text, "completed")
    if isinstance(part, ToolCall):
        return _call_item(_item_id("fc"), part.call_id, part.name, part.arguments, "completed")
    if isinstance(part, Reasoning):
        return _reasoning_output(_item_id("rs"), part.text, part.signature, "completed")
    raise UntranslatableField(
        f"The provider answered with a {type(part).__name__.lower()} part, which a Responses "
        "API answer cannot carry",
        param="output",
    )


def write_answer(
    answer: Answer,
    request: Conversation,
    *,
    response_id: str | None = None,
    previous_response_id: str | None = None,
    store: bool = False,
    metadata: dict[str, str] | None = None,
) -> JsonObject:
    """The whole answer as a Responses API `response` object. `response_id` is the id the
    gateway stores it under (a new one when None); `store` says whether it did."""
    status, incomplete_details = _stop_status(answer.stop_reason)
    return _response(
        _echo(request, previous_response_id, store, metadata),
        response_id=response_id or new_response_id(),
        created_at=answer.created or int(time.time()),
        model=answer.model or request.model,
        status=status,
        output=[_output_item(part) for part in answer.parts],
        usage=answer.usage,
        incomplete_details=incomplete_details,
    )


def answer_items(answer: Answer) -> tuple[Message, ...]:
    """The assistant's turn of `answer` as conversation messages, for the gateway's store of
    responses (a later request's `previous_response_id` puts them before its input)."""
    if not answer.parts:
        return ()
    return (Message(Role.ASSISTANT, answer.parts),)


def write_error(error: ProviderError) -> JsonObject:
    """A provider's error in OpenAI's shape; Anthropic's error types become OpenAI's."""
    return {
        "error": {
            "message": error.message,
            "type": _OPENAI_ERROR_TYPES.get(error.error_type, error.error_type),
            "param": error.param,
            "code": error.code,
        }
    }


_OPENAI_ERROR_TYPES = {
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "server_error",
    "authentication_error": "invalid_request_error",
    "permission_error": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
}


# --- writing a stream ----------------------------------------------------------------------


@attrs.define
class _StreamedItem:
    """One output item as it streams: the text (or arguments) gathered so far."""

    kind: BlockKind
    item_id: str
    call_id: str = ""
    name: str = ""
    pieces: list[str] = attrs.Factory(list)
    signature: str | None = None
    closed: bool = False
    output_index: int = -1  # -1 until the client has been told of it
    summary_started: bool = False  # reasoning: the summary part has been announced

    def text(self) -> str:
        return "".join(self.pieces)

    def as_json(self, status: str) -> JsonObject:
        if self.kind is BlockKind.TEXT:
            return _message_item(self.item_id, self.text(), status)
        if self.kind is BlockKind.TOOL_CALL:
            return _call_item(self.item_id, self.call_id, self.name, self.text(), status)
        return _reasoning_output(self.item_id, self.text(), self.signature, status)

    def as_part(self) -> Part:
        if self.kind is BlockKind.TEXT:
            return Text(self.text())
        if self.kind is BlockKind.TOOL_CALL:
            return ToolCall(self.call_id, self.name, self.text())
        return Reasoning(self.text(), self.signature)


_FAILURE_CODES = {
    "rate_limit_error": "rate_limit_exceeded",
    "rate_limit_exceeded": "rate_limit_exceeded",
}


class StreamWriter:
    """The client's Responses event stream for a streamed answer. `response_id` is the id the
    gateway stores the response under (a new one when None: read `response_id`);
    `previous_response_id`, `store` and `metadata` are echoed in every lifecycle event. After
    `finish`, `answer()` is the whole answer (None if the stream failed), and
    `final_response` the response object the last event carried (for the gateway's store)."""

    def __init__(
        self,
        request: Conversation,
        *,
        response_id: str | None = None,
        previous_response_id: str | None = None,
        store: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.response_id = response_id or new_response_id()
        self._request = request
        self._echo = _echo(request, previous_response_id, store, metadata)
        self._sequence = 0
        self._started = False
        self._model = request.model
        self._created_at = 0
        self._items: dict[int, _StreamedItem] = {}
        self._pending: deque[_StreamedItem] = deque()  # opened, not yet done; the head is live
        self._output: list[_StreamedItem] = []  # in output_index order
        self._usage: Usage | None = None
        self._stopped: StreamStopped | None = None
        self._finished = False
        self._failed = False
        self.final_response: JsonObject | None = None

    def write(self, events: Sequence[StreamEvent]) -> bytes:
        if self._finished:
            return b""
        out: list[bytes] = []
        if not self._started:
            first = events[0] if events else None
            self._start(first if isinstance(first, StreamStarted) else None, out)
        for event in events:
            if isinstance(event, BlockDelta):
                self._delta(event, out)
            elif isinstance(event, BlockOpened):
                self._open(event, out)
            elif isinstance(event, BlockClosed):
                item = self._items[event.index]
                item.closed = True
                self._advance(out)
            elif isinstance(event, UsageReported):
                self._usage = merged_usage(self._usage, event.usage)
            elif isinstance(event, StreamStopped):
                self._stopped = event
            elif isinstance(event, StreamFailed):
                self._fail(event.message, event.error_type, out)
                break
            elif isinstance(event, StreamStarted) and event.usage is not None:
                self._usage = merged_usage(self._usage, event.usage)
        return b"".join(out)

    def finish(self) -> bytes:
        """After the last event: `response.completed` (or `response.incomplete`) with the whole
        response, or `response.failed` if the provider's stream never stopped."""
        if self._finished:
            return b""
        out: list[bytes] = []
        if not self._started:
            self._start(None, out)
        if self._stopped is None:
            self._fail("The provider's stream ended before the answer was complete", "", out)
            return b"".join(out)
        for item in self._pending:
            item.closed = True
        self._advance(out)
        status, incomplete_details = _stop_status(self._stopped.stop_reason)
        response = self._lifecycle(
            status,
            [item.as_json("completed") for item in self._output],
            usage=self._usage,
            incomplete_details=incomplete_details,
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": response}))
        self.final_response = response
        self._finished = True
        return b"".join(out)

    def answer(self) -> Answer | None:
        """The whole answer once the stream finished (for the gateway's store of responses);
        None while it streams or when it failed."""
        if not self._finished or self._failed or self._stopped is None:
            return None
        return Answer(
            id=self.response_id,
            model=self._model,
            parts=tuple(item.as_part() for item in self._output),
            stop_reason=self._stopped.stop_reason,
            usage=self._usage,
            stop_sequence=self._stopped.stop_sequence,
            created=self._created_at,
        )

    def _event(self, kind: str, payload: JsonObject) -> bytes:
        payload["type"] = kind
        payload["sequence_number"] = self._sequence
        self._sequence += 1
        return sse_event(orjson.dumps(payload), kind)

    def _lifecycle(
        self,
        status: str,
        output: list[JsonObject],
        *,
        usage: Usage | None = None,
        incomplete_details: JsonObject | None = None,
        error: JsonObject | None = None,
    ) -> JsonObject:
        return _response(
            self._echo,
            response_id=self.response_id,
            created_at=self._created_at,
            model=self._model,
            status=status,
            output=output,
            usage=usage,
            incomplete_details=incomplete_details,
            error=error,
        )

    def _start(self, started: StreamStarted | None, out: list[bytes]) -> None:
        self._started = True
        if started is not None:
            self._model = started.model or self._model
            self._created_at = started.created
        self._created_at = self._created_at or int(time.time())
        response = self._lifecycle("in_progress", [])
        out.append(self._event("response.created", {"response": response}))
        out.append(self._event("response.in_progress", {"response": response}))

    def _open(self, event: BlockOpened, out: list[bytes]) -> None:
        prefix = {BlockKind.TEXT: "msg", BlockKind.TOOL_CALL: "fc", BlockKind.REASONING: "rs"}
        item = _StreamedItem(kind=event.kind, item_id=_item_id(prefix[event.kind]))
        if event.kind is BlockKind.TOOL_CALL:
            item.call_id = event.call_id or _item_id("call")
            item.name = event.name or ""
        self._items[event.index] = item
        self._pending.append(item)
        if len(self._pending) == 1:
            self._announce(item, out)

    def _delta(self, event: BlockDelta, out: list[bytes]) -> None:
        item = self._items[event.index]
        if event.signature is not None:
            item.signature = event.signature
        if not event.text:
            return
        item.pieces.append(event.text)
        if item.output_index >= 0:
            self._send_delta(item, event.text, out)

    def _announce(self, item: _StreamedItem, out: list[bytes]) -> None:
        """Tell the client of `item`, now the live one, with whatever it gathered meanwhile."""
        item.output_index = len(self._output)
        self._output.append(item)
        out.append(
            self._event(
                "response.output_item.added",
                {"output_index": item.output_index, "item": item.as_json("in_progress")},
            )
        )
        if item.kind is BlockKind.TEXT:
            out.append(
                self._event(
                    "response.content_part.added",
                    {
                        "item_id": item.item_id,
                        "output_index": item.output_index,
                        "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []},
                    },
                )
            )
        gathered = item.text()
        if gathered:
            self._send_delta(item, gathered, out)

    def _send_delta(self, item: _StreamedItem, text: str, out: list[bytes]) -> None:
        where = {"item_id": item.item_id, "output_index": item.output_index}
        if item.kind is BlockKind.TEXT:
            event = {**where, "content_index": 0, "delta": text, "logprobs": []}
            out.append(self._event("response.output_text.delta", event))
        elif item.kind is BlockKind.TOOL_CALL:
            out.append(
                self._event("response.function_call_arguments.delta", {**where, "delta": text})
            )
        else:
            if not item.summary_started:
                item.summary_started = True
                part = {"type": "summary_text", "text": ""}
                added = {**where, "summary_index": 0, "part": part}
                out.append(self._event("response.reasoning_summary_part.added", added))
            event = {**where, "summary_index": 0, "delta": text}
            out.append(self._event("response.reasoning_summary_text.delta", event))

    def _advance(self, out: list[bytes]) -> None:
        """Finish the live items that are closed, then make the next one live."""
        while self._pending and self._pending[0].closed:
            self._done(self._pending.popleft(), out)
            if self._pending:
                self._announce(self._pending[0], out)

    def _done(self, item: _StreamedItem, out: list[bytes]) -> None:
        where = {"item_id": item.item_id, "output_index": item.output_index}
        text = item.text()
        if item.kind is BlockKind.TEXT:
            part = {"type": "output_text", "text": text, "annotations": []}
            done = {**where, "content_index": 0, "text": text, "logprobs": []}
            out.append(self._event("response.output_text.done", done))
            part_done = {**where, "content_index": 0, "part": part}
            out.append(self._event("response.content_part.done", part_done))
        elif item.kind is BlockKind.TOOL_CALL:
            done = {**where, "arguments": text}
            out.append(self._event("response.function_call_arguments.done", done))
        elif item.summary_started:
            done = {**where, "summary_index": 0, "text": text}
            out.append(self._event("response.reasoning_summary_text.done", done))
            part_done = {
                **where,
                "summary_index": 0,
                "part": {"type": "summary_text", "text": text},
            }
            out.append(self._event("response.reasoning_summary_part.done", part_done))
        item_done = {"output_index": item.output_index, "item": item.as_json("completed")}
        out.append(self._event("response.output_item.done", item_done))

    def _fail(self, message: str, error_type: str, out: list[bytes]) -> None:
        error = {
            "code": _FAILURE_CODES.get(error_type, "server_error"),
            "message": message,
            "type": error_type or None,
        }
        output = [
            item.as_json("completed" if item.closed else "incomplete") for item in self._output
        ]
        response = self._lifecycle("failed", output, usage=self._usage, error=error)
        out.append(self._event("response.failed", {"response": response}))
        self._finished = True
        self._failed = True
