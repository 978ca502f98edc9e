"""A blocking client for the admin socket's JSON-lines protocol, used by the `sopy` CLI."""

import socket
from pathlib import Path
from typing import Any

import orjson

_RECEIVE_SIZE = 65536


class AdminUnreachable(Exception):
    """The admin socket could not be reached; the message says what to check."""


def send_admin_command(path: Path, payload: dict[str, Any], timeout: float = 30.0) -> Any:
    """Send one command and return the decoded reply object."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(orjson.dumps(payload) + b"\n")
            return orjson.loads(_read_line(conn))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AdminUnreachable(
            f"cannot reach the admin socket at {path} ({exc.strerror}): is `sopy serve` "
            "running here? Pass --admin-socket or set SOPY_ADMIN_SOCKET to its path."
        ) from exc
    except (OSError, orjson.JSONDecodeError) as exc:
        raise AdminUnreachable(f"the admin socket at {path} failed: {exc}") from exc


def _read_line(conn: socket.socket) -> bytes:
    received = bytearray()
    while b"\n" not in received:
        chunk = conn.recv(_RECEIVE_SIZE)
        if not chunk:
            raise OSError("the server closed the connection before replying")
        received += chunk
    return bytes(received.split(b"\n", 1)[0])
