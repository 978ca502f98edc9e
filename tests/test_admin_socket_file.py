"""The admin socket file: private, replaces stale leftovers, refuses a live owner, cleaned up."""

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import attrs
import trio

from sopy.settings import Settings
from tests.conftest import SopyUnderTest, startup_error
from tests.serve_process import ServeProcess


async def test_socket_is_mode_0600(sopy: SopyUnderTest) -> None:
    mode = stat.S_IMODE(sopy.settings.admin_socket.stat().st_mode)
    assert mode == 0o600


async def test_socket_file_is_removed_on_shutdown(sopy: SopyUnderTest) -> None:
    await sopy.stop()
    assert not sopy.settings.admin_socket.exists()


async def test_stale_socket_from_a_killed_run_is_replaced(
    nursery: trio.Nursery, settings: Settings
) -> None:
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(settings.admin_socket))
    leftover.close()
    assert settings.admin_socket.exists()

    system = SopyUnderTest(nursery, settings)
    await system.start()
    async with await system.admin() as admin:
        assert await admin.ok("list_backends") == []
    await system.stop()


async def test_live_socket_is_refused_with_a_clear_message(sopy: SopyUnderTest) -> None:
    error = await startup_error(sopy.settings)
    assert "already serving" in str(error)
    async with await sopy.admin() as admin:
        assert await admin.ok("list_backends") == []


async def test_a_path_that_is_not_a_socket_is_refused(settings: Settings) -> None:
    settings.admin_socket.write_text("precious")
    error = await startup_error(settings)
    assert "not a socket" in str(error)
    assert settings.admin_socket.read_text() == "precious"


async def test_cli_reports_a_live_socket_and_exits_non_zero(workdir: Path) -> None:
    first = await ServeProcess.start(workdir)
    try:
        second = await trio.run_process(
            [sys.executable, "-m", "sopy", "serve", "--port", "0"],
            cwd=workdir,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
        assert second.returncode == 2
        assert b"already serving the admin socket" in second.stdout
        assert b"Traceback" not in second.stdout
    finally:
        assert await first.terminate() == 0
    assert not (workdir / "sopy-admin.sock").exists()


async def test_a_socket_directory_others_can_write_is_refused(
    settings: Settings, workdir: Path
) -> None:
    shared = workdir / "shared"
    shared.mkdir(mode=0o700)
    os.chmod(shared, 0o1777)

    error = await startup_error(attrs.evolve(settings, admin_socket=shared / "sopy-admin.sock"))

    assert "the admin socket's directory" in str(error)
    assert "writable by other users" in str(error)
