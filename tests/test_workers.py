"""`sopy serve --workers N`: N worker processes on one public port behind one primary, as real
processes on a real port with mock providers. Every worker serves what an admin command changed
once its reply is out (read-your-writes); limits, usage and /metrics are the whole server's; a
worker that dies comes back; SIGTERM drains them all.

Which worker accepts a connection is the kernel's choice: a test that needs a given worker to
serve stops the others (SIGSTOP) while it connects, so the one accept queue hands the
connection to that worker."""

import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from sopy.testing.mock_upstream import MockUpstream
from tests.admin_connection import AdminConnection
from tests.cluster_servers import PostgresServer, postgres  # noqa: F401 (a fixture)
from tests.gateway import AUTH, USER_KEY, chat
from tests.serve_process import ServeProcess

OTHER_KEY = "sk-user-test-key-0002"
REQUESTS_PER_CHECK = 200
CONCURRENCY = 16


async def _start(
    workdir: Path, nursery: trio.Nursery, workers: int, *extra: str
) -> tuple[ServeProcess, dict[str, MockUpstream]]:
    """`sopy serve --workers N` with two mock backends of provider openai, gpt-4.1 mapped and
    USER_KEY added."""
    upstreams = [MockUpstream("openai-0"), MockUpstream("openai-1")]
    urls = [await nursery.start(upstream.serve) for upstream in upstreams]
    # Warnings only: nothing reads the children's output while requests are sent, and
    # an access log line per request would fill the pipe.
    server = await ServeProcess.start(
        workdir, "--workers", str(workers), "--log-level", "warning", *extra
    )
    async with await _admin(workdir) as admin:
        for url in urls:
            await admin.ok("add_backend", provider="openai", url=url)
        await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="openai")
        await admin.ok("add_user_api_key", api_key=USER_KEY)
    return server, dict(zip(urls, upstreams, strict=True))


async def _admin(workdir: Path) -> AdminConnection:
    return await AdminConnection.open(workdir / "sopy-admin.sock")


async def _statuses(
    url: str, body: dict[str, Any], key: str = USER_KEY, count: int = REQUESTS_PER_CHECK
) -> list[int]:
    """The status of `count` chat completions, each on a fresh connection, CONCURRENCY at once."""
    statuses: list[int] = []
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=fresh, timeout=20) as client:

        async def send(slots: trio.Semaphore) -> None:
            async with slots:
                response = await client.post(
                    "/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {key}"},
                )
                statuses.append(response.status_code)

        slots = trio.Semaphore(CONCURRENCY)
        async with trio.open_nursery() as senders:
            for _ in range(count):
                senders.start_soon(send, slots)
    return statuses


