"""One request's translation between the client's wire format and its provider's, for the relay
(`sopy.actors.relay`), which decides nothing of formats itself: `sopy.routing.native_routes`
says which hop translates from which format to which, and this module does it with the three
codecs (`chat`, `responses`, `messages`), meeting in the items of `sopy.translation.items`.

- The request: `client_conversation` reads the client's body (already parsed by the front) into
  a `Conversation` once per request, and only when a hop translates; `upstream_request` writes a
  hop's path and body in the provider's format, with the model that provider knows.
- A whole answer: `whole_answer` translates a 2xx answer (or, for a client that asked for a
  stream from a provider that answered whole, its events) and an error answer, into the
  client's shape with the provider's status.
- A streamed answer: `StreamTranslation` turns the provider's event stream, fed in chunks cut
  anywhere, into the client's (bounded by `SseReader`'s event limit), and keeps its usage.

Usage is counted from the items (the provider's own counts, in `TokenCounts` terms: input
tokens include cached ones), not re-read from the bytes written for the client.

`estimate_input_tokens` is the local count that answers `/v1/messages/count_tokens` for a
provider that does not serve Messages: UTF-8 bytes of the text, tool calls, tool results and
tool definitions / 4, rounded up, plus `MESSAGE_OVERHEAD_TOKENS` per message and
`IMAGE_TOKENS` per image. An estimate, documented as one.

A provider answer the provider's codec cannot read (not JSON, not its format) is a 502 in the
client's shape; inside a stream it ends the client's stream as its format ends an error, as
does an error the provider reports in its stream.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import orjson

from sopy.errors import InvalidRequest, UpstreamError
from sopy.messages import TokenCounts
from sopy.provider_kinds import WireFormat
from sopy.translation import chat, messages, responses
from sopy.translation.items import (
    Answer,
    BlockClosed,
    BlockDelta,
    BlockKind,
    BlockOpened,
    Conversation,
    Image,
    JsonObject,
    ProviderError,
    Reasoning,
    StreamEvent,
    StreamFailed,
    StreamStarted,
    StreamStopped,
    Text,
    ToolCall,
    ToolResult,
    Usage,
    UsageReported,
    merged_usage,
)
from sopy.translation.sse import SseEvent, SseEventTooLarge, SseReader

MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKENS = 1600  # the most Anthropic counts for one image (about 1.15 megapixels)

# What a provider's codec raises for an answer that is not in its format.
_UNREADABLE = (ValueError, TypeError, KeyError, AttributeError, InvalidRequest)

_PROVIDER_PATHS: Mapping[WireFormat, str] = {
    WireFormat.CHAT: "/v1/chat/completions",
    WireFormat.MESSAGES: "/v1/messages",
}


class _StreamReader(Protocol):
    def feed(self, event: SseEvent) -> list[StreamEvent]: ...
    def end(self) -> list[StreamEvent]: ...


class _StreamWriter(Protocol):
    def write(self, events: Sequence[StreamEvent]) -> bytes: ...
    def finish(self) -> bytes: ...


_READ_REQUEST: Mapping[WireFormat, Callable[[JsonObject], Conversation]] = {
    WireFormat.CHAT: chat.read_request,
    WireFormat.RESPONSES: responses.read_request,
    WireFormat.MESSAGES: messages.read_request,
}
_WRITE_REQUEST: Mapping[WireFormat, Callable[[Conversation], JsonObject]] = {
    WireFormat.CHAT: chat.write_request,
    WireFormat.MESSAGES: messages.write_request,
}
_READ_ANSWER: Mapping[WireFormat, Callable[[JsonObject], Answer]] = {
    WireFormat.CHAT: chat.read_answer,
    WireFormat.MESSAGES: messages.read_answer,
}
_WRITE_ANSWER: Mapping[WireFormat, Callable[[Answer, Conversation], JsonObject]] = {
    WireFormat.CHAT: chat.write_answer,
    WireFormat.MESSAGES: messages.write_answer,
}
_STREAM_READERS: Mapping[WireFormat, Callable[[], _StreamReader]] = {
    WireFormat.CHAT: chat.StreamReader,
    WireFormat.MESSAGES: messages.StreamReader,
}
_READ_ERROR: Mapping[WireFormat, Callable[[int, bytes], ProviderError]] = {
    WireFormat.CHAT: chat.read_error,
    WireFormat.MESSAGES: messages.read_error,
}
_WRITE_ERROR: Mapping[WireFormat, Callable[[ProviderError], JsonObject]] = {
    WireFormat.CHAT: chat.write_error,
    WireFormat.RESPONSES: responses.write_error,
    WireFormat.MESSAGES: messages.write_error,
}


def _stream_writer(
    client: WireFormat, conversation: Conversation, payload: JsonObject
) -> _StreamWriter:
    """The client format's stream writer; a chat client gets the usage chunk if it asked."""
    if client is WireFormat.CHAT:
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return chat.StreamWriter(conversation, include_usage=include_usage)
    if client is WireFormat.RESPONSES:
        return responses.StreamWriter(
            conversation,
            previous_response_id=_previous_response_id(payload),
            store=kept(payload),
            metadata=_metadata(payload),
        )
    return messages.StreamWriter(conversation)


