"""The supervisor restarts a crashed actor with growing delays and gives up on none."""

import itertools
import logging

import pytest
import trio

from sopy.runtime.supervision import RestartBackoff, supervise


async def test_crashed_actor_is_restarted_and_the_crash_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[float] = []
    healthy = trio.Event()

    async def flaky_actor(*, task_status: trio.TaskStatus[str]) -> None:
        runs.append(trio.current_time())
        task_status.started("ready")
        if len(runs) < 4:
            raise RuntimeError(f"boom {len(runs)}")
        healthy.set()
        await trio.sleep_forever()

    backoff = RestartBackoff(first_delay=0.02, max_delay=1.0, healthy_after=10.0)
    with caplog.at_level(logging.ERROR, logger="sopy.runtime.supervision"):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(supervise, "flaky", flaky_actor, backoff) == "ready"
            with trio.fail_after(5):
                await healthy.wait()
            nursery.cancel_scope.cancel()

    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    assert gaps[0] >= 0.02
    assert gaps[1] >= 0.04
    assert gaps[2] >= 0.08
    crashes = [r for r in caplog.records if "actor flaky crashed" in r.getMessage()]
    assert len(crashes) == 3
    assert crashes[0].exc_info is not None
    assert "boom 1" in str(crashes[0].exc_info[1])


async def test_an_actor_that_fails_before_starting_is_not_retried() -> None:
    attempts = 0

    async def broken_actor(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal attempts
        attempts += 1
        raise OSError("cannot bind")

    with pytest.RaisesGroup(pytest.RaisesGroup(OSError)):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, "broken", broken_actor)
    assert attempts == 1


def test_backoff_doubles_up_to_a_cap_and_resets_after_healthy_run() -> None:
    backoff = RestartBackoff(first_delay=0.1, max_delay=0.5, healthy_after=30)
    assert backoff.delay(None, ran_for=1) == 0.1
    assert backoff.delay(0.1, ran_for=1) == 0.2
    assert backoff.delay(0.4, ran_for=1) == 0.5
    assert backoff.delay(0.5, ran_for=31) == 0.1
