"""No secret leaks: a real `sopy serve` at debug log level goes through a full working day, then
every secret it was given is searched for in everything it wrote, everything it answered (except
the one answer that is meant to show it) and its database files."""

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from sopy.testing.mock_upstream import MockUpstream, RandomFault
from tests.admin_connection import AdminConnection, open_events
from tests.serve_process import ServeProcess

CREDENTIALS = ["sk-openai-secret-credential-AAAA1111", "sk-azure-secret-credential-BBBB2222"]
USER_KEY = "sk-user-secret-key-CCCC3333"
WRONG_KEY = "sk-user-wrong-guess-DDDD4444"


async def test_no_secret_appears_in_logs_replies_events_or_the_database(
    workdir: Path, nursery: trio.Nursery
) -> None:
    healthy = await nursery.start(MockUpstream("healthy").serve)
    statuses = (RandomFault.STATUS_500, RandomFault.STATUS_503)
    failing = await nursery.start(
        MockUpstream("failing", failure_rate=1.0, fault_kinds=statuses).serve
    )
    key_file = workdir / "sopy.key"
    server = await ServeProcess.start(
        workdir, "--log-level", "debug", "--secret-key-file", str(key_file), "--retries", "1"
    )
    secrets = [*CREDENTIALS, USER_KEY, WRONG_KEY, key_file.read_text().strip()]
    seen: list[Any] = []

    async with await AdminConnection.open(workdir / "sopy-admin.sock") as admin:
        events = await _follow_events(nursery, workdir / "sopy-admin.sock", seen)
        seen += await _configure(admin, healthy, failing)
        generated = await admin.ok("add_user_api_key", description="generated")
        secrets.append(generated.pop("api_key"))
        seen.append(generated)
        await _use_the_api(server.http_url, generated_key=secrets[-1], failing_backend=failing)
        seen += await _make_admin_mistakes(admin)
        rotation = await admin.ok("rotate_secret_key", new_key=None)
        seen.append(rotation)
        seen += [await admin.ok(c) for c in ("list_admin_auth", "list_user_api_keys")]
        seen.append(await admin.ok("get_admin_auth", name="openai"))
        await trio.sleep(0.2)
        events.cancel()

    server.process.send_signal(signal.SIGTERM)
    output = await server.read_rest()
    assert await server.process.wait() == 0
    secrets.append(key_file.read_text().strip())

    assert "request" in output and "status=401" in output and "status=200" in output
    replies = orjson.dumps(seen).decode()
    stored = b"".join(
        (workdir / name).read_bytes() for name in os.listdir(workdir) if "sopy_admin.db" in name
    )
    for secret in secrets:
        assert secret not in output, f"{secret[:12]}... leaked into the log"
        assert secret not in replies, f"{secret[:12]}... leaked into an admin reply or event"
        assert secret.encode() not in stored, f"{secret[:12]}... is in the database files"


async def _follow_events(
    nursery: trio.Nursery, socket_path: Path, seen: list[Any]
) -> trio.CancelScope:
    scope = trio.CancelScope()
    ws = await open_events(nursery, socket_path)

    async def collect() -> None:
        with scope:
            while True:
                seen.append(orjson.loads(await ws.get_message()))

    nursery.start_soon(collect)
    return scope


async def _configure(admin: AdminConnection, healthy: str, failing: str) -> list[Any]:
    replies = [
        await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIALS[0]),
        await admin.ok("add_admin_auth", name="azure", credentials=CREDENTIALS[1]),
        await admin.ok("add_backend", provider="openai", url=healthy),
        await admin.ok("add_backend", provider="azure", url=failing),
        await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="openai"),
        await admin.ok("add_model_mapping", model_name="gpt-azure", provider="azure"),
    ]
    added = await admin.ok("add_user_api_key", api_key=USER_KEY, description="team")
    added.pop("api_key")
    return [*replies, added]


async def _use_the_api(base_url: str, generated_key: str, failing_backend: str) -> None:
    chat = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=base_url + "/v1") as client:
        for key in (USER_KEY, generated_key):
            headers = {"authorization": f"Bearer {key}"}
            assert (await client.post("/chat/completions", json=chat, headers=headers)).is_success
            streamed = await client.post(
                "/chat/completions", json={**chat, "stream": True}, headers=headers
            )
            assert streamed.is_success
            failed = await client.post(
                "/chat/completions", json={**chat, "model": "gpt-azure"}, headers=headers
            )
            assert failed.status_code >= 400
            assert failing_backend.removeprefix("http://") not in failed.text
            missing = await client.post(
                "/chat/completions", json={**chat, "model": "nope"}, headers=headers
            )
            assert missing.status_code == 404
        wrong = await client.post(
            "/chat/completions", json=chat, headers={"authorization": f"Bearer {WRONG_KEY}"}
        )
        assert wrong.status_code == 401
        assert WRONG_KEY not in wrong.text


async def _make_admin_mistakes(admin: AdminConnection) -> list[Any]:
    return [
        await admin.error("add_admin_auth", name="openai", credentials=CREDENTIALS[1]),
        await admin.error("add_admin_auth", name="x", credentials=CREDENTIALS[0] + "\n"),
        await admin.error("add_user_api_key", api_key=USER_KEY),
        await admin.error("add_user_api_key", api_key=USER_KEY + " "),
        await admin.error("remove_user_api_key", api_key=WRONG_KEY),
    ]
