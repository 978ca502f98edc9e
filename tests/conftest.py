"""Fixtures that start the real supervisor on temp paths and real sockets."""

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from sopy.actors.upstream_pool import OpenTransport, open_connections
from sopy.errors import StartupError
from sopy.settings import Settings
from sopy.supervisor import RunningSopy, run_sopy
from tests import serve_process
from tests.admin_connection import AdminConnection


@pytest.fixture(autouse=True)
def no_leftover_servers() -> Iterator[None]:
    """A `sopy serve` child that a failing test left running would outlive the test run."""
    yield
    while serve_process.started:
        serve_process.started.pop().kill_if_running()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short temp directory: Unix socket paths must stay under ~100 characters."""
    path = Path(tempfile.mkdtemp(prefix="sopy-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(workdir: Path) -> Settings:
    return Settings(
        db_path=workdir / "sopy_admin.db",
        admin_socket=workdir / "sopy-admin.sock",
        port=0,
    )


@attrs.define
class SopyUnderTest:
    """A running Sopy in the test's nursery, stoppable and restartable on the same files; its
    upstream pools use `open_transport` (a test's own injects faults)."""

    nursery: trio.Nursery
    settings: Settings
    running: RunningSopy | None = None
    _shutdown: trio.Event | None = None
    _stopped: trio.Event | None = None
    open_transport: OpenTransport = open_connections

    async def start(self) -> RunningSopy:
        self._shutdown = trio.Event()
        stopped = self._stopped = trio.Event()

        async def run_then_signal(*, task_status: trio.TaskStatus[RunningSopy]) -> None:
            try:
                await run_sopy(
                    self.settings,
                    shutdown,
                    open_transport=self.open_transport,
                    task_status=task_status,
                )
            finally:
                stopped.set()

        shutdown = self._shutdown
        self.running = await self.nursery.start(run_then_signal)
        return self.running

    async def stop(self) -> None:
        if self._shutdown is not None and self._stopped is not None:
            self._shutdown.set()
            await self._stopped.wait()
        self.running = None

    async def restart(self) -> RunningSopy:
        await self.stop()
        return await self.start()

    @property
    def http_url(self) -> str:
        """The public port's URL; Sopy must be running."""
        assert self.running is not None, "start() first"
        return self.running.http_url

    async def admin(self) -> AdminConnection:
        assert self.running is not None, "start() first"
        return await AdminConnection.open(self.running.admin_socket)

    def admin_rest(self) -> httpx.AsyncClient:
        """An httpx client for the admin REST routes, over the admin Unix socket."""
        transport = httpx.AsyncHTTPTransport(uds=str(self.settings.admin_socket))
        return httpx.AsyncClient(transport=transport, base_url="http://sopy")


@pytest.fixture
async def sopy(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[SopyUnderTest]:
    system = SopyUnderTest(nursery, settings)
    await system.start()
    yield system
    await system.stop()


@pytest.fixture
async def admin(sopy: SopyUnderTest) -> AsyncIterator[AdminConnection]:
    async with await sopy.admin() as connection:
        yield connection


async def startup_error(settings: Settings) -> StartupError:
    """The StartupError that keeps Sopy from starting with these settings."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_sopy, settings, trio.Event())
            # It started after all: stop it, so that the test fails instead of hanging.
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        matched, _ = group.split(StartupError)
        assert matched is not None, group
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, StartupError)
        return leaf
    raise AssertionError("run_sopy started although it should not have")
