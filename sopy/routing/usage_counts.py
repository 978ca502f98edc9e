"""Reading token counts from a provider's answer as it is relayed (sans-IO).

A whole JSON answer (chat, completions, embeddings, Responses, Anthropic) has a top-level
`usage` object: `usage_of_body` finds the last `"usage": {` and decodes that object alone, so the
answer is never parsed whole. An event stream is read by a `StreamUsageWatcher`, line by line,
keeping only the unfinished line (up to `MAX_EVENT_LINE_BYTES`; a longer line is skipped, never
buffered). Its `usage` objects are merged as they come, whichever the API: the final chunk of a
chat stream (`usage`), `response.completed` and the other final Responses events
(`response.usage`), Anthropic's `message_start` (`message.usage`) and `message_delta` (`usage`).

The Responses API's WebSocket mode sends one JSON event per message: `final_response_usage`
reads the usage of the events that end a response.

A chat stream for which Sopy asked the usage itself (`with_usage_requested`) is stripped of its
usage-only chunk (`choices: []`) so the client sees the stream it asked for; the watcher then
holds back only the unfinished line.
"""

import contextlib
import re
from typing import Any

import orjson

from sopy.messages import TokenCounts

MAX_EVENT_LINE_BYTES = 1024 * 1024
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}]', re.DOTALL)
_FINAL_RESPONSE_EVENT = re.compile(r'"response\.(?:completed|incomplete|failed)"')
_FINAL_RESPONSE_EVENT_BYTES = re.compile(_FINAL_RESPONSE_EVENT.pattern.encode())
_NOTHING_SEEN = TokenCounts()
_STREAM_OPTIONS = b'"stream_options":{"include_usage":true},'
# Where the usage of each API's events lies: the event itself, Responses' `response`,
# Anthropic's `message` (in `message_start`).
_USAGE_HOLDERS = ("response", "message")


def with_usage_requested(body: bytes) -> bytes:
    """A chat/completions request body asking for the stream's usage chunk: the option is
    spliced in after the opening brace, the rest goes upstream byte for byte. Only for a body
    without `stream_options` (the caller checks), so no key is duplicated."""
    opening = body.index(b"{") + 1
    return body[:opening] + _STREAM_OPTIONS + body[opening:]


def usage_of_body(body: bytes) -> TokenCounts | None:
    """The counts of a whole JSON answer's `usage` object, or None if it has none. Searched
    from the end, where every API puts it, so a long answer is not scanned through."""
    end = len(body)
    while (at := body.rfind(b'"usage"', 0, end)) >= 0:
        end = at
        # A `"usage"` inside a string is written `\"usage\"`: not a key.
        if at > 0 and body[at - 1] == 0x5C:
            continue
        key = _USAGE_OBJECT.match(body, at)
        usage = None if key is None else _object_at(body, key.end() - 1)
        if usage is not None:
            return _counts(usage, None)
    return None


def ends_a_response(message: str | bytes) -> bool:
    """Whether a WebSocket-mode message may be the event that ends a response (a cheap look:
    most messages are deltas)."""
    if isinstance(message, str):
        return _FINAL_RESPONSE_EVENT.search(message) is not None
    return _FINAL_RESPONSE_EVENT_BYTES.search(message) is not None


def _object_at(body: bytes, start: int) -> dict[str, Any] | None:
    """The JSON object that opens at `start`. Usually the body's last value: that is tried
    first, in one decode, before its end is looked for token by token."""
    last = body.rfind(b"}")
    if last > start:
        with contextlib.suppress(orjson.JSONDecodeError):
            return _object(orjson.loads(body[start:last]))
    depth = 0
    for token in _JSON_TOKEN.finditer(body, start):
        if token.group() == b"{":
            depth += 1
        elif token.group() == b"}":
            depth -= 1
            if depth == 0:
                try:
                    return _object(orjson.loads(body[start : token.end()]))
                except orjson.JSONDecodeError:
                    return None
    return None


def _object(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _count(value: object, before: int) -> int:
    return value if type(value) is int else before


def _counts(usage: dict[str, Any], seen: TokenCounts | None) -> TokenCounts:
    """`usage` in any API's terms over what was `seen` before (a count it lacks stays)."""
    before = seen or _NOTHING_SEEN
    cached = usage.get("cache_read_input_tokens")
    if cached is None:
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
    details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return TokenCounts(
        _count(usage.get("prompt_tokens", usage.get("input_tokens")), before.input_tokens),
        _count(usage.get("completion_tokens", usage.get("output_tokens")), before.output_tokens),
        _count(cached, before.cached_input_tokens),
        _count(reasoning, before.reasoning_tokens),
    )


class StreamUsageWatcher:
    """Reads the usage of one event stream from the chunks relayed. With `strip_usage_chunk`,
    `feed` returns what the client is to be sent (every complete line but the usage-only
    chunk's); otherwise it returns the chunk unchanged."""

    def __init__(self, *, strip_usage_chunk: bool = False) -> None:
        self.tokens: TokenCounts | None = None
        self._strip = strip_usage_chunk
        self._line = bytearray()
        self._skipping_long_line = False
        self._dropping_event = False

    def feed(self, chunk: bytes) -> bytes:
        self._line += chunk
        if b"\n" not in chunk:
            return self._line_too_long(chunk)
        *lines, rest = self._line.split(b"\n")
        self._line = bytearray(rest)
        kept = [line for line in lines if self._keep(line)]
        if not self._strip:
            self._line_too_long(b"")
            return chunk
        sent = b"\n".join(kept) + b"\n" if kept else b""
        return sent + self._line_too_long(b"")

    def end(self) -> bytes:
        """What is left to send when the stream ends: its unfinished last line."""
        rest, self._line = bytes(self._line), bytearray()
        return rest if self._strip else b""

    def _line_too_long(self, chunk: bytes) -> bytes:
        """Past the bound the unfinished line is not kept (and, stripping, is sent as is)."""
        if len(self._line) <= MAX_EVENT_LINE_BYTES:
            return b"" if self._strip else chunk
        held, self._line = bytes(self._line), bytearray()
        self._skipping_long_line = True
        return held if self._strip else chunk

    def _keep(self, line: bytearray) -> bool:
        """Whether the client gets `line`; reads the usage it carries."""
        if self._skipping_long_line:
            self._skipping_long_line = False
            return True
        if self._dropping_event:
            # The blank line that ends the dropped event goes with it.
            self._dropping_event = False
            if not line.strip():
                return False
        if not line.startswith(b"data:") or _USAGE_OBJECT.search(line) is None:
            return True
        try:
            event = orjson.loads(bytes(line[5:]))
        except orjson.JSONDecodeError:
            return True
        if not isinstance(event, dict):
            return True
        self._read_usage(event)
        if self._strip and event.get("choices") == [] and isinstance(event.get("usage"), dict):
            self._dropping_event = True
            return False
        return True

    def _read_usage(self, event: dict[str, Any]) -> None:
        holders = [event, *(event.get(name) for name in _USAGE_HOLDERS)]
        for holder in holders:
            if isinstance(holder, dict) and isinstance(usage := holder.get("usage"), dict):
                self.tokens = _counts(usage, self.tokens)
