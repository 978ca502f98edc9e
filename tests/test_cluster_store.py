"""Specs of `--store postgresql://...`: two Sopy instances on one real PostgreSQL share their
configuration, follow each other's changes, and ride out the database going away."""

import functools
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import orjson
import psycopg
import pytest
import trio

from sopy.messages import ConfigChanged
from sopy.settings import Settings
from tests.admin_connection import open_events
from tests.cluster_servers import (
    PROPAGATION,
    Pair,
    PostgresServer,
    free_port,
    postgres,  # noqa: F401 (a fixture)
    start_pair,
    version_of,
    workdirs,  # noqa: F401 (a fixture)
)
from tests.conftest import SopyUnderTest, startup_error
from tests.gateway import chat, start_gateway
from tests.polling import eventually


@pytest.fixture
async def pair(
    nursery: trio.Nursery,
    postgres: PostgresServer,  # noqa: F811
    workdirs: tuple[Path, Path],  # noqa: F811
) -> AsyncIterator[Pair]:
    async with start_pair(nursery, workdirs, store=postgres.url) as pair:
        yield pair


async def _ok(sopy: SopyUnderTest, command: str, **fields: object) -> object:
    async with await sopy.admin() as admin:
        return await admin.ok(command, **fields)


async def _chat_status(sopy: SopyUnderTest, key: str, model: str = "gpt-4.1") -> int:
    async with httpx.AsyncClient(base_url=sopy.http_url) as client:
        response = await client.post(
            "/v1/chat/completions", json=chat(model), headers={"authorization": f"Bearer {key}"}
        )
        return response.status_code


def _published(sopy: SopyUnderTest) -> trio.MemoryReceiveChannel[ConfigChanged]:
    assert sopy.running is not None
    channel = sopy.running.feed.subscribe(buffer=10_000)
    channel.receive_nowait()  # the latest change before now, which every subscription starts with
    return channel


def _changes(channel: trio.MemoryReceiveChannel[ConfigChanged]) -> list[tuple[int, object]]:
    """Every change published so far on a subscription, as (version, change) in order."""
    published = []
    while True:
        try:
            changed = channel.receive_nowait()
        except trio.WouldBlock:
            return published
        if changed.change is not None:
            published.append((changed.version, changed.change))


async def test_a_key_added_on_a_works_on_b_within_a_second(
    pair: Pair, nursery: trio.Nursery
) -> None:
    await start_gateway(pair.a, nursery, {"gpt-4.1": "openai"})
    key = "sk-user-added-on-a-0001"
    await pair.converged()
    assert await _chat_status(pair.b, key) == 401
    await _ok(pair.a, "add_user_api_key", api_key=key, description="from a")
    await pair.converged()
    assert await _chat_status(pair.b, key) == 200


async def test_a_key_deactivated_on_a_is_refused_by_b(pair: Pair, nursery: trio.Nursery) -> None:
    await start_gateway(pair.a, nursery, {"gpt-4.1": "openai"})
    key = "sk-user-deactivated-0001"
    created = await _ok(pair.a, "add_user_api_key", api_key=key, description="short-lived")
    await pair.converged()
    assert await _chat_status(pair.b, key) == 200
    await _ok(pair.a, "deactivate_user_api_key", id=created["id"])  # type: ignore[index]
    await pair.converged()
    assert await _chat_status(pair.b, key) == 401


async def test_a_mapping_removed_on_b_is_gone_on_a(pair: Pair, nursery: trio.Nursery) -> None:
    gateway = await start_gateway(pair.a, nursery, {"gpt-4.1": "openai", "gpt-4o": "openai"})
    await pair.converged()
    await _ok(pair.b, "remove_model_mapping", model_name="gpt-4o")
    await pair.converged()
    async with gateway.client() as client:
        response = await client.post("/v1/chat/completions", json=chat("gpt-4o"))
    assert response.status_code == 404
    assert await _chat_status(pair.a, "sk-user-test-key-0001", "gpt-4.1") == 200


async def test_b_event_subscribers_see_a_changes(pair: Pair, nursery: trio.Nursery) -> None:
    assert pair.b.running is not None
    events = await open_events(nursery, pair.b.running.admin_socket)
    first = orjson.loads(await events.get_message())
    created = await _ok(pair.a, "add_user_api_key", description="seen on b")
    with trio.fail_after(PROPAGATION):
        event = orjson.loads(await events.get_message())
    assert event["version"] == first["version"] + 1
    assert event["kind"] == "user_api_key_added"
    assert event["entity"]["id"] == created["id"]  # type: ignore[index]
    await events.aclose()


async def test_b_event_subscribers_resume_after_a_version_with_a_changes(
    pair: Pair, nursery: trio.Nursery
) -> None:
    since = version_of(pair.a)
    first = await _ok(pair.a, "add_user_api_key", description="one")
    second = await _ok(pair.a, "add_user_api_key", description="two")
    await pair.converged()
    assert pair.b.running is not None
    events = await open_events(nursery, pair.b.running.admin_socket, since=since)
    resumed = [orjson.loads(await events.get_message()) for _ in range(2)]
    assert [event["entity"]["id"] for event in resumed] == [first["id"], second["id"]]  # type: ignore[index]
    assert [event["version"] for event in resumed] == [since + 1, since + 2]
    await events.aclose()


