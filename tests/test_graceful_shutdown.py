"""SIGTERM drains: no new connections, in-flight streams finish, exit 0, socket file removed."""

import signal
from pathlib import Path

import httpx
import pytest
import trio

from sopy.testing.mock_upstream import MockUpstream
from tests.admin_connection import AdminConnection
from tests.gateway import AUTH, USER_KEY, chat, open_raw_connection, receive_until
from tests.serve_process import ServeProcess


async def test_sigterm_lets_an_in_flight_stream_finish(
    workdir: Path, nursery: trio.Nursery
) -> None:
    upstream_url = await nursery.start(MockUpstream("slow").serve)
    server = await ServeProcess.start(workdir, "--drain-timeout", "10")
    async with await AdminConnection.open(workdir / "sopy-admin.sock") as admin:
        await admin.ok("add_backend", provider="openai", url=upstream_url)
        await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="openai")
        await admin.ok("add_user_api_key", api_key=USER_KEY)
    body = chat(stream=True, mock={"chunks": 10, "chunk_delay": 0.1})

    async with (
        httpx.AsyncClient(base_url=server.http_url, headers=AUTH) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        server.process.send_signal(signal.SIGTERM)
        await server.wait_for_output(b"shutting down")

        async with httpx.AsyncClient(base_url=server.http_url) as newcomer:
            with pytest.raises(httpx.ConnectError):
                await newcomer.get("/healthz")

        rest = [line async for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert len(rest) >= 10

    with trio.fail_after(15):
        assert await server.process.wait() == 0
    assert not (workdir / "sopy-admin.sock").exists()


async def test_sigterm_closes_idle_keep_alive_connections_at_once(workdir: Path) -> None:
    server = await ServeProcess.start(workdir, "--drain-timeout", "30", "--header-timeout", "60")
    idle = await open_raw_connection(server.http_url)
    await idle.send_all(b"GET / HTTP/1.1\r\nHost: sopy\r\n\r\n")
    answer = await receive_until(idle, b'{"message":"Hello World"}')
    assert b"connection: close" not in answer.lower()  # kept alive, now idle

    began = trio.current_time()
    server.process.send_signal(signal.SIGTERM)
    with trio.fail_after(5):
        assert await idle.receive_some(65536) == b""  # closed by the server, not timed out
        assert await server.process.wait() == 0
    assert trio.current_time() - began < 5
