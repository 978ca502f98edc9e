"""Sans-IO HTTP/1.1 parsing for both directions: `RequestParser` for the public server,
`ResponseParser` for the upstream client. Bytes go in with `feed`; immutable events
(`sopy.protocol.events`) come out, in order, on `events`; bytes that break HTTP/1.1 or a size
limit raise `ProtocolError` carrying the status to answer with. Events queued before the error
stay valid (the requests before a malformed one can still be answered).

Both parsers are one shape over llhttp (httptools, strict mode, ~3 us a message where h11 takes
~50 us, see bench/README.md) with Sopy's rules on top, the same in both directions: a bound on
the head's size and on its number of header fields, header values without surrounding
whitespace, only HTTP/1.0 and 1.1. Requests additionally need exactly one Host (HTTP/1.1) and
take no Transfer-Encoding but exactly `chunked` (none on HTTP/1.0). tests/test_http_h11_oracle.py
checks every accept/refuse decision and parsed message against h11, and lists the differences.
"""

from collections import deque
from typing import NoReturn

import attrs
import httptools

from sopy.protocol.errors import ProtocolError
from sopy.protocol.events import END_OF_MESSAGE, Data, Event, Header, Request, Response
from sopy.protocol.headers import first_value

_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_OWS = b" \t"


@attrs.frozen
class HeadLimits:
    """How large a message head may be, in bytes and in header fields."""

    max_bytes: int = 32 * 1024
    max_fields: int = 100


class _MessageParser:
    """What requests and responses share: the event queue, head accounting and limits, header
    collection. Subclasses make the llhttp parser and build the head event."""

    _what = "message"
    _head_fix = ""  # how the sender can stay within the head limits
    _checked_names: frozenset[bytes] = frozenset()  # fields kept aside for on_headers_complete

    _parser: httptools.HttpRequestParser | httptools.HttpResponseParser

    def __init__(self, limits: HeadLimits) -> None:
        self.events: deque[Event] = deque()
        self.messages_ended = 0
        self.in_message = False
        self._max_head_bytes = limits.max_bytes
        self._max_fields = limits.max_fields
        self._headers: list[Header] = []
        self._checked: list[Header] = []
        self._head_bytes = 0  # of the current head, as llhttp hands over its parts
        self._head_fed = 0  # bytes fed while the current head was already incomplete
        self._in_head = False
        self._failure: ProtocolError | None = None
        self._past_parsing = False  # what is fed goes to `_feed_unparsed`, not to llhttp

    def feed(self, data: bytes | bytearray) -> None:
        """Parse `data`, queueing the events it completes; raise `ProtocolError` if it breaks
        HTTP/1.1 or a limit (and again on every later call: the stream cannot be resynced)."""
        if self._failure is not None or self._past_parsing:
            if self._failure is not None:
                raise self._failure
            self._feed_unparsed(data)
            return
        head_under_way = self._in_head
        malformed: ProtocolError | None = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            message = f"malformed HTTP {self._what}: {exc}; send valid HTTP/1.1"
            # A callback's refusal is the reason; llhttp only reports that it stopped.
            malformed = self._failure or ProtocolError(self._status(400), message)
        if malformed is not None:
            self._fail(malformed)
        if self._in_head and head_under_way:
            # llhttp buffers the part of a head that has not ended yet; this bounds it.
            self._head_fed += len(data)
            if self._head_fed > self._max_head_bytes:
                self._fail(self._head_too_large())

    def _fail(self, failure: ProtocolError) -> NoReturn:
        self._failure = failure
        raise failure

    def _refuse(self, status: int, message: str) -> NoReturn:
        """Refuse the message from inside an llhttp callback: llhttp stops, `feed` reports it.
        `status` is the answer to a request."""
        self._failure = ProtocolError(self._status(status), message)
        raise self._failure

    def _status(self, request_status: int) -> int:
        """The status to answer with, given what the answer to a request would be."""
        return request_status

    def _on_upgrade(self, rest: bytes | bytearray) -> None:
        raise NotImplementedError

    def _feed_unparsed(self, data: bytes | bytearray) -> None:
        raise NotImplementedError

    def _head_too_large(self) -> ProtocolError:
        message = f"the {self._what} head is larger than {self._max_head_bytes} bytes"
        message += self._head_fix
        return ProtocolError(self._status(431), message)

    def _refuse_head(self) -> NoReturn:
        if self._head_bytes > self._max_head_bytes:
            self._failure = self._head_too_large()
            raise self._failure
        self._refuse(
            431, f"the {self._what} has more than {self._max_fields} header fields{self._head_fix}"
        )

    # llhttp's callbacks (on the hot path: kept flat)

    def on_message_begin(self) -> None:
        self.in_message = self._in_head = True
        self._headers = []
        self._checked = []
        self._head_bytes = self._head_fed = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # chunked trailers: read and dropped
        name = name.lower()
        header = (name, value.rstrip(_OWS))
        headers = self._headers
        headers.append(header)
        if name in self._checked_names:
            self._checked.append(header)
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head_bytes or len(headers) > self._max_fields:
            self._refuse_head()

    def on_body(self, body: bytes) -> None:
        self.events.append(Data(body))

    def on_message_complete(self) -> None:
        self.in_message = False
        self.messages_ended += 1
        self.events.append(END_OF_MESSAGE)

    def _unsupported_version(self) -> NoReturn:
        version = self._parser.get_http_version()
        self._refuse(505, f"HTTP/{version} is not supported here; speak HTTP/1.1")


