"""Sopy's HTTP/1.1 parser (sopy.protocol.parser) against h11 as an oracle, in both directions.

Hypothesis-generated and hand-picked byte streams (framing, chunking, Host rules,
Transfer-Encoding lists, obs-fold, bare LF, NUL, pipelining, interim responses, bodies delimited
by closing) must get the same accept/refuse decision and the same parsed messages from both
parsers, except where the input shows one of the `DIFFERENCES` below: the one place that lists
and justifies where Sopy deliberately decides otherwise than h11. Every difference also has a
hand-picked case showing that it is real, so the list cannot go stale.

CI runs a bounded number of examples; set SOPY_FUZZ_EXAMPLES for a longer run (see README).
"""

import os
import re
from collections.abc import Callable, Iterable
from functools import partial

import attrs
import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sopy.protocol.errors import ProtocolError
from sopy.protocol.events import Data, EndOfMessage, Request, Response
from sopy.protocol.parser import HeadLimits, RequestParser, ResponseParser

EXAMPLES = int(os.environ.get("SOPY_FUZZ_EXAMPLES", "300"))
ORACLE_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Generous enough that no generated input reaches a limit (h11 has no header-count limit).
LIMITS = HeadLimits(max_bytes=64 * 1024, max_fields=10_000)


@attrs.frozen
class Message:
    """A parsed message as both parsers can say it: the start line's parts, headers (names lower
    case), the body so far, and whether it ended."""

    start: tuple[bytes, ...]
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    complete: bool


@attrs.frozen
class Outcome:
    messages: tuple[Message, ...]
    refused: bool


