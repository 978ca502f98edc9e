"""The public port's HTTP/1.1 handling (sopy.protocol.server), spoken by hand over raw sockets:
pipelining, malformed requests, chunked bodies, Expect: 100-continue, HEAD, early answers."""

import contextlib
import logging
from collections.abc import AsyncIterator

import attrs
import httpx
import orjson
import pytest
import trio
import trio_websocket

from sopy.settings import Settings
from tests.conftest import SopyUnderTest
from tests.gateway import (
    AUTH,
    USER_KEY,
    Gateway,
    chat,
    read_until_closed,
    receive_until,
    start_gateway,
)
from tests.polling import eventually

BODY = b'{"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, max_body_bytes=4096, send_timeout=0.3, header_timeout=30)


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})


def chat_head(length: int, *extra: str) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        "Host: sopy",
        f"Authorization: Bearer {USER_KEY}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_pipelined_requests_are_answered_in_order(gateway: Gateway) -> None:
    stream = await gateway.raw_connection()
    await stream.send_all(
        b"GET /hello/first HTTP/1.1\r\nHost: sopy\r\n\r\n"
        + chat_head(len(BODY))
        + BODY
        + b"GET /hello/last HTTP/1.1\r\nHost: sopy\r\nConnection: close\r\n\r\n"
    )
    answer = await read_until_closed(stream, within=5)
    assert answer.count(b"HTTP/1.1 200 ") == 3
    first = answer.index(b'{"message":"Hello first"}')
    chat = answer.index(b'"object":"chat.completion"')
    last = answer.index(b'{"message":"Hello last"}')
    assert first < chat < last
    assert answer.lower().count(b"\r\ndate: ") == 3


async def test_a_malformed_request_gets_an_openai_error_and_the_connection_closes(
    gateway: Gateway,
) -> None:
    stream = await gateway.raw_connection()
    await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")
    answer = await read_until_closed(stream, within=5)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in head.lower()
    error = orjson.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert "malformed HTTP request" in error["message"]