class RequestParser(_MessageParser):
    """Requests as a server reads them; pipelined requests queue up in order. A request asking
    for a protocol upgrade (or CONNECT) is kept in HTTP/1.1: its Content-Length body is read,
    `keep_alive` is False, and bytes after it are ignored."""

    _what = "request"
    _head_fix = "; send fewer or smaller headers"
    _checked_names = frozenset({b"host", b"transfer-encoding", b"expect"})

    def __init__(self, limits: HeadLimits) -> None:
        super().__init__(limits)
        self._target = b""
        self._upgrading = False
        self._upgrade_body_left = -1  # >= 0 once upgraded: body bytes still to come
        self._parser = self._requests = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.in_message = self._in_head = True
        self._headers = []
        self._checked = []
        self._head_bytes = self._head_fed = 0
        self._target = b""

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head_bytes:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._requests
        version = _VERSIONS.get(parser.get_http_version()) or self._unsupported_version()
        self._upgrading = parser.should_upgrade()
        hosts, expects_continue = 0, False
        transfer_encodings: list[bytes] = []
        for name, value in self._checked:
            if name == b"host":
                hosts += 1
            elif name == b"transfer-encoding":
                transfer_encodings.append(value)
            else:  # expect
                expects_continue = version == b"1.1" and value.lower() == b"100-continue"
        if hosts > 1:
            self._refuse(400, f"the request has {hosts} Host headers; send exactly one")
        if hosts == 0 and version == b"1.1":
            self._refuse(400, "an HTTP/1.1 request needs a Host header")
        if transfer_encodings:
            self._check_transfer_encoding(version, transfer_encodings)
        self.events.append(
            Request(
                parser.get_method(),
                self._target,
                tuple(self._headers),
                version,
                version == b"1.1" and parser.should_keep_alive() and not self._upgrading,
                expects_continue,
            )
        )

    def _check_transfer_encoding(self, version: bytes, codings: list[bytes]) -> None:
        if version == b"1.0":
            self._refuse(
                400, "HTTP/1.0 has no Transfer-Encoding; send the body with Content-Length"
            )
        if self._upgrading:
            self._refuse(400, "a chunked body cannot come with an Upgrade header")
        if len(codings) != 1 or codings[0].lower() != b"chunked":
            self._refuse(
                501, "only 'Transfer-Encoding: chunked' is supported; or send Content-Length"
            )

    def on_message_complete(self) -> None:
        if not self._upgrading:  # an upgrade's body follows the head as raw bytes
            self.in_message = False
            self.messages_ended += 1
            self.events.append(END_OF_MESSAGE)

    def _on_upgrade(self, rest: bytes | bytearray) -> None:
        request = self.events[-1]
        assert isinstance(request, Request), "llhttp upgrades right after a whole head"
        length = first_value(request.headers, b"content-length") or b"0"
        self._upgrade_body_left = int(length) if length.isdigit() else 0
        self._past_parsing = True
        if self._upgrade_body_left == 0:
            super().on_message_complete()
        self._feed_unparsed(rest)

    def _feed_unparsed(self, data: bytes | bytearray) -> None:
        """The upgraded request's Content-Length body, as raw bytes; nothing after it."""
        left = self._upgrade_body_left
        if left <= 0 or not data:
            return
        piece = data[:left]
        self._upgrade_body_left = left - len(piece)
        self.events.append(Data(bytes(piece)))
        if self._upgrade_body_left == 0:
            super().on_message_complete()


class ResponseParser(_MessageParser):
    """Responses as a client reads them, for requests other than HEAD. A body framed by neither
    Content-Length nor chunked ends when the connection does: call `feed_eof` then."""

    _what = "response"

    def __init__(self, limits: HeadLimits) -> None:
        super().__init__(limits)
        self._ends_at_close = False
        self._parser = self._responses = httptools.HttpResponseParser(self)

    def _status(self, request_status: int) -> int:
        return 502  # a backend's broken answer is a bad gateway, whatever broke

    def feed_eof(self) -> None:
        """The peer closed the connection: the end of a body delimited by closing, or a
        `ProtocolError` if a message was cut short."""
        if not self.in_message or self._failure is not None:
            return
        if self._ends_at_close and not self._in_head:
            super().on_message_complete()
            return
        self._fail(ProtocolError(502, "the connection closed in the middle of a response"))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._responses
        version = _VERSIONS.get(parser.get_http_version()) or self._unsupported_version()
        status = parser.get_status_code()
        headers = tuple(self._headers)
        keep_alive = parser.should_keep_alive()
        self._ends_at_close = not keep_alive and _body_ends_at_close(status, headers)
        self.events.append(Response(status, headers, version, keep_alive))

    def _on_upgrade(self, rest: bytes | bytearray) -> None:
        self._fail(ProtocolError(502, "the response switches protocols, which is not supported"))


def _body_ends_at_close(status: int, headers: tuple[Header, ...]) -> bool:
    """Whether a response's body is delimited by closing the connection: no body status, and
    neither chunked as the last transfer coding nor a Content-Length (RFC 9112 6.3)."""
    if status < 200 or status in (204, 304):
        return False
    codings = [value for name, value in headers if name == b"transfer-encoding"]
    if codings:
        return not codings[-1].lower().endswith(b"chunked")
    return first_value(headers, b"content-length") is None