def normalized(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """Headers as h11 gives them: h11 lower-cases Transfer-Encoding's value."""
    return tuple(
        (name, value.lower() if name == b"transfer-encoding" else value) for name, value in headers
    )


# Sopy's side


def sopy_requests(data: bytes) -> Outcome:
    """The requests up to the end of the last one the connection serves (its head said
    Connection: close, HTTP/1.0 or upgrade): bytes after it are never served."""
    parser = RequestParser(LIMITS)
    refused = False
    try:
        parser.feed(data)
    except ProtocolError:
        refused = True
    messages: list[Message] = []
    last = False
    for event in parser.events:
        if isinstance(event, Request):
            if last:
                break
            start = (event.method, event.target, event.http_version)
            messages.append(Message(start, normalized(event.headers), b"", False))
            last = not event.keep_alive
        else:
            messages[-1] = _continued(messages[-1], event)
    served_to_the_end = last and messages[-1].complete
    return Outcome(tuple(messages), refused and not served_to_the_end)


def _continued(message: Message, event: object) -> Message:
    if isinstance(event, Data):
        return attrs.evolve(message, body=message.body + event.data)
    assert isinstance(event, EndOfMessage)
    return attrs.evolve(message, complete=True)


def sopy_response(data: bytes, closed: bool) -> Outcome:
    """The answer to one request: interim responses, then the final one; what follows the
    final response's end is not the answer's concern."""
    parser = ResponseParser(LIMITS)
    refused = False
    try:
        parser.feed(data)
        if closed:
            parser.feed_eof()
    except ProtocolError:
        refused = True
    messages: list[Message] = []
    for event in parser.events:
        if isinstance(event, Response):
            start = (b"%d" % event.status, event.http_version)
            messages.append(Message(start, normalized(event.headers), b"", False))
        else:
            messages[-1] = _continued(messages[-1], event)
            if messages[-1].complete and int(messages[-1].start[0]) >= 200:
                return Outcome(tuple(messages), refused=False)
    return Outcome(tuple(messages), refused)


# h11's side


def h11_requests(data: bytes) -> Outcome:
    return _h11_read_requests(data)[0]


def h11_refuses_an_empty_line(data: bytes) -> bool:
    """Whether h11 refused an empty line, or a lone CR, where a request line should start."""
    refusal = _h11_read_requests(data)[1]
    if refusal is None:
        return False
    reason, stopped_at = refusal
    return reason == "no request line received" or stopped_at.startswith(b"\r")


def _h11_read_requests(data: bytes) -> tuple[Outcome, tuple[str, bytes] | None]:
    """h11's outcome and, if it refused, why and the bytes it stopped at."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMITS.max_bytes)
    connection.receive_data(data)
    messages: list[Message] = []
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as refusal:
            # Bytes after the connection's last request are never served.
            served_to_the_end = bool(messages) and messages[-1].complete and _is_last(messages[-1])
            if served_to_the_end:
                return Outcome(tuple(messages), refused=False), None
            stopped_at = bytes(connection.trailing_data[0])
            return Outcome(tuple(messages), refused=True), (str(refusal), stopped_at)
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return Outcome(tuple(messages), refused=False), None
        if event is h11.PAUSED:
            # The request is whole: answer it, and stop where the connection must close
            # (Sopy's last request: Connection: close, HTTP/1.0, an upgrade or CONNECT).
            if _is_last(messages[-1]):
                return Outcome(tuple(messages), refused=False), None
            connection.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            connection.send(h11.EndOfMessage())
            connection.start_next_cycle()
        elif isinstance(event, h11.Request):
            start = (event.method, event.target, event.http_version)
            messages.append(Message(start, normalized(event.headers), b"", False))
        elif isinstance(event, h11.Data):
            messages[-1] = attrs.evolve(messages[-1], body=messages[-1].body + event.data)
        elif isinstance(event, h11.EndOfMessage):
            messages[-1] = attrs.evolve(messages[-1], complete=True)


def _is_last(message: Message) -> bool:
    """Whether Sopy's server closes the connection after answering `message`, by its head."""
    closes = b"close" in _connection_tokens(message)
    return message.start[2] != b"1.1" or closes or _asks_upgrade(message)


def _asks_upgrade(message: Message) -> bool:
    """Whether a request asks to switch protocols: CONNECT, or Upgrade named in Connection."""
    upgrade = b"upgrade" in _connection_tokens(message) and b"upgrade" in dict(message.headers)
    return upgrade or message.start[0] == b"CONNECT"


def _connection_tokens(message: Message) -> set[bytes]:
    return {
        token.strip().lower()
        for name, value in message.headers
        if name == b"connection"
        for token in value.split(b",")
    }


def h11_response(data: bytes, closed: bool) -> Outcome:
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=LIMITS.max_bytes)
    request = h11.Request(
        method="POST", target="/", headers=[("host", "sopy"), ("content-length", "2")]
    )
    connection.send(request)
    connection.send(h11.Data(data=b"{}"))
    connection.send(h11.EndOfMessage())
    connection.receive_data(data)
    if closed:
        connection.receive_data(b"")
    messages: list[Message] = []
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError:
            return Outcome(tuple(messages), refused=True)
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return Outcome(tuple(messages), refused=False)
        if isinstance(event, h11.InformationalResponse | h11.Response):
            start = (b"%d" % event.status_code, event.http_version)
            interim = isinstance(event, h11.InformationalResponse)  # whole in its head
            messages.append(Message(start, normalized(event.headers), b"", interim))
        elif isinstance(event, h11.Data):
            messages[-1] = attrs.evolve(messages[-1], body=messages[-1].body + event.data)
        elif isinstance(event, h11.EndOfMessage):
            messages[-1] = attrs.evolve(messages[-1], complete=True)
            return Outcome(tuple(messages), refused=False)
        elif isinstance(event, h11.ConnectionClosed):
            return Outcome(tuple(messages), refused=False)


# The differences, each with what in the input shows it and why Sopy decides as it does.


@attrs.frozen
class Difference:
    name: str
    direction: str  # "request" or "response": which parser decides otherwise
    shown_by: Callable[[bytes], bool]
    why: str


def _has(pattern: bytes) -> Callable[[bytes], bool]:
    compiled = re.compile(pattern, re.MULTILINE)
    return lambda data: compiled.search(data) is not None


def _has_all(*patterns: bytes) -> Callable[[bytes], bool]:
    checks = [_has(pattern) for pattern in patterns]
    return lambda data: all(check(data) for check in checks)


_LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)


_TARGET_FORMS = re.compile(rb"/|\*\Z|[a-zA-Z][-+.a-zA-Z0-9]*://")  # origin, asterisk, absolute


def _odd_target(data: bytes) -> bool:
    """Whether a request line h11 reads has a target in none of RFC 9112's four forms (the
    authority form being CONNECT's)."""
    return any(
        _TARGET_FORMS.match(target) is None and method != b"CONNECT"
        for method, target, _ in (message.start for message in h11_requests(data).messages)
    )


def _chunked_upgrade(data: bytes) -> bool:
    """Whether a request h11 reads asks for an upgrade (or CONNECT) and has a chunked body."""
    return any(
        b"transfer-encoding" in dict(message.headers) and _asks_upgrade(message)
        for message in h11_requests(data).messages
    )


