"""The frames of a worker link: what the primary process (`sopy.actors.worker_link`) and one of
its worker processes (`sopy.actors.primary_link`) say to each other over their Unix socket pair.

A frame is one JSON object per line (orjson), with its kind in `"t"`; message data inside it
(a `ConfigChanged`'s snapshot, `UsageRecord`s, `TokenCounts`, a `ResponseOwner`) takes its
JSON form from the one cattrs converter (`sopy.codec`); a `KeptResponse`'s two JSON documents
travel as text. Writes go through one writer task per
end (`FrameStream.run_writer`), so any task, and synchronous code on the request path (an
admission finishing, a usage batch), can queue a frame without awaiting (`send_nowait`).

The link is private to the two processes: a socket pair made by the primary, its worker's end
inherited by the worker alone, so no file on disk names it and no other user can connect.
"""

import contextlib
import math
from pathlib import Path
from typing import Any

import orjson
import trio

from sopy.codec import converter, parse_config_event
from sopy.messages import ConfigChanged, ConfigSnapshot, TokenCounts
from sopy.protocol.line_reader import LineReader
from sopy.routing.kept_responses import KeptResponse
from sopy.routing.response_affinity import ResponseOwner
from sopy.settings import Settings

# A snapshot of a large configuration is one frame.
MAX_FRAME_BYTES = 512 * 1024 * 1024

MAX_FRAMES_PER_WRITE = 256

Frame = dict[str, Any]


class FrameStream:
    """One end of a link: frames in, frames out."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._lines = LineReader(stream, MAX_FRAME_BYTES)
        # Unbounded: a frame queued here is a promise to the other end (an admission given
        # back, a usage record) that must not be dropped, and the writer drains it at once.
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes](math.inf)
        self.all_sent = trio.Event()

    def send_nowait(self, frame: Frame) -> None:
        self.send_encoded(orjson.dumps(frame) + b"\n")

    def send_encoded(self, line: bytes) -> None:
        """A frame already encoded (a config frame, encoded once for every worker)."""
        # A link gone is learnt by whoever waits on an answer, from `receive`.
        with contextlib.suppress(trio.ClosedResourceError):
            self._outbox_send.send_nowait(line)

    async def run_writer(self) -> None:
        """Send the queued frames until `finish_sending`, or until the other end is gone (its
        process exited: whoever waits on it learns that from `receive` or the process)."""
        outbox = self._outbox
        try:
            async for line in outbox:
                # Whatever else is queued goes in the same write: under load, one system call
                # carries many frames.
                lines = [line]
                with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                    while len(lines) < MAX_FRAMES_PER_WRITE:
                        lines.append(outbox.receive_nowait())
                await self._stream.send_all(b"".join(lines) if len(lines) > 1 else line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        self.all_sent.set()

    def finish_sending(self) -> None:
        """Send what is queued, then nothing more (`all_sent` is set once it is out)."""
        self._outbox_send.close()

    async def receive(self) -> Frame | None:
        """The next frame, or None once the other end closed the link."""
        try:
            line = await self._lines.next_line()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if line is None or not isinstance(line, bytes):
            return None
        frame: Frame = orjson.loads(line)
        return frame

    async def aclose(self) -> None:
        self._outbox_send.close()
        await self._stream.aclose()


def config_frame(changed: ConfigChanged) -> bytes:
    """A `ConfigChanged` as an encoded frame: every one carries the whole snapshot."""
    change = None
    if changed.change is not None:
        change = {"kind": changed.change.kind, **converter.unstructure(changed.change)}
    frame = {
        "t": "config",
        "version": changed.version,
        "at": changed.at,
        "change": change,
        "snapshot": converter.unstructure(changed.snapshot),
    }
    return orjson.dumps(frame) + b"\n"


def parse_config_frame(frame: Frame) -> ConfigChanged:
    change = None if frame["change"] is None else parse_config_event(frame["change"])
    snapshot = converter.structure(frame["snapshot"], ConfigSnapshot)
    return ConfigChanged(frame["version"], frame["at"], change, snapshot)


# The settings travel too, with their paths as text.
_settings_converter = converter.copy()
_settings_converter.register_unstructure_hook(Path, str)
_settings_converter.register_structure_hook(Path, lambda value, _: Path(value))


def settings_json(settings: Settings) -> Any:
    return _settings_converter.unstructure(settings)


def parse_settings(value: Any) -> Settings:
    return _settings_converter.structure(value, Settings)


def tokens_json(tokens: TokenCounts | None) -> Any:
    return None if tokens is None else converter.unstructure(tokens)


def parse_tokens(value: Any) -> TokenCounts | None:
    return None if value is None else converter.structure(value, TokenCounts)


def owner_json(owner: ResponseOwner | None) -> Any:
    return None if owner is None else converter.unstructure(owner)


def parse_owner(value: Any) -> ResponseOwner | None:
    return None if value is None else converter.structure(value, ResponseOwner)


def kept_json(kept: KeptResponse | None) -> Any:
    """A kept response; its two JSON documents travel as text."""
    if kept is None:
        return None
    return {
        "key_id": kept.key_id,
        "previous_response_id": kept.previous_response_id,
        "input_items": kept.input_items.decode(),
        "response": kept.response.decode(),
        "expires_at": kept.expires_at,
    }


def parse_kept(value: Any) -> KeptResponse | None:
    if value is None:
        return None
    return KeptResponse(
        value["key_id"],
        value["previous_response_id"],
        value["input_items"].encode(),
        value["response"].encode(),
        value["expires_at"],
    )
