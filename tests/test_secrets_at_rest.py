"""Provider credentials at rest: sealed by default with a key file beside the database (plain
only with --no-secret-key), every file private to its user, rotated in one confirmed
transaction, and a copy of the database files alone gives nothing usable away."""

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from sopy.config.database import ConfigDatabase
from sopy.config.secret_box import SecretBox, box_from_key_file, new_secret_key
from sopy.errors import StartupError
from sopy.messages import AddAdminAuth, RotateSecretKey
from sopy.runtime.private_files import file_beside
from sopy.settings import Settings
from tests.conftest import SopyUnderTest, startup_error
from tests.polling import eventually
from tests.serve_process import ServeProcess

CREDENTIAL = "sk-live-provider-credential-0123456789"
OTHER = "sk-second-provider-credential-987654321"


def database_bytes(settings: Settings) -> bytes:
    files = [settings.db_path, Path(f"{settings.db_path}-wal")]
    return b"".join(path.read_bytes() for path in files if path.exists())


async def start(nursery: trio.Nursery, settings: Settings) -> SopyUnderTest:
    sopy = SopyUnderTest(nursery, settings)
    await sopy.start()
    return sopy


async def test_with_a_key_the_database_files_hold_no_credential(
    nursery: trio.Nursery, settings: Settings
) -> None:
    keyed = attrs.evolve(settings, secret_key=new_secret_key())
    sopy = await start(nursery, keyed)
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
        await admin.ok("add_admin_auth", name="openai", credentials=OTHER, replace=True)
        revealed = await admin.ok("get_admin_auth", name="openai", reveal=True)
    assert revealed["credentials"] == OTHER
    await sopy.stop()

    stored = database_bytes(keyed)
    assert CREDENTIAL.encode() not in stored
    assert OTHER.encode() not in stored
    assert b"fernet:" in stored


async def test_restarting_needs_the_same_key(nursery: trio.Nursery, settings: Settings) -> None:
    key = new_secret_key()
    sopy = await start(nursery, attrs.evolve(settings, secret_key=key))
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
    await sopy.stop()

    box = SecretBox(new_secret_key())
    with pytest.raises(StartupError, match="different secret key"):
        ConfigDatabase.open(settings.db_path, box)
    with pytest.raises(StartupError, match="no secret key is set"):
        ConfigDatabase.open(settings.db_path)

    again = await start(nursery, attrs.evolve(settings, secret_key=key))
    async with await again.admin() as admin:
        assert (await admin.ok("get_admin_auth", name="openai", reveal=True))[
            "credentials"
        ] == CREDENTIAL
    await again.stop()


async def test_credentials_stored_before_a_key_was_set_are_sealed_on_start(
    nursery: trio.Nursery, settings: Settings
) -> None:
    plain = await start(nursery, attrs.evolve(settings, no_secret_key=True))
    async with await plain.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
    await plain.stop()
    assert CREDENTIAL.encode() in database_bytes(settings)

    keyed = await start(nursery, attrs.evolve(settings, secret_key=new_secret_key()))
    await keyed.stop()
    assert CREDENTIAL.encode() not in database_bytes(settings)


async def test_rotation_without_a_key_file_shows_the_new_key_once(
    nursery: trio.Nursery, settings: Settings
) -> None:
    old_key = new_secret_key()
    sopy = await start(nursery, attrs.evolve(settings, secret_key=old_key))
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
        await admin.ok("add_admin_auth", name="azure", credentials=OTHER)
        rotation = await admin.ok("rotate_secret_key")
        assert rotation["credentials"] == 2
        assert rotation["key_file"] is None
        new_key = rotation["new_key"]
        assert new_key and new_key != old_key
        still = await admin.ok("get_admin_auth", name="azure", reveal=True)
        assert still["credentials"] == OTHER
    await sopy.stop()

    with pytest.raises(StartupError, match="different secret key"):
        ConfigDatabase.open(settings.db_path, SecretBox(old_key))
    reopened = ConfigDatabase.open(settings.db_path, SecretBox(new_key))
    assert {c.credential for c in reopened.load_snapshot().credentials} == {CREDENTIAL, OTHER}
    reopened.close()


