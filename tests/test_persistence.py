"""Configuration survives restarts, versions never go backwards or repeat (not even when the
database file is lost), writes to a vanished file are refused, and changes are broadcast."""

import os
import shutil
from pathlib import Path

import pytest
import trio

from sopy.messages import BackendAdded, ConfigChanged, ModelMappingAdded, UserApiKeyDeactivated
from tests.conftest import SopyUnderTest


async def _configure_everything(sopy: SopyUnderTest) -> int:
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials="sk-provider-secret-value")
        key = await admin.ok("add_user_api_key", api_key="sk-user-123", description="team")
        await admin.ok("deactivate_user_api_key", id=key["id"])
        await admin.ok("add_backend", provider="openai", url="https://api.openai.com")
        await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="openai")
        key_id: int = key["id"]
        return key_id


async def test_everything_persists_across_a_restart(sopy: SopyUnderTest) -> None:
    key_id = await _configure_everything(sopy)
    assert sopy.running is not None
    version_before = sopy.running.feed.latest.version if sopy.running.feed.latest else -1

    running = await sopy.restart()

    assert running.feed.latest is not None
    assert running.feed.latest.version == version_before == 5
    async with await sopy.admin() as admin:
        assert await admin.ok("list_admin_auth") == [{"name": "openai", "kind": "openai"}]
        revealed = await admin.ok("get_admin_auth", name="openai", reveal=True)
        assert revealed["credentials"] == "sk-provider-secret-value"
        assert (await admin.ok("get_user_api_key", id=key_id))["active"] is False
        assert await admin.ok("list_backends") == [
            {"provider": "openai", "urls": ["https://api.openai.com/v1"], "weights": [1]}
        ]
        assert (await admin.ok("get_model_mapping", model_name="gpt-4.1"))["provider"] == "openai"
        await admin.ok("remove_user_api_key", api_key="sk-user-123")
    assert running.feed.latest.version == 6


async def test_a_follower_receives_each_change_in_order(sopy: SopyUnderTest) -> None:
    assert sopy.running is not None
    changes = sopy.running.feed.subscribe()
    initial = changes.receive_nowait()
    assert initial.change is None

    await _configure_everything(sopy)

    received: list[ConfigChanged] = []
    with trio.fail_after(5):
        for _ in range(5):
            received.append(await changes.receive())
    assert [c.version for c in received] == list(range(initial.version + 1, initial.version + 6))
    kinds = [type(c.change).__name__ for c in received]
    assert kinds == [
        "AdminAuthAdded",
        "UserApiKeyAdded",
        "UserApiKeyDeactivated",
        "BackendAdded",
        "ModelMappingAdded",
    ]
    assert isinstance(received[2].change, UserApiKeyDeactivated)
    assert isinstance(received[3].change, BackendAdded)
    assert isinstance(received[4].change, ModelMappingAdded)
    final = received[-1].snapshot
    assert [m.model_name for m in final.model_mappings] == ["gpt-4.1"]
    assert final.user_api_keys[0].active is False


async def test_reads_and_no_op_writes_publish_nothing(sopy: SopyUnderTest) -> None:
    assert sopy.running is not None
    changes = sopy.running.feed.subscribe()
    changes.receive_nowait()
    async with await sopy.admin() as admin:
        key = await admin.ok("add_user_api_key")
        await admin.ok("list_user_api_keys")
        await admin.ok("activate_user_api_key", id=key["id"])
        await admin.error("get_backend", provider="none")
        await admin.ok("add_backend", provider="p", url="http://h/v1")

    first = changes.receive_nowait()
    second = changes.receive_nowait()
    assert second.version == first.version + 1
    assert isinstance(second.change, BackendAdded)
    assert changes.statistics().current_buffer_used == 0


async def test_a_follower_that_falls_behind_is_dropped_not_waited_for(
    sopy: SopyUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    assert sopy.running is not None
    stalled = sopy.running.feed.subscribe(buffer=2)
    async with await sopy.admin() as admin:
        with trio.fail_after(5):
            for i in range(5):
                await admin.ok("add_backend", provider="p", url=f"http://h{i}/v1")

    received = [stalled.receive_nowait(), stalled.receive_nowait()]
    assert len(received) == 2
    try:
        stalled.receive_nowait()
    except trio.EndOfChannel:
        pass
    else:
        raise AssertionError("a follower over its buffer should have been dropped")
    assert "dropping a config follower that fell 2 changes behind" in caplog.text


async def test_writes_are_refused_once_the_database_file_is_deleted(
    sopy: SopyUnderTest,
) -> None:
    async with await sopy.admin() as admin:
        await admin.ok("add_backend", provider="p", url="http://kept/v1")
        for name in ("sopy_admin.db", "sopy_admin.db-wal", "sopy_admin.db-shm"):
            (sopy.settings.db_path.parent / name).unlink()

        error = await admin.error("add_backend", provider="p", url="http://lost/v1")

        assert error["code"] == "config_store_replaced"
        assert "was deleted while Sopy was running" in error["message"]
        assert (await admin.ok("get_backend", provider="p"))["urls"] == ["http://kept/v1"]


async def test_writes_are_refused_once_the_database_file_is_replaced(
    sopy: SopyUnderTest, workdir: Path
) -> None:
    async with await sopy.admin() as admin:
        await admin.ok("add_backend", provider="p", url="http://kept/v1")
        copy = workdir / "copy.db"
        shutil.copyfile(sopy.settings.db_path, copy)
        os.replace(copy, sopy.settings.db_path)

        error = await admin.error("add_backend", provider="p", url="http://lost/v1")

    assert error["code"] == "config_store_replaced"
    assert "replaced by another file" in error["message"]


async def test_a_version_is_never_reused_after_the_database_is_lost(
    sopy: SopyUnderTest,
) -> None:
    await _configure_everything(sopy)
    assert sopy.running is not None and sopy.running.feed.latest is not None
    used = sopy.running.feed.latest.version
    await sopy.stop()
    for name in ("sopy_admin.db", "sopy_admin.db-wal", "sopy_admin.db-shm"):
        (sopy.settings.db_path.parent / name).unlink(missing_ok=True)

    running = await sopy.restart()
    async with await sopy.admin() as admin:
        assert await admin.ok("list_backends") == []
        await admin.ok("add_backend", provider="p", url="http://new/v1")

    assert running.feed.latest is not None
    assert running.feed.latest.version > used
