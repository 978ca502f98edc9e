"""The Responses API's WebSocket mode through the gateway (Codex's transport): relayed to a
backend's own WebSocket mode with the provider's credential, and refused with a 426 before
upgrading once the provider is known not to serve it, so clients fall back to HTTP."""

import logging
from functools import partial

import attrs
import openai
import orjson
import pytest
import trio
import trio_websocket

from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream
from tests.conftest import SopyUnderTest
from tests.gateway import (
    USER_KEY,
    Gateway,
    access_log_line,
    make_anthropic,
    receive_until,
    request_id_in,
    start_gateway_with,
)

MODEL = "gpt-4.1"
AUTH = [(b"authorization", f"Bearer {USER_KEY}".encode())]


async def _gateway(sopy: SopyUnderTest, nursery: trio.Nursery, *, websocket: bool) -> Gateway:
    upstreams = {"openai": [MockUpstream("openai-0", websocket=websocket)]}
    return await start_gateway_with(sopy, nursery, upstreams, {MODEL: "openai"})


def _url(gateway: Gateway) -> str:
    return gateway.base_url.replace("http://", "ws://") + "/responses"


async def _events(
    connection: trio_websocket.WebSocketConnection, request: dict[str, object]
) -> list[dict[str, object]]:
    await connection.send_message(orjson.dumps({"type": "response.create", **request}).decode())
    events = []
    with trio.fail_after(10):
        while not events or events[-1]["type"] not in ("response.completed", "error"):
            events.append(orjson.loads(await connection.get_message()))
    return events


async def test_websocket_mode_is_relayed_to_the_backend_with_the_provider_credential(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    gateway = await _gateway(sopy, nursery, websocket=True)
    (upstream,) = gateway.upstreams("openai")

    async with trio_websocket.open_websocket_url(_url(gateway), extra_headers=AUTH) as connection:
        first = await _events(connection, {"model": MODEL, "input": "tell me"})
        first_id = first[-1]["response"]["id"]  # type: ignore[index]
        second = await _events(
            connection, {"model": MODEL, "input": "more", "previous_response_id": first_id}
        )

    assert first[0]["type"] == "response.created"
    assert second[-1]["type"] == "response.completed"
    handshake = upstream.requests[-1]
    assert (handshake.method, handshake.path) == ("GET", "/v1/responses")
    assert handshake.headers["authorization"] == f"Bearer {gateway.providers['openai'].credential}"
    assert len(upstream.websocket_messages) == 2
    # The response made over the websocket is followed up over HTTP on its backend.
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=USER_KEY, max_retries=0
    ) as client:
        assert (await client.responses.retrieve(first_id)).id == first_id


