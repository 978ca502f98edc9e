"""Running `python -m sopy serve` as a real child process, for tests that kill or signal it."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

READY_LINE = b"Sopy is running"

started: list["ServeProcess"] = []


class ServeProcess:
    def __init__(self, process: trio.Process, output: bytearray) -> None:
        self.process = process
        self.output = output

    @classmethod
    async def start(cls, workdir: Path, *extra_args: str) -> "ServeProcess":
        """Start `sopy serve` in `workdir` and return once it says it is running."""
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "sopy", "serve", "--port", "0", *extra_args],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        server = cls(process, bytearray())
        started.append(server)
        await server.wait_for_output(READY_LINE, within=20)
        return server

    @property
    def http_url(self) -> str:
        match = re.search(rb"Server URL:\s+(\S+)", self.output)
        assert match is not None, self.output.decode()
        return match.group(1).decode()

    @property
    def worker_pids(self) -> list[int]:
        """The PIDs of the worker processes the banner named (`--workers` 2 or more)."""
        match = re.search(rb"Worker PIDs:\s+([\d ]+)", self.output)
        assert match is not None, self.output.decode()
        return [int(pid) for pid in match.group(1).split()]

    async def wait_for_output(self, text: bytes, within: float = 10) -> None:
        assert self.process.stdout is not None
        with trio.fail_after(within):
            while text not in self.output:
                chunk = await self.process.stdout.receive_some(65536)
                if not chunk:
                    raise EOFError(
                        f"sopy serve exited before printing {text!r}:\n{self.output.decode()}"
                    )
                self.output += chunk

    async def read_rest(self) -> str:
        assert self.process.stdout is not None
        with trio.fail_after(20):
            while chunk := await self.process.stdout.receive_some(65536):
                self.output += chunk
        return self.output.decode()

    def kill_if_running(self) -> None:
        if self.process.returncode is None:
            self.kill()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            return await self.process.wait()
