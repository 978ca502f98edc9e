"""The live config change stream: `/admin/events` on the admin socket, and `sopy events`."""

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio_websocket

from sopy.errors import innermost
from sopy.settings import Settings
from tests.admin_connection import open_events
from tests.conftest import SopyUnderTest

CREDENTIAL = "sk-provider-secret-do-not-leak-0001"
USER_KEY = "sk-user-secret-do-not-leak-0002"


async def next_message(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        message: dict[str, Any] = orjson.loads(await ws.get_message())
    return message


async def test_subscriber_gets_the_snapshot_then_every_change_in_order_without_secrets(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
    ws = await open_events(nursery, sopy.settings.admin_socket)

    snapshot = await next_message(ws)
    assert snapshot["type"] == "snapshot"
    assert snapshot["snapshot"]["admin_auth"] == [
        {"name": "openai", "credentials": "sk-...0001", "kind": "openai"}
    ]
    start = snapshot["version"]

    async with await sopy.admin() as admin, sopy.admin_rest() as rest:
        await admin.ok("add_backend", provider="openai", url="http://a/v1")
        await rest.post("/admin/backend", json={"provider": "openai", "url": "http://b/v1"})
        await admin.ok("add_user_api_key", api_key=USER_KEY, description="k")
        await rest.put("/admin/user_api_key/deactivate/1")
        await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="openai")
        await rest.delete("/admin/admin_auth/openai")

    events = [await next_message(ws) for _ in range(6)]
    assert [e["version"] for e in events] == list(range(start + 1, start + 7))
    assert [e["kind"] for e in events] == [
        "backend_added",
        "backend_added",
        "user_api_key_added",
        "user_api_key_deactivated",
        "model_mapping_added",
        "admin_auth_removed",
    ]
    assert events[1]["entity"] == {"provider": "openai", "url": "http://b/v1", "weight": 1}
    assert all(e["type"] == "event" and e["at"] > 0 for e in events)
    everything = orjson.dumps([snapshot, *events]).decode()
    assert CREDENTIAL not in everything
    assert USER_KEY not in everything


async def test_reconnecting_with_since_gets_exactly_the_missed_events(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    first = await open_events(nursery, sopy.settings.admin_socket)
    seen = (await next_message(first))["version"]
    await first.aclose()

    async with await sopy.admin() as admin:
        for i in range(3):
            await admin.ok("add_backend", provider="p", url=f"http://missed{i}/v1")

    resumed = await open_events(nursery, sopy.settings.admin_socket, since=seen)
    missed = [await next_message(resumed) for _ in range(3)]
    assert [m["type"] for m in missed] == ["event"] * 3
    assert [m["version"] for m in missed] == [seen + 1, seen + 2, seen + 3]
    assert [m["entity"]["url"] for m in missed] == [f"http://missed{i}/v1" for i in range(3)]

    async with await sopy.admin() as admin:
        await admin.ok("add_backend", provider="p", url="http://live/v1")
    live = await next_message(resumed)
    assert (live["version"], live["entity"]["url"]) == (seen + 4, "http://live/v1")


async def test_since_the_journal_cannot_answer_gets_a_fresh_snapshot(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    ws = await open_events(nursery, sopy.settings.admin_socket, since=10_000)
    message = await next_message(ws)
    assert message["type"] == "snapshot"


async def _rejection_status(socket_path: Path, resource: str) -> int:
    stream = await trio.open_unix_socket(str(socket_path))
    try:
        async with trio.open_nursery() as nursery:
            await trio_websocket.wrap_client_stream(nursery, stream, "sopy", resource)
    except BaseExceptionGroup as group:
        rejected = innermost(group)
        assert isinstance(rejected, trio_websocket.ConnectionRejected), group
        return rejected.status_code
    raise AssertionError(f"{resource} was accepted")


async def test_bad_since_and_unknown_websocket_paths_are_refused(sopy: SopyUnderTest) -> None:
    socket_path = sopy.settings.admin_socket
    assert await _rejection_status(socket_path, "/admin/events?since=yesterday") == 400
    assert await _rejection_status(socket_path, "/admin/nothing") == 404


async def test_a_stalled_subscriber_is_dropped_and_admin_writes_keep_their_latency(
    nursery: trio.Nursery, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sopy.admin.event_stream")
    sopy = SopyUnderTest(nursery, attrs.evolve(settings, event_buffer=4))
    await sopy.start()
    async with await sopy.admin() as admin:
        baseline = await _timed_writes(admin, "before", 50)
        stalled = await open_events(nursery, settings.admin_socket)
        during: list[float] = []
        # The subscriber reads nothing, so the socket's buffers fill, then its 4-change queue.
        while not _dropped(caplog) and len(during) < 20_000:
            during += await _timed_writes(admin, f"stalled{len(during)}-", 1)
        during += await _timed_writes(admin, "after", 50)
    assert _dropped(caplog), "the stalled subscriber was never dropped"

    # Writes never wait for subscribers: the stall must not slow them (generous bound for CI).
    assert _median(during) < max(5 * _median(baseline), 0.02)
    received = 0
    with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            await stalled.get_message()
            received += 1
    assert closed.value.reason is not None
    assert closed.value.reason.code == 4001
    assert "reconnect with ?since=" in (closed.value.reason.reason or "")
    assert received < len(during)
    await sopy.stop()


def _dropped(caplog: pytest.LogCaptureFixture) -> bool:
    return any("dropping an /admin/events subscriber" in r.getMessage() for r in caplog.records)


async def _timed_writes(admin: Any, label: str, count: int) -> list[float]:
    durations = []
    for i in range(count):
        began = trio.current_time()
        await admin.ok("add_backend", provider="p", url=f"http://{label}{i}.example")
        durations.append(trio.current_time() - began)
    return durations


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def test_sopy_events_prints_one_readable_line_per_change(sopy: SopyUnderTest) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "sopy", "events", "--admin-socket", str(sopy.settings.admin_socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(20):
            while b"snapshot" not in output:
                output += await process.stdout.receive_some(4096)
            async with await sopy.admin() as admin:
                await admin.ok("add_backend", provider="openai", url="http://h1/v1")
                await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="openai")
            while output.count(b"\n") < 3:
                output += await process.stdout.receive_some(4096)
    finally:
        process.kill()
        await process.wait()
    lines = output.decode().splitlines()
    assert "snapshot:" in lines[0]
    assert lines[1].startswith("v1 ")
    assert "backend_added provider=openai url=http://h1" in lines[1]
    assert "model_mapping_added model_name=gpt-4.1 provider=openai" in lines[2]