async def test_a_provider_without_the_mode_is_answered_426_before_upgrading(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    gateway = await _gateway(sopy, nursery, websocket=False)

    # The first attempt learns that the backend refuses the mode: one error event, then close.
    async with trio_websocket.open_websocket_url(_url(gateway), extra_headers=AUTH) as connection:
        (refused,) = await _events(connection, {"model": MODEL, "input": "hi"})
    assert refused["status"] == 426
    assert refused["error"]["code"] == "websocket_not_supported"  # type: ignore[index]

    # Every later upgrade is refused at once, in HTTP, before any websocket exists.
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(_url(gateway), extra_headers=AUTH):
            pass
    assert rejected.value.status_code == 426
    assert rejected.value.body is not None
    error = orjson.loads(rejected.value.body)["error"]
    assert error["code"] == "websocket_not_supported"
    assert "POST /v1/responses" in error["message"]


async def test_a_provider_whose_kind_has_no_websocket_mode_is_answered_426_at_once(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    gateway = await _gateway(sopy, nursery, websocket=True)
    await make_anthropic(gateway, "openai")

    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(_url(gateway), extra_headers=AUTH):
            pass

    assert rejected.value.status_code == 426
    assert rejected.value.body is not None
    assert orjson.loads(rejected.value.body)["error"]["code"] == "websocket_not_supported"
    assert gateway.providers["openai"].upstreams[0].requests == []


async def test_an_upgrade_without_a_key_gets_401(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    gateway = await _gateway(sopy, nursery, websocket=True)

    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(_url(gateway)):
            pass

    assert rejected.value.status_code == 401


async def test_a_previous_response_id_that_is_not_a_string_is_refused_as_over_http(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    gateway = await _gateway(sopy, nursery, websocket=True)
    (upstream,) = gateway.upstreams("openai")

    async with trio_websocket.open_websocket_url(_url(gateway), extra_headers=AUTH) as connection:
        (refused,) = await _events(
            connection, {"model": MODEL, "input": "hi", "previous_response_id": 42}
        )

    assert refused["status"] == 400
    assert refused["error"] == {
        "message": "'previous_response_id' must be a non-empty string.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "invalid_request",
    }
    assert upstream.websocket_messages == []


async def _answer_every_request_with_503(stream: trio.SocketStream) -> None:
    async with stream:
        await receive_until(stream, b"\r\n\r\n")
        await stream.send_all(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )


async def test_a_backend_that_cannot_take_an_upgrade_now_is_tried_again_later(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    """A 503 to the upgrade is a passing state of the backend, not a refusal of the mode: the
    next upgrade is accepted and the backend asked again, not answered 426 for good."""
    gateway = await _gateway(sopy, nursery, websocket=True)
    (listener,) = await nursery.start(
        partial(trio.serve_tcp, _answer_every_request_with_503, 0, host="127.0.0.1")
    )
    port = listener.socket.getsockname()[1]
    await gateway.admin_ok("add_backend", provider="busy", url=f"http://127.0.0.1:{port}/v1")
    await gateway.admin_ok("add_admin_auth", name="busy", credentials="sk-busy-credential")
    await gateway.admin_ok("add_model_mapping", model_name="busy-model", provider="busy")

    for _ in range(2):
        async with trio_websocket.open_websocket_url(
            _url(gateway), extra_headers=AUTH
        ) as connection:
            (failed,) = await _events(connection, {"model": "busy-model", "input": "hi"})
        assert failed["status"] == 502
        assert failed["error"]["code"] == "upstream_error"  # type: ignore[index]


async def test_a_backend_that_cannot_be_reached_is_named_with_its_cause_in_the_log_only(
    sopy: SopyUnderTest, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    gateway = await _gateway(sopy, nursery, websocket=True)
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead_url = f"http://127.0.0.1:{dead_port}/v1"
    await gateway.admin_ok("add_backend", provider="down", url=dead_url)
    await gateway.admin_ok("add_admin_auth", name="down", credentials="sk-down-credential")
    await gateway.admin_ok("add_model_mapping", model_name="down-model", provider="down")

    async with trio_websocket.open_websocket_url(_url(gateway), extra_headers=AUTH) as connection:
        (failed,) = await _events(connection, {"model": "down-model", "input": "hi"})

    message = failed["error"]["message"]  # type: ignore[index]
    assert failed["status"] == 502
    assert str(dead_port) not in message
    line = await access_log_line(caplog, request_id_in(message))
    assert f"backend={dead_url}" in line
    assert f"error='backend {dead_url} could not be reached over WebSocket: " in line


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, max_body_bytes=4096)


async def test_a_client_message_over_the_body_limit_closes_the_connection(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    gateway = await _gateway(sopy, nursery, websocket=True)
    (upstream,) = gateway.upstreams("openai")

    async with trio_websocket.open_websocket_url(_url(gateway), extra_headers=AUTH) as connection:
        await _events(connection, {"model": MODEL, "input": "hi"})
        await connection.send_message(
            orjson.dumps({"type": "response.create", "model": MODEL, "input": "x" * 5000}).decode()
        )
        with pytest.raises(trio_websocket.ConnectionClosed) as closed, trio.fail_after(10):
            await connection.get_message()

    assert closed.value.reason.code == 1009
    assert len(upstream.websocket_messages) == 1