def _unknown_method(data: bytes) -> bool:
    """Whether a request line h11 reads, or the first one, has a method llhttp does not know."""
    first = re.match(rb"(?:\r?\n)*([^ ]*) ", data)
    methods = {message.start[0] for message in h11_requests(data).messages}
    if first is not None:
        methods.add(first.group(1))
    return not methods <= _LLHTTP_METHODS


DIFFERENCES = (
    Difference(
        "bare LF",
        "both",
        _has(rb"(?<!\r)\n"),
        "Sopy refuses a line ended by LF alone (RFC 9112 2.2 allows either): a proxy in front "
        "that splits lines differently would see other messages than Sopy (smuggling).",
    ),
    Difference(
        "obs-fold",
        "both",
        _has(rb"\n[ \t]"),
        "Sopy refuses folded header lines (400/502), one of the two answers RFC 9112 5.2 "
        "allows; h11 unfolds them.",
    ),
    Difference(
        "HTTP version",
        "request",
        _has(rb" HTTP/(?!1\.[01]\r?\n)"),
        "Sopy answers 505 to any version but 1.0 and 1.1 (RFC 9110 15.6.6); h11 parses any "
        "digit.digit, so HTTP/2.0 would be served as if it were HTTP/1.x.",
    ),
    Difference(
        "response HTTP version",
        "response",
        _has(rb"^HTTP/(?!1\.[01] )"),
        "A backend answering in another version than 1.0 or 1.1 is a bad gateway (502) for "
        "Sopy; h11 parses any digit.digit.",
    ),
    Difference(
        "method llhttp does not know",
        "request",
        _unknown_method,
        "llhttp knows the registered methods only (case-sensitive); any other gets a 400 where "
        "h11 would pass it on. Sopy's routes use GET, HEAD and POST.",
    ),
    Difference(
        "request target in no form",
        "request",
        _odd_target,
        "llhttp refuses a target that is none of origin-form (/path), absolute-form "
        "(scheme://...), asterisk or (for CONNECT) authority form (RFC 9112 3.2); h11 takes "
        "any visible characters, which could only get a 404.",
    ),
    Difference(
        "chunked body on an upgrade request",
        "request",
        _chunked_upgrade,
        "Sopy answers a request asking to switch protocols (or CONNECT) in HTTP/1.1 and then "
        "closes; llhttp hands over the bytes after such a head raw, so Sopy can read a "
        "Content-Length body from them but refuses a chunked one (400). h11 reads it.",
    ),
    Difference(
        "whitespace after a chunk size",
        "both",
        _has(rb"^[0-9a-fA-F]+[ \t]"),
        "RFC 9112 7.1 allows whitespace in a chunk line only around a chunk extension's ';' "
        "and '='; llhttp refuses it elsewhere, h11 accepts it after the size.",
    ),
    Difference(
        "repeated Content-Length",
        "both",
        _has(rb"(?i)content-length:.*(,|\n(?:.*\n)*content-length:)"),
        "Sopy refuses a repeated Content-Length even with equal values; RFC 9112 6.3 allows "
        "refusing or merging them, h11 merges.",
    ),
    Difference(
        "Content-Length with Transfer-Encoding",
        "both",
        _has_all(rb"(?i)content-length:", rb"(?i)transfer-encoding:"),
        "Sopy refuses a message framed both ways (RFC 9112 6.1 lets a server refuse it), the "
        "classic request-smuggling shape; h11 lets Transfer-Encoding win.",
    ),
    Difference(
        "Transfer-Encoding on HTTP/1.0",
        "request",
        _has_all(rb"HTTP/1\.0", rb"(?i)transfer-encoding:"),
        "HTTP/1.0 has no Transfer-Encoding: RFC 9112 6.1 says to treat the framing as faulty, "
        "so Sopy answers 400; h11 reads it as chunked.",
    ),
    Difference(
        "response Transfer-Encoding other than chunked",
        "response",
        lambda data: (
            re.search(rb"(?im)^transfer-encoding:(?![ \t]*chunked[ \t]*\r?$)", data) is not None
            or len(re.findall(rb"(?im)^transfer-encoding:", data)) > 1
        ),
        "A response's Transfer-Encoding (one field or several, a list) is framed by its last "
        "coding: chunked, or else the body is read until the backend closes (RFC 9112 6.3); "
        "h11 refuses anything but one 'chunked'.",
    ),
    Difference(
        "empty lines before a request line",
        "request",
        h11_refuses_an_empty_line,
        "RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request line; "
        "llhttp does, h11 refuses (and a lone CR where a request line should start).",
    ),
    Difference(
        "control characters",
        "both",
        _has(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]"),
        "llhttp refuses control characters in a head that h11 lets through in values and "
        "reasons (h11 only refuses NUL and whitespace); they have no meaning in HTTP/1.1 "
        "(RFC 9110 5.5).",
    ),
    Difference(
        "101 Switching Protocols",
        "response",
        _has(rb"^HTTP/\d\.\d 101"),
        "The upstream client never asks to switch protocols, so a 101 is a broken answer (502); "
        "h11 hands the connection over.",
    ),
)