async def test_requests_before_a_malformed_one_are_still_answered(gateway: Gateway) -> None:
    stream = await gateway.raw_connection()
    await stream.send_all(b"GET /hello/first HTTP/1.1\r\nHost: sopy\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
    answer = await read_until_closed(stream, within=5)
    first, refused = answer.split(b"HTTP/1.1 400 ", 1)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert first.endswith(b'{"message":"Hello first"}')
    assert b"malformed HTTP request" in refused


async def test_a_broken_chunked_body_gets_a_400(gateway: Gateway) -> None:
    stream = await gateway.raw_connection()
    head = chat_head(0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    await stream.send_all(head + b"zz\r\n{}\r\n0\r\n\r\n")
    answer = await read_until_closed(stream, within=5)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"malformed" in answer


async def test_a_chunked_request_body_is_proxied(gateway: Gateway) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(BODY), 7):
            yield BODY[start : start + 7]

    async with httpx.AsyncClient(base_url=gateway.root_url) as http:
        response = await http.post(
            "/v1/chat/completions",
            content=pieces(),
            headers=AUTH,
        )
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert gateway.upstreams("openai")[0].requests[-1].body == BODY


async def test_expect_100_continue_is_answered_when_the_body_is_wanted(gateway: Gateway) -> None:
    stream = await gateway.raw_connection()
    await stream.send_all(chat_head(len(BODY), "Expect: 100-continue"))
    interim = await receive_until(stream, b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100 ")
    await stream.send_all(BODY)
    answer = await receive_until(stream, b'"object":"chat.completion"')
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_a_too_large_body_is_refused_without_100_continue_and_the_connection_closes(
    gateway: Gateway,
) -> None:
    stream = await gateway.raw_connection()
    await stream.send_all(chat_head(1_000_000, "Expect: 100-continue"))
    answer = await read_until_closed(stream, within=5)
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower()


async def test_head_gets_a_head_only_and_the_connection_stays_usable(gateway: Gateway) -> None:
    stream = await gateway.raw_connection()
    await stream.send_all(
        b"HEAD /hello/sopy HTTP/1.1\r\nHost: sopy\r\n\r\n"
        b"HEAD /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: sopy\r\nConnection: close\r\n\r\n"
    )
    answer = await read_until_closed(stream, within=5)
    head, refused, rest = answer.split(b"\r\n\r\n", 2)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 24\r\n" in head  # the length of {"message":"Hello sopy"}
    assert refused.startswith(b"HTTP/1.1 405 ")
    assert b"allow: POST" in refused
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert rest.endswith(b'{"message":"Hello World"}')


async def test_a_client_that_stops_reading_is_disconnected_after_the_send_timeout(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.protocol.server")
    stream = await gateway.raw_connection()
    # ~20 MB of answers: more than the socket buffers hold, so the server's writes block.
    await stream.send_all(b"GET /openapi.json HTTP/1.1\r\nHost: sopy\r\n\r\n" * 400)
    await trio.sleep(1.5)
    assert "left its response unread" in caplog.text
    with contextlib.suppress(trio.BrokenResourceError, ConnectionResetError):
        # The header timeout is 30 s here: only the send timeout can have ended the connection.
        await read_until_closed(stream, within=5)


async def test_a_websocket_client_that_stops_reading_is_disconnected_after_the_send_timeout(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The Responses API's WebSocket mode takes the connection over from the HTTP server; its
    writes stay under the same watchdog, and the relay ends (its log line written) without
    waiting on the backend it leaves blocked."""
    caplog.set_level(logging.INFO, logger="sopy.protocol.server")
    caplog.set_level(logging.INFO, logger="sopy.access")
    url = gateway.base_url.replace("http://", "ws://") + "/responses"
    # Each is answered with events that repeat the instructions: kilobytes per message.
    message = orjson.dumps(
        {"type": "response.create", "model": "gpt-4.1", "input": "hi", "instructions": "x" * 3000}
    ).decode()
    with pytest.raises(trio_websocket.ConnectionClosed), trio.fail_after(20):
        # No message queue: once the first answer is in, the client reads no more.
        async with trio_websocket.open_websocket_url(
            url,
            extra_headers=[(b"authorization", f"Bearer {USER_KEY}".encode())],
            message_queue_size=0,
            disconnect_timeout=1,
        ) as connection:
            while True:
                await connection.send_message(message)
    assert "left its response unread" in caplog.text
    await eventually(lambda: "status=101" in caplog.text, within=5)
    assert "unexpected error" not in caplog.text


@pytest.mark.parametrize(
    ("request_line_and_headers", "status", "says"),
    [
        (b"GET /hello/x HTTP/1.1\r\n", 400, "needs a Host header"),
        (b"GET /hello/x HTTP/1.1\r\nHost: sopy\r\nHost: other\r\n", 400, "2 Host headers"),
        (b"GET /hello/x HTTP/2.0\r\nHost: sopy\r\n", 505, "HTTP/2.0 is not supported"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\n"
            b"Transfer-Encoding: gzip, chunked\r\n",
            501,
            "only 'Transfer-Encoding: chunked'",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n",
            400,
            "HTTP/1.0 has no Transfer-Encoding",
        ),
    ],
    ids=["no-host", "two-hosts", "http-2", "te-list", "te-on-http-1.0"],
)
async def test_requests_breaking_http_11_get_an_openai_error_with_their_status(
    gateway: Gateway, request_line_and_headers: bytes, status: int, says: str
) -> None:
    stream = await gateway.raw_connection()
    await stream.send_all(request_line_and_headers + b"\r\n0\r\n\r\n")
    answer = await read_until_closed(stream, within=5)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in head.lower()
    error = orjson.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert says in error["message"]


async def test_an_absolute_form_target_is_served_like_its_path(gateway: Gateway) -> None:
    stream = await gateway.raw_connection()
    await stream.send_all(
        b"GET http://sopy.example:8000/hello/absolute HTTP/1.1\r\nHost: sopy.example\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = await read_until_closed(stream, within=5)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b'{"message":"Hello absolute"}')


async def test_an_encoded_slash_does_not_make_a_route(gateway: Gateway) -> None:
    async with gateway.client() as http:
        response = await http.post("/v1/chat%2Fcompletions", json={"model": "gpt-4.1"})
        named = await http.get("/hello/J%C3%BCrgen%2Fx")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    assert gateway.upstreams("openai")[0].requests == []
    assert named.json() == {"message": "Hello Jürgen/x"}


async def test_headers_the_client_lists_in_connection_are_not_forwarded(gateway: Gateway) -> None:
    headers = {"connection": "keep-alive, X-Hop-Secret", "x-hop-secret": "1", "x-kept": "2"}
    async with gateway.client() as http:
        response = await http.post("/v1/chat/completions", json=chat(), headers=headers)
    assert response.status_code == 200, response.text
    forwarded = gateway.upstreams("openai")[0].requests[-1].headers
    assert "x-hop-secret" not in forwarded
    assert forwarded["x-kept"] == "2"
