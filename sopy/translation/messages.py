"""The Anthropic Messages format (`POST /v1/messages`) read into and written from the internal
representation of `sopy.translation.items`, on both sides: a Messages client (Claude Code, the
Anthropic SDK) on a provider of another format (`read_request`, `write_answer`, `StreamWriter`,
`write_error`), and a client of another format on an Anthropic provider (`write_request`,
`read_answer`, `StreamReader`, `read_error`). Pure functions and sans-IO stream classes; the
relay calls them by these names.

Requests read (`read_request`):
- `system` as a string or text blocks (joined by a blank line), and the `system`-role messages
  the SDK accepts inside `messages` (appended to it the same way); `cache_control` markers are
  ignored everywhere: they change what the prompt costs, not the answer.
- content as a string or blocks: `text` (citations ignored), `image` (a base64 source becomes a
  `data:` URL, a url source its URL), `tool_use` (its `input` object becomes the arguments' JSON
  text), `tool_result` (text and image content, `is_error`), `thinking` (text and signature) and
  `redacted_thinking` (a `Reasoning` with `redacted` set, its `data` as the signature). Other
  blocks (`document`, `search_result`, server tool blocks, file sources) are refused with
  `UntranslatableField` naming the block.
- custom `tools`; server tools (web search, bash, text editor, computer, code execution...) and
  `input_examples` are refused with `UntranslatableField("tools[i]...")`. `tool_choice`
  auto/any/tool/none with `disable_parallel_tool_use`.
- `max_tokens` (required, as Anthropic requires it), `temperature`, `top_p`, `stop_sequences`,
  `stream`, `metadata.user_id` (the IR's `user`). `top_k` has no counterpart: refused.
- `thinking`: `enabled` gives `reasoning_budget`; `adaptive` and `between_tools` (the model
  decides) and `disabled` set nothing, the target's default. `output_config.effort` gives
  `reasoning_effort` (the same words as OpenAI's), `output_config.format` (a JSON schema) the
  `response_format`, named `RESPONSE_FORMAT_NAME`.
- ignored, as they do not change the answer: `service_tier`, `inference_geo`, `speed`,
  `diagnostics`, `cache_control`, metadata other than `user_id`. Also ignored:
  `context_management`, the server-side clearing of old tool results and thinking once the
  context grows past a threshold, which Claude Code always sends and cannot turn off; another
  provider gets the whole conversation (one over its context window gets its error). Any other
  field is refused with `UntranslatableField`, so nothing else that changes the answer is
  dropped silently.

Requests written (`write_request`): the same fields the other way. `max_tokens` is required by
Anthropic: when the IR has none it is `DEFAULT_MAX_TOKENS`, plus the thinking budget when there
is one (Anthropic counts thinking in `max_tokens`). OpenAI's `reasoning_effort` becomes a
thinking budget by `THINKING_BUDGETS` (`none`/`minimal`: no thinking); a budget that would not
fit under the client's own `max_tokens` is cut to fit, or thinking left off when not even
Anthropic's minimum fits. A `response_format` becomes `output_config.format` (its name,
description and `strict` have no counterpart: Anthropic's structured output is always strict).
`temperature` and `top_p` are sent only when the client set them (Anthropic's newest models
refuse them, with a 400 the client sees translated); a temperature over Anthropic's
`MAX_TEMPERATURE` is refused. An image's `detail` (OpenAI's resolution hint) has no counterpart
and is not sent. Reasoning without a signature (a chat provider's) cannot be handed to
Anthropic and is left out, as Anthropic itself drops earlier turns' thinking; empty text parts,
which Anthropic refuses, are left out too. Tool results go first in their message, as Anthropic
requires. A tool call whose arguments are not a JSON object is the client's malformed request.

Answers: stop reasons map `end_turn`/`max_tokens`/`stop_sequence`/`tool_use`/`refusal` to the
IR's; `model_context_window_exceeded` and `pause_turn` (the turn was cut short) read as
`MAX_TOKENS`, the IR's "incomplete". Usage: the IR's `input_tokens` counts cache reads and
writes, Anthropic's excludes them. A tool call whose arguments are not a JSON object cannot be
an Anthropic `input`: `write_answer` answers 502 (`UpstreamError`), the provider's fault, and
empty arguments read as `{}`.

Streams: `StreamReader` maps Anthropic's content block indices to IR blocks (0, 1, 2... in
order of appearance) and closes open blocks at `message_delta`'s stop; `StreamWriter` emits one
content block at a time, as Anthropic does, holding back the events of a block that opens while
another is open until that one closes, and holds `message_delta` until the usage is known.
A failed or unfinished stream ends with Anthropic's `event: error`.

Errors: `read_error` reads Anthropic's `{"type": "error", "error": {"type", "message"}}`;
`write_error` writes that shape with Anthropic's type for the status
(`sopy.errors.anthropic_error_type`).
"""

