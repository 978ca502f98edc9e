"""An acknowledged admin write survives the process being killed right after the reply; a
database that is damaged, or not Sopy's, is refused at start in one line and left untouched."""

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import trio

from sopy.config.database import ConfigDatabase
from sopy.messages import AddBackend
from tests.admin_connection import AdminConnection
from tests.serve_process import ServeProcess

WRITES = 150
KILL_AFTER_ACK = 100


async def test_sigkill_right_after_acknowledged_writes_loses_nothing(workdir: Path) -> None:
    server = await ServeProcess.start(workdir)
    acknowledged: list[str] = []
    async with await AdminConnection.open(workdir / "sopy-admin.sock") as admin:
        await admin.send_raw(
            b"".join(
                orjson.dumps({"command": "add_backend", "provider": "p", "url": f"http://host{i}"})
                + b"\n"
                for i in range(WRITES)
            )
        )
        while len(acknowledged) < KILL_AFTER_ACK:
            reply = await admin.read_reply()
            assert reply["ok"], reply
            acknowledged.append(reply["result"]["urls"][-1])
        server.kill()
    await server.process.wait()

    restarted = await ServeProcess.start(workdir)
    try:
        async with await AdminConnection.open(workdir / "sopy-admin.sock") as admin:
            stored = (await admin.ok("get_backend", provider="p"))["urls"]
        assert set(acknowledged) <= set(stored)
        assert stored == [f"http://host{i}/v1" for i in range(len(stored))]
    finally:
        assert await restarted.terminate() == 0


def _damaged_database(workdir: Path) -> Path:
    """A real Sopy database whose table pages were overwritten, as a failing disk leaves it."""
    path = workdir / "sopy_admin.db"
    db = ConfigDatabase.open(path)
    for i in range(200):
        db.apply(AddBackend(provider="p", url=f"http://host{i}.example"), now=1.0)
    db.close()
    with open(path, "r+b") as file:
        file.seek(3 * 4096)
        file.write(b"\xff" * 2 * 4096)
    return path


async def _serve_fails(workdir: Path) -> list[str]:
    """Run `sopy serve` in `workdir`, expect it to refuse to start; return its output lines."""
    with trio.fail_after(30):  # a Sopy that starts after all would otherwise run on
        result = await trio.run_process(
            [sys.executable, "-m", "sopy", "serve", "--port", "0"],
            cwd=workdir,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    output = result.stdout.decode()
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    return output.strip().splitlines()


async def test_a_damaged_database_is_refused_in_one_line(workdir: Path) -> None:
    _damaged_database(workdir)
    lines = await _serve_fails(workdir)
    assert lines[-1].startswith("sopy: the config database "), lines
    assert "is damaged" in lines[-1] and "restore it from a backup" in lines[-1]
    assert len(lines) == 1, lines


async def test_a_file_that_is_not_a_database_is_refused_in_one_line(workdir: Path) -> None:
    (workdir / "sopy_admin.db").write_bytes(b"these are my notes, not a database\n" * 200)
    lines = await _serve_fails(workdir)
    assert lines == [lines[-1]] and "is not an SQLite database" in lines[-1], lines
    assert (workdir / "sopy_admin.db").read_bytes().startswith(b"these are my notes")


async def test_another_applications_database_is_refused_and_left_as_it_was(
    workdir: Path,
) -> None:
    path = workdir / "sopy_admin.db"
    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        other.execute("INSERT INTO notes (body) VALUES ('keep me')")
        other.commit()
    before = path.read_bytes()

    lines = await _serve_fails(workdir)

    assert "is not a Sopy database (it holds tables notes)" in lines[-1], lines
    assert len(lines) == 1, lines
    assert path.read_bytes() == before
    assert not (workdir / "sopy_admin.key").exists()
