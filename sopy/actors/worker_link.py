"""The worker links actor: in the primary process of `sopy serve --workers N` (N >= 2), it runs
the N worker processes and is their one counterpart.

Each worker is `python -m sopy worker`, started with two inherited descriptors: its end of a
Unix socket pair (the link, `sopy.actors.worker_frames`) and the public listening socket(s),
which the primary opened once and never accepts on. Every worker accepts from that one socket,
so there is one accept queue: a connection the kernel queued is taken by whichever worker
accepts next, and a worker that exits or drains leaves the queued ones to the others.

Over each link it sends the settings, then the config snapshot and every `ConfigChanged` (each
whole; a follower dropped for falling behind is subscribed again, starting from a fresh
snapshot), and keeps, per worker, the last version it acknowledged: `wait_applied` is how an
admin reply waits until every live worker serves the new configuration (read-your-writes,
`sopy.runtime.admin_requests`). It answers the workers' questions: `admit` (the one `KeyGate`
of the server, seeded with the keys' token budgets from the usage actor before any worker
starts), `response?` (the one `ResponseAffinity` and `KeptResponses`, persisted by the
affinity store as in one process), `metrics` (every worker's exposition, gathered and summed,
`sopy.runtime.metrics_merge`); it takes their usage records into the one `UsageLedger` and
fans remembered response ids and kept responses out to the other workers.

A worker that exits is started again after a growing delay (`RestartBackoff`); the admissions
its in-flight requests held are given back, and those requests fail as their connections close.
`stop` sends every worker SIGTERM (each drains: no new connection, streams finish within
`--drain-timeout`) and waits for them to exit.
"""

import contextlib
import itertools
import logging
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

import trio

from sopy.actors.primary_link import refusal_json
from sopy.actors.worker_frames import (
    Frame,
    FrameStream,
    config_frame,
    kept_json,
    owner_json,
    parse_kept,
    parse_owner,
    parse_tokens,
    settings_json,
)
from sopy.codec import converter
from sopy.errors import InsufficientQuota, KeyRateLimited, StartupError
from sopy.messages import ConfigChanged, UsageRecord, UsageRequest
from sopy.routing.kept_responses import MAX_CHAIN, KeptResponses
from sopy.routing.key_limits import Admission, KeyGate, KeyPolicy, policies
from sopy.routing.response_affinity import ResponseAffinity
from sopy.runtime.change_feed import ChangeFeed
from sopy.runtime.metrics import GatewayMetrics
from sopy.runtime.metrics_merge import merged_exposition
from sopy.runtime.supervision import RestartBackoff
from sopy.runtime.token_totals import ask_token_totals
from sopy.runtime.usage_ledger import UsageLedger
from sopy.settings import Settings

log = logging.getLogger(__name__)

GATHER_TIMEOUT = 2.0
STOP_MARGIN = 2.0


class _Worker:
    """One running worker process, as the primary sees it."""

    def __init__(self, slot: int, process: trio.Process, frames: FrameStream) -> None:
        self.slot = slot
        self.process = process
        self.frames = frames
        # Counted by `wait_applied` from the moment its first snapshot is sent: every version
        # published after that reaches it through its follower channel.
        self.live = False
        self.applied = 0
        self.progress = trio.Event()
        self.admissions: dict[int, Admission] = {}
        self.ready = trio.Event()

    def progressed(self) -> None:
        self.progress.set()
        self.progress = trio.Event()


