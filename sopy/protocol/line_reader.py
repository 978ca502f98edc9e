"""Newline-delimited framing over a trio byte stream, with a bound on line length.

Used by the admin socket. A line longer than the bound is reported once as `LINE_TOO_LONG` and
the rest of it is skipped up to its newline, so one bad line never costs the connection.
"""

import enum

import trio

_RECEIVE_SIZE = 65536


class Framing(enum.Enum):
    LINE_TOO_LONG = "line too long"


LINE_TOO_LONG = Framing.LINE_TOO_LONG


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream, max_line_bytes: int) -> None:
        self._stream = stream
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._scanned = 0
        self._skipping = False

    async def next_line(self) -> bytes | Framing | None:
        """The next line without its newline, LINE_TOO_LONG, or None at end of stream."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                if self._skipping:
                    self._skipping = False
                    continue
                return line
            if len(self._buffer) > self._max:
                self._buffer.clear()
                self._scanned = 0
                if not self._skipping:
                    self._skipping = True
                    return LINE_TOO_LONG
            self._scanned = len(self._buffer)
            chunk = await self._stream.receive_some(_RECEIVE_SIZE)
            if not chunk:
                return self._final_line()
            self._buffer += chunk

    def _final_line(self) -> bytes | None:
        if self._skipping or not self._buffer:
            return None
        line = bytes(self._buffer)
        self._buffer.clear()
        return line
