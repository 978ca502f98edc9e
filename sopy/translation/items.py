"""The one internal representation of a conversation that every wire format translates to and
from: a request (`Conversation`), a whole answer (`Answer`) and a streamed answer (a sequence of
`StreamEvent`s). Data, and the one rule for merging usage reports (`merged_usage`): no
parsing, no I/O.

Each wire format's module (`sopy.translation.chat`, `.responses`, `.messages`) reads its own
format into these items and writes these items out in its format, so a client format and a
provider format meet here and nowhere else (three codecs, not N-by-N converters).
`sopy.translation.translate` chooses the pair for one request.

What is not expressible in a target format is refused by that format's writer with
`UntranslatableField` (a 400 that names the field), never dropped silently.
"""

import enum
from typing import Any

import attrs

from sopy.errors import InvalidRequest

JsonObject = dict[str, Any]


class UntranslatableField(InvalidRequest):
    """The request uses a feature the provider's format cannot express; the error names the
    field so the client can drop it or pick a model on a provider that has it."""

    code = "unsupported_by_provider"


class Role(enum.Enum):
    """Who said a message. Tool results travel as `ToolResult` parts of a `USER` message
    (Anthropic's way; the chat writer turns each into a `tool` message)."""

    USER = "user"
    ASSISTANT = "assistant"


@attrs.frozen
class Text:
    text: str


@attrs.frozen
class Image:
    """An image given by URL or inline: `url` is either an http(s) URL or a `data:` URL
    (`data:<media type>;base64,<data>`), the form every format can carry. `detail` is OpenAI's
    hint (auto/low/high), None when not given."""

    url: str
    detail: str | None = None


@attrs.frozen
class ToolCall:
    """The model asking for a tool: `arguments` is the JSON text of the arguments, as OpenAI
    carries it (Anthropic's `input` object is serialized to it and parsed back)."""

    call_id: str
    name: str
    arguments: str


@attrs.frozen
class ToolResult:
    """What the client answers a `ToolCall` with (`call_id` names it)."""

    call_id: str
    content: tuple["Text | Image", ...]
    is_error: bool = False


@attrs.frozen
class Reasoning:
    """The model's reasoning, as far as the provider shows it: summary or thinking text, and
    Anthropic's `signature` (or an encrypted Responses item) to hand back on the next turn."""

    text: str
    signature: str | None = None
    # Anthropic's `redacted_thinking` block: no text, `signature` holds its opaque `data`
    # (a `thinking` block whose text is omitted also has empty text, but a real signature).
    redacted: bool = False


Part = Text | Image | ToolCall | ToolResult | Reasoning


@attrs.frozen
class Message:
    role: Role
    parts: tuple[Part, ...]


@attrs.frozen
class FunctionTool:
    """A function the model may call; `parameters` is its JSON schema (None: no parameters)."""

    name: str
    description: str | None = None
    parameters: JsonObject | None = None
    strict: bool | None = None


