"""The config store when SQLite refuses a write: another process holding the write lock, a full
disk, a read-only database. Reads keep being answered, the failed write is an error naming its
cause, and the same config actor goes on serving (no crash, no restart delay)."""

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from sopy.config.database import BUSY_TIMEOUT
from sopy.settings import Settings
from tests.conftest import SopyUnderTest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: mounts a small filesystem or sets chattr +i"
)


async def test_reads_are_answered_while_another_process_holds_the_write_lock(
    sopy: SopyUnderTest,
) -> None:
    async with await sopy.admin() as admin:
        await admin.ok("add_backend", provider="p", url="http://before/v1")
        with contextlib.closing(sqlite3.connect(sopy.settings.db_path)) as other:
            other.execute("BEGIN IMMEDIATE")
            with trio.fail_after(BUSY_TIMEOUT / 2):
                assert (await admin.ok("get_backend", provider="p"))["urls"] == ["http://before/v1"]
                assert await admin.ok("list_model_mappings") == []

            with trio.fail_after(BUSY_TIMEOUT * 3):
                error = await admin.error("add_backend", provider="p", url="http://locked/v1")
            assert error["code"] == "config_store_locked"
            assert "another process has held a write lock" in error["message"]
            other.execute("ROLLBACK")

        await admin.ok("add_backend", provider="p", url="http://after/v1")
        assert (await admin.ok("get_backend", provider="p"))["urls"] == [
            "http://before/v1",
            "http://after/v1",
        ]


@pytest.fixture
def small_disk(workdir: Path) -> Iterator[Path]:
    """A private 1 MiB tmpfs that tests can fill up."""
    mount_point = workdir / "small-disk"
    mount_point.mkdir(mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in `directory` until the filesystem has no space left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 4096)
    return filler


@needs_root
async def test_a_full_disk_refuses_the_write_by_name_and_the_store_keeps_serving(
    nursery: trio.Nursery, settings: Settings, small_disk: Path
) -> None:
    on_small_disk = attrs.evolve(settings, db_path=small_disk / "sopy_admin.db")
    sopy = SopyUnderTest(nursery, on_small_disk)
    running = await sopy.start()
    async with await sopy.admin() as admin:
        await admin.ok("add_backend", provider="p", url="http://before/v1")
        filler = fill(small_disk)

        error = await admin.error("add_backend", provider="p", url="http://refused/v1")

        assert error["code"] == "config_store_full"
        assert "is full; the change was not made" in error["message"]
        assert (await admin.ok("get_backend", provider="p"))["urls"] == ["http://before/v1"]
        filler.unlink()
        await admin.ok("add_backend", provider="p", url="http://after/v1")

    assert running.feed.latest is not None
    backends = running.feed.latest.snapshot.backends
    assert [backend.url for backend in backends] == ["http://before/v1", "http://after/v1"]
    await sopy.stop()


@needs_root
async def test_a_read_only_database_refuses_writes_by_name_and_keeps_serving_reads(
    nursery: trio.Nursery, settings: Settings
) -> None:
    sopy = SopyUnderTest(nursery, settings)
    await sopy.start()
    async with await sopy.admin() as admin:
        await admin.ok("add_backend", provider="p", url="http://before/v1")
    await sopy.stop()
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr to make the database file immutable")
    immutable = await trio.run_process(
        ["chattr", "+i", str(settings.db_path)], capture_stderr=True, check=False
    )
    if immutable.returncode != 0:
        pytest.skip(f"this filesystem has no immutable files: {immutable.stderr.decode()}")
    try:
        await sopy.start()
        async with await sopy.admin() as admin:
            error = await admin.error("add_backend", provider="p", url="http://refused/v1")
            assert error["code"] == "config_store_read_only"
            assert "is read-only" in error["message"]
            assert (await admin.ok("get_backend", provider="p"))["urls"] == ["http://before/v1"]
            assert await admin.ok("list_admin_auth") == []
        await sopy.stop()
    finally:
        await trio.run_process(["chattr", "-i", str(settings.db_path)], check=False)
