"""Chat Completions (`/v1/chat/completions`) in and out of the internal representation of
`sopy.translation.items`. Chat is both a client format (a chat client on an Anthropic provider:
`read_request`, `write_answer`, `StreamWriter`, `write_error`) and the main provider format
(vLLM, Ollama, Groq and most self-hosted servers speak only chat: `write_request`,
`read_answer`, `StreamReader`, `read_error`). The relay in `sopy.actors` calls these names.

Reading a client's request (`read_request`):
- `system` and `developer` messages become `Conversation.system`, several joined with a blank
  line. One after the conversation has begun (after a user, assistant or tool message) is
  refused (`UntranslatableField` on its `role`): a single system prompt cannot say *when* it was
  given, and moving it to the start would change what the model reads.
- `tool` messages become `ToolResult` parts of a user message: consecutive ones share one user
  message, which a user message right after them joins (its parts after the results).
- Mapped fields: model, messages, max_completion_tokens or max_tokens, temperature, top_p, stop,
  stream, response_format (json_schema, json_object; text is the default), tools (function),
  tool_choice, parallel_tool_calls, reasoning_effort, user. `stream_options.include_usage` is
  for the client's stream, not the provider: `wants_stream_usage` reads it.
- Ignored, as they do not change the answer: metadata, store, service_tier, seed (a
  reproducibility hint no provider guarantees), safety_identifier, prompt_cache_key,
  prompt_cache_retention, prompt_cache_options; inside messages and parts, keys the reader does
  not know (`cache_control`) and an assistant message's `reasoning_content`/`reasoning` (a
  chat model's earlier reasoning, which chat servers do not read back).
- Refused with `UntranslatableField` unless at their neutral value: n (1), logprobs (false),
  top_logprobs, frequency_penalty and presence_penalty (0), logit_bias ({}), modalities
  (["text"]), audio, prediction, verbosity, web_search_options, moderation, the deprecated
  functions/function_call; a participant's `name` (on a tool message it is ignored: the call id
  says which call it answers), audio or file parts, tools other than functions,
  `allowed_tools`/custom tool choices. Any other top-level field is refused too, as OpenAI
  refuses an unrecognized argument.
- An assistant message's `refusal` (field or part) is read as its text.

Writing a provider's request (`write_request`): one `system` message; `max_tokens` (not
`max_completion_tokens`: vLLM, Ollama and most chat-only servers know only the former);
`stream_options.include_usage` whenever streaming, since the gateway accounts for the usage;
`reasoning_effort` only when the conversation has one (many chat servers refuse it for a model
that does not reason; Anthropic's thinking budget, `reasoning_budget`, has no chat field and is
not sent: the model reasons as its server has it);
`tool_choice` and `parallel_tool_calls` only with tools. A user message's tool results go first,
as `tool` messages (their texts joined by a blank line: chat servers do not all take parts
there), and an image in a tool result, which a tool message cannot carry, follows them in a
user message with the user's other parts; `is_error` has no chat field and the result's text
says it. The reasoning parts of earlier assistant turns are not sent (chat has no field for
them that servers read back). Assistant texts are joined as one content string.

Reading a provider's answer (`read_answer`, `StreamReader`): reasoning from
`reasoning_content` (DeepSeek, vLLM) or `reasoning` (OpenRouter, Ollama); text from `content`
(a string, or text parts as some servers send) and `refusal`; tool-call arguments
kept as the provider's text, valid JSON or not (a writer that needs an object decides); a
`stop` finish with tool calls is `TOOL_USE` (some servers say `stop`); vLLM's `stop_reason`
string names the stop sequence; an unknown finish reason is `END_TURN`. A malformed answer is an
`UpstreamError`; a malformed stream ends in `StreamFailed`. A stream that ends with `[DONE]`
but no finish reason has stopped (`END_TURN`, or `TOOL_USE` after tool calls).

Writing a client's answer (`write_answer`, `StreamWriter`): the id `chatcmpl-<provider's id>`;
the model's reasoning, when there is any, as `reasoning_content` (DeepSeek's field, which the
SDK keeps as an extra). A stream ends with the usage chunk (only if the client asked for it with
`stream_options.include_usage` and a count is known) and `data: [DONE]`, or with an error chunk
`{"error": {...}}` and nothing after it, as the relay ends a stream that broke off.
"""

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import orjson

from sopy.errors import InvalidRequest, UpstreamError
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

# The `JsonSchemaFormat.name` of chat's `{"type": "json_object"}` (any JSON object, no schema).
JSON_OBJECT_FORMAT = "json_object"