class ToolChoiceMode(enum.Enum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"  # some tool; Anthropic's `any`
    NAMED = "named"  # the tool `ToolChoice.name`


@attrs.frozen
class ToolChoice:
    mode: ToolChoiceMode
    name: str | None = None
    parallel: bool | None = None  # parallel tool calls allowed; None: the provider's default


@attrs.frozen
class JsonSchemaFormat:
    """Structured output: the answer must be JSON matching `schema` (`text.format` of type
    `json_schema` in Responses, `response_format` in chat). `schema` None: any JSON object."""

    name: str
    schema: JsonObject | None = None
    strict: bool | None = None
    description: str | None = None


@attrs.frozen
class Conversation:
    """A request in no particular format. `system` is the system prompt (Responses'
    `instructions`, chat's system and developer messages, Anthropic's `system`), `None` when
    none. `max_output_tokens` None means the client set none (the Anthropic writer then fills in
    its default). `reasoning_effort` is OpenAI's (minimal/low/medium/high);
    `reasoning_budget` Anthropic's thinking budget in tokens. `user` is the end-user id
    OpenAI takes (Anthropic's `metadata.user_id`)."""

    model: str
    messages: tuple[Message, ...]
    system: str | None = None
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    response_format: JsonSchemaFormat | None = None
    reasoning_effort: str | None = None
    reasoning_budget: int | None = None
    user: str | None = None


@attrs.frozen
class Usage:
    """Token counts of one answer. `input_tokens` counts every input token, cached ones
    included (OpenAI's `prompt_tokens`; for Anthropic, `input_tokens` + cache reads + cache
    writes); `cache_read_tokens` and `cache_write_tokens` are the parts of it read from / written
    to the provider's prompt cache; `reasoning_tokens` are part of `output_tokens`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


class StopReason(enum.Enum):
    END_TURN = "end_turn"  # chat `stop`, Responses `completed`
    MAX_TOKENS = "max_tokens"  # chat `length`, Responses `incomplete` (max_output_tokens)
    TOOL_USE = "tool_use"  # chat `tool_calls`
    STOP_SEQUENCE = "stop_sequence"  # chat `stop` as well
    CONTENT_FILTER = "content_filter"  # Anthropic `refusal`, Responses `incomplete`


@attrs.frozen
class Answer:
    """A whole answer: the assistant's parts in order (Text, ToolCall, Reasoning). `id` is the
    provider's id for it; the writer of another format derives its own id from it.
    `stop_sequence` is the sequence that stopped it, when the provider says."""

    id: str
    model: str
    parts: tuple[Part, ...]
    stop_reason: StopReason
    usage: Usage | None = None
    stop_sequence: str | None = None
    created: int = 0  # Unix seconds; 0: unknown (writers use the time they write)


# A streamed answer. Every output item is a *block* with an index the reader assigns in the
# order the blocks appear (0, 1, 2, ...), whatever the provider's own indices: a text block,
# a reasoning block or one tool call. Writers map block indices to their format's (Anthropic's
# content block index, Responses' output_index, the chat tool call's `index` among tool calls).
# Each block is opened once, gets deltas, and is closed once, before the stream stops; blocks
# may interleave (a chat provider streaming two tool calls at once).


@attrs.frozen
class StreamStarted:
    id: str
    model: str
    created: int = 0
    # Counts known at the start (Anthropic's `message_start` has the input tokens).
    usage: Usage | None = None


class BlockKind(enum.Enum):
    TEXT = "text"
    REASONING = "reasoning"
    TOOL_CALL = "tool_call"


@attrs.frozen
class BlockOpened:
    index: int
    kind: BlockKind
    call_id: str | None = None  # TOOL_CALL only
    name: str | None = None  # TOOL_CALL only


@attrs.frozen
class BlockDelta:
    """Text for TEXT and REASONING blocks, a piece of the arguments' JSON text for TOOL_CALL
    blocks, or a reasoning block's `signature` (which is whole, not a piece)."""

    index: int
    text: str = ""
    signature: str | None = None


@attrs.frozen
class BlockClosed:
    index: int


@attrs.frozen
class UsageReported:
    """Counts reported during or at the end of the stream; later reports replace earlier ones
    field by field where the later one is non-zero (`merged_usage`)."""

    usage: Usage


def merged_usage(earlier: Usage | None, later: Usage) -> Usage:
    """`later`'s counts over `earlier`'s, field by field where `later` has a count."""
    if earlier is None:
        return later
    return Usage(
        *(new or old for old, new in zip(attrs.astuple(earlier), attrs.astuple(later), strict=True))
    )


@attrs.frozen
class StreamStopped:
    """The answer is complete (the provider's last event; after it only `UsageReported` may
    still come, as a chat provider's usage chunk follows its finish reason)."""

    stop_reason: StopReason
    stop_sequence: str | None = None


@attrs.frozen
class StreamFailed:
    """The provider reported an error inside the stream, or the stream broke off; the writer
    ends the client's stream the way its format ends one with an error."""

    message: str
    error_type: str = "api_error"


StreamEvent = (
    StreamStarted
    | BlockOpened
    | BlockDelta
    | BlockClosed
    | UsageReported
    | StreamStopped
    | StreamFailed
)


@attrs.frozen
class ProviderError:
    """An error answer from a provider, read from its format: its HTTP status, a type
    (OpenAI's `type` or Anthropic's `error.type`), message, and param/code where given."""

    status: int
    message: str
    error_type: str
    code: str | None = None
    param: str | None = None