def explained(data: bytes, direction: str) -> list[str]:
    return [
        difference.name
        for difference in DIFFERENCES
        if difference.direction in (direction, "both") and difference.shown_by(data)
    ]


def assert_same(
    data: bytes, direction: str, sopy: Outcome, oracle: Callable[[bytes], Outcome]
) -> None:
    """Sopy's outcome is h11's, or the input shows a listed difference. llhttp refuses at the
    first byte that cannot be HTTP, h11 only once the line has ended: where Sopy refused an
    unfinished line, h11 is asked again with the line and the head ended."""
    expected = oracle(data)
    if sopy.refused and not expected.refused:
        ended = oracle(data + b"\r\n\r\n")
        if ended.refused and ended.messages == sopy.messages:
            expected = ended
    if sopy != expected:
        assert explained(data, direction), (
            f"Sopy and h11 disagree on {data!r} and no listed difference explains it:\n"
            f"  Sopy: {sopy}\n  h11:  {expected}"
        )


# Generated byte streams


def _lines(lines: list[bytes], line_ends: list[bytes]) -> bytes:
    return b"".join(line + end for line, end in zip(lines, line_ends, strict=False))


ODD_ASPECTS = ("method", "target", "version", "hosts", "line ends", "headers", "values", "body")


@st.composite
def odd_aspect(draw: st.DrawFn) -> str | None:
    """Which part of a message breaks the usual rules, if any (half of the messages are all
    usual, so that they are compared in full, and the others break one thing at a time)."""
    return draw(st.sampled_from([None] * len(ODD_ASPECTS) + list(ODD_ASPECTS)))


def _usual_or_odd(
    aspect: str, odd: str | None, usual: st.SearchStrategy[bytes], unusual: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    return unusual if aspect == odd else usual


usual_names = st.from_regex(rb"\A[-!#$%&'*+.^_`|~0-9a-zA-Z]{1,12}\Z").filter(
    lambda name: name.lower() not in (b"host", b"content-length", b"transfer-encoding")
)
special_names = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"Upgrade"]
)
usual_values = st.sampled_from([b"sopy", b"0", b"close", b"keep-alive", b"", b" padded \t"]) | (
    st.from_regex(rb"\A[\x21-\x7e\x80-\xff]([ \t\x21-\x7e]{0,10}[\x21-\x7e])?\Z")
)
special_values = st.sampled_from(
    [
        b"5",
        b"05",
        b"5, 5",
        b"-1",
        b"chunked",
        b"Chunked",
        b"gzip, chunked",
        b"chunked, gzip",
        b"identity",
        b"Upgrade",
        b"h2c",
        b"100-continue",
    ]
)


def extra_headers(odd: str | None) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    names = special_names if odd == "headers" else usual_names
    values = st.binary(max_size=12) if odd == "values" else usual_values | special_values
    return st.lists(st.tuples(names, values), max_size=3)


def line_ends(count: int, odd: str | None) -> st.SearchStrategy[list[bytes]]:
    """CRLF after each of `count` lines, or other endings (LF, obs-fold) when they are odd."""
    if odd != "line ends":
        return st.just([b"\r\n"] * count)
    return st.lists(
        st.sampled_from([b"\r\n", b"\n", b"\r\n ", b"\r\n\t"]), min_size=count, max_size=count
    )


