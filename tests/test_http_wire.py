"""sopy.protocol.parser and sopy.protocol.wire without sockets: requests and responses parsed the
same however the bytes are split, only `ProtocolError` for bad input, the limits on heads in both
directions, Sopy's own request rules, and the response framing. The comparison with h11 is in
tests/test_http_h11_oracle.py."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sopy.protocol.errors import ProtocolError
from sopy.protocol.events import END_OF_MESSAGE, Data, Request, Response
from sopy.protocol.headers import connection_options
from sopy.protocol.parser import HeadLimits, RequestParser, ResponseParser
from sopy.protocol.wire import chunk, complete_response, streamed_response_head

LIMITS = HeadLimits(max_bytes=4096, max_fields=100)

PIPELINED = (
    b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: sopy\r\nContent-Length: 5\r\n"
    b"Expect: 100-continue\r\n\r\nhello"
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    b"GET /hello/x HTTP/1.1\r\nHost: sopy\r\nConnection: close\r\n\r\n"
)


def parse(pieces: list[bytes]) -> list[tuple[bytes, bytes, bytes, bool, bool, bool]]:
    """(method, target, body, complete, keep_alive, expects_continue) of each request."""
    parser = RequestParser(LIMITS)
    for piece in pieces:
        parser.feed(piece)
    requests: list[tuple[bytes, bytes, bytes, bool, bool, bool]] = []
    head: Request | None = None
    body = b""
    for event in [*parser.events, None]:
        if isinstance(event, Data):
            body += event.data
        elif head is not None:
            complete = event is END_OF_MESSAGE
            flags = (complete, head.keep_alive, head.expects_continue)
            requests.append((head.method, head.target, body, *flags))
            head, body = None, b""
        if isinstance(event, Request):
            head = event
    return requests


EXPECTED = [
    (b"POST", b"/v1/chat/completions?x=1", b"hello", True, True, True),
    (b"POST", b"/v1/chat/completions", b"abcde", True, True, False),
    (b"GET", b"/hello/x", b"", True, False, False),
]


def test_pipelined_requests_come_out_in_order() -> None:
    assert parse([PIPELINED]) == EXPECTED


@settings(max_examples=150)
@given(st.lists(st.integers(min_value=0, max_value=len(PIPELINED)), max_size=12))
def test_how_the_bytes_are_split_does_not_matter(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(PIPELINED)]
    assert parse([PIPELINED[a:b] for a, b in itertools.pairwise(bounds)]) == EXPECTED


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_parsed_or_refused_as_malformed(data: bytes) -> None:
    parser = RequestParser(LIMITS)
    try:
        parser.feed(data)
    except ProtocolError as exc:
        assert exc.status in (400, 431, 501, 505)


def test_a_head_beyond_the_limit_is_refused_with_431() -> None:
    parser = RequestParser(HeadLimits(max_bytes=1024))
    parser.feed(b"GET / HTTP/1.1\r\nHost: sopy\r\n")
    with pytest.raises(ProtocolError) as refused:
        for _ in range(100):
            parser.feed(b"X-Filler: " + b"f" * 50 + b"\r\n")
    assert refused.value.status == 431


def test_http_10_requests_do_not_keep_the_connection() -> None:
    assert parse([b"GET / HTTP/1.0\r\n\r\n"]) == [(b"GET", b"/", b"", True, False, False)]


def test_an_upgrade_request_keeps_its_body_and_ends_the_connection() -> None:
    parser = RequestParser(LIMITS)
    parser.feed(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\nConnection: Upgrade\r\n"
        b"Upgrade: h2c\r\nContent-Length: 7\r\n\r\n{}"
    )
    request = parser.events.popleft()  # taken by the server before the rest arrives
    parser.feed(b"{}{}!extra")
    assert isinstance(request, Request)
    assert not request.keep_alive
    assert list(parser.events) == [Data(b"{}"), Data(b"{}{}!"), END_OF_MESSAGE]


def test_a_head_over_the_limit_in_a_single_read_is_refused() -> None:
    with pytest.raises(ProtocolError) as refused:
        RequestParser(HeadLimits(max_bytes=1024)).feed(
            b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n"
        )
    assert refused.value.status == 431


def test_trailers_are_not_taken_for_headers() -> None:
    parser = RequestParser(LIMITS)
    parser.feed(
        b"POST / HTTP/1.1\r\nHost: sopy\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nAuthorization: Bearer sneaky\r\n\r\n"
    )
    request = parser.events[0]
    assert isinstance(request, Request)
    assert b"authorization" not in dict(request.headers)


def test_complete_and_chunked_framing() -> None:
    response = complete_response(200, [(b"content-type", b"text/plain")], b"hi")
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2")
    assert b"\r\ndate: " in head
    assert body == b"hi"
    assert complete_response(200, [], b"hi", include_body=False).endswith(b"\r\n\r\n")
    assert b"content-length" not in complete_response(204, [], b"")
    assert b"transfer-encoding" not in streamed_response_head(204, [], chunked=True)
    assert b"transfer-encoding: chunked" in streamed_response_head(200, [], chunked=True)
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert chunk(b"") == b""


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400, "needs a Host header"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "2 Host headers"),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0 is not supported"),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505, "HTTP/0.9 is not supported"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
            "only 'Transfer-Encoding: chunked'",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            501,
            "only 'Transfer-Encoding: chunked'",
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "HTTP/1.0 has no Transfer-Encoding",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 101 + b"\r\n",
            431,
            "more than 100 header fields",
        ),
    ],
    ids=[
        "no-host",
        "two-hosts",
        "http-2",
        "http-0.9",
        "te-list",
        "te-identity",
        "te-on-1.0",
        "fields",
    ],
)
def test_requests_breaking_http_11_rules_are_refused_with_their_status(
    request_bytes: bytes, status: int, says: str
) -> None:
    with pytest.raises(ProtocolError, match=says) as refused:
        RequestParser(LIMITS).feed(request_bytes)
    assert refused.value.status == status


def test_transfer_encoding_chunked_is_accepted_in_any_case() -> None:
    request = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    assert parse([request]) == [(b"POST", b"/", b"ok", True, True, False)]


def test_a_large_body_and_the_start_of_the_next_head_in_one_read_are_not_a_large_head() -> None:
    body = b"x" * 5000
    first = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + body
    second = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    # The read holds more than the head limit, most of it the first request's body.
    assert parse([first + second[:20], second[20:]]) == [
        (b"POST", b"/", body, True, True, False),
        (b"GET", b"/next", b"", True, True, False),
    ]


def test_header_values_lose_surrounding_whitespace_and_names_their_case() -> None:
    parser = RequestParser(LIMITS)
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Thing: \t value \t\r\n\r\n")
    request = parser.events[0]
    assert isinstance(request, Request)
    assert request.headers == ((b"host", b"a"), (b"x-thing", b"value"))


def test_connection_options_are_the_names_the_connection_headers_list() -> None:
    headers = [(b"connection", b"close, X-Secret ,"), (b"connection", b"keep-alive")]
    assert connection_options(headers) == {b"close", b"x-secret", b"keep-alive"}
    assert connection_options([(b"host", b"a")]) == frozenset()


def response_events(*pieces: bytes, eof: bool = False) -> list[object]:
    parser = ResponseParser(LIMITS)
    for piece in pieces:
        parser.feed(piece)
    if eof:
        parser.feed_eof()
    return list(parser.events)


def test_responses_come_out_as_events_with_interim_answers_first() -> None:
    events = response_events(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad:  v \r\n\r\nok"
    )
    assert events == [
        Response(103, ((b"link", b"</a>"),), b"1.1", True),
        END_OF_MESSAGE,
        Response(200, ((b"content-length", b"2"), (b"x-pad", b"v")), b"1.1", True),
        Data(b"ok"),
        END_OF_MESSAGE,
    ]


def test_a_response_delimited_by_closing_ends_at_eof_and_a_cut_one_is_an_error() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    assert response_events(head, b"all", eof=True)[-2:] == [Data(b"all"), END_OF_MESSAGE]
    with pytest.raises(ProtocolError, match="closed in the middle") as cut:
        response_events(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsome", eof=True)
    assert cut.value.status == 502


@pytest.mark.parametrize(
    ("head", "says"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", "larger than 4096 bytes"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 + b"\r\n", "more than 100 header fields"),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X-Endless: %b\r\n" % (b"e" * 60) * 400,
            "larger than 4096 bytes",
        ),
    ],
    ids=["size", "fields", "unfinished"],
)
def test_a_response_head_beyond_the_limits_is_a_502_protocol_error(head: bytes, says: str) -> None:
    parser = ResponseParser(LIMITS)
    with pytest.raises(ProtocolError, match=says) as refused:
        for start in range(0, len(head), 1000):
            parser.feed(head[start : start + 1000])
    assert refused.value.status == 502