import uuid
from collections.abc import Sequence
from typing import Any, NoReturn

import attrs
import orjson

from sopy.errors import InvalidField, InvalidRequest, UpstreamError, anthropic_error_type
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
from sopy.translation.sse import SseEvent, sse_event

DEFAULT_MAX_TOKENS = 4096
"""`max_tokens` sent to Anthropic, which requires it, when the client set no limit."""

MIN_THINKING_BUDGET = 1024
"""Anthropic's smallest `thinking.budget_tokens`."""

THINKING_BUDGETS: dict[str, int | None] = {
    "none": None,
    "minimal": None,
    "low": MIN_THINKING_BUDGET,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
    "max": 65536,
}
"""OpenAI's `reasoning_effort` as an Anthropic thinking budget in tokens (None: no thinking)."""

MAX_TEMPERATURE = 1.0
"""Anthropic's highest `temperature` (OpenAI's goes to 2, on another scale: not converted)."""

RESPONSE_FORMAT_NAME = "response"
"""The name given to a JSON schema read from `output_config.format`, which has none."""

_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_IGNORED_FIELDS = frozenset(
    {"service_tier", "inference_geo", "speed", "diagnostics", "context_management"}
)
_READ_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "cache_control",
    }
)
_STOP_REASONS = {
    "end_turn": StopReason.END_TURN,
    "max_tokens": StopReason.MAX_TOKENS,
    "stop_sequence": StopReason.STOP_SEQUENCE,
    "tool_use": StopReason.TOOL_USE,
    "refusal": StopReason.CONTENT_FILTER,
    "model_context_window_exceeded": StopReason.MAX_TOKENS,
    "pause_turn": StopReason.MAX_TOKENS,
}
_STOP_REASON_NAMES = {
    StopReason.END_TURN: "end_turn",
    StopReason.MAX_TOKENS: "max_tokens",
    StopReason.STOP_SEQUENCE: "stop_sequence",
    StopReason.TOOL_USE: "tool_use",
    StopReason.CONTENT_FILTER: "refusal",
}
_TOOL_CHOICE_MODES = {
    "auto": ToolChoiceMode.AUTO,
    "any": ToolChoiceMode.REQUIRED,
    "tool": ToolChoiceMode.NAMED,
    "none": ToolChoiceMode.NONE,
}
_TOOL_CHOICE_TYPES = {mode: name for name, mode in _TOOL_CHOICE_MODES.items()}
# The error types Anthropic's SDK knows in an error body; others are written as `api_error`.
_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "timeout_error",
        "api_error",
        "overloaded_error",
    }
)


# Reading a client's request.


def read_request(body: JsonObject) -> Conversation:
    """A Messages request as a `Conversation`; raises `InvalidRequest` naming the field for a
    malformed one and `UntranslatableField` for a feature the IR cannot carry."""
    for field in body:
        if field not in _READ_FIELDS and field not in _IGNORED_FIELDS:
            raise UntranslatableField(
                f"`{field}` cannot be translated for this model's provider; remove it",
                param=field,
            )
    model = _string(body.get("model"), "model")
    max_tokens = _required_integer(body.get("max_tokens"), "max_tokens")
    system = _read_system(body.get("system"))
    messages, system = _read_messages(body.get("messages"), system)
    effort, response_format = _read_output_config(body.get("output_config"))
    return Conversation(
        model=model,
        messages=messages,
        system=system,
        tools=_read_tools(body.get("tools")),
        tool_choice=_read_tool_choice(body.get("tool_choice")),
        max_output_tokens=max_tokens,
        temperature=_number(body.get("temperature"), "temperature"),
        top_p=_number(body.get("top_p"), "top_p"),
        stop=_read_stop_sequences(body.get("stop_sequences")),
        stream=_boolean(body.get("stream"), "stream") or False,
        response_format=response_format,
        reasoning_effort=effort,
        reasoning_budget=_read_thinking(body.get("thinking")),
        user=_read_user(body.get("metadata")),
    )


