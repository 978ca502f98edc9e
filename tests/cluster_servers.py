"""Real PostgreSQL and Redis (or Valkey) servers for the cluster tests, each in a temp directory
on a loopback port, started and stopped by the test that uses them.

The binaries come from Debian's packages (`apt-get install postgresql redis-server`; .ci/run
installs them); a test skips, saying so, when they are missing. PostgreSQL refuses to run as
root, so as root its processes run as `nobody` (`runuser`), owning the data directory.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from sopy.config.secret_box import new_secret_key
from sopy.settings import Settings
from tests.conftest import SopyUnderTest
from tests.polling import eventually

POSTGRES_BIN_DIRS = (
    Path("/usr/lib/postgresql/15/bin"),
    *sorted(Path("/usr/lib/postgresql").glob("*/bin")),
)
# The bound: a change made on one instance is served by the other within this.
PROPAGATION = 1.0
INSTALL_HINT = "install them with: apt-get install -y postgresql redis-server"


def _postgres_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in POSTGRES_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temp directory; `url` reaches it as its superuser."""

    def __init__(self, directory: Path) -> None:
        initdb, self._pg_ctl = _postgres_tool("initdb"), _postgres_tool("pg_ctl")
        if initdb is None or self._pg_ctl is None:
            pytest.skip(f"PostgreSQL's initdb and pg_ctl are not installed; {INSTALL_HINT}")
        self._data = directory / "data"
        self._data.mkdir()
        self.port = free_port()
        self.url = f"postgresql://sopy@127.0.0.1:{self.port}/postgres"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            self._as_owner = ["runuser", "-u", "nobody", "--"]
            directory.chmod(0o755)
            shutil.chown(self._data, "nobody")
        self._run(initdb, "-D", str(self._data), "-U", "sopy", "--auth=trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self._data} -h 127.0.0.1 -c fsync=off"
        self._run(
            self._pg_ctl,
            "start",
            "-w",
            "-D",
            str(self._data),
            "-o",
            options,
            "-l",
            str(self._data / "server.log"),
        )

    def stop(self) -> None:
        self._run(self._pg_ctl, "stop", "-w", "-m", "fast", "-D", str(self._data))

    def kill(self) -> None:
        """Stop it at once, whatever state it is in (after a test)."""
        subprocess.run(
            [*self._as_owner, str(self._pg_ctl), "stop", "-m", "immediate", "-D", str(self._data)],
            capture_output=True,
            check=False,
        )

    def _run(self, *command: str | None) -> None:
        subprocess.run(
            [*self._as_owner, *(str(part) for part in command)],
            check=True,
            capture_output=True,
            timeout=60,
        )


class RedisServer:
    """One Redis (or Valkey) server without persistence; `url` reaches it."""

    def __init__(self, directory: Path) -> None:
        self._binary = shutil.which("valkey-server") or shutil.which("redis-server")
        if self._binary is None:
            pytest.skip(f"redis-server (or valkey-server) is not installed; {INSTALL_HINT}")
        self._directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self._binary or "",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if b"Ready to accept connections" in line:
                return
        raise RuntimeError(f"redis-server on port {self.port} ended before it was ready")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    directory = Path(tempfile.mkdtemp(prefix="sopy-pg-", dir="/tmp"))
    server = PostgresServer(directory)
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            [
                *server._as_owner,
                server._pg_ctl or "",
                "stop",
                "-m",
                "immediate",
                "-D",
                str(server._data),
            ],
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="sopy-redis-", dir="/tmp"))
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def workdirs() -> Iterator[tuple[Path, Path]]:
    """The files of two instances (each its own admin socket and secret-key-less paths)."""
    paths = tuple(Path(tempfile.mkdtemp(prefix="sopy-", dir="/tmp")) for _ in range(2))
    yield paths  # type: ignore[misc]
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


class Pair:
    """Two running Sopy instances, a and b, on the same store, each with its own files."""

    def __init__(self, a: SopyUnderTest, b: SopyUnderTest) -> None:
        self.a, self.b = a, b

    def versions(self) -> tuple[int, int]:
        return version_of(self.a), version_of(self.b)

    async def converged(self, within: float = PROPAGATION) -> None:
        await eventually(lambda: self.versions()[0] == self.versions()[1], within)


def version_of(sopy: SopyUnderTest) -> int:
    """The config version an instance serves."""
    assert sopy.running is not None
    latest = sopy.running.feed.latest
    return -1 if latest is None else latest.version


@contextlib.asynccontextmanager
async def start_pair(
    nursery: trio.Nursery, workdirs: tuple[Path, Path], **settings: Any
) -> AsyncIterator[Pair]:
    """Start two instances with these settings (the same secret key), stop them after."""
    secret_key = new_secret_key()
    instances = [
        SopyUnderTest(
            nursery,
            Settings(
                db_path=workdir / "sopy_admin.db",
                admin_socket=workdir / "sopy-admin.sock",
                port=0,
                secret_key=secret_key,
                **settings,
            ),
        )
        for workdir in workdirs
    ]
    for instance in instances:
        await instance.start()
    try:
        yield Pair(*instances)
    finally:
        for instance in instances:
            await instance.stop()
