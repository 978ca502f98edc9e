"""HTTP/1.1 responses framed as bytes for the public server, without I/O: whole responses with
Content-Length, streamed ones chunked (or delimited by closing, for HTTP/1.0 clients), and the
Date header formatted at most once a second. Parsing is `sopy.protocol.parser`'s."""

import time
from collections.abc import Sequence
from email.utils import formatdate
from http import HTTPStatus

from sopy.protocol.events import Header

LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_NO_BODY_STATUSES = frozenset({204, 304})
_CLOSE_LINE = b"connection: close\r\n"


def has_body(status: int) -> bool:
    return status not in _NO_BODY_STATUSES


def complete_response(
    status: int,
    headers: Sequence[Header],
    body: bytes,
    *,
    include_body: bool = True,
    close: bool = False,
) -> bytes:
    """A whole response with Content-Length (and no body bytes for a HEAD request); `close`
    adds `connection: close`."""
    framing = _CLOSE_LINE if close else b""
    if not has_body(status):
        return _head(status, headers, framing)
    head = _head(status, headers, framing + b"content-length: %d\r\n" % len(body))
    return head + body if include_body else head


def streamed_response_head(
    status: int, headers: Sequence[Header], *, chunked: bool, close: bool = False
) -> bytes:
    """The head of a response whose body follows in pieces: chunked for an HTTP/1.1 client,
    delimited by closing the connection for an HTTP/1.0 one; `close` adds `connection: close`."""
    framing = _CLOSE_LINE if close else b""
    if chunked and has_body(status):
        framing += b"transfer-encoding: chunked\r\n"
    return _head(status, headers, framing)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _head(status: int, headers: Sequence[Header], framing: bytes) -> bytes:
    """The head: status line, `headers`, the `framing` lines (already rendered: they are the
    same few for every response, so no list of headers is copied to add them), then Date."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines += (framing, b"date: ", _http_date(), b"\r\n\r\n")
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
