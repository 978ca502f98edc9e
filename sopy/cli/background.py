"""Starting `sopy serve` in the background, as the seed's start script did: wait until it is up,
then print the server URL, the PID to stop it with and where its log is (mode 0600, like every
file Sopy writes)."""

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from sopy.errors import StartupError
from sopy.runtime.private_files import existing_private_file, open_private

READY_LINE = "Sopy is running"
WORKERS_LINE = "  Worker PIDs:"
STARTUP_TIMEOUT = 30.0


def start_in_background(
    serve_args: Sequence[str], log_path: Path, environment: Mapping[str, str]
) -> str:
    """Start the gateway detached from this terminal, with `environment` added to ours; return
    the report to print."""
    log_path = log_path.absolute()
    try:
        existing_private_file(log_path, "log file", "--log-file")
        descriptor = open_private(log_path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise StartupError(f"cannot open the log file {log_path}: {exc.strerror}") from None
    with os.fdopen(descriptor, "ab") as log:
        start_offset = log.seek(0, os.SEEK_END)
        process = subprocess.Popen(
            [sys.executable, "-m", "sopy", "serve", *serve_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **environment, "PYTHONUNBUFFERED": "1"},
        )
    banner = _wait_for_banner(process, log_path, start_offset)
    where = (
        "(the primary runs the admin socket; stopping it drains and stops its workers)"
        if WORKERS_LINE in banner
        else "(the API server and the admin socket run in this one process)"
    )
    return f"{banner}\n  Log file:     {log_path}\nStop it with:   kill {process.pid}\n{where}"


def _wait_for_banner(process: subprocess.Popen[bytes], log_path: Path, offset: int) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        output = _read_from(log_path, offset)
        if READY_LINE in output:
            lines = output[output.index(READY_LINE) :].splitlines()
            # The primary of `--workers N` adds its workers' PIDs.
            count = 6 if len(lines) > 5 and lines[5].startswith(WORKERS_LINE) else 5
            if len(lines) >= 5:
                return "\n".join(lines[:count])
        if process.poll() is not None:
            raise StartupError(
                f"the gateway exited during startup (code {process.returncode}); its log "
                f"{log_path} says:\n{output.strip()[-2000:]}"
            )
        time.sleep(0.1)
    process.terminate()
    raise StartupError(
        f"the gateway did not report ready within {STARTUP_TIMEOUT:.0f} s; see {log_path}"
    )


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")