@st.composite
def bodies(draw: st.DrawFn, odd: str | None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Framing headers and the body they frame: Content-Length, chunked (with extensions and
    trailers), or none; when the body is odd, any bytes, perhaps framed wrongly."""
    text = st.from_regex(rb"\A[a-z0-9{}\":, ]{0,20}\Z")
    body = draw(st.binary(max_size=20) if odd == "body" else text)
    framings = ["length", "chunked", "none"] + (["raw"] if odd == "body" else [])
    framing = draw(st.sampled_from(framings))
    if framing == "length":
        return [(b"Content-Length", b"%d" % len(body))], body
    if framing == "chunked":
        sizes = draw(st.lists(st.integers(1, 8), max_size=3))
        extensions = [b"", b";a=b", b";x"] + ([b" "] if odd == "body" else [])
        pieces, start = [], 0
        for size in sizes:
            piece = body[start : start + size]
            start += size
            if piece:
                extension = draw(st.sampled_from(extensions))
                pieces.append(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece))
        trailer = draw(st.sampled_from([b"", b"X-Trailer: t\r\n"]))
        last = b"0\r\n" + trailer + b"\r\n"
        return [(b"Transfer-Encoding", b"chunked")], b"".join(pieces) + last
    if framing == "raw":
        return [], body
    return [], b""


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    odd = draw(odd_aspect())
    method = draw(
        _usual_or_odd(
            "method",
            odd,
            st.sampled_from([b"GET", b"POST", b"HEAD"]),
            st.sampled_from([b"get", b"CONNECT", b"BREW"]),
        )
    )
    target = draw(
        _usual_or_odd(
            "target",
            odd,
            st.sampled_from(
                [b"/", b"/v1/chat/completions?x=1", b"http://sopy/v1/models", b"/a%2Fb"]
            ),
            st.sampled_from([b"*", b"sopy:443"]) | st.binary(min_size=1, max_size=6),
        )
    )
    version = draw(
        _usual_or_odd(
            "version",
            odd,
            st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
            st.sampled_from([b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2"]),
        )
    )
    hosts = [[b"a", b"b"], []] if odd == "hosts" else [[b"sopy"]]
    framing, body = draw(bodies(odd))
    headers = [(b"Host", host) for host in draw(st.sampled_from(hosts))]
    headers = draw(st.permutations(headers + framing + draw(extra_headers(odd))))
    lines = [method + b" " + target + b" " + version]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"")
    return _lines(lines, draw(line_ends(len(lines), odd))) + body


@st.composite
def request_streams(draw: st.DrawFn) -> bytes:
    """One to three requests, pipelined, perhaps with stray bytes after them."""
    stream = b"".join(draw(st.lists(requests(), min_size=1, max_size=3)))
    return stream + draw(st.sampled_from([b""] * 6 + [b"\r\n", b"GARBAGE\r\n\r\n"]))


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bool]:
    """Interim answers, then a final one, and whether the backend then closes."""
    odd = draw(odd_aspect())
    interim = draw(st.lists(st.sampled_from([b"100", b"103"]), max_size=2))
    status = draw(
        _usual_or_odd(
            "method",  # the start line's first odd part, as a request's method is
            odd,
            st.sampled_from([b"200", b"204", b"304", b"404", b"500"]),
            st.sampled_from([b"101", b"999", b"20"]),
        )
    )
    version = draw(
        _usual_or_odd(
            "version",
            odd,
            st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
            st.sampled_from([b"HTTP/2.0", b"HTTP/1.2"]),
        )
    )
    reason = draw(st.sampled_from([b" OK", b"", b" Some Reason"]))
    parts = [b"HTTP/1.1 " + code + b" Interim\r\nLink: </a>\r\n\r\n" for code in interim]
    framing, body = draw(bodies(odd))
    headers = draw(st.permutations(framing + draw(extra_headers(odd))))
    lines = [version + b" " + status + reason]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"")
    parts.append(_lines(lines, draw(line_ends(len(lines), odd))) + body)
    return b"".join(parts), draw(st.booleans())


# The differential properties


@ORACLE_SETTINGS
@given(request_streams() | st.binary(max_size=200))
@example(b"GET / HTTP/1.1\r\nHost: sopy\r\n\r\nGET / HTTP/1.1\r\nHost: sopy\r\n\r\n")
def test_requests_are_parsed_as_h11_parses_them(data: bytes) -> None:
    assert_same(data, "request", sopy_requests(data), h11_requests)


@ORACLE_SETTINGS
@given(responses())
def test_responses_are_parsed_as_h11_parses_them(answer: tuple[bytes, bool]) -> None:
    data, closed = answer
    assert_same(data, "response", sopy_response(data, closed), partial(h11_response, closed=closed))


# Hand-picked streams: the same decision and message, no listed difference needed

AGREED_REQUESTS = {
    "pipelined": b"GET /a HTTP/1.1\r\nHost: s\r\n\r\nPOST /b HTTP/1.1\r\nHost: s\r\n"
    b"Content-Length: 2\r\n\r\nokGET /c HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n",
    "chunked with extension and trailer": b"POST / HTTP/1.1\r\nHost: s\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    "transfer-encoding in capitals": b"POST / HTTP/1.1\r\nHost: s\r\n"
    b"Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "http/1.0 without host": b"GET / HTTP/1.0\r\n\r\n",
    "transfer-encoding list": b"POST / HTTP/1.1\r\nHost: s\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding identity": b"POST / HTTP/1.1\r\nHost: s\r\n"
    b"Transfer-Encoding: identity\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: s\r\nX: a\x00b\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\nHost: s\r\nX : 1\r\n\r\n",
    "absolute form": b"GET http://sopy/v1/models HTTP/1.1\r\nHost: sopy\r\n\r\n",
    "whitespace around a value": b"GET / HTTP/1.1\r\nHost: s\r\nX: \t v \t\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "space in the target": b"GET /a b HTTP/1.1\r\nHost: s\r\n\r\n",
    "body cut short": b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 9\r\n\r\nabc",
}


@pytest.mark.parametrize("data", AGREED_REQUESTS.values(), ids=AGREED_REQUESTS.keys())
def test_hand_picked_requests_agree_with_h11(data: bytes) -> None:
    assert not explained(data, "request")
    assert sopy_requests(data) == h11_requests(data)


AGREED_RESPONSES = {
    "interim then final": (
        b"HTTP/1.1 103 Early\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        False,
    ),
    "ends at close": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", True),
    "cut short": (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", True),
    "no body on 304": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", False),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        False,
    ),
    "no reason": (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", False),
}


@pytest.mark.parametrize("answer", AGREED_RESPONSES.values(), ids=AGREED_RESPONSES.keys())
def test_hand_picked_responses_agree_with_h11(answer: tuple[bytes, bool]) -> None:
    data, closed = answer
    assert not explained(data, "response")
    assert sopy_response(data, closed) == h11_response(data, closed)


# Each listed difference, shown: the decisions really differ on such input.

SHOWN_DIFFERENCES = {
    "bare LF": b"GET / HTTP/1.1\nHost: s\n\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: s\r\nX: a\r\n b\r\n\r\n",
    "HTTP version": b"GET / HTTP/2.0\r\nHost: s\r\n\r\n",
    "method llhttp does not know": b"get / HTTP/1.1\r\nHost: s\r\n\r\n",
    "repeated Content-Length": b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 1\r\n"
    b"Content-Length: 1\r\n\r\na",
    "Content-Length with Transfer-Encoding": b"POST / HTTP/1.1\r\nHost: s\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding on HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    "empty lines before a request line": b"\r\nGET / HTTP/1.1\r\nHost: s\r\n\r\n",
    "control characters": b"GET / HTTP/1.1\r\nHost: s\r\nX: a\x01b\r\n\r\n",
    "request target in no form": b"GET ! HTTP/1.1\r\nHost: s\r\n\r\n",
    "chunked body on an upgrade request": b"POST / HTTP/1.1\r\nHost: s\r\nUpgrade: h2c\r\n"
    b"Connection: upgrade\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "whitespace after a chunk size": b"POST / HTTP/1.1\r\nHost: s\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n1 \r\nx\r\n0\r\n\r\n",
}
SHOWN_RESPONSE_DIFFERENCES = {
    "response Transfer-Encoding other than chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nraw\r\n0\r\n\r\n",
        False,
    ),
    "101 Switching Protocols": (b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", False),
    "response HTTP version": (b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
}


def test_every_listed_difference_is_shown_by_a_hand_picked_case() -> None:
    shown = set(SHOWN_DIFFERENCES) | set(SHOWN_RESPONSE_DIFFERENCES)
    assert shown == {difference.name for difference in DIFFERENCES}


@pytest.mark.parametrize("name", SHOWN_DIFFERENCES.keys())
def test_a_listed_request_difference_is_real(name: str) -> None:
    data = SHOWN_DIFFERENCES[name]
    assert name in explained(data, "request")
    assert sopy_requests(data) != h11_requests(data)


@pytest.mark.parametrize("name", SHOWN_RESPONSE_DIFFERENCES.keys())
def test_a_listed_response_difference_is_real(name: str) -> None:
    data, closed = SHOWN_RESPONSE_DIFFERENCES[name]
    assert name in explained(data, "response")
    assert sopy_response(data, closed) != h11_response(data, closed)
