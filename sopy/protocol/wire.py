"""HTTP/1.1 on the wire for the public server, without I/O: requests parsed with httptools
(llhttp, strict), responses framed as bytes.

`RequestParser` takes bytes as they arrive and hands out `ParsedRequest`s in order as soon as
their heads are complete; their bodies fill in as more bytes are fed. Pipelined requests queue
up behind the first. A request asking for a protocol upgrade is answered in HTTP/1.1 (its
Content-Length body is still read) and ends the connection.
"""

import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus

import httptools

from sopy.protocol.headers import first_value

Header = tuple[bytes, bytes]
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_NO_BODY_STATUSES = frozenset({204, 304})


class MalformedRequest(Exception):
    """The bytes are not an HTTP/1.1 request Sopy accepts; `status` is the answer to give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ParsedRequest:
    """A request whose head has arrived. `body` holds the pieces not yet taken; `complete`
    says the whole body has arrived."""

    __slots__ = (
        "body",
        "complete",
        "expects_continue",
        "headers",
        "http_11",
        "keep_alive",
        "method",
        "target",
        "upgrade_body_left",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: list[Header] = []
        self.http_11 = True
        self.keep_alive = True
        self.expects_continue = False
        self.body: deque[bytes] = deque()
        self.complete = False
        self.upgrade_body_left = 0

    def header(self, name: bytes) -> bytes | None:
        return first_value(self.headers, name)


class RequestParser:
    def __init__(self, max_head_bytes: int) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._max_head_bytes = max_head_bytes
        self._head_bytes = 0  # of the current head, as httptools reports its parts
        self._head_fed = 0  # bytes fed while the current head was incomplete
        self._head_too_large = False
        self._current: ParsedRequest | None = None
        self._head_done = False
        self._upgraded = False
        self.ready: deque[ParsedRequest] = deque()

    def feed(self, data: bytes) -> None:
        """Parse `data`; raise `MalformedRequest` if it breaks HTTP/1.1 or a head grows beyond
        `max_head_bytes`."""
        if self._upgraded:
            self._feed_upgrade_body(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if self._head_too_large:
                raise self._too_large() from None
            raise MalformedRequest(400, f"malformed HTTP request: {exc}") from None
        if self._current is not None and not self._head_done:
            # Bounds what httptools buffers of a head that has not ended yet.
            self._head_fed += len(data)
            if self._head_fed > self._max_head_bytes:
                raise self._too_large()

    def _too_large(self) -> MalformedRequest:
        return MalformedRequest(
            431, f"the request head is larger than {self._max_head_bytes} bytes"
        )

    def _upgrade(self, rest: bytes) -> None:
        """The request asked to switch protocols: serve it in HTTP/1.1, then close."""
        request = self._current
        assert request is not None and self._head_done, "llhttp upgrades after a whole head"
        self._upgraded = True
        request.keep_alive = False
        if request.header(b"transfer-encoding") is not None:
            raise MalformedRequest(400, "a chunked body cannot come with an Upgrade header")
        length = request.header(b"content-length") or b"0"
        request.upgrade_body_left = int(length) if length.isdigit() else 0
        request.complete = request.upgrade_body_left == 0
        self._feed_upgrade_body(rest)

    def _feed_upgrade_body(self, data: bytes) -> None:
        request = self._current
        if request is None or request.upgrade_body_left <= 0 or not data:
            return
        piece = data[: request.upgrade_body_left]
        request.body.append(piece)
        request.upgrade_body_left -= len(piece)
        request.complete = request.upgrade_body_left == 0

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._current = ParsedRequest()
        self._head_done = False
        self._head_bytes = self._head_fed = 0

    def on_url(self, url: bytes) -> None:
        assert self._current is not None
        self._current.target += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        if not self._head_done:  # after the head: chunked trailers, not kept
            self._current.headers.append((name.lower(), value))
            self._count_head(len(name) + len(value) + 4)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._max_head_bytes:
            self._head_too_large = True
            raise self._too_large()  # httptools stops parsing; feed() reports it

    def on_headers_complete(self) -> None:
        request = self._current
        assert request is not None
        parser = self._parser
        request.method = parser.get_method()
        request.http_11 = parser.get_http_version() == "1.1"
        request.keep_alive = request.http_11 and parser.should_keep_alive()
        expect = request.header(b"expect")
        request.expects_continue = (
            request.http_11 and expect is not None and (expect.lower() == b"100-continue")
        )
        self._head_done = True
        self.ready.append(request)

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.body.append(body)

    def on_message_complete(self) -> None:
        assert self._current is not None
        self._current.complete = True


def has_body(status: int) -> bool:
    return status not in _NO_BODY_STATUSES


def complete_response(
    status: int, headers: list[Header], body: bytes, *, include_body: bool = True
) -> bytes:
    """A whole response with Content-Length (and no body bytes for a HEAD request)."""
    if not has_body(status):
        return _head(status, headers)
    length = (b"content-length", b"%d" % len(body))
    head = _head(status, [*headers, length])
    return head + body if include_body else head


def streamed_response_head(status: int, headers: list[Header], *, chunked: bool) -> bytes:
    """The head of a response whose body follows in pieces: chunked for an HTTP/1.1 client,
    delimited by closing the connection for an HTTP/1.0 one."""
    if chunked and has_body(status):
        headers = [*headers, (b"transfer-encoding", b"chunked")]
    return _head(status, headers)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _head(status: int, headers: list[Header]) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines += (b"date: ", _http_date(), b"\r\n\r\n")
    return b"".join(lines)


class _DateCache:
    """The Date header's value, formatted at most once a second."""

    second = -1
    value = b""


def _http_date() -> bytes:
    now = int(time.time())
    if now != _DateCache.second:
        _DateCache.value = formatdate(now, usegmt=True).encode()
        _DateCache.second = now
    return _DateCache.value
