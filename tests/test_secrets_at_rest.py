"""Provider credentials at rest: sealed with the secret key, rotated in one transaction, and a
copy of the database files alone gives nothing usable away."""

import os
import stat
from pathlib import Path

import attrs
import pytest
import trio

from sopy.config.database import ConfigDatabase
from sopy.config.secret_box import SecretBox, box_from_key_file, new_secret_key
from sopy.errors import StartupError
from sopy.messages import AddAdminAuth, RotateSecretKey
from sopy.settings import Settings
from tests.conftest import SopyUnderTest

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
