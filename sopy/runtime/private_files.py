"""Files only this user may touch: the checks and the creation mode for every file Sopy keeps.

The admin socket (`sopy.runtime.unix_listener`), the config database, its secret key file and
version mark (`sopy.config`), the actors' own SQLite files (`open_private_database`) and the log
of `sopy start` (`sopy.cli.background`) all go through here, so each gets the same rules: its
directory belongs to us and is writable by no one else (otherwise another user could plant or
swap the file), an existing file is ours, a regular file and not a symbolic link, and a new file
is created mode 0600 without following a link.
"""

import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import Sequence
from pathlib import Path

from sopy.errors import StartupError

log = logging.getLogger(__name__)

PRIVATE_MODE = 0o600
_GROUP_OR_OTHERS = 0o077


def require_private_directory(path: Path, what: str, flag: str) -> None:
    """`path`'s directory must be ours and writable by no one else, else anyone who can write
    there can replace what we keep in it. `what` names the file and `flag` the option choosing
    it, for the message."""
    directory = path.absolute().parent
    try:
        status = directory.stat()
    except FileNotFoundError:
        raise StartupError(f"the {what}'s directory {directory} does not exist") from None
    if status.st_uid != os.geteuid():
        raise StartupError(
            f"the {what}'s directory {directory} belongs to another user; put the {what} in a "
            f"directory you own with {flag}"
        )
    if status.st_mode & 0o022:
        raise StartupError(
            f"the {what}'s directory {directory} is writable by other users; use a private "
            f"directory with {flag}, or chmod go-w it"
        )


def existing_private_file(path: Path, what: str, flag: str) -> bool:
    """Whether `path` exists as a file that is private to us (see `own_file_exists`), narrowing
    its mode to 0600 first if an older Sopy left it readable by others."""
    exists = own_file_exists(path, what, flag)
    if exists:
        make_private(path, what)
    return exists


def own_file_exists(path: Path, what: str, flag: str) -> bool:
    """Whether `path` exists; if it does it must be our own regular file, not a link."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(status.st_mode):
        raise StartupError(
            f"the {what} {path} is a symbolic link; Sopy does not follow links for the files it "
            f"keeps: point {flag} at the real file"
        )
    if not stat.S_ISREG(status.st_mode):
        raise StartupError(
            f"the {what} {path} is not a regular file; move it away or choose another path "
            f"with {flag}"
        )
    if status.st_uid != os.geteuid():
        raise StartupError(
            f"the {what} {path} belongs to another user (uid {status.st_uid}); Sopy uses only "
            f"files of its own user: move it away or choose another path with {flag}"
        )
    return True


def make_private(path: Path, what: str) -> None:
    """Narrow an existing file of ours to mode 0600 if group or others may read it."""
    with contextlib.suppress(FileNotFoundError):
        if path.lstat().st_mode & _GROUP_OR_OTHERS:
            os.chmod(path, PRIVATE_MODE, follow_symlinks=False)
            log.warning("%s %s was readable by other users; it is now mode 0600", what, path)


def open_private(path: Path, flags: int) -> int:
    """Open `path` with `flags`, creating it mode 0600 if missing, never through a link; a file
    that others could read is narrowed to 0600 first. Returns the file descriptor."""
    descriptor = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_MODE)
    try:
        if os.fstat(descriptor).st_mode & _GROUP_OR_OTHERS:
            os.fchmod(descriptor, PRIVATE_MODE)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def write_private_file(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically and durably; the file is mode 0600 throughout."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.writing")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(
        temporary,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        PRIVATE_MODE,
    )
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def file_beside(path: Path, suffix: str) -> Path:
    """The file next to `path` named like it with `suffix` for its extension (`sopy_admin.db`:
    `sopy_admin.key`), never `path` itself."""
    beside = path.with_name(path.stem + suffix)
    return beside if beside != path else path.with_name(path.name + suffix)


def open_private_database(path: Path, what: str, schema: Sequence[str]) -> sqlite3.Connection:
    """An actor's own SQLite file (WAL, `schema` applied), under the config database's rules:
    ours, not a link, 0600 (which SQLite gives its -wal and -shm files too). For the one
    thread that uses it; a failure is a one-line `StartupError` naming `what`."""
    try:
        if not existing_private_file(path, what, "--db-path"):
            os.close(open_private(path, os.O_RDWR))
        database = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        database.execute("PRAGMA journal_mode = WAL")
        for statement in schema:
            database.execute(statement)
    except (OSError, sqlite3.DatabaseError) as exc:
        raise StartupError(
            f"cannot open the {what} {path}: {exc}. Check that its directory (the config "
            "database's) is writable and the file is Sopy's."
        ) from exc
    return database
