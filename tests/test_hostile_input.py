"""Hostile clients and hostile admin values: refused early, bounded in time, never a crash."""

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from sopy.settings import Settings
from tests.admin_connection import AdminConnection
from tests.conftest import SopyUnderTest, startup_error
from tests.gateway import (
    USER_KEY,
    Gateway,
    access_log_line,
    chat,
    read_until_closed,
    start_gateway,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(
        settings,
        max_body_bytes=4096,
        max_body_bytes_in_flight=8192,
        header_timeout=0.5,
        body_timeout=0.5,
        max_concurrent_requests=3,
    )


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as client:
        yield client


async def test_a_body_over_the_limit_is_refused_with_413(http: httpx.AsyncClient) -> None:
    too_big = await http.post("/v1/chat/completions", content=b"x" * 4097)
    assert too_big.status_code == 413
    assert "4096 bytes" in too_big.json()["error"]["message"]
    just_fits = chat(padding="y" * 3000)
    assert (await http.post("/v1/chat/completions", json=just_fits)).status_code == 200


async def test_a_huge_announced_body_is_refused_before_it_is_sent(gateway: Gateway) -> None:
    stream = await gateway.raw_connection()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\n"
        f"Authorization: Bearer {USER_KEY}\r\nContent-Length: 999999999\r\n\r\n"
    )
    await stream.send_all(head.encode())
    answer = await read_until_closed(stream, within=3)
    assert answer.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"model": ' * 50_000, b'{"model": "\xc3\x28"}', b"\x00\x01\x02"],
)
async def test_deeply_nested_or_broken_json_is_a_400(http: httpx.AsyncClient, body: bytes) -> None:
    response = await http.post("/v1/chat/completions", content=body[:4000])
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_a_slow_loris_is_cut_off_after_the_header_timeout(gateway: Gateway) -> None:
    stream = await gateway.raw_connection()
    began = trio.current_time()

    async def trickle_headers() -> None:
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\n")
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await trio.sleep(0.1)
                await stream.send_all(b"X-Slow: 1\r\n")

    async with trio.open_nursery() as trickling:
        trickling.start_soon(trickle_headers)
        with contextlib.suppress(trio.BrokenResourceError, ConnectionResetError):
            await read_until_closed(stream, within=3)
        trickling.cancel_scope.cancel()
    assert trio.current_time() - began < 2.0


async def test_a_body_that_does_not_arrive_in_time_gets_408(gateway: Gateway) -> None:
    stream = await gateway.raw_connection()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\n"
        f"Authorization: Bearer {USER_KEY}\r\nContent-Length: 100\r\n\r\n"
    )
    await stream.send_all(head.encode() + b'{"model": ')
    answer = await read_until_closed(stream, within=3)
    assert answer.startswith(b"HTTP/1.1 408")


async def test_requests_over_the_concurrency_limit_get_503(http: httpx.AsyncClient) -> None:
    slow = chat(mock={"headers_delay": 0.5})
    statuses: list[int] = []

    async def post(body: dict[str, Any]) -> None:
        statuses.append((await http.post("/v1/chat/completions", json=body)).status_code)

    async with trio.open_nursery() as burst:
        for _ in range(3):
            burst.start_soon(post, slow)
        await trio.sleep(0.2)
        busy = await http.post("/v1/chat/completions", json=chat())
    assert busy.status_code == 503
    assert busy.json()["error"]["code"] == "server_busy"
    assert statuses == [200, 200, 200]
    # A handler lets go of its slot just after its response is out: let them all finish.
    await trio.testing.wait_all_tasks_blocked()
    assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_bodies_beyond_the_bytes_in_flight_get_503_with_retry_after(
    http: httpx.AsyncClient,
) -> None:
    # Given two slow requests whose bodies hold 6000 of the 8192 bytes in flight
    held = chat(padding="y" * 2900, mock={"headers_delay": 0.5})
    statuses: list[int] = []

    async def post(body: dict[str, Any]) -> None:
        statuses.append((await http.post("/v1/chat/completions", json=body)).status_code)

    async with trio.open_nursery() as slow:
        for _ in range(2):
            slow.start_soon(post, held)
        await trio.sleep(0.2)
        # When a third body of 3000 bytes arrives
        refused = await http.post("/v1/chat/completions", json=chat(padding="z" * 2900))
    # Then it is refused for now, with when to retry, and the held ones are served
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_busy"
    assert refused.headers["retry-after"] == "1"
    assert statuses == [200, 200]
    # and once they are answered their bytes are free again: two bodies of 4000 fit at once
    await trio.testing.wait_all_tasks_blocked()
    async with trio.open_nursery() as again:
        for _ in range(2):
            again.start_soon(post, chat(padding="w" * 3900, mock={"headers_delay": 0.2}))
    assert statuses == [200, 200, 200, 200]


