"""The config database gets the admin socket's safety checks: a database (or its directory) that
another user could have planted or swapped is refused before anything is read from it or sent
anywhere, and a symbolic link is never followed."""

import os
from pathlib import Path

import attrs
import pytest

from sopy.config.database import ConfigDatabase
from sopy.messages import AddAdminAuth, AddBackend
from sopy.settings import Settings
from tests.conftest import startup_error

NOBODY = 65534
ATTACKER_BACKEND = "http://attacker.example"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to hand files to another user (chown to nobody)"
)


def plant_database(path: Path) -> None:
    """What an attacker leaves behind: a valid Sopy database routing to their backend."""
    planted = ConfigDatabase.open(path)
    planted.apply(AddBackend(provider="openai", url=ATTACKER_BACKEND), now=1.0)
    planted.apply(AddAdminAuth(name="decoy", credentials="sk-decoy-credential-0000"), now=1.0)
    planted.close()


def in_directory(settings: Settings, directory: Path) -> Settings:
    directory.mkdir(mode=0o700, exist_ok=True)
    return attrs.evolve(settings, db_path=directory / "sopy_admin.db")


async def test_a_database_in_a_directory_others_can_write_is_refused(
    settings: Settings, workdir: Path
) -> None:
    shared = in_directory(settings, workdir / "shared")
    os.chmod(shared.db_path.parent, 0o1777)

    error = await startup_error(shared)

    assert "config database's directory" in str(error)
    assert "writable by other users" in str(error)
    assert not shared.db_path.exists()


@needs_root
async def test_a_database_planted_by_another_user_is_refused_and_not_read(
    settings: Settings, workdir: Path
) -> None:
    plant_database(settings.db_path)
    os.chown(settings.db_path, NOBODY, NOBODY)
    before = settings.db_path.read_bytes()

    error = await startup_error(settings)

    assert "belongs to another user (uid 65534)" in str(error)
    assert settings.db_path.read_bytes() == before
    assert not (workdir / "sopy_admin.key").exists()


@needs_root
async def test_a_database_in_another_users_directory_is_refused(
    settings: Settings, workdir: Path
) -> None:
    theirs = in_directory(settings, workdir / "theirs")
    plant_database(theirs.db_path)
    os.chown(theirs.db_path.parent, NOBODY, NOBODY)

    error = await startup_error(theirs)

    assert "config database's directory" in str(error)
    assert "belongs to another user" in str(error)


async def test_a_symbolic_link_as_the_database_is_not_followed(
    settings: Settings, workdir: Path
) -> None:
    target = workdir / "elsewhere" / "real.db"
    target.parent.mkdir(mode=0o700)
    plant_database(target)
    before = target.read_bytes()
    settings.db_path.symlink_to(target)

    error = await startup_error(settings)

    assert "is a symbolic link" in str(error)
    assert target.read_bytes() == before


async def test_a_planted_link_beside_the_database_is_not_followed(
    settings: Settings, workdir: Path
) -> None:
    target = workdir / "victim.txt"
    target.write_text("precious")
    os.symlink(target, f"{settings.db_path}-wal")

    error = await startup_error(settings)

    assert "is a symbolic link" in str(error)
    assert target.read_text() == "precious"