_FINISH_REASONS: dict[str, StopReason] = {
    "stop": StopReason.END_TURN,
    "length": StopReason.MAX_TOKENS,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
    "content_filter": StopReason.CONTENT_FILTER,
}
_STOP_REASONS: dict[StopReason, str] = {
    StopReason.END_TURN: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.MAX_TOKENS: "length",
    StopReason.TOOL_USE: "tool_calls",
    StopReason.CONTENT_FILTER: "content_filter",
}

# Anthropic's error types where OpenAI's differ, so that a chat client sees its own vocabulary.
_OPENAI_ERROR_TYPES: dict[str, str] = {
    "authentication_error": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "permission_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "conflict_error": "invalid_request_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "server_error",
}

_MAPPED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "user",
    }
)
_IGNORED_FIELDS = frozenset(
    {
        "metadata",
        "store",
        "service_tier",
        "seed",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)


def _is_number(value: Any, number: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == number


# Fields the internal representation cannot carry, with the values at which they change nothing.
_NEUTRAL_VALUES: dict[str, Callable[[Any], bool]] = {
    "n": lambda value: value is None or _is_number(value, 1),
    "logprobs": lambda value: value is None or value is False,
    "top_logprobs": lambda value: value is None or _is_number(value, 0),
    "frequency_penalty": lambda value: value is None or _is_number(value, 0),
    "presence_penalty": lambda value: value is None or _is_number(value, 0),
    "logit_bias": lambda value: value is None or value == {},
    "modalities": lambda value: value is None or value == ["text"],
    "audio": lambda value: value is None,
    "prediction": lambda value: value is None,
    "verbosity": lambda value: value is None,
    "web_search_options": lambda value: value is None,
    "moderation": lambda value: value is None,
    "functions": lambda value: value is None,
    "function_call": lambda value: value is None,
}


def _untranslatable(path: str, what: str) -> UntranslatableField:
    return UntranslatableField(
        f"`{path}`: {what} cannot be translated for this model's provider, which does not "
        "speak Chat Completions. Leave it out, or use a model on a provider that serves Chat "
        "Completions.",
        param=path,
    )


def _inexpressible(path: str, what: str) -> UntranslatableField:
    return UntranslatableField(
        f"`{path}`: {what} cannot be expressed in Chat Completions, the only API this model's "
        "provider speaks. Leave it out, or use a model on a provider that serves your API.",
        param=path,
    )


def _invalid(path: str, must: str) -> InvalidRequest:
    return InvalidRequest(f"`{path}` must be {must}.", param=path)


def _object(value: Any, path: str) -> JsonObject:
    if not isinstance(value, dict):
        raise _invalid(path, "an object")
    return value


def _array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(path, "an array")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _invalid(path, "a string")
    return value


def _optional_string(value: Any, path: str) -> str | None:
    return None if value is None else _string(value, path)


def _optional_bool(value: Any, path: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _invalid(path, "true or false")


def _optional_number(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(path, "a number")
    return value


def _optional_count(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(path, "a positive integer")
    return value


# --- a client's request ---------------------------------------------------------------------


def read_request(body: JsonObject) -> Conversation:
    """A chat client's request as a conversation; see the module docstring for each field."""
    for field, value in body.items():
        if field in _MAPPED_FIELDS or field in _IGNORED_FIELDS:
            continue
        neutral = _NEUTRAL_VALUES.get(field)
        if neutral is None:
            raise _untranslatable(field, "this field")
        if not neutral(value):
            raise _untranslatable(field, "this value")
    model = _string(body.get("model"), "model")
    system, messages = _read_messages(body.get("messages"))
    tools = _read_tools(body.get("tools"))
    return Conversation(
        model=model,
        messages=messages,
        system=system,
        tools=tools,
        tool_choice=_read_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")),
        max_output_tokens=_read_max_tokens(body),
        temperature=_optional_number(body.get("temperature"), "temperature"),
        top_p=_optional_number(body.get("top_p"), "top_p"),
        stop=_read_stop(body.get("stop")),
        stream=_optional_bool(body.get("stream"), "stream") or False,
        response_format=_read_response_format(body.get("response_format")),
        reasoning_effort=_optional_string(body.get("reasoning_effort"), "reasoning_effort"),
        user=_optional_string(body.get("user"), "user"),
    )


def wants_stream_usage(body: JsonObject) -> bool:
    """Whether a chat client's request asks for the usage chunk at the end of its stream
    (`stream_options.include_usage`), which `StreamWriter` then writes."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _read_max_tokens(body: JsonObject) -> int | None:
    completion = _optional_count(body.get("max_completion_tokens"), "max_completion_tokens")
    legacy = _optional_count(body.get("max_tokens"), "max_tokens")
    if completion is not None and legacy is not None and completion != legacy:
        raise InvalidRequest(
            "`max_tokens` and `max_completion_tokens` disagree; send only `max_completion_tokens`.",
            param="max_tokens",
        )
    return completion if completion is not None else legacy


def _read_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(_string(item, f"stop[{i}]") for i, item in enumerate(_array(value, "stop")))


def _read_response_format(value: Any) -> JsonSchemaFormat | None:
    if value is None:
        return None
    response_format = _object(value, "response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonSchemaFormat(name=JSON_OBJECT_FORMAT)
    if kind != "json_schema":
        raise _untranslatable("response_format.type", f"the response format {kind!r}")
    spec = _object(response_format.get("json_schema"), "response_format.json_schema")
    schema = spec.get("schema")
    return JsonSchemaFormat(
        name=_string(spec.get("name"), "response_format.json_schema.name"),
        schema=None if schema is None else _object(schema, "response_format.json_schema.schema"),
        strict=_optional_bool(spec.get("strict"), "response_format.json_schema.strict"),
        description=_optional_string(
            spec.get("description"), "response_format.json_schema.description"
        ),
    )


def _read_tools(value: Any) -> tuple[FunctionTool, ...]:
    if value is None:
        return ()
    tools: list[FunctionTool] = []
    for i, raw in enumerate(_array(value, "tools")):
        path = f"tools[{i}]"
        tool = _object(raw, path)
        if tool.get("type") != "function":
            raise _untranslatable(f"{path}.type", f"a tool of type {tool.get('type')!r}")
        function = _object(tool.get("function"), f"{path}.function")
        parameters = function.get("parameters")
        tools.append(
            FunctionTool(
                name=_string(function.get("name"), f"{path}.function.name"),
                description=_optional_string(
                    function.get("description"), f"{path}.function.description"
                ),
                parameters=None
                if parameters is None
                else _object(parameters, f"{path}.function.parameters"),
                strict=_optional_bool(function.get("strict"), f"{path}.function.strict"),
            )
        )
    return tuple(tools)


def _read_tool_choice(value: Any, parallel_value: Any) -> ToolChoice | None:
    parallel = _optional_bool(parallel_value, "parallel_tool_calls")
    if value is None:
        return None if parallel is None else ToolChoice(ToolChoiceMode.AUTO, parallel=parallel)
    if isinstance(value, str):
        try:
            mode = ToolChoiceMode(value)
        except ValueError:
            raise _invalid("tool_choice", "auto, none, required or a function") from None
        if mode is ToolChoiceMode.NAMED:
            raise _invalid("tool_choice", "auto, none, required or a function")
        return ToolChoice(mode, parallel=parallel)
    choice = _object(value, "tool_choice")
    if choice.get("type") != "function":
        raise _untranslatable("tool_choice.type", f"a tool choice of type {choice.get('type')!r}")
    function = _object(choice.get("function"), "tool_choice.function")
    name = _string(function.get("name"), "tool_choice.function.name")
    return ToolChoice(ToolChoiceMode.NAMED, name=name, parallel=parallel)


def _read_messages(value: Any) -> tuple[str | None, tuple[Message, ...]]:
    raw_messages = _array(value, "messages")
    if not raw_messages:
        raise _invalid("messages", "a non-empty array")
    system: list[str] = []
    messages: list[Message] = []
    tool_results: list[Part] = []  # tool messages waiting for the user message they open
    for i, raw in enumerate(raw_messages):
        path = f"messages[{i}]"
        message = _object(raw, path)
        role = message.get("role")
        # A tool message's name repeats what its call id says; any other names a participant.
        if message.get("name") is not None and role != "tool":
            raise _untranslatable(f"{path}.name", "a participant's name")
        if role in ("system", "developer"):
            if messages or tool_results:
                raise _untranslatable(
                    f"{path}.role",
                    f"a {role} message after the conversation has begun (move it to the start)",
                )
            system.append(_read_text_content(message.get("content"), f"{path}.content"))
        elif role == "tool":
            tool_results.append(_read_tool_message(message, path))
        elif role == "user":
            parts = _read_user_content(message.get("content"), f"{path}.content")
            messages.append(Message(Role.USER, (*tool_results, *parts)))
            tool_results = []
        elif role == "assistant":
            if tool_results:
                messages.append(Message(Role.USER, tuple(tool_results)))
                tool_results = []
            messages.append(Message(Role.ASSISTANT, _read_assistant(message, path)))
        elif role == "function":
            raise _untranslatable(f"{path}.role", "a function message (use tools)")
        else:
            raise _invalid(f"{path}.role", "system, developer, user, assistant or tool")
    if tool_results:
        messages.append(Message(Role.USER, tuple(tool_results)))
    return ("\n\n".join(system) if system else None), tuple(messages)


def _read_text_content(value: Any, path: str) -> str:
    """A system, developer or tool message's content: a string or text parts."""
    if isinstance(value, str):
        return value
    texts: list[str] = []
    for j, raw in enumerate(_array(value, path)):
        part = _object(raw, f"{path}[{j}]")
        if part.get("type") != "text":
            raise _invalid(f"{path}[{j}].type", "text")
        texts.append(_string(part.get("text"), f"{path}[{j}].text"))
    return "\n\n".join(texts)


def _read_tool_message(message: JsonObject, path: str) -> ToolResult:
    call_id = _string(message.get("tool_call_id"), f"{path}.tool_call_id")
    text = _read_text_content(message.get("content"), f"{path}.content")
    return ToolResult(call_id, (Text(text),) if text else ())


def _read_user_content(value: Any, path: str) -> tuple[Part, ...]:
    if isinstance(value, str):
        return (Text(value),) if value else ()
    parts: list[Part] = []
    for j, raw in enumerate(_array(value, path)):
        part_path = f"{path}[{j}]"
        part = _object(raw, part_path)
        kind = part.get("type")
        if kind == "text":
            parts.append(Text(_string(part.get("text"), f"{part_path}.text")))
        elif kind == "image_url":
            image = _object(part.get("image_url"), f"{part_path}.image_url")
            parts.append(
                Image(
                    url=_string(image.get("url"), f"{part_path}.image_url.url"),
                    detail=_optional_string(image.get("detail"), f"{part_path}.image_url.detail"),
                )
            )
        elif kind in ("input_audio", "file"):
            raise _untranslatable(f"{part_path}.type", f"a content part of type {kind!r}")
        else:
            raise _invalid(f"{part_path}.type", "text, image_url, input_audio or file")
    return tuple(parts)


def _read_assistant(message: JsonObject, path: str) -> tuple[Part, ...]:
    for field in ("audio", "function_call"):
        if message.get(field) is not None:
            raise _untranslatable(f"{path}.{field}", f"an assistant message's {field}")
    parts: list[Part] = []
    content = message.get("content")
    if isinstance(content, str):
        if content:
            parts.append(Text(content))
    elif content is not None:
        for j, raw in enumerate(_array(content, f"{path}.content")):
            part_path = f"{path}.content[{j}]"
            part = _object(raw, part_path)
            kind = part.get("type")
            if kind not in ("text", "refusal"):
                raise _invalid(f"{part_path}.type", "text or refusal")
            parts.append(Text(_string(part.get(kind), f"{part_path}.{kind}")))
    refusal = _optional_string(message.get("refusal"), f"{path}.refusal")
    if refusal:
        parts.append(Text(refusal))
    calls = message.get("tool_calls")
    for j, raw in enumerate(_array(calls, f"{path}.tool_calls") if calls is not None else ()):
        call_path = f"{path}.tool_calls[{j}]"
        call = _object(raw, call_path)
        if call.get("type", "function") != "function":
            raise _untranslatable(f"{call_path}.type", f"a tool call of type {call.get('type')!r}")
        function = _object(call.get("function"), f"{call_path}.function")
        parts.append(
            ToolCall(
                call_id=_string(call.get("id"), f"{call_path}.id"),
                name=_string(function.get("name"), f"{call_path}.function.name"),
                arguments=_string(function.get("arguments"), f"{call_path}.function.arguments"),
            )
        )
    return tuple(parts)


# --- a provider's request -------------------------------------------------------------------


def write_request(conversation: Conversation) -> JsonObject:
    """The chat request for a provider; see the module docstring for the choices made."""
    messages: list[JsonObject] = []
    if conversation.system is not None:
        messages.append({"role": "system", "content": conversation.system})
    for i, message in enumerate(conversation.messages):
        if message.role is Role.USER:
            messages.extend(_write_user(message, f"messages[{i}]"))
        else:
            messages.append(_write_assistant(message, f"messages[{i}]"))
    body: JsonObject = {"model": conversation.model, "messages": messages}
    if conversation.max_output_tokens is not None:
        body["max_tokens"] = conversation.max_output_tokens
    if conversation.temperature is not None:
        body["temperature"] = conversation.temperature
    if conversation.top_p is not None:
        body["top_p"] = conversation.top_p
    if conversation.stop:
        body["stop"] = list(conversation.stop)
    if conversation.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if conversation.tools:
        body["tools"] = [_write_tool(tool) for tool in conversation.tools]
        choice = conversation.tool_choice
        if choice is not None:
            body["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if choice.mode is ToolChoiceMode.NAMED
                else choice.mode.value
            )
            if choice.parallel is not None:
                body["parallel_tool_calls"] = choice.parallel
    if conversation.response_format is not None:
        body["response_format"] = _write_response_format(conversation.response_format)
    if conversation.reasoning_effort is not None:
        body["reasoning_effort"] = conversation.reasoning_effort
    if conversation.user is not None:
        body["user"] = conversation.user
    return body


def _write_user(message: Message, path: str) -> list[JsonObject]:
    """A user message as chat messages: `tool` messages for its tool results, then a user
    message with its other parts (and any image a tool result held), if there are any."""
    written: list[JsonObject] = []
    content: list[JsonObject] = []
    for j, part in enumerate(message.parts):
        if isinstance(part, ToolResult):
            texts = [item.text for item in part.content if isinstance(item, Text)]
            written.append(
                {"role": "tool", "tool_call_id": part.call_id, "content": "\n\n".join(texts)}
            )
            content.extend(_image_part(item) for item in part.content if isinstance(item, Image))
        elif isinstance(part, Text):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            content.append(_image_part(part))
        else:
            raise _inexpressible(f"{path}.content[{j}]", f"a user message's {type(part).__name__}")
    if len(content) == 1 and content[0]["type"] == "text":
        written.append({"role": "user", "content": content[0]["text"]})
    elif content or not written:
        written.append({"role": "user", "content": content or ""})
    return written


def _image_part(image: Image) -> JsonObject:
    url: JsonObject = {"url": image.url}
    if image.detail is not None:
        url["detail"] = image.detail
    return {"type": "image_url", "image_url": url}


def _write_assistant(message: Message, path: str) -> JsonObject:
    texts: list[str] = []
    calls: list[JsonObject] = []
    for j, part in enumerate(message.parts):
        if isinstance(part, Text):
            texts.append(part.text)
        elif isinstance(part, ToolCall):
            calls.append(
                {
                    "id": part.call_id,
                    "type": "function",
                    "function": {"name": part.name, "arguments": part.arguments},
                }
            )
        elif not isinstance(part, Reasoning):
            raise _inexpressible(
                f"{path}.content[{j}]", f"an assistant message's {type(part).__name__}"
            )
    written: JsonObject = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        written["tool_calls"] = calls
    elif not texts:
        written["content"] = ""
    return written


def _write_tool(tool: FunctionTool) -> JsonObject:
    function: JsonObject = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _write_response_format(response_format: JsonSchemaFormat) -> JsonObject:
    if response_format.schema is None:
        return {"type": "json_object"}
    spec: JsonObject = {"name": response_format.name, "schema": response_format.schema}
    if response_format.strict is not None:
        spec["strict"] = response_format.strict
    if response_format.description is not None:
        spec["description"] = response_format.description
    return {"type": "json_schema", "json_schema": spec}


# --- a provider's answer --------------------------------------------------------------------


def _malformed_answer(what: str) -> UpstreamError:
    return UpstreamError(f"The provider's chat completion is malformed: {what}.")


def _count(details: Any, key: str) -> int:
    value = details.get(key) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _read_usage(usage: JsonObject) -> Usage:
    prompt_details = usage.get("prompt_tokens_details")
    return Usage(
        input_tokens=_count(usage, "prompt_tokens"),
        output_tokens=_count(usage, "completion_tokens"),
        # DeepSeek counts cache hits in a field of its own.
        cache_read_tokens=_count(prompt_details, "cached_tokens")
        or _count(usage, "prompt_cache_hit_tokens"),
        cache_write_tokens=_count(prompt_details, "cache_write_tokens"),
        reasoning_tokens=_count(usage.get("completion_tokens_details"), "reasoning_tokens"),
    )


def _stop_reason(finish_reason: Any, stop_reason: Any, called_tools: bool) -> StreamStopped:
    """The stop of a choice with this `finish_reason` (and vLLM's `stop_reason`, the stop string
    that matched) that called tools or not."""
    reason = _FINISH_REASONS.get(finish_reason, StopReason.END_TURN)
    if reason is StopReason.END_TURN and called_tools:
        return StreamStopped(StopReason.TOOL_USE)
    if reason is StopReason.END_TURN and isinstance(stop_reason, str):
        return StreamStopped(StopReason.STOP_SEQUENCE, stop_reason)
    return StreamStopped(reason)


def _reasoning_text(fields: JsonObject) -> str:
    """The reasoning a message or delta carries: vLLM sends `reasoning` and the older
    `reasoning_content` both, with the same text; it counts once."""
    for key in ("reasoning_content", "reasoning"):
        value = fields.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _answer_text(fields: JsonObject) -> str | None:
    """The text a message or delta carries: its `content` (a string or, from some servers, text
    parts) and its `refusal`, which is what the model said instead; None if the content is
    something else."""
    content = fields.get("content")
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            text = part.get("text")
            if not isinstance(text, str):
                return None
            texts.append(text)
        content = "".join(texts)
    elif content is not None and not isinstance(content, str):
        return None
    refusal = fields.get("refusal")
    return (content or "") + (refusal if isinstance(refusal, str) else "")


def read_answer(body: JsonObject) -> Answer:
    """A provider's chat completion as an answer (its first choice)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _malformed_answer("it has no choice")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _malformed_answer("its choice has no message")
    parts: list[Part] = []
    reasoning = _reasoning_text(message)
    if reasoning:
        parts.append(Reasoning(reasoning))
    text = _answer_text(message)
    if text is None:
        raise _malformed_answer("its content is neither a string nor text parts")
    if text:
        parts.append(Text(text))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _malformed_answer("its tool_calls is not an array")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _malformed_answer("a tool call has no function name")
        arguments = function.get("arguments")
        parts.append(
            ToolCall(
                call_id=str(call.get("id") or f"call_{body.get('id', '')}_{len(parts)}"),
                name=function["name"],
                arguments=arguments if isinstance(arguments, str) else "",
            )
        )
    stop = _stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), bool(calls))
    usage = body.get("usage")
    created = body.get("created")
    return Answer(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        parts=tuple(parts),
        stop_reason=stop.stop_reason,
        usage=_read_usage(usage) if isinstance(usage, dict) else None,
        stop_sequence=stop.stop_sequence,
        created=created if isinstance(created, int) and not isinstance(created, bool) else 0,
    )


@attrs.define
class _StreamedCall:
    block: int
    call_id: str


class StreamReader:
    """A provider's chat stream, event by event, as stream events. Blocks are numbered here:
    reasoning and text are one block per run (a text block closes when reasoning or a tool call
    starts, and the other way round); each tool call is a block, open until the stream stops,
    since a server may interleave the argument deltas of parallel calls. The provider's tool
    call `index` only finds the call's block. A first delta of a call carries its id and name;
    a later delta that repeats them, or a call whose arguments arrive whole, are taken as they
    come; a call delta without an index belongs to the call its id names, or the last call."""

    def __init__(self) -> None:
        self._id = ""
        self._started = False
        self._stopped = False
        self._over = False  # failed, or past `[DONE]`
        self._next_block = 0
        self._open: list[int] = []
        self._run: tuple[int, BlockKind] | None = None  # the open text or reasoning block
        self._calls_by_index: dict[int, _StreamedCall] = {}  # the provider's tool call index
        self._calls_by_id: dict[str, _StreamedCall] = {}
        self._last_call: _StreamedCall | None = None

    def feed(self, event: SseEvent) -> list[StreamEvent]:
        if self._over or not event.data:
            return []
        if event.data == b"[DONE]":
            self._over = True
            return (
                []
                if self._stopped
                else self._stop(_stop_reason(None, None, self._last_call is not None))
            )
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return self._fail("The provider's stream held an event that is not JSON.")
        if not isinstance(chunk, dict):
            return self._fail("The provider's stream held an event that is not a JSON object.")
        error = chunk.get("error")
        if error is not None or event.name == "error":
            return self._fail_with(chunk if error is None else error)
        events: list[StreamEvent] = []
        if not self._started:
            self._started = True
            self._id = str(chunk.get("id") or "")
            created = chunk.get("created")
            events.append(
                StreamStarted(
                    id=self._id,
                    model=str(chunk.get("model") or ""),
                    created=created if isinstance(created, int) else 0,
                )
            )
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            # Sopy never asks a provider for more than one choice.
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                failure = self._choice(choice, events)
                if failure is not None:
                    return events + self._fail(failure)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            events.append(UsageReported(_read_usage(usage)))
        return events

    def end(self) -> list[StreamEvent]:
        """The provider's stream is over; if it never finished, it broke off."""
        if self._stopped or self._over:
            return []
        return self._fail("The provider's stream ended before the answer was complete.")

    def _choice(self, choice: JsonObject, events: list[StreamEvent]) -> str | None:
        if self._stopped:
            return None
        delta = choice.get("delta")
        if isinstance(delta, dict):
            self._run_delta(BlockKind.REASONING, _reasoning_text(delta), events)
            text = _answer_text(delta)
            if text is None:
                return "The provider's stream held content that is neither text nor text parts."
            self._run_delta(BlockKind.TEXT, text, events)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                failure = self._call_delta(call, events)
                if failure is not None:
                    return failure
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None:
            events.extend(
                self._stop(
                    _stop_reason(
                        finish_reason, choice.get("stop_reason"), self._last_call is not None
                    )
                )
            )
        return None

    def _open_block(self, kind: BlockKind, events: list[StreamEvent], **call: str) -> int:
        block = self._next_block
        self._next_block += 1
        self._open.append(block)
        events.append(BlockOpened(block, kind, **call))
        return block

    def _close_run(self, events: list[StreamEvent]) -> None:
        if self._run is not None:
            self._open.remove(self._run[0])
            events.append(BlockClosed(self._run[0]))
            self._run = None

    def _run_delta(self, kind: BlockKind, text: str, events: list[StreamEvent]) -> None:
        if not text:
            return
        if self._run is None or self._run[1] is not kind:
            self._close_run(events)
            self._run = (self._open_block(kind, events), kind)
        events.append(BlockDelta(self._run[0], text))

    def _call_delta(self, call: Any, events: list[StreamEvent]) -> str | None:
        if not isinstance(call, dict):
            return "The provider's stream held a tool call that is not an object."
        index = call.get("index")
        call_id = call.get("id") or None
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        if isinstance(index, int):
            known = self._calls_by_index.get(index)
        else:
            known = self._calls_by_id.get(call_id) if call_id else self._last_call
        if known is None or (call_id is not None and call_id != known.call_id):
            name = function.get("name")
            if not isinstance(name, str) or not name:
                return "The provider's stream began a tool call without its name."
            self._close_run(events)
            block = self._next_block
            known = _StreamedCall(block, str(call_id or f"call_{self._id}_{block}"))
            self._open_block(BlockKind.TOOL_CALL, events, call_id=known.call_id, name=name)
            self._calls_by_id[known.call_id] = known
            if isinstance(index, int):
                self._calls_by_index[index] = known
        self._last_call = known
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(BlockDelta(known.block, arguments))
        return None

    def _stop(self, stop: StreamStopped) -> list[StreamEvent]:
        self._stopped = True
        events: list[StreamEvent] = [BlockClosed(block) for block in self._open]
        self._open.clear()
        self._run = None
        events.append(stop)
        return events

    def _fail(self, message: str, error_type: str = "api_error") -> list[StreamEvent]:
        self._over = True
        events: list[StreamEvent] = [BlockClosed(block) for block in self._open]
        self._open.clear()
        events.append(StreamFailed(message, error_type))
        return events

    def _fail_with(self, error: Any) -> list[StreamEvent]:
        if isinstance(error, dict):
            message = error.get("message")
            error_type = error.get("type")
            return self._fail(
                message if isinstance(message, str) and message else "The provider failed.",
                error_type if isinstance(error_type, str) and error_type else "api_error",
            )
        return self._fail(error if isinstance(error, str) and error else "The provider failed.")


# --- a client's answer ----------------------------------------------------------------------


def _chat_id(provider_id: str) -> str:
    return provider_id if provider_id.startswith("chatcmpl-") else f"chatcmpl-{provider_id}"


def _write_usage(usage: Usage) -> JsonObject:
    prompt_details: JsonObject = {"cached_tokens": usage.cache_read_tokens}
    if usage.cache_write_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def write_answer(answer: Answer, request: Conversation) -> JsonObject:
    """The `chat.completion` a chat client gets for an answer to its request."""
    texts = [part.text for part in answer.parts if isinstance(part, Text)]
    reasoning = [part.text for part in answer.parts if isinstance(part, Reasoning)]
    calls = [
        {
            "id": part.call_id,
            "type": "function",
            "function": {"name": part.name, "arguments": part.arguments},
        }
        for part in answer.parts
        if isinstance(part, ToolCall)
    ]
    message: JsonObject = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    body: JsonObject = {
        "id": _chat_id(answer.id),
        "object": "chat.completion",
        "created": answer.created or int(time.time()),
        "model": answer.model or request.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _STOP_REASONS[answer.stop_reason],
            }
        ],
    }
    if answer.usage is not None:
        body["usage"] = _write_usage(answer.usage)
    return body


class StreamWriter:
    """A chat client's stream for the stream events of an answer. `include_usage` is the
    client's `stream_options.include_usage` (`wants_stream_usage`): then a usage chunk
    (`choices: []`) follows the finish reason, before `[DONE]`. Text deltas go out as
    `content`, reasoning as `reasoning_content`; a tool call's `index` counts the answer's tool
    calls in the order they open; a reasoning signature has no chat form and is not sent."""

    def __init__(self, request: Conversation, include_usage: bool = False) -> None:
        self._model = request.model
        self._include_usage = include_usage
        self._id = ""
        self._created = 0
        self._started = False
        self._stopped = False
        self._over = False  # failed or finished: nothing more to write
        self._kinds: dict[int, BlockKind] = {}
        self._tool_indices: dict[int, int] = {}  # block index -> the chat tool call index
        self._usage: Usage | None = None

    def write(self, events: Sequence[StreamEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if self._over:
                break
            if isinstance(event, StreamStarted):
                self._start(event, out)
            elif isinstance(event, BlockOpened):
                self._open(event, out)
            elif isinstance(event, BlockDelta):
                self._delta(event, out)
            elif isinstance(event, UsageReported):
                self._usage = merged_usage(self._usage, event.usage)
            elif isinstance(event, StreamStopped):
                self._ensure_started(out)
                self._stopped = True
                out.append(self._chunk({}, _STOP_REASONS[event.stop_reason]))
            elif isinstance(event, StreamFailed):
                self._over = True
                out.append(_error_event(event.message, event.error_type))
        return b"".join(out)

    def finish(self) -> bytes:
        if self._over:
            return b""
        self._over = True
        if not self._stopped:
            return _error_event("The provider's answer broke off before its end.", "server_error")
        out: list[bytes] = []
        if self._include_usage and self._usage is not None:
            out.append(
                self._event(
                    {
                        "id": self._id,
                        "object": "chat.completion.chunk",
                        "created": self._created,
                        "model": self._model,
                        "choices": [],
                        "usage": _write_usage(self._usage),
                    }
                )
            )
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)

    def _start(self, event: StreamStarted, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        self._id = _chat_id(event.id)
        self._created = event.created or int(time.time())
        self._model = event.model or self._model
        if event.usage is not None:
            self._usage = event.usage
        out.append(self._chunk({"role": "assistant", "content": ""}))

    def _ensure_started(self, out: list[bytes]) -> None:
        if not self._started:
            self._start(StreamStarted(id=f"{int(time.time() * 1000)}", model=""), out)

    def _open(self, event: BlockOpened, out: list[bytes]) -> None:
        self._ensure_started(out)
        self._kinds[event.index] = event.kind
        if event.kind is BlockKind.TOOL_CALL:
            tool_index = len(self._tool_indices)
            self._tool_indices[event.index] = tool_index
            call = {
                "index": tool_index,
                "id": event.call_id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            out.append(self._chunk({"tool_calls": [call]}))

    def _delta(self, event: BlockDelta, out: list[bytes]) -> None:
        kind = self._kinds.get(event.index)
        if not event.text or kind is None:
            return
        if kind is BlockKind.TEXT:
            out.append(self._chunk({"content": event.text}))
        elif kind is BlockKind.REASONING:
            out.append(self._chunk({"reasoning_content": event.text}))
        else:
            call = {"index": self._tool_indices[event.index], "function": {"arguments": event.text}}
            out.append(self._chunk({"tool_calls": [call]}))

    def _chunk(self, delta: JsonObject, finish_reason: str | None = None) -> bytes:
        return self._event(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
        )

    @staticmethod
    def _event(chunk: JsonObject) -> bytes:
        return sse_event(orjson.dumps(chunk))


def _error_event(message: str, error_type: str) -> bytes:
    error = {"message": message, "type": error_type, "param": None, "code": None}
    return sse_event(orjson.dumps({"error": error}))


# --- errors ---------------------------------------------------------------------------------


def read_error(status: int, body: bytes) -> ProviderError:
    """A chat provider's error answer. Servers differ: OpenAI's `{"error": {...}}`, vLLM's
    older top-level `{"message", "type", "code"}`, `{"error": "text"}`, FastAPI's
    `{"detail": ...}`, Gemini's one-element array, or no JSON at all."""
    if status == 429:
        default_type = "rate_limit_error"
    else:
        default_type = "invalid_request_error" if status < 500 else "server_error"
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, list) and payload:
        payload = payload[0]
    error = payload.get("error", payload) if isinstance(payload, dict) else None
    if isinstance(error, str):
        error = {"message": error}
    if not isinstance(error, dict):
        text = body.decode("utf-8", "replace").strip()[:1000]
        return ProviderError(status, text or f"The provider answered {status}.", default_type)
    message = error.get("message", error.get("detail"))
    if not isinstance(message, str):
        message = orjson.dumps(message).decode() if message is not None else ""
    error_type = error.get("type")
    code = error.get("code")
    param = error.get("param")
    return ProviderError(
        status=status,
        message=message or f"The provider answered {status}.",
        error_type=error_type if isinstance(error_type, str) and error_type else default_type,
        code=None if code is None else str(code),
        param=param if isinstance(param, str) else None,
    )


def write_error(error: ProviderError) -> JsonObject:
    """A provider's error in OpenAI's shape, for a chat client (the relay answers it with
    `error.status`)."""
    return {
        "error": {
            "message": error.message,
            "type": _OPENAI_ERROR_TYPES.get(error.error_type, error.error_type),
            "param": error.param,
            "code": error.code,
        }
    }