def _write_answer(
    client: WireFormat, answer: Answer, conversation: Conversation, payload: JsonObject
) -> JsonObject:
    if client is WireFormat.RESPONSES:
        return responses.write_answer(
            answer,
            conversation,
            previous_response_id=_previous_response_id(payload),
            store=kept(payload),
            metadata=_metadata(payload),
        )
    return _WRITE_ANSWER[client](answer, conversation)


def kept(payload: JsonObject) -> bool:
    """Whether a Responses request's answer is to be kept by the gateway for its follow-ups
    (`sopy.routing.kept_responses`): unless it says `store: false`, as at OpenAI."""
    return payload.get("store") is not False


def _previous_response_id(payload: JsonObject) -> str | None:
    previous = payload.get("previous_response_id")
    return previous if isinstance(previous, str) else None


def _metadata(payload: JsonObject) -> dict[str, str] | None:
    """A Responses request's `metadata`, echoed in its answer as OpenAI does."""
    metadata = payload.get("metadata")
    return metadata if isinstance(metadata, dict) else None


def client_conversation(client: WireFormat, payload: JsonObject) -> Conversation:
    """The client's request as items; `InvalidRequest` (400, naming the field) for a malformed
    one, `UntranslatableField` for a feature the items cannot carry."""
    return _READ_REQUEST[client](payload)


def upstream_request(
    provider: WireFormat, conversation: Conversation, model: str
) -> tuple[str, bytes]:
    """The path (after the backend's base URL, from `/v1`) and body of a hop to a provider
    serving `provider`'s format, asking for `model`. A chat stream asks for its usage chunk."""
    body = _WRITE_REQUEST[provider](attrs.evolve(conversation, model=model))
    if provider is WireFormat.CHAT and conversation.stream:
        body["stream_options"] = {"include_usage": True}
    return _PROVIDER_PATHS[provider], orjson.dumps(body)


@attrs.frozen
class TranslatedAnswer:
    """A whole answer in the client's format: `stream` when it is an event stream (a client
    that asked for one, from a provider that answered whole)."""

    status: int
    body: bytes
    tokens: TokenCounts | None = None
    stream: bool = False
    # For a Responses client: the response object answered, for the gateway to keep.
    response: JsonObject | None = None


def whole_answer(
    client: WireFormat,
    provider: WireFormat,
    conversation: Conversation,
    payload: JsonObject,
    status: int,
    body: bytes,
) -> TranslatedAnswer:
    """A provider's whole answer in the client's format: a 2xx answer translated, anything
    else as the client's error with the provider's status. `UpstreamError` if it cannot be
    read."""
    if not 200 <= status < 300:
        error = _READ_ERROR[provider](status, body)
        return TranslatedAnswer(error.status, orjson.dumps(_WRITE_ERROR[client](error)))
    try:
        answer = _READ_ANSWER[provider](_json_object(body))
    except _UNREADABLE as exc:
        raise UpstreamError(_unreadable(provider, exc)) from None
    tokens = None if answer.usage is None else token_counts(answer.usage)
    if conversation.stream:
        writer = _stream_writer(client, conversation, payload)
        written = writer.write(answer_events(answer)) + writer.finish()
        response = writer.final_response if isinstance(writer, responses.StreamWriter) else None
        return TranslatedAnswer(status, written, tokens, stream=True, response=response)
    whole = _write_answer(client, answer, conversation, payload)
    response = whole if client is WireFormat.RESPONSES else None
    return TranslatedAnswer(status, orjson.dumps(whole), tokens, response=response)


