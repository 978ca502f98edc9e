"""Many admin clients at once: the admin socket's connection queue holds a burst, and the CLI
waits out a full queue for a bounded time, then says what is wrong."""

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from sopy.cli.admin_client import AdminUnreachable, connect_admin_socket, send_admin_command
from tests.conftest import SopyUnderTest


@contextlib.contextmanager
def listener_with_a_full_queue(path: Path) -> Iterator[None]:
    """A Unix socket at `path` that never accepts, its queue of waiting connections full."""
    with contextlib.ExitStack() as held:
        listener = held.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        listener.bind(str(path))
        listener.listen(0)
        while True:
            waiting = held.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            waiting.setblocking(False)
            try:
                waiting.connect(str(path))
            except BlockingIOError:
                break
        yield


async def test_a_thousand_concurrent_admin_calls_all_get_their_reply(sopy: SopyUnderTest) -> None:
    path = sopy.settings.admin_socket
    every_call_at_once = trio.CapacityLimiter(1000)
    replies: list[object] = []

    async def call() -> None:
        reply = await trio.to_thread.run_sync(
            send_admin_command, path, {"command": "list_backends"}, limiter=every_call_at_once
        )
        replies.append(reply)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(call)

    assert replies == [{"ok": True, "result": []}] * 1000


def test_a_full_queue_is_retried_for_a_bounded_time_then_reported(workdir: Path) -> None:
    path = workdir / "busy.sock"
    with listener_with_a_full_queue(path):
        began = time.monotonic()
        with pytest.raises(AdminUnreachable, match=r"stayed busy for 0\.5 s") as raised:
            connect_admin_socket(path, busy_for=0.5)
        waited = time.monotonic() - began

    assert 0.5 - 0.25 <= waited < 5, "retried for about the busy time, no longer"
    assert "run fewer `sopy admin` calls at once" in str(raised.value)


async def test_sopy_events_reports_a_full_queue_without_a_traceback(workdir: Path) -> None:
    path = workdir / "busy.sock"
    with listener_with_a_full_queue(path), trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "sopy", "events", "--admin-socket", str(path)],
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    assert result.returncode == 2, result.stdout
    assert b"stayed busy" in result.stdout
    assert b"Traceback" not in result.stdout
