"""Reaching the admin socket from the `sopy` CLI: `connect_admin_socket` (shared by `sopy admin`
and `sopy events`) and a blocking client for the JSON-lines protocol, `send_admin_command`."""

import random
import socket
import time
from pathlib import Path
from typing import Any

import orjson

_RECEIVE_SIZE = 65536
BUSY_RETRY_SECONDS = 5.0
_FIRST_PAUSE = 0.005
_LONGEST_PAUSE = 0.2


class AdminUnreachable(Exception):
    """The admin socket could not be reached; the message says what to check."""


def connect_admin_socket(
    path: Path, *, timeout: float = 30.0, busy_for: float = BUSY_RETRY_SECONDS
) -> socket.socket:
    """A socket connected to the admin socket at `path`, with `timeout` for each operation.

    When more clients connect at once than the server's listen backlog holds, a Unix socket
    refuses with EAGAIN instead of waiting: that is retried after short, growing, jittered
    pauses for up to `busy_for` seconds. Any other failure is reported at once. Both end in an
    `AdminUnreachable` saying what to check.
    """
    give_up_at = time.monotonic() + busy_for
    pause = _FIRST_PAUSE
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout)
        try:
            conn.connect(str(path))
            return conn
        except BlockingIOError:
            conn.close()
            if time.monotonic() + pause > give_up_at:
                raise AdminUnreachable(
                    f"the admin socket at {path} stayed busy for {busy_for:g} s: its queue of "
                    "waiting connections was full (too many clients at once, or the server is "
                    "not accepting). Retry later, or run fewer `sopy admin` calls at once."
                ) from None
            # Jitter keeps a crowd of waiting clients from retrying in lockstep.
            time.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, _LONGEST_PAUSE)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            conn.close()
            raise AdminUnreachable(
                f"cannot reach the admin socket at {path} ({exc.strerror}): is `sopy serve` "
                "running here? Pass --admin-socket or set SOPY_ADMIN_SOCKET to its path."
            ) from exc
        except OSError as exc:
            conn.close()
            raise AdminUnreachable(f"cannot connect to the admin socket at {path}: {exc}") from exc


def send_admin_command(path: Path, payload: dict[str, Any], timeout: float = 30.0) -> Any:
    """Send one command and return the decoded reply object."""
    with connect_admin_socket(path, timeout=timeout) as conn:
        try:
            conn.sendall(orjson.dumps(payload) + b"\n")
            return orjson.loads(_read_line(conn))
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