class WorkerLinks:
    def __init__(
        self,
        settings: Settings,
        feed: ChangeFeed,
        usage: UsageLedger,
        usage_inbox: trio.MemorySendChannel[UsageRequest],
        affinity: ResponseAffinity,
        kept: KeptResponses,
        listeners: list[trio.SocketListener],
        connection_counts: int,
    ) -> None:
        self._settings = settings
        self._feed = feed
        self._usage = usage
        self._usage_inbox = usage_inbox
        self._affinity = affinity
        self._kept = kept
        self._listeners = listeners
        # The memfd of the workers' connection counts (`sopy.runtime.connection_balance`).
        self._connection_counts = connection_counts
        self.key_gate = KeyGate()
        # The primary's own numbers in /metrics: what its gate refused, and the admin socket's.
        self.metrics = GatewayMetrics(per_key=settings.metrics_per_key)
        self.metrics.add_counter_source(
            "sopy_limit_refusals",
            "Requests refused by their key's limits, by reason (expired, model, budget, "
            "parallel, rpm, tpm).",
            "reason",
            self.key_gate.refusals_by_reason,
        )
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._policies: tuple[int, Mapping[int, KeyPolicy]] = (-1, {})
        self._encoded: tuple[int, bytes] = (-1, b"")
        self._question_ids = itertools.count(1)
        # The gatherings of /metrics and usage waiting for a worker's reply, by question id.
        self._answers: dict[int, trio.MemorySendChannel[Frame]] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(worker.process.pid for worker in self._workers.values())

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[int, ...]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self._seed_budgets()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for slot in range(self._settings.workers):
                await nursery.start(self._keep_worker, slot)
            task_status.started(self.pids)

    async def _seed_budgets(self) -> None:
        """The tokens each key with a budget used, before any worker admits a request."""
        starts = self.key_gate.budget_starts(self._key_policies())
        if not starts:
            return
        spent = await ask_token_totals(self._usage_inbox, starts)
        self.key_gate.seed_budgets(starts, spent)

    async def _keep_worker(
        self, slot: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run worker `slot`, starting it again with backoff whenever it exits."""
        backoff = RestartBackoff(first_delay=0.2, max_delay=10.0)
        delay: float | None = None
        started = False
        while True:
            began = trio.current_time()
            async with trio.open_nursery() as nursery:
                worker = await self._spawn(slot)
                # Its link ending (the process exited) cancels this wait.
                nursery.start_soon(self._serve_link, worker, nursery.cancel_scope)
                await worker.ready.wait()
                if not started:
                    started = True
                    task_status.started()
            if not started:
                raise StartupError(
                    f"worker {slot} (pid {worker.process.pid}) exited with code "
                    f"{worker.process.returncode} before serving; its log above says why"
                )
            if self._stopping:
                return
            delay = backoff.delay(delay, trio.current_time() - began)
            log.error(
                "worker %d (pid %d) exited with code %s; starting it again in %.1f s",
                slot,
                worker.process.pid,
                worker.process.returncode,
                delay,
            )
            await trio.sleep(delay)
            if self._stopping:
                return

    async def _spawn(self, slot: int) -> _Worker:
        primary_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listen_fds = [listener.socket.fileno() for listener in self._listeners]
        try:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable, "-m", "sopy", "worker",
                    "--link-fd", str(worker_end.fileno()),
                    "--listen-fds", ",".join(map(str, listen_fds)),
                    "--counts-fd", str(self._connection_counts),
                    "--slot", str(slot),
                ],
                pass_fds=(worker_end.fileno(), self._connection_counts, *listen_fds),
            )  # fmt: skip
        finally:
            worker_end.close()
        frames = FrameStream(trio.SocketStream(trio.socket.from_stdlib_socket(primary_end)))
        restarted = slot in self._workers
        worker = _Worker(slot, process, frames)
        self._workers[slot] = worker
        if restarted:
            log.warning("worker %d started again (pid %d)", slot, process.pid)
        else:
            log.info("worker %d started (pid %d)", slot, process.pid)
        return worker

    async def _serve_link(self, worker: _Worker, scope: trio.CancelScope) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.frames.run_writer)
                settings = settings_json(self._settings)
                worker.frames.send_nowait({"t": "settings", "settings": settings})
                nursery.start_soon(self._send_changes, worker)
                nursery.start_soon(self._read_frames, worker)
                await worker.process.wait()
                nursery.cancel_scope.cancel()
        finally:
            worker.live = False
            worker.progressed()
            for admission in worker.admissions.values():
                admission.finish(None, False)
            worker.admissions.clear()
            with contextlib.suppress(OSError):
                await worker.frames.aclose()
            if worker.process.returncode is None:
                worker.process.kill()
            scope.cancel()

    async def _send_changes(self, worker: _Worker) -> None:
        """The snapshot, then every change; a follower that fell behind starts over."""
        while True:
            with self._feed.subscribe() as changes:
                async for changed in changes:
                    worker.frames.send_encoded(self._encoded_frame(changed))
                    worker.live = True
            log.warning("worker %d fell behind the config changes; sending it a fresh snapshot",
                        worker.slot)  # fmt: skip

    def _encoded_frame(self, changed: ConfigChanged) -> bytes:
        if self._encoded[0] != changed.version:
            self._encoded = (changed.version, config_frame(changed))
        return self._encoded[1]

    async def _read_frames(self, worker: _Worker) -> None:
        while (frame := await worker.frames.receive()) is not None:
            self._handle(worker, frame)

    def _handle(self, worker: _Worker, frame: Frame) -> None:
        kind = frame["t"]
        if kind == "applied":
            worker.applied = max(worker.applied, frame["version"])
            worker.ready.set()
            worker.progressed()
        elif kind == "admit":
            worker.frames.send_nowait(
                {"t": "reply", "id": frame["id"], **self._admit(worker, frame)}
            )
        elif kind == "finish":
            admission = worker.admissions.pop(frame["a"], None)
            if admission is not None:
                admission.finish(parse_tokens(frame["tokens"]), frame["ok"])
        elif kind == "record":
            held = worker.admissions.get(frame["a"])
            tokens = parse_tokens(frame["tokens"])
            if held is not None and tokens is not None:
                held.record(tokens)
        elif kind == "usage":
            for record in frame["records"]:
                self._usage.record(converter.structure(record, UsageRecord))
        elif kind == "owners":
            self._learn_owners(worker, frame)
        elif kind == "kept":
            self._learn_kept(worker, frame)
        elif kind == "response?":
            worker.frames.send_nowait({"t": "reply", "id": frame["id"], **self._response(frame)})
        elif kind == "metrics":
            assert self._nursery is not None
            self._nursery.start_soon(self._answer_metrics, worker, frame["id"])
        elif kind == "reply":
            answer = self._answers.pop(frame["id"], None)
            if answer is not None:
                answer.send_nowait(frame)

    def _admit(self, worker: _Worker, frame: Frame) -> dict[str, Any]:
        policy = self._key_policies().get(frame["key"])
        if policy is None:
            return {"admission": None}
        try:
            admission = self.key_gate.admit(policy, frame["estimate"])
        except (KeyRateLimited, InsufficientQuota) as refusal:
            return {"refused": refusal_json(refusal)}
        limits = policy.limits
        if limits.max_parallel is None and limits.tpm is None and limits.token_budget is None:
            # Nothing to give back or settle when it ends (an rpm only): no `finish` to send.
            return {"admission": None}
        worker.admissions[frame["id"]] = admission
        return {"admission": frame["id"]}

    def _key_policies(self) -> Mapping[int, KeyPolicy]:
        latest = self._feed.latest
        if latest is None:
            return {}
        if self._policies[0] != latest.version:
            self._policies = (latest.version, policies(latest.snapshot.user_api_keys))
        return self._policies[1]

    def _learn_owners(self, worker: _Worker, frame: Frame) -> None:
        for response_id, value in frame["owners"].items():
            owner = parse_owner(value)
            if owner is None:
                self._affinity.forget(response_id)
            else:
                self._affinity.remember(response_id, owner.provider, owner.backend, owner.key_id)
        for other in self._workers.values():
            if other is not worker and other.live:
                other.frames.send_nowait(frame)

    def _learn_kept(self, worker: _Worker, frame: Frame) -> None:
        for response_id, value in frame["kept"].items():
            kept = parse_kept(value)
            if kept is None:
                self._kept.forget(response_id)
            else:
                self._kept.put(response_id, kept)
        for other in self._workers.values():
            if other is not worker and other.live:
                other.frames.send_nowait(frame)

    def _response(self, frame: Frame) -> dict[str, Any]:
        """What the primary knows of a response a worker missed: its owner, and, if Sopy keeps
        it, it and the responses before it (a conversation), oldest last."""
        response_id: str | None = frame["response_id"]
        owner = self._affinity.owner_of(frame["response_id"])
        chain: list[list[Any]] = []
        while response_id is not None and len(chain) < MAX_CHAIN:
            kept = self._kept.kept_of(response_id)
            if kept is None:
                break
            chain.append([response_id, kept_json(kept)])
            response_id = kept.previous_response_id
        return {"owner": owner_json(owner), "kept": chain}

    async def wait_applied(self) -> tuple[int, ...]:
        """Wait until every live worker applied the latest version, for `--apply-timeout`;
        the PIDs of those still behind, which are restarted."""
        latest = self._feed.latest
        if latest is None:
            return ()
        version = latest.version
        with trio.move_on_after(self._settings.apply_timeout):
            for worker in list(self._workers.values()):
                while worker.live and worker.applied < version:
                    await worker.progress.wait()
        lagging = [w for w in self._workers.values() if w.live and w.applied < version]
        for worker in lagging:
            log.error(
                "worker pid %d did not apply config version %d within %g s; restarting it",
                worker.process.pid,
                version,
                self._settings.apply_timeout,
            )
            worker.process.kill()
        return tuple(worker.process.pid for worker in lagging)

    async def whole_server_metrics(self) -> bytes:
        """Every live worker's exposition (those that answer within `GATHER_TIMEOUT`) and the
        primary's own, summed."""
        answers = await self._ask_every_worker("metrics?")
        texts = [self.metrics.exposition().decode(), *(answer["text"] for answer in answers)]
        return merged_exposition(texts)

    async def gather_usage(self) -> None:
        """Have every live worker send the usage records it holds (within `GATHER_TIMEOUT`)."""
        await self._ask_every_worker("usage?")

    async def _ask_every_worker(self, kind: str) -> list[Frame]:
        answers: list[Frame] = []

        async def ask(worker: _Worker) -> None:
            question_id = next(self._question_ids)
            answer_send, answer_receive = trio.open_memory_channel[Frame](1)
            self._answers[question_id] = answer_send
            worker.frames.send_nowait({"t": kind, "id": question_id})
            try:
                with trio.move_on_after(GATHER_TIMEOUT):
                    answers.append(await answer_receive.receive())
            finally:
                self._answers.pop(question_id, None)

        async with trio.open_nursery() as nursery:
            for worker in self._workers.values():
                if worker.live:
                    nursery.start_soon(ask, worker)
        return answers

    async def _answer_metrics(self, worker: _Worker, question_id: int) -> None:
        text = (await self.whole_server_metrics()).decode()
        worker.frames.send_nowait({"t": "reply", "id": question_id, "text": text})

    async def stop(self) -> None:
        """Drain every worker (SIGTERM) and wait until they exited."""
        self._stopping = True
        for worker in self._workers.values():
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self._settings.drain_timeout + STOP_MARGIN):
            for worker in self._workers.values():
                await worker.process.wait()
