"""A worker process's link to its primary (`sopy serve --workers N`, N >= 2): the worker's end
of the socket pair the primary made for it (`sopy.actors.worker_frames`).

What comes in:
- `config`: a `ConfigChanged`, each carrying its whole snapshot. It is published on the
  worker's own `ChangeFeed` (which the HTTP front and the upstream pools follow as in one
  process) and acknowledged with `applied` at once: from the ack on, the front routes every
  new request by it. As every frame is a whole snapshot, a version skipped (the primary dropped
  a follower that fell behind and sent a fresh snapshot) needs no catching up; an older one than
  the worker has is ignored.
- `owners`: response ids another worker remembered or forgot (`SharedResponseAffinity`).
- `metrics?`: the primary gathering `/metrics` for the whole server; answered with this
  worker's exposition. `usage?`: the primary answering `get_usage`; answered by sending the
  usage records not sent yet.
- `reply`: the answer to a question this worker asked (`admit`, `owner?`, `metrics`).

What goes out: `applied`, usage records in batches (every `USAGE_BATCH_INTERVAL`, and once more
when the worker stops), the admissions of keys with limits (`admit`, then `record`/`finish`:
the primary's one `KeyGate` decides for every worker), the response ids this worker remembers,
and its questions. Only keys with limits ask anything per request; a key without costs nothing.

The race left in the Responses API's affinity: a worker tells the primary the id of a response
it relays while the response goes to the client, so the two travel side by side. A client that
asks another worker for that response at that very moment (well under a millisecond on an idle
machine; longer if the making worker is descheduled before its link writer runs) gets a 404 that
a moment later it would not get. A link is in order, so anything the making worker asks the
primary afterwards is answered only once the primary knows the id.
"""

import itertools
import logging
from collections.abc import Callable
from typing import Any

import trio

from sopy.actors.worker_frames import (
    Frame,
    FrameStream,
    kept_json,
    owner_json,
    parse_config_frame,
    parse_kept,
    parse_owner,
    tokens_json,
)
from sopy.codec import converter
from sopy.errors import InsufficientQuota, InternalError, KeyRateLimited, SopyError
from sopy.messages import TokenCounts
from sopy.routing.kept_responses import KeptResponses, PendingKept
from sopy.routing.response_affinity import PendingChange, ResponseAffinity
from sopy.runtime.change_feed import ChangeFeed
from sopy.runtime.usage_ledger import UsageLedger

log = logging.getLogger(__name__)

USAGE_BATCH_INTERVAL = 1.0
# A question to the primary that takes longer than this is answered as a failure.
QUESTION_TIMEOUT = 5.0


class PrimaryGone(InternalError):
    """The link to the primary process closed while a request needed it."""


class SharedResponseAffinity(ResponseAffinity):
    """A worker's `ResponseAffinity`: what it remembers or forgets is told to the primary at
    once (which persists it and tells the other workers); what the others remember is learnt
    from the primary (`learn`) without being told back."""

    def __init__(self, max_entries: int, ttl: float, tell: Callable[[Frame], None]) -> None:
        super().__init__(max_entries, ttl)
        self._tell = tell

    def remember(self, response_id: str, provider: str, backend: str, key_id: int | None) -> None:
        super().remember(response_id, provider, backend, key_id)
        self._tell_changes()

    def forget(self, response_id: str) -> None:
        super().forget(response_id)
        self._tell_changes()

    def learn(self, changes: dict[str, PendingChange]) -> None:
        for response_id, owner in changes.items():
            if owner is None:
                super().forget(response_id)
            else:
                self.load([(response_id, owner)])
        # Known to the primary already: nothing to tell it.
        self.take_changes()

    def _tell_changes(self) -> None:
        changes = self.take_changes()
        if changes:
            self._tell({"t": "owners", "owners": {k: owner_json(v) for k, v in changes.items()}})


class SharedKeptResponses(KeptResponses):
    """A worker's `KeptResponses` (the Responses API's responses Sopy keeps itself, for
    providers that store nothing), shared like `SharedResponseAffinity`."""

    def __init__(
        self, max_per_key: int, max_bytes_per_key: int, ttl: float, tell: Callable[[Frame], None]
    ) -> None:
        super().__init__(max_per_key, max_bytes_per_key, ttl)
        self._tell = tell

    def keep(
        self,
        response_id: str,
        key_id: int | None,
        previous_response_id: str | None,
        input_items: list[Any],
        response: bytes,
    ) -> None:
        super().keep(response_id, key_id, previous_response_id, input_items, response)
        self._tell_changes()

    def forget(self, response_id: str) -> bool:
        forgotten = super().forget(response_id)
        self._tell_changes()
        return forgotten

    def learn(self, changes: dict[str, PendingKept]) -> None:
        for response_id, kept in changes.items():
            if kept is None:
                super().forget(response_id)
            else:
                self.load([(response_id, kept)])
        self.take_changes()

    def _tell_changes(self) -> None:
        changes = self.take_changes()
        if changes:
            self._tell({"t": "kept", "kept": {k: kept_json(v) for k, v in changes.items()}})


class RemoteAdmission:
    """An admission held by the primary's gate for a request this worker serves."""

    __slots__ = ("_finished", "_id", "_link")

    def __init__(self, link: "PrimaryLink", admission_id: int) -> None:
        self._link = link
        self._id = admission_id
        self._finished = False

    def record(self, tokens: TokenCounts) -> None:
        self._link.frames.send_nowait({"t": "record", "a": self._id, "tokens": tokens_json(tokens)})

    def finish(self, tokens: TokenCounts | None, succeeded: bool) -> None:
        if self._finished:
            return
        self._finished = True
        self._link.frames.send_nowait(
            {"t": "finish", "a": self._id, "tokens": tokens_json(tokens), "ok": succeeded}
        )


