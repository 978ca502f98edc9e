"""`python start_server.py` starts Sopy in the background and prints what the seed promised."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.polling import eventually

REPO = Path(__file__).resolve().parent.parent


async def test_start_script_prints_url_pid_and_log_and_the_server_answers(workdir: Path) -> None:
    started = await trio.run_process(
        [sys.executable, str(REPO / "start_server.py"), "--port", "0"],
        cwd=workdir,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = started.stdout.decode()
    assert started.returncode == 0, started.stderr.decode()
    url = re.search(r"Server URL:\s+(http://\S+)", output)
    pid = re.search(r"kill (\d+)", output)
    log_file = re.search(r"Log file:\s+(\S+)", output)
    assert url and pid and log_file, output
    try:
        assert Path(log_file.group(1)) == workdir / "sopy.log"
        async with httpx.AsyncClient() as client:
            response = await client.get(url.group(1) + "/")
        assert response.json() == {"message": "Hello World"}
        assert (workdir / "sopy-admin.sock").exists()
    finally:
        os.kill(int(pid.group(1)), signal.SIGTERM)
    await eventually(lambda: not (workdir / "sopy-admin.sock").exists(), within=10)
    assert "shutting down" in (workdir / "sopy.log").read_text()


async def test_start_script_reports_a_failed_start_with_the_log(workdir: Path) -> None:
    (workdir / "sopy-admin.sock").write_text("not a socket")
    started = await trio.run_process(
        [sys.executable, str(REPO / "start_server.py"), "--port", "0"],
        cwd=workdir,
        capture_stdout=True,
        stderr=subprocess.STDOUT,
        check=False,
    )
    assert started.returncode == 2
    assert b"exited during startup" in started.stdout
    assert b"is not a socket" in started.stdout


async def test_start_script_prints_every_pid_with_workers(workdir: Path) -> None:
    started = await trio.run_process(
        [sys.executable, str(REPO / "start_server.py"), "--port", "0", "--workers", "2"],
        cwd=workdir,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = started.stdout.decode()
    assert started.returncode == 0, started.stderr.decode()
    primary = re.search(r"kill (\d+)", output)
    workers = re.search(r"Worker PIDs:\s+(\d+) (\d+)\n", output)
    assert primary and workers and re.search(r"PID:\s+\d+", output), output
    worker_pids = [int(pid) for pid in workers.groups()]
    try:
        for pid in worker_pids:
            assert "--link-fd" in await trio.Path(f"/proc/{pid}/cmdline").read_text()
    finally:
        os.kill(int(primary.group(1)), signal.SIGTERM)
    await eventually(lambda: not (workdir / "sopy-admin.sock").exists(), within=10)
    await eventually(lambda: not any(Path(f"/proc/{pid}").exists() for pid in worker_pids))