async def test_a_write_reaches_b_routing_quickly(pair: Pair) -> None:
    """Measures the time from sending a write to A to B's serving it (printed with -s)."""
    delays = []
    for number in range(100):
        sent = time.perf_counter()
        await _ok(pair.a, "add_user_api_key", description=f"timed {number}")
        target = version_of(pair.a)
        await eventually(lambda: version_of(pair.b) >= target, PROPAGATION)  # noqa: B023
        delays.append(time.perf_counter() - sent)
    delays.sort()
    p50, p99 = statistics.median(delays), delays[98]
    print(f"write sent to A -> B routing with it: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
    assert p99 < PROPAGATION


async def test_postgres_restart_keeps_requests_served_refuses_writes_and_loses_nothing(
    pair: Pair,
    nursery: trio.Nursery,
    postgres: PostgresServer,  # noqa: F811
) -> None:
    gateway = await start_gateway(pair.a, nursery, {"gpt-4.1": "openai"})
    await pair.converged()
    published_a, published_b = _published(pair.a), _published(pair.b)
    await _ok(pair.a, "add_user_api_key", description="before the restart")
    await pair.converged()

    await trio.to_thread.run_sync(postgres.stop)
    for sopy in (pair.a, pair.b):
        assert await _chat_status(sopy, "sk-user-test-key-0001") == 200
        async with await sopy.admin() as admin:
            error = await admin.error("add_user_api_key", description="while it is down")
        assert error["code"] == "config_store_unavailable"
        assert "unreachable" in error["message"]
    await trio.to_thread.run_sync(postgres.start)

    # Each instance reconnects by itself; writes from both sides go through again.
    async def written(sopy: SopyUnderTest, description: str) -> None:
        with trio.fail_after(10):
            while True:
                async with await sopy.admin() as admin:
                    reply = await admin.call("add_user_api_key", description=description)
                if reply["ok"]:
                    return
                await trio.sleep(0.05)

    await written(pair.a, "after the restart, on a")
    await written(pair.b, "after the restart, on b")
    await pair.converged()
    changes_a, changes_b = _changes(published_a), _changes(published_b)
    assert changes_a == changes_b
    versions = [version for version, _ in changes_a]
    assert versions == list(range(versions[0], versions[0] + 3))
    async with gateway.client() as client:
        response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200


async def test_a_killed_listen_connection_catches_up_from_the_change_log(
    pair: Pair,
    postgres: PostgresServer,  # noqa: F811
) -> None:
    published_b = _published(pair.b)
    # From another database: PostgreSQL keeps connections out of Sopy's one.
    elsewhere = postgres.url.rpartition("/")[0] + "/template1"
    admin = await trio.to_thread.run_sync(
        functools.partial(psycopg.connect, elsewhere, autocommit=True)
    )

    def sql(statement: str) -> list[tuple[object, ...]]:
        cursor = admin.execute(statement)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []

    try:
        # No new connection until the change is made: the followers can only learn of it
        # from the change log once they are back, as no notification reaches them.
        await trio.to_thread.run_sync(sql, "ALTER DATABASE postgres ALLOW_CONNECTIONS false")
        killed = await trio.to_thread.run_sync(
            sql,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        )
        assert len(killed) == 2
        created = await _ok(pair.a, "add_user_api_key", description="while b is not listening")
        assert version_of(pair.b) < version_of(pair.a)
        await trio.to_thread.run_sync(sql, "ALTER DATABASE postgres ALLOW_CONNECTIONS true")
    finally:
        await trio.to_thread.run_sync(admin.close)
    await pair.converged(within=2 * PROPAGATION)
    assert [change.id for _, change in _changes(published_b)] == [created["id"]]  # type: ignore[attr-defined,index]


async def test_get_usage_on_one_instance_counts_the_requests_of_both(
    pair: Pair, nursery: trio.Nursery
) -> None:
    await start_gateway(pair.a, nursery, {"gpt-4.1": "openai"})
    await pair.converged()
    for sopy in (pair.a, pair.b, pair.b):
        assert await _chat_status(sopy, "sk-user-test-key-0001") == 200

    # B writes its records every second, and the last ones as it stops.
    await pair.b.stop()
    report = await _ok(pair.a, "get_usage")
    assert report["groups"][0]["requests"] == 3  # type: ignore[index]


async def test_a_store_that_is_not_postgresql_is_refused_at_start(settings: Settings) -> None:
    error = await startup_error(attrs.evolve(settings, store="mysql://sopy:hunter2@db/sopy"))
    assert "--store takes a postgresql:// URL" in str(error)
    assert "hunter2" not in str(error)


async def test_an_unreachable_store_is_a_startup_error_without_its_password(
    settings: Settings,
) -> None:
    unused_port = free_port()
    url = f"postgresql://sopy:hunter2@127.0.0.1:{unused_port}/sopy"
    error = await startup_error(attrs.evolve(settings, store=url))
    assert f"postgresql://sopy:***@127.0.0.1:{unused_port}/sopy" in str(error)
    assert "hunter2" not in str(error)