async def test_rotation_with_a_key_file_rewrites_the_file(
    nursery: trio.Nursery, settings: Settings, workdir: Path
) -> None:
    key_file = workdir / "sopy.key"
    with_file = attrs.evolve(settings, secret_key_file=key_file)
    sopy = await start(nursery, with_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first_key = key_file.read_text().strip()
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
        rotation = await admin.ok("rotate_secret_key")
    assert rotation["key_file"] == str(key_file)
    assert rotation["new_key"] is None
    await sopy.stop()

    rotated_key = key_file.read_text().strip()
    assert rotated_key != first_key
    assert f"{key_file.name}.next" not in os.listdir(workdir)
    again = await start(nursery, with_file)
    async with await again.admin() as admin:
        revealed = await admin.ok("get_admin_auth", name="openai", reveal=True)
    assert revealed["credentials"] == CREDENTIAL
    await again.stop()


async def test_a_key_file_that_cannot_be_replaced_after_the_commit_leaves_the_rotation_in_effect(
    nursery: trio.Nursery, settings: Settings, workdir: Path
) -> None:
    key_file = workdir / "sopy.key"
    with_file = attrs.evolve(settings, secret_key_file=key_file)
    sopy = await start(nursery, with_file)
    first_key = key_file.read_text()
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
        # The new key is moved onto the key file's path after the commit: make that move fail.
        key_file.unlink()
        key_file.mkdir()
        await admin.ok("rotate_secret_key")
        # The rotation was committed, so the running store works on with the new key and the
        # next version number.
        revealed = await admin.ok("get_admin_auth", name="openai", reveal=True)
        await admin.ok("add_admin_auth", name="second", credentials=OTHER)
    assert revealed["credentials"] == CREDENTIAL
    await sopy.stop()
    assert f"{key_file.name}.next" in os.listdir(workdir)

    # Once the key file's path is usable again, the next start finishes the rotation.
    key_file.rmdir()
    key_file.write_text(first_key)
    os.chmod(key_file, 0o600)
    again = await start(nursery, with_file)
    async with await again.admin() as admin:
        second = await admin.ok("get_admin_auth", name="second", reveal=True)
    assert second["credentials"] == OTHER
    await again.stop()
    assert key_file.read_text() != first_key
    assert f"{key_file.name}.next" not in os.listdir(workdir)


async def test_a_rotation_that_fails_never_overwrites_a_key_still_waiting_to_be_moved(
    nursery: trio.Nursery, settings: Settings, workdir: Path
) -> None:
    key_file = workdir / "sopy.key"
    version_mark = file_beside(settings.db_path, ".version")
    with_file = attrs.evolve(settings, secret_key_file=key_file)
    sopy = await start(nursery, with_file)
    first_key = key_file.read_text()
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
        key_file.unlink()
        key_file.mkdir()
        # Committed; its key waits beside the key file, the only copy of it on disk.
        await admin.ok("rotate_secret_key")
        # The next rotation fails before its commit (the version mark cannot be written).
        version_mark.unlink()
        version_mark.symlink_to(workdir / "elsewhere")
        refused = await admin.error("rotate_secret_key")
        assert refused["code"].startswith("config_store"), refused
    await sopy.stop()

    version_mark.unlink()
    key_file.rmdir()
    key_file.write_text(first_key)
    os.chmod(key_file, 0o600)
    again = await start(nursery, with_file)
    async with await again.admin() as admin:
        revealed = await admin.ok("get_admin_auth", name="openai", reveal=True)
    assert revealed["credentials"] == CREDENTIAL
    await again.stop()


def test_a_rotation_interrupted_after_its_commit_is_finished_on_the_next_start(
    workdir: Path,
) -> None:
    key_file = workdir / "sopy.key"
    old_key, new_key = new_secret_key(), new_secret_key()
    key_file.write_text(old_key + "\n")
    os.chmod(key_file, 0o600)
    db = ConfigDatabase.open(workdir / "db.sqlite", SecretBox(old_key), key_file)
    db.apply(AddAdminAuth(name="openai", credentials=CREDENTIAL), now=1.0)
    db.close()
    # The state a crash leaves between the commit and the rename: the database is sealed with
    # the new key, which waits beside the old key file.
    rotated = ConfigDatabase.open(workdir / "db.sqlite", SecretBox(old_key))
    rotated.apply(RotateSecretKey(new_key=new_key), now=2.0)
    rotated.close()
    Path(f"{key_file}.next").write_text(new_key + "\n")

    recovered = ConfigDatabase.open(workdir / "db.sqlite", SecretBox(old_key), key_file)
    assert recovered.load_snapshot().credentials[0].credential == CREDENTIAL
    recovered.close()
    assert key_file.read_text().strip() == new_key
    assert not Path(f"{key_file}.next").exists()


def test_a_key_file_readable_by_others_is_refused(workdir: Path) -> None:
    key_file = workdir / "sopy.key"
    key_file.write_text(new_secret_key() + "\n")
    os.chmod(key_file, 0o644)
    with pytest.raises(StartupError, match="chmod 600"):
        box_from_key_file(key_file, create=False)


def test_a_malformed_key_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(StartupError, match="sopy secret-key"):
        SecretBox("not-a-fernet-key")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_by_default_a_key_file_beside_the_database_seals_credentials(
    nursery: trio.Nursery, settings: Settings, workdir: Path
) -> None:
    sopy = await start(nursery, settings)
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
        names = [name for name in os.listdir(workdir) if name.startswith("sopy_admin.")]
        database_files = [workdir / name for name in names]
        assert {p.name for p in database_files} >= {
            "sopy_admin.db",
            "sopy_admin.db-wal",
            "sopy_admin.db-shm",
            "sopy_admin.key",
        }
        assert {p.name: mode_of(p) for p in database_files} == {
            p.name: 0o600 for p in database_files
        }
    await sopy.stop()

    assert CREDENTIAL.encode() not in database_bytes(settings)
    assert b"fernet:" in database_bytes(settings)
    again = await start(nursery, settings)
    async with await again.admin() as admin:
        revealed = await admin.ok("get_admin_auth", name="openai", reveal=True)
    assert revealed["credentials"] == CREDENTIAL
    await again.stop()


async def test_no_secret_key_keeps_plain_storage_and_creates_no_key_file(
    nursery: trio.Nursery, settings: Settings, workdir: Path
) -> None:
    sopy = await start(nursery, attrs.evolve(settings, no_secret_key=True))
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
    await sopy.stop()
    assert CREDENTIAL.encode() in database_bytes(settings)
    assert not (workdir / "sopy_admin.key").exists()
    assert mode_of(settings.db_path) == 0o600


async def test_a_database_an_older_sopy_left_readable_by_all_is_made_private_and_sealed(
    nursery: trio.Nursery, settings: Settings, workdir: Path
) -> None:
    older = await start(nursery, attrs.evolve(settings, no_secret_key=True))
    async with await older.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
    await older.stop()
    os.chmod(settings.db_path, 0o644)

    sopy = await start(nursery, settings)
    await sopy.stop()

    assert mode_of(settings.db_path) == 0o600
    assert mode_of(workdir / "sopy_admin.key") == 0o600
    assert CREDENTIAL.encode() not in database_bytes(settings)


async def test_sealed_credentials_without_their_key_file_are_refused_and_no_new_key_is_made(
    nursery: trio.Nursery, settings: Settings, workdir: Path
) -> None:
    sopy = await start(nursery, settings)
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
    await sopy.stop()
    (workdir / "sopy_admin.key").rename(workdir / "elsewhere.key")

    error = await startup_error(settings)

    assert "sopy_admin.key is missing" in str(error)
    assert not (workdir / "sopy_admin.key").exists()


@pytest.mark.parametrize(
    "contradiction",
    [
        {"secret_key": new_secret_key(), "no_secret_key": True},
        {"secret_key": new_secret_key(), "secret_key_file": Path("sopy.key")},
        {"secret_key_file": Path("sopy.key"), "no_secret_key": True},
    ],
)
async def test_contradicting_key_settings_are_refused(
    settings: Settings, contradiction: dict[str, Any]
) -> None:
    error = await startup_error(attrs.evolve(settings, **contradiction))
    assert "contradict each other" in str(error)


async def test_serve_warns_when_the_secret_key_is_on_the_command_line(workdir: Path) -> None:
    # One argument with `=`: a Fernet key may start with `-`, which argparse takes for a flag.
    server = await ServeProcess.start(workdir, f"--secret-key={new_secret_key()}")
    assert await server.terminate() == 0
    output = await server.read_rest()
    assert "a secret key on the command line can be read by every local user" in output
    assert "SOPY_SECRET_KEY" in output


async def test_sopy_start_hands_the_key_over_off_the_command_line_and_logs_privately(
    workdir: Path,
) -> None:
    key = new_secret_key()
    started = await trio.run_process(
        [sys.executable, "-m", "sopy", "start", "--port", "0", f"--secret-key={key}"],
        cwd=workdir,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert started.returncode == 0, started.stderr.decode()
    pid_match = re.search(rb"kill (\d+)", started.stdout)
    assert pid_match is not None, started.stdout
    pid = int(pid_match.group(1))
    try:
        assert key.encode() not in await trio.Path(f"/proc/{pid}/cmdline").read_bytes()
        assert mode_of(workdir / "sopy.log") == 0o600
        assert b"can be read by every local user" in started.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    await eventually(lambda: not (workdir / "sopy-admin.sock").exists(), within=10)


async def _rotate_on_the_command_line(
    workdir: Path, *args: str, stdin: int | bytes = b""
) -> tuple[int, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "sopy", "admin", "rotate-secret-key", *args],
        cwd=workdir,
        stdin=stdin,
        capture_stdout=True,
        stderr=subprocess.STDOUT,
        check=False,
    )
    return result.returncode, result.stdout.decode()


async def test_rotate_secret_key_asks_on_a_terminal_and_needs_yes_without_one(
    workdir: Path,
) -> None:
    server = await ServeProcess.start(workdir)
    key_file = workdir / "sopy_admin.key"
    first_key = key_file.read_text()
    try:
        code, output = await _rotate_on_the_command_line(workdir)
        assert code == 2 and "pass --yes" in output, output
        assert key_file.read_text() == first_key

        code, output = await _answer_on_a_terminal(workdir, b"n\n")
        assert code == 1 and "[y/N]" in output and "was not rotated" in output, output
        assert key_file.read_text() == first_key

        code, output = await _rotate_on_the_command_line(workdir, "--yes")
        assert code == 0, output
        assert f"The new key is in {key_file}" in output
        assert key_file.read_text() != first_key
    finally:
        assert await server.terminate() == 0


async def _answer_on_a_terminal(workdir: Path, answer: bytes) -> tuple[int, str]:
    """Run rotate-secret-key with a pseudo-terminal as its stdin, typing `answer`."""
    controller, terminal = os.openpty()
    try:
        os.write(controller, answer)
        return await _rotate_on_the_command_line(workdir, stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
