"""Listening on a Unix socket path safely: refuse a live owner, replace a stale file, never
expose the socket with loose permissions, and remove it again on the way out.

The socket is bound under a temporary name, made mode 0600 and only then renamed onto its real
path, so there is no moment at which another user could connect.
"""

import contextlib
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from sopy.errors import StartupError
from sopy.runtime.private_files import require_private_directory

log = logging.getLogger(__name__)

# As many waiting connections as the system allows (the kernel caps this at
# net.core.somaxconn; 65535 is trio's choice of "the maximum" too): at 128, a burst of
# `sopy admin` calls saw EAGAIN.
_BACKLOG = 0xFFFF


@contextlib.asynccontextmanager
async def unix_listener(path: Path) -> AsyncIterator[trio.SocketListener]:
    """Listen on `path` (mode 0600) for the life of the context, then remove the socket file."""
    # The socket's mode means little if others can replace it in its directory.
    require_private_directory(path, "admin socket", "--admin-socket")
    await _clear_stale_socket(path)
    listener, inode = await _bind_private(path)
    try:
        yield listener
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        _remove_if_ours(path, inode)


async def _clear_stale_socket(path: Path) -> None:
    if not _socket_file_exists(path):
        return
    try:
        probe = await trio.open_unix_socket(str(path))
    except ConnectionRefusedError:
        log.info("replacing stale admin socket %s left by a stopped run", path)
        _remove_if_ours(path, _inode(path))
        return
    await probe.aclose()
    raise StartupError(
        f"another process is already serving the admin socket {path}; stop it first "
        "or choose another path with --admin-socket"
    )


def _socket_file_exists(path: Path) -> bool:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise StartupError(
            f"{path} exists and is not a socket; move it away or choose another path "
            "with --admin-socket"
        )
    return True


def _inode(path: Path) -> int:
    return path.lstat().st_ino


async def _bind_private(path: Path) -> tuple[trio.SocketListener, int]:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.binding")
    temporary.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(temporary))
        os.chmod(temporary, 0o600)
        sock.listen(_BACKLOG)
        os.replace(temporary, path)
    except OSError as exc:
        sock.close()
        temporary.unlink(missing_ok=True)
        raise StartupError(
            f"cannot listen on {path}: {exc.strerror or exc}; check that the directory exists "
            "and is writable, and that the path is under 100 characters"
        ) from exc
    return trio.SocketListener(sock), _inode(path)


def _remove_if_ours(path: Path, inode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.lstat().st_ino == inode:
            path.unlink()
