"""sopy.protocol.wire without sockets: requests parsed the same however the bytes are split, only
`MalformedRequest` for bad input, and the response framing."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sopy.protocol.wire import (
    MalformedRequest,
    RequestParser,
    chunk,
    complete_response,
    streamed_response_head,
)

PIPELINED = (
    b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: sopy\r\nContent-Length: 5\r\n"
    b"Expect: 100-continue\r\n\r\nhello"
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    b"GET /hello/x HTTP/1.1\r\nHost: sopy\r\nConnection: close\r\n\r\n"
)


def parse(pieces: list[bytes]) -> list[tuple[bytes, bytes, bytes, bool, bool, bool]]:
    parser = RequestParser(max_head_bytes=4096)
    for piece in pieces:
        parser.feed(piece)
    return [
        (r.method, r.target, b"".join(r.body), r.complete, r.keep_alive, r.expects_continue)
        for r in parser.ready
    ]


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
    parser = RequestParser(max_head_bytes=4096)
    try:
        parser.feed(data)
    except MalformedRequest as exc:
        assert exc.status in (400, 431)


def test_a_head_beyond_the_limit_is_refused_with_431() -> None:
    parser = RequestParser(max_head_bytes=1024)
    parser.feed(b"GET / HTTP/1.1\r\nHost: sopy\r\n")
    with pytest.raises(MalformedRequest) as refused:
        for _ in range(100):
            parser.feed(b"X-Filler: " + b"f" * 50 + b"\r\n")
    assert refused.value.status == 431


def test_http_10_requests_do_not_keep_the_connection() -> None:
    assert parse([b"GET / HTTP/1.0\r\n\r\n"]) == [(b"GET", b"/", b"", True, False, False)]


def test_an_upgrade_request_keeps_its_body_and_ends_the_connection() -> None:
    parser = RequestParser(max_head_bytes=4096)
    parser.feed(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\nConnection: Upgrade\r\n"
        b"Upgrade: h2c\r\nContent-Length: 7\r\n\r\n{}"
    )
    request = parser.ready.popleft()  # taken by the server before the rest arrives
    parser.feed(b"{}{}!extra")
    assert (b"".join(request.body), request.complete, request.keep_alive) == (
        b"{}{}{}!",
        True,
        False,
    )


def test_a_head_over_the_limit_in_a_single_read_is_refused() -> None:
    with pytest.raises(MalformedRequest) as refused:
        RequestParser(max_head_bytes=1024).feed(
            b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n"
        )
    assert refused.value.status == 431


def test_trailers_are_not_taken_for_headers() -> None:
    parser = RequestParser(max_head_bytes=4096)
    parser.feed(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nAuthorization: Bearer sneaky\r\n\r\n"
    )
    assert parser.ready[0].header(b"authorization") is None


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