class StreamTranslation:
    """A provider's event stream into the client's: `feed` each chunk as it arrives, then
    `end`. Once `ended` (the stream was finished, ended by the provider's error, or could not
    be read and was ended as an error), further chunks are ignored and the relay stops
    reading. `provider_failure` is the error the provider reported, if it did."""

    def __init__(
        self,
        client: WireFormat,
        provider: WireFormat,
        conversation: Conversation,
        payload: JsonObject,
    ) -> None:
        self._provider = provider
        self._events = SseReader()
        self._reader = _STREAM_READERS[provider]()
        self._writer = _stream_writer(client, conversation, payload)
        self._usage: Usage | None = None
        self.ended = False
        self.provider_failure: str | None = None

    @property
    def response(self) -> JsonObject | None:
        """For a Responses client, once the stream ended complete: the response object its
        last event carried, for the gateway to keep; None otherwise."""
        writer = self._writer
        return writer.final_response if isinstance(writer, responses.StreamWriter) else None

    @property
    def tokens(self) -> TokenCounts | None:
        """The counts the provider reported so far, None if none."""
        return None if self._usage is None else token_counts(self._usage)

    def feed(self, chunk: bytes) -> bytes:
        """The client's bytes for `chunk`: events it completes, translated."""
        if self.ended:
            return b""
        try:
            events = [
                item for event in self._events.feed(chunk) for item in self._reader.feed(event)
            ]
            return self._write(events)
        except SseEventTooLarge as exc:
            return self._fail(f"The provider sent {exc}, over the gateway's limit for one event.")
        except UpstreamError as error:  # the provider's codec found its answer malformed
            return self._fail(error.message)
        except _UNREADABLE as exc:
            return self._fail(_unreadable(self._provider, exc))

    def end(self, failure: str | None = None) -> bytes:
        """The client's last bytes: what the provider's end closes, then the format's ending;
        with `failure` (the stream broke off, in the gateway's words), its error ending."""
        if self.ended:
            return b""
        if failure is not None:
            return self._fail(failure)
        try:
            written = self._write(self._reader.end())
        except UpstreamError as error:
            return self._fail(error.message)
        except _UNREADABLE as exc:
            return self._fail(_unreadable(self._provider, exc))
        if self.ended:  # the provider's stream never stopped: ended as an error already
            return written
        self.ended = True
        return written + self._writer.finish()

    def _write(self, events: list[StreamEvent]) -> bytes:
        for event in events:
            reported = event.usage if isinstance(event, UsageReported | StreamStarted) else None
            if reported is not None:
                self._usage = merged_usage(self._usage, reported)
            elif isinstance(event, StreamFailed):
                self.provider_failure = event.message
        written = self._writer.write(events) if events else b""
        if self.provider_failure is None:
            return written
        # The provider ended its answer with an error: so does the client's stream, now.
        self.ended = True
        return written + self._writer.finish()

    def _fail(self, message: str) -> bytes:
        self.ended = True
        return self._writer.write([StreamFailed(message)]) + self._writer.finish()


def answer_events(answer: Answer) -> list[StreamEvent]:
    """A whole answer as the stream that would have carried it, one block per part."""
    events: list[StreamEvent] = [StreamStarted(answer.id, answer.model, answer.created)]
    for index, part in enumerate(answer.parts):
        if isinstance(part, Text):
            events += [BlockOpened(index, BlockKind.TEXT), BlockDelta(index, part.text)]
        elif isinstance(part, Reasoning):
            events += [BlockOpened(index, BlockKind.REASONING), BlockDelta(index, part.text)]
            if part.signature is not None:
                events.append(BlockDelta(index, signature=part.signature))
        elif isinstance(part, ToolCall):
            opened = BlockOpened(index, BlockKind.TOOL_CALL, part.call_id, part.name)
            events += [opened, BlockDelta(index, part.arguments)]
        else:
            continue  # an answer holds no images or tool results
        events.append(BlockClosed(index))
    events.append(StreamStopped(answer.stop_reason, answer.stop_sequence))
    if answer.usage is not None:
        events.append(UsageReported(answer.usage))
    return events


def token_counts(usage: Usage) -> TokenCounts:
    return TokenCounts(
        usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.reasoning_tokens
    )


def estimate_input_tokens(conversation: Conversation) -> int:
    """The local estimate of a request's input tokens (see the module docstring)."""
    size = len((conversation.system or "").encode())
    images = 0
    for message in conversation.messages:
        for part in message.parts:
            pieces: tuple[Any, ...] = part.content if isinstance(part, ToolResult) else (part,)
            for piece in pieces:
                if isinstance(piece, Image):
                    images += 1
                elif isinstance(piece, Text | Reasoning):
                    size += len(piece.text.encode())
                elif isinstance(piece, ToolCall):
                    size += len(piece.name.encode()) + len(piece.arguments.encode())
    for tool in conversation.tools:
        size += len(orjson.dumps(attrs.asdict(tool)))
    overhead = MESSAGE_OVERHEAD_TOKENS * len(conversation.messages)
    return math.ceil(size / 4) + overhead + IMAGE_TOKENS * images


def _json_object(body: bytes) -> JsonObject:
    value = orjson.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _unreadable(provider: WireFormat, exc: Exception) -> str:
    return (
        f"The provider's answer could not be read as {provider.value} ({type(exc).__name__}); "
        "retry the request, and if it keeps failing tell the gateway's operator."
    )