class PrimaryLink:
    def __init__(self, frames: FrameStream, feed: ChangeFeed, usage: UsageLedger) -> None:
        self.frames = frames
        self._feed = feed
        self._usage = usage
        self.affinity: SharedResponseAffinity | None = None
        self.kept: SharedKeptResponses | None = None
        self.local_metrics: Callable[[], bytes] = bytes
        self.closed = trio.Event()
        self._question_ids = itertools.count(1)
        self._answers: dict[int, trio.MemorySendChannel[Frame]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the primary until the link closes; started once the first snapshot is
        applied (the front must not serve before)."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.frames.run_writer)
                first = await self.frames.receive()
                if first is None or first.get("t") != "config":
                    raise PrimaryGone("the primary closed the link before sending its snapshot")
                self._apply(first)
                nursery.start_soon(self._send_usage_batches)
                task_status.started()
                while (frame := await self.frames.receive()) is not None:
                    self._handle(frame)
                nursery.cancel_scope.cancel()
        finally:
            for answer in self._answers.values():
                answer.close()
            self.closed.set()

    def _handle(self, frame: Frame) -> None:
        kind = frame["t"]
        if kind == "config":
            self._apply(frame)
        elif kind == "reply":
            answer = self._answers.pop(frame["id"], None)
            if answer is not None:
                answer.send_nowait(frame)
        elif kind == "owners" and self.affinity is not None:
            self.affinity.learn({k: parse_owner(v) for k, v in frame["owners"].items()})
        elif kind == "kept" and self.kept is not None:
            self.kept.learn({k: parse_kept(v) for k, v in frame["kept"].items()})
        elif kind == "usage?":
            # The batch goes first: the primary has it once it reads the reply.
            self.send_usage()
            self.frames.send_nowait({"t": "reply", "id": frame["id"]})
        elif kind == "metrics?":
            text = self.local_metrics().decode()
            self.frames.send_nowait({"t": "reply", "id": frame["id"], "text": text})

    def _apply(self, frame: Frame) -> None:
        changed = parse_config_frame(frame)
        latest = self._feed.latest
        if latest is None or changed.version > latest.version:
            self._feed.publish(changed)
        self.frames.send_nowait({"t": "applied", "version": changed.version})

    async def _send_usage_batches(self) -> None:
        while True:
            await trio.sleep(USAGE_BATCH_INTERVAL)
            self.send_usage()

    def send_usage(self) -> None:
        """The usage records noted since the last batch, to the primary's usage actor."""
        records = self._usage.take_pending()
        if records:
            batch = [converter.unstructure(record) for record in records]
            self.frames.send_nowait({"t": "usage", "records": batch})

    async def ask(self, question: Frame) -> Frame:
        """Send `question` and wait for its reply."""
        question_id = next(self._question_ids)
        answer_send, answer_receive = trio.open_memory_channel[Frame](1)
        self._answers[question_id] = answer_send
        self.frames.send_nowait({**question, "id": question_id})
        try:
            with trio.fail_after(QUESTION_TIMEOUT):
                return await answer_receive.receive()
        except (trio.EndOfChannel, trio.TooSlowError):
            raise PrimaryGone(
                "this worker lost its link to the primary process; retry the request"
            ) from None
        finally:
            self._answers.pop(question_id, None)

    async def admit(self, key_id: int, estimate: int) -> RemoteAdmission | None:
        """The primary gate's admission of one request of a key with limits, or its refusal
        raised here as it would be in one process."""
        reply = await self.ask({"t": "admit", "key": key_id, "estimate": estimate})
        refused = reply.get("refused")
        if refused is not None:
            raise _refusal(refused)
        admission_id = reply["admission"]
        return None if admission_id is None else RemoteAdmission(self, admission_id)

    async def recall(self, response_id: str) -> None:
        """On a miss in this worker's maps: ask the primary, which knows every worker's, where
        the response lives (`ResponseAffinity`) or the response itself with the ones before it
        (`KeptResponses`), and learn the answer."""
        assert self.affinity is not None and self.kept is not None
        reply = await self.ask({"t": "response?", "response_id": response_id})
        owner = parse_owner(reply["owner"])
        if owner is not None:
            self.affinity.learn({response_id: owner})
        self.kept.learn({kept_id: parse_kept(value) for kept_id, value in reply["kept"]})

    async def whole_server_metrics(self) -> bytes:
        reply = await self.ask({"t": "metrics"})
        text: str = reply["text"]
        return text.encode()


def refusal_json(error: SopyError) -> dict[str, Any]:
    """A refusal of the primary's gate as the worker rebuilds it (`_refusal`)."""
    headers = error.rate_headers if isinstance(error, KeyRateLimited) else []
    return {
        "quota": isinstance(error, InsufficientQuota),
        "message": error.message,
        "retry_after": getattr(error, "retry_after", None),
        "headers": [[name.decode(), value.decode()] for name, value in headers],
    }


def _refusal(refused: dict[str, Any]) -> SopyError:
    if refused["quota"]:
        return InsufficientQuota(refused["message"])
    return KeyRateLimited(
        refused["message"],
        retry_after=refused["retry_after"],
        rate_headers=[(name.encode(), value.encode()) for name, value in refused["headers"]],
    )
