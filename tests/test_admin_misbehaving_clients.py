"""A client that misbehaves or vanishes costs only its own admin connection, on every protocol
of the admin socket: other connections, event subscribers and the socket file stay."""

import base64
import logging
import os
import select
import socket
import struct
from pathlib import Path

import orjson
import pytest
import trio

from tests.admin_connection import open_events
from tests.conftest import SopyUnderTest
from tests.test_admin_events import next_message

_WEBSOCKET_KEY = base64.b64encode(os.urandom(16)).decode()


def _upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: sopy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {_WEBSOCKET_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


REQUESTS = {
    "json_lines": orjson.dumps({"command": "list_backends"}) + b"\n",
    "rest": b"GET /admin/backend HTTP/1.1\r\nHost: sopy\r\n\r\n",
    "websocket": _upgrade("/admin/events"),
    "websocket_unknown_path": _upgrade("/admin/nowhere"),
}


def send_then_vanish(path: Path, request: bytes, *, reset: bool) -> None:
    """Send `request` and close without reading the answer. With `reset`, wait until the answer
    has arrived first: closing a Unix socket with unread bytes (and SO_LINGER 0) resets it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.sendall(request)
        if reset:
            readable, _, _ = select.select([client], [], [], 5)
            assert readable, "the admin socket never answered"


@pytest.mark.parametrize("reset", [True, False], ids=["reset_after_reply", "closed_at_once"])
@pytest.mark.parametrize("protocol", list(REQUESTS))
async def test_a_client_that_vanishes_costs_only_its_own_connection(
    sopy: SopyUnderTest,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    reset: bool,
) -> None:
    # given: an event subscriber and another admin connection
    caplog.set_level(logging.INFO, logger="sopy")
    path = sopy.settings.admin_socket
    socket_file = path.lstat().st_ino
    subscriber = await open_events(nursery, path)
    assert (await next_message(subscriber))["type"] == "snapshot"
    async with await sopy.admin() as bystander:
        # when: clients send a request and vanish without reading the answer, again and again
        for _ in range(5):
            await trio.to_thread.run_sync(
                lambda: send_then_vanish(path, REQUESTS[protocol], reset=reset)
            )
            assert path.lstat().st_ino == socket_file, "the admin socket file was replaced"

        # then: the bystander and the subscriber are still connected and served
        await bystander.ok("add_backend", provider="openai", url="http://a/v1")
    change = await next_message(subscriber)
    assert (change["kind"], change["entity"]["url"]) == ("backend_added", "http://a/v1")
    assert path.lstat().st_ino == socket_file
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    admin_lines = [r for r in caplog.records if r.name == "sopy.actors.admin_socket"]
    assert all(r.levelno == logging.INFO for r in admin_lines), caplog.text
    assert len(admin_lines) <= 1 + 5, "one line at most per vanished client"