@contextlib.contextmanager
def _only_serving(workers: list[int], worker: int) -> Iterator[None]:
    """Every one of `workers` but `worker` stopped (SIGSTOP), so it accepts every new
    connection."""
    others = [pid for pid in workers if pid != worker]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def _client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose every request opens its own connection."""
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, limits=fresh, timeout=20) as client:
        yield client


async def test_every_worker_serves_each_change_once_its_reply_is_out(
    workdir: Path, nursery: trio.Nursery
) -> None:
    server, upstreams = await _start(workdir, nursery, 3)
    async with await _admin(workdir) as admin:
        added = await admin.call("add_user_api_key", api_key=OTHER_KEY)
        assert added["ok"] and "lagging_workers" not in added, added
        assert set(await _statuses(server.http_url, chat(), OTHER_KEY)) == {200}

        await admin.ok("deactivate_user_api_key", id=added["result"]["id"])
        assert set(await _statuses(server.http_url, chat(), OTHER_KEY)) == {401}

        await admin.ok("add_model_mapping", model_name="gpt-new", provider="openai")
        assert set(await _statuses(server.http_url, chat("gpt-new"))) == {200}

        removed_url = (await admin.ok("list_backends"))[0]["urls"][0]
        removed = next(up for url, up in upstreams.items() if removed_url.startswith(url))
        await admin.ok("remove_backend", provider="openai", url=removed_url)
        served_before = len(removed.requests)
        assert set(await _statuses(server.http_url, chat())) == {200}
        assert len(removed.requests) == served_before


async def test_an_rpm_of_10_admits_exactly_10_across_workers(
    workdir: Path, nursery: trio.Nursery
) -> None:
    server, _ = await _start(workdir, nursery, 3)
    async with await _admin(workdir) as admin:
        (key,) = await admin.ok("list_user_api_keys")
        await admin.ok("update_user_api_key", id=key["id"], rpm=10)

    statuses = await _statuses(server.http_url, chat(), count=40)

    assert statuses.count(200) == 10
    assert statuses.count(429) == 30


async def test_a_killed_worker_comes_back_and_the_others_keep_serving(
    workdir: Path, nursery: trio.Nursery
) -> None:
    server, _ = await _start(workdir, nursery, 2)
    killed, survivor = server.worker_pids
    os.kill(killed, signal.SIGKILL)

    assert set(await _statuses(server.http_url, chat(), count=50)) == {200}
    await server.wait_for_output(b"exited with code -9")
    await server.wait_for_output(b"started again (pid ")
    (new_pid,) = _restarted_pids(server)
    # The new worker serves: with the survivor stopped, it takes every connection.
    with _only_serving([new_pid, survivor], new_pid):
        assert set(await _statuses(server.http_url, chat(), count=20)) == {200}


def _restarted_pids(server: ServeProcess) -> list[int]:
    line = rb"worker \d+ started again \(pid (\d+)\)"
    return [int(pid) for pid in re.findall(line, server.output)]


async def test_sigterm_drains_a_running_stream_on_every_worker(
    workdir: Path, nursery: trio.Nursery
) -> None:
    server, _ = await _start(workdir, nursery, 2, "--drain-timeout", "10")
    body = chat(stream=True, mock={"chunks": 10, "chunk_delay": 0.1})
    received: dict[int, list[str]] = {}

    async def stream(worker: int, task_status: trio.TaskStatus[None]) -> None:
        async with _client(server.http_url) as client, contextlib.AsyncExitStack() as stopped:
            # The others stop until this worker has accepted the stream, no longer.
            stopped.enter_context(_only_serving(server.worker_pids, worker))
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.aiter_lines()
                first = await anext(lines)
                await stopped.aclose()
                task_status.started()
                received[worker] = [first, *[line async for line in lines]]

    async with trio.open_nursery() as streams:
        for worker in server.worker_pids:
            await streams.start(stream, worker)
        server.process.send_signal(signal.SIGTERM)

    for lines in received.values():
        data = [line for line in lines if line.startswith("data: ")]
        assert data[-1] == "data: [DONE]"
        assert len(data) >= 10
    with trio.fail_after(15):
        assert await server.process.wait() == 0


async def test_usage_and_metrics_count_every_request_of_every_worker(
    workdir: Path, nursery: trio.Nursery
) -> None:
    server, _ = await _start(workdir, nursery, 2)
    statuses = await _statuses(server.http_url, chat(), count=60)
    assert set(statuses) == {200}

    async with await _admin(workdir) as admin:
        assert await _usage_requests(admin) == 60
    async with _client(server.http_url) as client:
        metrics = (await client.get("/metrics")).text
    counted = re.findall(r'^sopy_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', metrics, re.M)
    assert sum(float(count) for count in counted) == 60


async def _usage_requests(admin: AdminConnection) -> int:
    report = await admin.ok("get_usage")
    return sum(group["requests"] for group in report["groups"])


async def test_usage_records_of_every_worker_go_to_the_postgresql_store(
    workdir: Path,
    nursery: trio.Nursery,
    postgres: PostgresServer,  # noqa: F811
) -> None:
    server, _ = await _start(workdir, nursery, 2, "--store", postgres.url)
    statuses = await _statuses(server.http_url, chat(), count=20)
    assert set(statuses) == {200}

    async with await _admin(workdir) as admin:
        assert await _usage_requests(admin) == 20

    def stored_in_postgresql() -> int:
        with psycopg.connect(postgres.url) as connection:
            row = connection.execute("SELECT count(*) FROM usage_records").fetchone()
            return 0 if row is None else int(row[0])

    assert await trio.to_thread.run_sync(stored_in_postgresql) == 20


async def test_a_response_made_through_one_worker_is_reached_through_another(
    workdir: Path, nursery: trio.Nursery
) -> None:
    server, _ = await _start(workdir, nursery, 2)
    maker, other = server.worker_pids
    async with _client(server.http_url) as client:
        with _only_serving(server.worker_pids, maker):
            made = await client.post("/v1/responses", json={"model": "gpt-4.1", "input": "hi"})
            # The race left (see sopy.actors.primary_link): the maker tells the primary just
            # after the client has the response. Its next question to the primary (a scrape)
            # travels behind that, so once answered, the primary knows the response.
            assert (await client.get("/metrics")).status_code == 200
        assert made.status_code == 200, made.text
        response_id = made.json()["id"]

        with _only_serving(server.worker_pids, other):
            fetched = await client.get(f"/v1/responses/{response_id}")
            follow_up = await client.post(
                "/v1/responses",
                json={"model": "gpt-4.1", "input": "more", "previous_response_id": response_id},
            )
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["id"] == response_id
    assert follow_up.status_code == 200, follow_up.text


async def test_a_worker_that_does_not_apply_a_change_in_time_is_named_and_restarted(
    workdir: Path, nursery: trio.Nursery
) -> None:
    server, _ = await _start(workdir, nursery, 2, "--apply-timeout", "0.5")
    stuck, _ = server.worker_pids
    os.kill(stuck, signal.SIGSTOP)
    async with await _admin(workdir) as admin:
        reply = await admin.call("add_user_api_key", api_key=OTHER_KEY)
    assert reply["ok"] is True
    assert reply["lagging_workers"] == [stuck]

    await server.wait_for_output(b"started again (pid ")
    assert set(await _statuses(server.http_url, chat(), OTHER_KEY, count=20)) == {200}


async def test_the_metrics_port_is_served_by_the_primary_for_every_worker(
    workdir: Path, nursery: trio.Nursery
) -> None:
    upstream_url = await nursery.start(MockUpstream("openai-0").serve)
    server = await ServeProcess.start(workdir, "--workers", "2", "--metrics-port", "0")
    await server.wait_for_output(b"/metrics of every worker on ")
    match = re.search(rb"/metrics of every worker on (\S+)", server.output)
    assert match is not None
    async with await _admin(workdir) as admin:
        await admin.ok("add_backend", provider="openai", url=upstream_url)
        await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="openai")
        await admin.ok("add_user_api_key", api_key=USER_KEY)
    assert set(await _statuses(server.http_url, chat(), count=12)) == {200}

    async with httpx.AsyncClient() as client:
        metrics = (await client.get(match.group(1).decode() + "/metrics")).text
        on_public_port = await client.get(server.http_url + "/metrics")
    counted = re.findall(r'^sopy_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', metrics, re.M)
    assert sum(float(count) for count in counted) == 12
    assert on_public_port.status_code == 404


async def test_max_parallel_holds_across_workers_and_frees_when_a_request_ends(
    workdir: Path, nursery: trio.Nursery
) -> None:
    server, _ = await _start(workdir, nursery, 2)
    first, second = server.worker_pids
    async with await _admin(workdir) as admin:
        (key,) = await admin.ok("list_user_api_keys")
        await admin.ok("update_user_api_key", id=key["id"], max_parallel=1)
    slow = chat(stream=True, mock={"chunks": 5, "chunk_delay": 0.1})

    async with _client(server.http_url) as client, contextlib.AsyncExitStack() as stopped:
        stopped.enter_context(_only_serving(server.worker_pids, first))
        async with client.stream("POST", "/v1/chat/completions", json=slow) as streaming:
            lines = streaming.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            await stopped.aclose()
            with _only_serving(server.worker_pids, second):
                refused = await client.post("/v1/chat/completions", json=chat())
            assert "data: [DONE]" in [line async for line in lines]
        with _only_serving(server.worker_pids, first):
            # Behind the stream's end on the first worker's link: the primary has it once
            # this scrape is answered.
            assert (await client.get("/metrics")).status_code == 200
        with _only_serving(server.worker_pids, second):
            admitted = await client.post("/v1/chat/completions", json=chat())

    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert admitted.status_code == 200, admitted.text


async def test_an_admin_reply_waits_until_a_slow_worker_applied_the_change(
    workdir: Path, nursery: trio.Nursery
) -> None:
    server, _ = await _start(workdir, nursery, 2)
    slow, _ = server.worker_pids
    paused = 0.5
    os.kill(slow, signal.SIGSTOP)

    async def resume() -> None:
        await trio.sleep(paused)
        os.kill(slow, signal.SIGCONT)

    nursery.start_soon(resume)
    began = trio.current_time()
    async with await _admin(workdir) as admin:
        reply = await admin.call("add_user_api_key", api_key=OTHER_KEY)

    assert trio.current_time() - began >= paused
    assert reply["ok"] is True and "lagging_workers" not in reply, reply
    with _only_serving(server.worker_pids, slow):
        assert set(await _statuses(server.http_url, chat(), OTHER_KEY, count=20)) == {200}


async def test_a_response_sopy_keeps_is_continued_and_deleted_through_another_worker(
    workdir: Path, nursery: trio.Nursery
) -> None:
    chat_only = MockUpstream("chat-0", chat_only=True)
    chat_url = await nursery.start(chat_only.serve)
    server = await ServeProcess.start(workdir, "--workers", "2", "--log-level", "warning")
    async with await _admin(workdir) as admin:
        await admin.ok("add_backend", provider="chat", url=chat_url)
        await admin.ok("add_admin_auth", name="chat", credentials="sk-chat", kind="openai-chat")
        await admin.ok("add_model_mapping", model_name="chat-model", provider="chat")
        await admin.ok("add_user_api_key", api_key=USER_KEY)
    maker, other = server.worker_pids
    async with _client(server.http_url) as client:
        with _only_serving(server.worker_pids, maker):
            made = await client.post(
                "/v1/responses", json={"model": "chat-model", "input": "my name is Ada"}
            )
            assert made.status_code == 200, made.text
            # Behind the kept response on the maker's link (see the test above).
            assert (await client.get("/metrics")).status_code == 200
        response_id = made.json()["id"]

        with _only_serving(server.worker_pids, other):
            fetched = await client.get(f"/v1/responses/{response_id}")
            follow_up = {"model": "chat-model", "input": "my name?"}
            continued = await client.post(
                "/v1/responses", json={**follow_up, "previous_response_id": response_id}
            )
            deleted = await client.delete(f"/v1/responses/{response_id}")
            # A scrape gathers every worker's numbers: once answered, the maker has read what
            # the primary sent it before, the deletion among it.
            assert (await client.get("/metrics")).status_code == 200
        with _only_serving(server.worker_pids, maker):
            gone = await client.get(f"/v1/responses/{response_id}")

    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["output"] == made.json()["output"]
    assert continued.status_code == 200, continued.text
    roles = [message["role"] for message in chat_only.requests[-1].json()["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert deleted.status_code == 200, deleted.text
    assert gone.status_code == 404, gone.text
