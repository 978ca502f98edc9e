"""This test process's memory, as the kernel counts it: the gateway, its mock upstreams and the
test's clients all run here, so a buffer anywhere along a request shows up."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

SAMPLE_EVERY = 0.005


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@attrs.define
class RssPeak:
    before: int
    peak: int

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def __str__(self) -> str:
        mib = 1024 * 1024
        return f"RSS {self.before / mib:.0f} MiB before, {self.peak / mib:.0f} MiB at peak"


@asynccontextmanager
async def rss_peak() -> AsyncIterator[RssPeak]:
    """The highest RSS seen while the block runs, sampled every few milliseconds."""
    before = rss_bytes()
    measured = RssPeak(before, before)

    async def sample() -> None:
        while True:
            measured.peak = max(measured.peak, rss_bytes())
            await trio.sleep(SAMPLE_EVERY)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        yield measured
        measured.peak = max(measured.peak, rss_bytes())
        nursery.cancel_scope.cancel()