def _read_system(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return _joined_text(value, "system")


def _joined_text(value: object, path: str) -> str:
    """A string, or a list of text blocks joined by a blank line."""
    if isinstance(value, str):
        return value
    texts = []
    for index, block in enumerate(_list(value, path)):
        block_path = f"{path}[{index}]"
        block = _object(block, block_path)
        if block.get("type") != "text":
            raise InvalidField(f"{block_path} must be a text block", param=f"{block_path}.type")
        texts.append(_string(block.get("text"), f"{block_path}.text"))
    return "\n\n".join(texts)


def _read_messages(value: object, system: str | None) -> tuple[tuple[Message, ...], str | None]:
    messages = []
    for index, item in enumerate(_list(value, "messages")):
        path = f"messages[{index}]"
        item = _object(item, path)
        role = item.get("role")
        content = item.get("content")
        if role == "system":
            text = _joined_text(content, f"{path}.content")
            system = text if system is None else f"{system}\n\n{text}"
        elif role in ("user", "assistant"):
            messages.append(Message(Role(role), _read_content(content, f"{path}.content")))
        else:
            raise InvalidField(f"{path}.role must be user or assistant", param=f"{path}.role")
    return tuple(messages), system


def _read_content(value: object, path: str) -> tuple[Part, ...]:
    if isinstance(value, str):
        return (Text(value),) if value else ()
    return tuple(
        _read_block(_object(block, f"{path}[{index}]"), f"{path}[{index}]")
        for index, block in enumerate(_list(value, path))
    )


def _read_block(block: JsonObject, path: str) -> Part:
    kind = block.get("type")
    if kind == "text":
        return Text(_string(block.get("text"), f"{path}.text"))
    if kind == "image":
        return _read_image(block, path)
    if kind == "tool_use":
        return ToolCall(
            call_id=_string(block.get("id"), f"{path}.id"),
            name=_string(block.get("name"), f"{path}.name"),
            arguments=_json_text(_object(block.get("input"), f"{path}.input")),
        )
    if kind == "tool_result":
        return _read_tool_result(block, path)
    if kind == "thinking":
        return Reasoning(
            text=_string(block.get("thinking"), f"{path}.thinking"),
            signature=_string(block.get("signature"), f"{path}.signature"),
        )
    if kind == "redacted_thinking":
        return Reasoning(
            text="", signature=_string(block.get("data"), f"{path}.data"), redacted=True
        )
    if not isinstance(kind, str):
        raise InvalidField(f"{path}.type must be a content block type", param=f"{path}.type")
    raise UntranslatableField(
        f"a `{kind}` content block cannot be translated for this model's provider",
        param=path,
    )


def _read_image(block: JsonObject, path: str) -> Image:
    source = _object(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = _string(source.get("media_type"), f"{path}.source.media_type")
        data = _string(source.get("data"), f"{path}.source.data")
        return Image(f"data:{media_type};base64,{data}")
    if kind == "url":
        return Image(_string(source.get("url"), f"{path}.source.url"))
    raise UntranslatableField(
        f"an image source of type `{kind}` cannot be translated for this model's provider; "
        "send the image as base64 data or a URL",
        param=f"{path}.source",
    )


def _read_tool_result(block: JsonObject, path: str) -> ToolResult:
    content = block.get("content")
    parts: list[Text | Image] = []
    if isinstance(content, str):
        parts = [Text(content)] if content else []
    elif content is not None:
        for index, item in enumerate(_list(content, f"{path}.content")):
            item_path = f"{path}.content[{index}]"
            part = _read_block(_object(item, item_path), item_path)
            if not isinstance(part, Text | Image):
                raise UntranslatableField(
                    f"{item_path}: a tool result can only hold text and images here",
                    param=item_path,
                )
            parts.append(part)
    return ToolResult(
        call_id=_string(block.get("tool_use_id"), f"{path}.tool_use_id"),
        content=tuple(parts),
        is_error=_boolean(block.get("is_error"), f"{path}.is_error") or False,
    )


def _read_tools(value: object) -> tuple[FunctionTool, ...]:
    if value is None:
        return ()
    tools = []
    for index, item in enumerate(_list(value, "tools")):
        path = f"tools[{index}]"
        tool = _object(item, path)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise UntranslatableField(
                f"{path} is an Anthropic server tool (`{kind}`), which this model's provider "
                "does not have; use a custom tool with an input_schema",
                param=path,
            )
        if "input_examples" in tool:
            raise UntranslatableField(
                f"{path}.input_examples cannot be translated for this model's provider",
                param=f"{path}.input_examples",
            )
        description = tool.get("description")
        tools.append(
            FunctionTool(
                name=_string(tool.get("name"), f"{path}.name"),
                description=None
                if description is None
                else _string(description, f"{path}.description"),
                parameters=_object(tool.get("input_schema"), f"{path}.input_schema"),
                strict=_boolean(tool.get("strict"), f"{path}.strict"),
            )
        )
    return tuple(tools)


def _read_tool_choice(value: object) -> ToolChoice | None:
    if value is None:
        return None
    choice = _object(value, "tool_choice")
    mode = _TOOL_CHOICE_MODES.get(str(choice.get("type")))
    if mode is None:
        raise InvalidField(
            "tool_choice.type must be auto, any, tool or none", param="tool_choice.type"
        )
    name = _string(choice.get("name"), "tool_choice.name") if mode is ToolChoiceMode.NAMED else None
    disable = _boolean(choice.get("disable_parallel_tool_use"), "tool_choice")
    return ToolChoice(mode=mode, name=name, parallel=None if disable is None else not disable)


def _read_stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(
        _string(item, f"stop_sequences[{index}]")
        for index, item in enumerate(_list(value, "stop_sequences"))
    )


def _read_thinking(value: object) -> int | None:
    if value is None:
        return None
    thinking = _object(value, "thinking")
    kind = thinking.get("type")
    if kind == "enabled":
        return _required_integer(thinking.get("budget_tokens"), "thinking.budget_tokens")
    if kind in ("disabled", "adaptive", "between_tools"):
        return None
    raise InvalidField(
        "thinking.type must be enabled, adaptive, between_tools or disabled",
        param="thinking.type",
    )


def _read_output_config(value: object) -> tuple[str | None, JsonSchemaFormat | None]:
    if value is None:
        return None, None
    config = _object(value, "output_config")
    effort = config.get("effort")
    if effort is not None and effort not in _EFFORTS:
        raise InvalidField(
            "output_config.effort must be low, medium, high, xhigh or max",
            param="output_config.effort",
        )
    output_format = config.get("format")
    if output_format is None:
        return effort, None
    output_format = _object(output_format, "output_config.format")
    if output_format.get("type") != "json_schema":
        raise InvalidField(
            "output_config.format.type must be json_schema", param="output_config.format.type"
        )
    schema = _object(output_format.get("schema"), "output_config.format.schema")
    return effort, JsonSchemaFormat(name=RESPONSE_FORMAT_NAME, schema=schema)


def _read_user(value: object) -> str | None:
    if value is None:
        return None
    user = _object(value, "metadata").get("user_id")
    return None if user is None else _string(user, "metadata.user_id")


# Writing a request for an Anthropic provider.


def write_request(conversation: Conversation) -> JsonObject:
    """The Messages request body for `conversation`; raises `UntranslatableField` for what
    Anthropic cannot express."""
    body: JsonObject = {"model": conversation.model}
    if conversation.system:
        body["system"] = conversation.system
    body["messages"] = [
        message
        for index, item in enumerate(conversation.messages)
        if (message := _write_message(item, index)) is not None
    ]
    budget = _thinking_budget(conversation)
    max_tokens = conversation.max_output_tokens
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS + (budget or 0)
    elif budget is not None and conversation.reasoning_budget is None and budget >= max_tokens:
        # A budget derived from an effort must fit under the client's own limit.
        budget = max_tokens - 1 if max_tokens > MIN_THINKING_BUDGET else None
    body["max_tokens"] = max_tokens
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if conversation.temperature is not None:
        if conversation.temperature > MAX_TEMPERATURE:
            raise UntranslatableField(
                f"Anthropic takes a temperature from 0 to {MAX_TEMPERATURE}, "
                f"not {conversation.temperature}",
                param="temperature",
            )
        body["temperature"] = conversation.temperature
    if conversation.top_p is not None:
        body["top_p"] = conversation.top_p
    if conversation.stop:
        body["stop_sequences"] = list(conversation.stop)
    if conversation.tools:
        body["tools"] = [_write_tool(tool) for tool in conversation.tools]
    if conversation.tool_choice is not None:
        body["tool_choice"] = _write_tool_choice(conversation.tool_choice)
    if conversation.response_format is not None:
        schema = conversation.response_format.schema
        if schema is None:
            schema = {"type": "object"}
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if conversation.user is not None:
        body["metadata"] = {"user_id": conversation.user}
    if conversation.stream:
        body["stream"] = True
    return body


def _thinking_budget(conversation: Conversation) -> int | None:
    if conversation.reasoning_budget is not None:
        return conversation.reasoning_budget
    effort = conversation.reasoning_effort
    if effort is None:
        return None
    if effort not in THINKING_BUDGETS:
        raise UntranslatableField(
            f"reasoning effort `{effort}` has no Anthropic thinking budget; use one of "
            + ", ".join(THINKING_BUDGETS),
            param="reasoning_effort",
        )
    return THINKING_BUDGETS[effort]


def _write_message(message: Message, index: int) -> JsonObject | None:
    blocks = [
        block
        for position, part in enumerate(message.parts)
        if (block := _write_part(part, f"messages[{index}].content[{position}]")) is not None
    ]
    if not blocks:
        return None
    # Anthropic wants a user message's tool results before anything else in it.
    blocks.sort(key=lambda block: block["type"] != "tool_result")
    return {"role": message.role.value, "content": blocks}


def _write_part(part: Part, path: str) -> JsonObject | None:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, Image):
        return _write_image(part, path)
    if isinstance(part, ToolCall):
        return {
            "type": "tool_use",
            "id": part.call_id,
            "name": part.name,
            "input": _arguments_object(part, path),
        }
    if isinstance(part, ToolResult):
        block: JsonObject = {"type": "tool_result", "tool_use_id": part.call_id}
        content = [
            written
            for position, item in enumerate(part.content)
            if (written := _write_part(item, f"{path}.content[{position}]")) is not None
        ]
        if content:
            block["content"] = content
        if part.is_error:
            block["is_error"] = True
        return block
    if part.signature is None:
        return None
    if part.redacted:
        return {"type": "redacted_thinking", "data": part.signature}
    return {"type": "thinking", "thinking": part.text, "signature": part.signature}


def _write_image(image: Image, path: str) -> JsonObject:
    if not image.url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    header, comma, data = image.url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding != "base64" or media_type not in _IMAGE_MEDIA_TYPES:
        raise UntranslatableField(
            "Anthropic takes inline images only as base64 data: URLs of type "
            + ", ".join(sorted(_IMAGE_MEDIA_TYPES)),
            param=path,
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _write_tool(tool: FunctionTool) -> JsonObject:
    written: JsonObject = {"name": tool.name}
    if tool.description is not None:
        written["description"] = tool.description
    parameters = tool.parameters
    written["input_schema"] = (
        {"type": "object", "properties": {}} if parameters is None else parameters
    )
    if tool.strict is not None:
        written["strict"] = tool.strict
    return written


def _write_tool_choice(choice: ToolChoice) -> JsonObject:
    written: JsonObject = {"type": _TOOL_CHOICE_TYPES[choice.mode]}
    if choice.mode is ToolChoiceMode.NAMED:
        written["name"] = choice.name
    if choice.parallel is not None and choice.mode is not ToolChoiceMode.NONE:
        written["disable_parallel_tool_use"] = not choice.parallel
    return written


# Reading an Anthropic provider's answer.


def read_answer(body: JsonObject) -> Answer:
    """An Anthropic message as an `Answer`; raises `UpstreamError` for a malformed one."""
    try:
        parts = tuple(_read_answer_block(block) for block in body["content"])
        return Answer(
            id=body["id"],
            model=body["model"],
            parts=parts,
            stop_reason=_stop_reason(body.get("stop_reason")),
            usage=_AnthropicCounts().updated(body.get("usage") or {}).usage(),
            stop_sequence=body.get("stop_sequence"),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise UpstreamError(
            f"the provider's answer is not an Anthropic message ({error})"
        ) from None


def _read_answer_block(block: JsonObject) -> Part:
    kind = block["type"]
    if kind == "text":
        return Text(block["text"])
    if kind == "tool_use":
        return ToolCall(block["id"], block["name"], _json_text(block["input"]))
    if kind == "thinking":
        return Reasoning(block["thinking"], block["signature"])
    if kind == "redacted_thinking":
        return Reasoning("", block["data"], redacted=True)
    raise UpstreamError(
        f"the provider answered with a `{kind}` content block, which Sopy cannot translate"
    )


def _stop_reason(value: object) -> StopReason:
    """Anthropic's stop reason; one Sopy does not know yet reads as the end of the turn."""
    if not isinstance(value, str):
        return StopReason.END_TURN
    return _STOP_REASONS.get(value, StopReason.END_TURN)


@attrs.frozen
class _AnthropicCounts:
    """Usage as Anthropic counts it (input without the cache's tokens), cumulative."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    thinking: int = 0

    def updated(self, usage: JsonObject) -> "_AnthropicCounts":
        details = usage.get("output_tokens_details")
        thinking = details.get("thinking_tokens") if isinstance(details, dict) else None
        return _AnthropicCounts(
            _count(usage.get("input_tokens"), self.input_tokens),
            _count(usage.get("output_tokens"), self.output_tokens),
            _count(usage.get("cache_read_input_tokens"), self.cache_read),
            _count(usage.get("cache_creation_input_tokens"), self.cache_write),
            _count(thinking, self.thinking),
        )

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + self.cache_read + self.cache_write,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
            reasoning_tokens=self.thinking,
        )


def _count(value: object, before: int) -> int:
    return value if type(value) is int else before


# Writing an answer for a Messages client.


def write_answer(answer: Answer, request: Conversation) -> JsonObject:
    """The Anthropic message for `answer`, for a client whose request was `request`."""
    content = [_write_answer_part(part) for part in answer.parts]
    return {
        "id": _message_id(answer.id),
        "type": "message",
        "role": "assistant",
        "model": answer.model or request.model,
        "content": [block for block in content if block is not None],
        "stop_reason": _STOP_REASON_NAMES[answer.stop_reason],
        "stop_sequence": answer.stop_sequence
        if answer.stop_reason is StopReason.STOP_SEQUENCE
        else None,
        "usage": _write_usage(answer.usage or Usage()),
    }


def _write_answer_part(part: Part) -> JsonObject | None:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, ToolCall):
        return {
            "type": "tool_use",
            "id": part.call_id,
            "name": part.name,
            "input": _arguments_object(part, None),
        }
    if isinstance(part, Reasoning):
        if part.redacted and part.signature is not None:
            return {"type": "redacted_thinking", "data": part.signature}
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    # An answer holds no images or tool results; a provider's would have been refused.
    return None


def _write_usage(usage: Usage) -> JsonObject:
    uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    written: JsonObject = {
        "input_tokens": max(uncached, 0),
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
    }
    if usage.reasoning_tokens:
        written["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return written


def _message_id(provider_id: str) -> str:
    return provider_id if provider_id.startswith("msg_") else f"msg_{provider_id}"


def _arguments_object(call: ToolCall, path: str | None) -> JsonObject:
    """A tool call's arguments as Anthropic's `input` object ("" is no arguments). Malformed
    ones are the client's fault in a request (`path` names the part), else the provider's."""
    if not call.arguments.strip():
        return {}
    try:
        arguments = orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        message = (
            f"the arguments of tool call {call.call_id} ({call.name}) are not a JSON object, "
            "which Anthropic's tool_use input must be"
        )
        if path is None:
            raise UpstreamError(message)
        raise InvalidField(message, param=path)
    return arguments


# Errors.


def read_error(status: int, body: bytes) -> ProviderError:
    """An Anthropic error answer (`{"type": "error", "error": {"type", "message"}}`); a body in
    another shape keeps the status, with Anthropic's type for it and the body as message."""
    try:
        error = orjson.loads(body)["error"]
        return ProviderError(
            status=status, message=str(error["message"]), error_type=str(error["type"])
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = body[:1000].decode("utf-8", "replace").strip()
        return ProviderError(
            status=status,
            message=text or f"the provider answered {status}",
            error_type=anthropic_error_type(status),
        )


def write_error(error: ProviderError) -> JsonObject:
    """The error body a Messages client expects: Anthropic's type for the status."""
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(error.status), "message": error.message},
    }


# Streams.


@attrs.define
class _ReaderBlock:
    """An open Anthropic content block: its IR index, and whether arguments came for a call."""

    index: int
    kind: BlockKind
    arguments_seen: bool = False


class StreamReader:
    """An Anthropic provider's event stream, fed event by event, as IR stream events.
    `message_delta` gives the usage (`UsageReported`, cumulative, cache counts kept from
    `message_start`) and then the stop, after closing the blocks still open; a `message_stop`
    without a stop reason before it ends the turn. `ping` and unknown events are skipped."""

    def __init__(self) -> None:
        self._blocks: dict[int, _ReaderBlock] = {}  # Anthropic's index -> the open IR block
        self._next_index = 0
        self._counts = _AnthropicCounts()
        self._stopped = False
        self._failed = False

    def feed(self, event: SseEvent) -> list[StreamEvent]:
        if self._failed or (not event.data and not event.name):
            return []
        try:
            data = orjson.loads(event.data) if event.data else {"type": event.name}
            return self._event(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
            return self._fail(f"the provider sent a malformed `{event.name}` event")

    def end(self) -> list[StreamEvent]:
        if self._failed:
            return []
        if self._stopped:
            return self._close_all()
        events = self._close_all()
        events.extend(self._fail("the provider's stream ended before the answer was complete"))
        return events

    def _event(self, data: JsonObject) -> list[StreamEvent]:
        kind = data["type"]
        if kind == "content_block_delta":
            return self._delta(self._blocks[data["index"]], data["delta"])
        if kind == "content_block_start":
            return self._start(data["index"], data["content_block"])
        if kind == "content_block_stop":
            return self._stop_block(data["index"])
        if kind == "message_start":
            message = data["message"]
            self._counts = self._counts.updated(message.get("usage") or {})
            return [StreamStarted(message["id"], message["model"], usage=self._counts.usage())]
        if kind == "message_delta":
            return self._message_delta(data)
        if kind == "message_stop":
            if self._stopped:
                return []
            self._stopped = True
            return [*self._close_all(), StreamStopped(StopReason.END_TURN)]
        if kind == "error":
            error = data.get("error") or {}
            return self._fail(
                str(error.get("message", "the provider's stream failed")),
                str(error.get("type", "api_error")),
            )
        return []  # ping, and events Sopy does not know yet

    def _start(self, anthropic_index: int, block: JsonObject) -> list[StreamEvent]:
        kind = block["type"]
        index = self._next_index
        if kind == "text":
            opened = BlockOpened(index, BlockKind.TEXT)
            first = BlockDelta(index, text=block.get("text") or "")
        elif kind == "thinking":
            opened = BlockOpened(index, BlockKind.REASONING)
            first = BlockDelta(
                index, text=block.get("thinking") or "", signature=block.get("signature") or None
            )
        elif kind == "redacted_thinking":
            opened = BlockOpened(index, BlockKind.REASONING)
            first = BlockDelta(index, signature=block["data"])
        elif kind == "tool_use":
            opened = BlockOpened(index, BlockKind.TOOL_CALL, block["id"], block["name"])
            arguments = block.get("input")
            first = BlockDelta(index, text=_json_text(arguments) if arguments else "")
        else:
            return self._fail(
                f"the provider streamed a `{kind}` block, which Sopy cannot translate"
            )
        self._next_index += 1
        self._blocks[anthropic_index] = _ReaderBlock(index, opened.kind, bool(first.text))
        if first.text or first.signature:
            return [opened, first]
        return [opened]

    def _delta(self, block: _ReaderBlock, delta: JsonObject) -> list[StreamEvent]:
        kind = delta["type"]
        if kind == "text_delta":
            text = delta["text"]
        elif kind == "input_json_delta":
            text = delta["partial_json"]
            block.arguments_seen = block.arguments_seen or bool(text)
        elif kind == "thinking_delta":
            text = delta["thinking"]
        elif kind == "signature_delta":
            return [BlockDelta(block.index, signature=delta["signature"])]
        else:
            return []  # citations: the IR has none
        return [BlockDelta(block.index, text=text)] if text else []

    def _stop_block(self, anthropic_index: int) -> list[StreamEvent]:
        block = self._blocks.pop(anthropic_index, None)
        if block is None:
            return []
        if block.kind is BlockKind.TOOL_CALL and not block.arguments_seen:
            # A call without arguments: `{}`, as Anthropic's own `input` says.
            return [BlockDelta(block.index, text="{}"), BlockClosed(block.index)]
        return [BlockClosed(block.index)]

    def _message_delta(self, data: JsonObject) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        usage = data.get("usage")
        if usage:
            self._counts = self._counts.updated(usage)
            events.append(UsageReported(self._counts.usage()))
        delta = data.get("delta") or {}
        reason = delta.get("stop_reason")
        if reason is not None and not self._stopped:
            self._stopped = True
            events.extend(self._close_all())
            events.append(StreamStopped(_stop_reason(reason), delta.get("stop_sequence")))
        return events

    def _close_all(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for anthropic_index in sorted(self._blocks, key=lambda key: self._blocks[key].index):
            events.extend(self._stop_block(anthropic_index))
        return events

    def _fail(self, message: str, error_type: str = "api_error") -> list[StreamEvent]:
        self._failed = True
        return [StreamFailed(message, error_type)]


@attrs.define
class _WriterBlock:
    """A block of the answer being written: its `content_block_start` payload, and the deltas
    held back while an earlier block is still the client's open one."""

    kind: BlockKind
    start: JsonObject
    held: list[bytes] = attrs.Factory(list)
    closed: bool = False


class StreamWriter:
    """IR stream events as the event stream a Messages client expects. Anthropic has one
    content block open at a time: a block that opens while another is open (a chat provider
    streaming two tool calls at once) is written, whole, after it. `message_delta` carries the
    usage, so it waits for the usage (a chat provider reports it after its finish reason) or
    `finish`."""

    def __init__(self, request: Conversation) -> None:
        self._model = request.model
        self._started = False
        self._blocks: dict[int, _WriterBlock] = {}
        self._waiting: list[int] = []  # opened blocks, in order, the first one the client's
        self._next_index = 0
        self._usage = Usage()
        self._usage_seen = False
        self._stop: StreamStopped | None = None
        self._done = False

    def write(self, events: Sequence[StreamEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if self._done:
                break
            self._write(event, out)
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        out: list[bytes] = []
        if self._stop is not None:
            self._end(out, self._stop)
        else:
            self._error(
                StreamFailed("the provider's stream ended before the answer was complete"), out
            )
        return b"".join(out)

    def _write(self, event: StreamEvent, out: list[bytes]) -> None:
        if isinstance(event, BlockDelta):
            self._block_delta(event, out)
        elif isinstance(event, BlockOpened):
            self._ensure_started(out, None)
            self._open(event, out)
        elif isinstance(event, BlockClosed):
            self._close(event.index, out)
        elif isinstance(event, StreamStarted):
            self._ensure_started(out, event)
        elif isinstance(event, UsageReported):
            self._usage = merged_usage(self._usage, event.usage)
            self._usage_seen = True
            if self._stop is not None:
                self._end(out, self._stop)
        elif isinstance(event, StreamStopped):
            self._ensure_started(out, None)
            for index in list(self._waiting):
                self._close(index, out)
            self._stop = event
            if self._usage_seen:
                self._end(out, event)
        else:
            self._error(event, out)

    def _ensure_started(self, out: list[bytes], event: StreamStarted | None) -> None:
        if self._started:
            return
        self._started = True
        if event is not None and event.usage is not None:
            self._usage = event.usage
        message: JsonObject = {
            "id": _message_id(event.id) if event is not None else f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": (event.model if event is not None else "") or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _write_usage(self._usage),
        }
        out.append(_event("message_start", {"type": "message_start", "message": message}))

    def _open(self, event: BlockOpened, out: list[bytes]) -> None:
        if event.kind is BlockKind.TEXT:
            start: JsonObject = {"type": "text", "text": ""}
        elif event.kind is BlockKind.REASONING:
            start = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            start = {"type": "tool_use", "id": event.call_id, "name": event.name, "input": {}}
        self._blocks[event.index] = _WriterBlock(event.kind, start)
        self._waiting.append(event.index)
        if len(self._waiting) == 1:
            out.append(self._start_event(event.index))

    def _start_event(self, index: int) -> bytes:
        block = self._blocks[index]
        return _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": self._next_index,
                "content_block": block.start,
            },
        )

    def _block_delta(self, event: BlockDelta, out: list[bytes]) -> None:
        block = self._blocks.get(event.index)
        if block is None or block.closed:
            return
        deltas = []
        if event.text:
            if block.kind is BlockKind.TEXT:
                deltas.append({"type": "text_delta", "text": event.text})
            elif block.kind is BlockKind.REASONING:
                deltas.append({"type": "thinking_delta", "thinking": event.text})
            else:
                deltas.append({"type": "input_json_delta", "partial_json": event.text})
        if event.signature is not None and block.kind is BlockKind.REASONING:
            deltas.append({"type": "signature_delta", "signature": event.signature})
        if self._waiting[0] == event.index:
            out.extend(self._delta_event(orjson.dumps(delta)) for delta in deltas)
        else:
            # Written once the block is the client's, when its Anthropic index is known.
            block.held.extend(orjson.dumps(delta) for delta in deltas)

    def _close(self, index: int, out: list[bytes]) -> None:
        block = self._blocks.get(index)
        if block is None or block.closed:
            return
        block.closed = True
        if self._waiting[0] != index:
            return
        while self._waiting and self._blocks[self._waiting[0]].closed:
            self._emit_stop(out)
            if self._waiting:
                out.append(self._start_event(self._waiting[0]))
                self._flush_held(self._blocks[self._waiting[0]], out)

    def _emit_stop(self, out: list[bytes]) -> None:
        out.append(
            _event("content_block_stop", {"type": "content_block_stop", "index": self._next_index})
        )
        self._next_index += 1
        del self._blocks[self._waiting.pop(0)]

    def _flush_held(self, block: _WriterBlock, out: list[bytes]) -> None:
        out.extend(self._delta_event(delta) for delta in block.held)
        block.held.clear()

    def _delta_event(self, delta: bytes) -> bytes:
        return sse_event(
            b'{"type":"content_block_delta","index":%d,"delta":%s}' % (self._next_index, delta),
            "content_block_delta",
        )

    def _end(self, out: list[bytes], stop: StreamStopped) -> None:
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": _STOP_REASON_NAMES[stop.stop_reason],
                "stop_sequence": stop.stop_sequence,
            },
            "usage": _write_usage(self._usage),
        }
        out.append(_event("message_delta", delta))
        out.append(_event("message_stop", {"type": "message_stop"}))
        self._done = True

    def _error(self, failure: StreamFailed, out: list[bytes]) -> None:
        error_type = failure.error_type if failure.error_type in _ERROR_TYPES else "api_error"
        body = {"type": "error", "error": {"type": error_type, "message": failure.message}}
        out.append(_event("error", body))
        self._done = True


def _event(name: str, data: JsonObject) -> bytes:
    return sse_event(orjson.dumps(data), name)


# Field checks for reading a client's request: each names the field's path when it fails.


def _invalid(path: str, what: str) -> NoReturn:
    raise InvalidField(f"{path} must be {what}", param=path)


def _object(value: object, path: str) -> JsonObject:
    if not isinstance(value, dict):
        _invalid(path, "an object")
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        _invalid(path, "an array")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        _invalid(path, "a string")
    return value


def _required_integer(value: object, path: str) -> int:
    if value is None:
        raise InvalidRequest(f"{path} is required", param=path)
    if type(value) is not int:
        _invalid(path, "an integer")
    return value


def _number(value: object, path: str) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float):
        _invalid(path, "a number")
    return float(value)  # type: ignore[arg-type]


def _boolean(value: object, path: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        _invalid(path, "true or false")
    return value


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()
