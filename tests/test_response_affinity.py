"""Stateful Responses API follow-ups through the gateway, as the official `openai` SDK makes them:
each reaches the backend that made the response (the mock upstreams store responses per
instance, and name themselves in each id), only for the key that made it, across a restart,
until the id expires or is pushed out by newer ones."""

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import openai
import pytest
import trio

from sopy.actors.response_affinity_store import ResponseAffinityStore
from sopy.routing.kept_responses import KeptResponses
from sopy.routing.response_affinity import ResponseAffinity
from sopy.settings import Settings
from tests.conftest import SopyUnderTest
from tests.gateway import USER_KEY, Gateway, start_gateway
from tests.polling import eventually

MODEL = "gpt-4.1"
OTHER_KEY = "sk-user-test-key-0002"


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Round robin over two backends: a follow-up sent by balancing would miss half the time.
    A test may set more fields by parametrizing this fixture indirectly."""
    more = getattr(request, "param", {})
    return attrs.evolve(settings, balance="round_robin", retries=0, **more)


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(sopy, nursery, {MODEL: "openai"}, upstreams_per_provider=2)


def _client(gateway: Gateway, api_key: str = USER_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _client(gateway) as client:
        yield client


async def _one_per_backend(client: openai.AsyncOpenAI, background: bool = False) -> list[str]:
    """Two responses, which round robin has each of the two backends make; in creation order."""
    ids = [
        (await client.responses.create(model=MODEL, input="hi", background=background)).id
        for _ in range(2)
    ]
    assert {response_id.split("_")[1] for response_id in ids} == {"openai-0", "openai-1"}
    return ids


async def test_follow_ups_reach_the_backend_that_made_each_response(
    gateway: Gateway, client: openai.AsyncOpenAI
) -> None:
    ids = await _one_per_backend(client, background=True)
    upstreams = gateway.upstreams("openai")
    assert sorted(response_id for u in upstreams for response_id in u.stored.responses) == sorted(
        ids
    )
    assert all(len(upstream.stored.responses) == 1 for upstream in upstreams)

    for _ in range(2):  # twice: round robin alone would send one of each pair astray
        for response_id in ids:
            assert (await client.responses.retrieve(response_id)).id == response_id
            items = await client.responses.input_items.list(response_id)
            assert [item.type for item in items.data] == ["message"]
    for response_id in ids:
        assert (await client.responses.cancel(response_id)).status == "cancelled"
        await client.responses.delete(response_id)

    assert [upstream.stored.responses for upstream in upstreams] == [{}, {}]


async def test_a_streamed_response_is_followed_up_on_its_backend(
    gateway: Gateway, client: openai.AsyncOpenAI
) -> None:
    made = []
    for _ in range(2):
        async with client.responses.stream(model=MODEL, input="hi") as stream:
            made.append((await stream.get_final_response()).id)

    # Both orders: round robin alone would send one of the four astray.
    for response_id in [*made, *reversed(made)]:
        assert (await client.responses.retrieve(response_id)).id == response_id


async def test_previous_response_id_goes_to_the_backend_that_made_it(
    client: openai.AsyncOpenAI,
) -> None:
    ids = await _one_per_backend(client)

    for response_id in [*ids, *reversed(ids)]:
        follow_up = await client.responses.create(
            model=MODEL, input="and then?", previous_response_id=response_id
        )
        backend = response_id.split("_")[1]
        assert follow_up.id.startswith(f"resp_{backend}_")
        assert follow_up.output_text.endswith(f"after {response_id}")


async def test_another_key_gets_404_as_for_an_unknown_id(
    gateway: Gateway, client: openai.AsyncOpenAI
) -> None:
    response_id = (await client.responses.create(model=MODEL, input="hi")).id
    await gateway.admin_ok("add_user_api_key", api_key=OTHER_KEY, description="other")

    async with _client(gateway, OTHER_KEY) as other:
        for attempt in (response_id, "resp_never_made"):
            with pytest.raises(openai.NotFoundError) as refused:
                await other.responses.retrieve(attempt)
            assert refused.value.code == "response_not_found"
            assert f"'{attempt}' not found" in refused.value.message
            with pytest.raises(openai.NotFoundError) as refused:
                await other.responses.delete(attempt)
            with pytest.raises(openai.NotFoundError) as refused:
                await other.responses.create(model=MODEL, input="hi", previous_response_id=attempt)
            assert refused.value.code == "previous_response_not_found"
            assert refused.value.param == "previous_response_id"

    assert (await client.responses.retrieve(response_id)).id == response_id


async def test_a_previous_response_whose_backend_was_removed_gets_the_previous_response_404(
    gateway: Gateway, client: openai.AsyncOpenAI
) -> None:
    response_id = (await client.responses.create(model=MODEL, input="hi")).id
    for url in (await gateway.admin_ok("get_backend", provider="openai"))["urls"]:
        await gateway.admin_ok("remove_backend", provider="openai", url=url)

    with pytest.raises(openai.NotFoundError) as refused:
        await client.responses.create(model=MODEL, input="hi", previous_response_id=response_id)
    assert refused.value.code == "previous_response_not_found"
    assert refused.value.param == "previous_response_id"
    assert "no longer in the gateway's configuration" in refused.value.message


async def test_deleted_response_is_forgotten(client: openai.AsyncOpenAI) -> None:
    response_id = (await client.responses.create(model=MODEL, input="hi")).id
    await client.responses.delete(response_id)

    with pytest.raises(openai.NotFoundError) as refused:
        await client.responses.retrieve(response_id)
    assert refused.value.code == "response_not_found"


async def test_the_mapping_survives_a_restart_in_a_private_file(
    sopy: SopyUnderTest, gateway: Gateway
) -> None:
    async with _client(gateway) as client:
        ids = await _one_per_backend(client)

    await sopy.restart()

    database = sopy.settings.db_path.parent / "sopy_responses.db"
    assert os.stat(database).st_mode & 0o777 == 0o600
    async with _client(gateway) as client:
        for response_id in ids:
            assert (await client.responses.retrieve(response_id)).id == response_id


@pytest.mark.parametrize("settings", [{"response_affinity_ttl": 1.0}], indirect=True)
async def test_an_expired_id_gets_404(client: openai.AsyncOpenAI) -> None:
    response_id = (await client.responses.create(model=MODEL, input="hi")).id
    assert (await client.responses.retrieve(response_id)).id == response_id

    await trio.sleep(1.1)  # the TTL itself, not a wait for readiness

    with pytest.raises(openai.NotFoundError) as refused:
        await client.responses.retrieve(response_id)
    assert refused.value.code == "response_not_found"


@pytest.mark.parametrize("settings", [{"response_affinity_max": 1}], indirect=True)
async def test_the_oldest_id_is_forgotten_beyond_the_bound(client: openai.AsyncOpenAI) -> None:
    older, newer = await _one_per_backend(client)

    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(older)
    assert (await client.responses.retrieve(newer)).id == newer


async def test_changes_the_file_cannot_take_are_kept_and_written_once_it_can(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = workdir / "sopy_responses.db"
    affinity = ResponseAffinity(max_entries=10, ttl=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            ResponseAffinityStore(path, affinity, KeptResponses(10, 10**6, 3600)).run
        )
        with contextlib.closing(sqlite3.connect(path)) as other:
            # Another process holds the write lock past SQLite's busy timeout (5 s).
            other.execute("BEGIN IMMEDIATE")
            affinity.remember("resp_kept", "openai", "http://backend/v1", 7)
            await eventually(lambda: "could not write 1 response id" in caplog.text, within=10)
            other.execute("ROLLBACK")

            def written() -> bool:
                rows = other.execute("SELECT response_id, key_id FROM response_owners")
                return rows.fetchall() == [("resp_kept", 7)]

            await eventually(written, within=5)
        nursery.cancel_scope.cancel()
