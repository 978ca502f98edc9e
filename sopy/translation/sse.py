"""Server-sent events, sans-IO: `SseReader` splits a provider's event stream, fed in chunks cut
anywhere, into whole events; `sse_event` writes one. Used by the stream readers and writers of
`sopy.translation`.

Memory is bounded: an event whose lines exceed `MAX_EVENT_BYTES` in total is refused with
`SseEventTooLarge` (the relay ends the client's stream with an error), never buffered whole.
"""

import attrs

MAX_EVENT_BYTES = 4 * 1024 * 1024


class SseEventTooLarge(Exception):
    """An event over `MAX_EVENT_BYTES`."""


@attrs.frozen
class SseEvent:
    """One event: its `event:` name ('' when none) and its `data:` lines joined by newlines."""

    name: str
    data: bytes


class SseReader:
    """Feed chunks as they arrive; each call returns the events they complete. Lines may end
    with LF, CRLF or CR (a CR at a chunk's end waits for the next chunk to tell CRLF from CR)."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._pending = b""
        self._name = ""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buffer = self._pending + chunk
        events: list[SseEvent] = []
        start = 0
        length = len(buffer)
        while start < length:
            lf = buffer.find(b"\n", start)
            cr = buffer.find(b"\r", start, lf if lf >= 0 else length)
            if cr >= 0:
                if cr + 1 == length:
                    break  # CR last: CRLF or CR, the next chunk tells
                end, after = cr, cr + 2 if buffer[cr + 1] == 0x0A else cr + 1
            elif lf >= 0:
                end, after = lf, lf + 1
            else:
                break
            event = self._line(buffer[start:end])
            if event is not None:
                events.append(event)
            start = after
        self._pending = buffer[start:]
        if len(self._pending) > self._max:
            raise SseEventTooLarge(f"a line over {self._max} bytes")
        return events

    def _line(self, line: bytes) -> SseEvent | None:
        if not line:
            if not self._data and not self._name:
                return None
            event = SseEvent(self._name, b"\n".join(self._data))
            self._name, self._data, self._size = "", [], 0
            return event
        if line.startswith(b":"):
            return None
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._grow(len(value))
            self._data.append(value)
        elif field == b"event":
            self._name = value.decode("utf-8", "replace")
        return None

    def _grow(self, size: int) -> None:
        self._size += size
        if self._size > self._max:
            raise SseEventTooLarge(f"an event over {self._max} bytes")


def sse_event(data: bytes, name: str | None = None) -> bytes:
    """One event on the wire: `event: name` when named, then its data line."""
    if name is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