async def test_a_chunked_body_is_counted_as_it_arrives(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    # Given two slow requests holding 6000 of the 8192 bytes in flight
    served: list[int] = []

    async def hold() -> None:
        body = chat(padding="y" * 2900, mock={"headers_delay": 0.5})
        served.append((await http.post("/v1/chat/completions", json=body)).status_code)

    async with trio.open_nursery() as slow:
        slow.start_soon(hold)
        slow.start_soon(hold)
        await trio.sleep(0.2)
        # When a chunked body (no Content-Length) brings 2 x 1500 bytes
        stream = await gateway.raw_connection()
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: sopy\r\n"
            f"Authorization: Bearer {USER_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"5dc\r\n" + b" " * 1500 + b"\r\n"
        await stream.send_all(head.encode() + piece * 2 + b"0\r\n\r\n")
        answer = await read_until_closed(stream, within=3)
    # Then it is refused once its bytes pass what is left
    assert answer.startswith(b"HTTP/1.1 503")
    assert b"retry-after: 1\r\n" in answer
    assert served == [200, 200]


async def test_client_values_cannot_forge_or_flood_the_access_log(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    forged = "x\nrequest 0 key=1 model=gpt-4.1 status=200\x1b[2J\x9b31m\u2028 " + "m" * 3000
    response = await http.post("/v1/chat/completions", json=chat(forged))
    assert response.status_code == 404
    line = await access_log_line(caplog, response.headers["x-request-id"])
    assert line.isprintable()
    assert "model='x\\nrequest 0 key=1 model=gpt-4.1 status=200\\x1b[2J\\x9b31m\\u2028 m" in line
    assert "...(+" in line
    assert len(line) < 600


async def test_oversized_headers_are_refused_and_the_server_carries_on(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    stream = await gateway.raw_connection()
    await stream.send_all(
        b"GET / HTTP/1.1\r\nHost: sopy\r\nX-Huge: " + b"h" * 100_000 + b"\r\n\r\n"
    )
    with contextlib.suppress(trio.BrokenResourceError, ConnectionResetError):
        answer = await read_until_closed(stream, within=3)
        assert not answer.startswith(b"HTTP/1.1 200")
    assert (await http.get("/")).status_code == 200


@pytest.mark.parametrize(
    ("command", "fields", "field"),
    [
        ("add_admin_auth", {"name": "openai", "credentials": "sk-abc\r\nX-Evil: 1"}, "credentials"),
        ("add_admin_auth", {"name": "open ai", "credentials": "sk-abcdef"}, "name"),
        ("add_admin_auth", {"name": "openai", "credentials": "x" * 5000}, "credentials"),
        ("add_backend", {"provider": "p", "url": "http://h/\r\nHost: evil"}, "url"),
        ("add_backend", {"provider": "p", "url": "javascript:alert(1)"}, "url"),
        ("add_backend", {"provider": "p", "url": "http://user:pw@h"}, "url"),
        ("add_backend", {"provider": "p", "url": "http://h", "weight": 0}, "weight"),
        ("add_model_mapping", {"model_name": "m\n", "provider": "p"}, "model_name"),
        (
            "add_model_mapping",
            {"model_name": "m", "provider": "p", "fallbacks": ["p"]},
            "fallbacks",
        ),
        ("add_user_api_key", {"api_key": "short"}, "api_key"),
        ("add_user_api_key", {"api_key": "sk-has space-inside"}, "api_key"),
        ("add_user_api_key", {"description": "line\nbreak"}, "description"),
        ("get_user_api_key", {"id": -1}, "id"),
        ("rotate_secret_key", {"new_key": "not-a-key"}, "new_key"),
    ],
)
async def test_hostile_admin_values_are_refused_naming_the_field(
    admin: AdminConnection, command: str, fields: dict[str, Any], field: str
) -> None:
    error = await admin.error(command, **fields)
    assert error["code"] == "invalid_field"
    assert error["field"] == field


async def test_sql_metacharacters_are_only_data(admin: AdminConnection) -> None:
    name = "x'); DROP TABLE backends; --"
    await admin.ok("add_model_mapping", model_name="m", provider="p")
    error = await admin.error("get_model_mapping", model_name=name)
    assert error["code"] == "invalid_field"
    added = await admin.ok("add_user_api_key", description=name)
    assert (await admin.ok("get_user_api_key", id=added["id"]))["description"] == name
    assert (await admin.ok("get_model_mapping", model_name="m"))["provider"] == "p"


@pytest.mark.parametrize("problem", ["owned by another user", "writable by others"])
async def test_the_admin_socket_directory_must_be_private(
    settings: Settings, workdir: Path, problem: str
) -> None:
    shared = workdir / "shared"
    shared.mkdir()
    if problem == "owned by another user":
        os.chown(shared, os.geteuid() + 4242, -1)
    else:
        os.chmod(shared, 0o777)
    error = await startup_error(attrs.evolve(settings, admin_socket=shared / "s.sock"))
    assert ("belongs to another user" if problem.startswith("owned") else "writable by other") in (
        str(error)
    )
