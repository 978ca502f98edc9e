"""The admin socket actor: the seed's newline-delimited JSON admin protocol on a Unix socket.

Each connection may send many commands, one JSON object per line, and gets one JSON line back
per command, in order: `{"ok": true, "result": ...}` or `{"ok": false, "error": {"code",
"message"}}`, with the request's `"id"` echoed when it had one. This module only translates:
lines become `AdminCommand`s for the config actor (`ask_config_store`), replies become lines.
"""

import logging
from pathlib import Path
from typing import Any

import orjson
import trio

from sopy.actors.config_store import ask_config_store
from sopy.errors import InvalidJson, PayloadTooLarge, SopyError
from sopy.line_reader import LineReader
from sopy.messages import (
    AdminRequest,
    CommandSucceeded,
    admin_result_json,
    parse_admin_command,
)
from sopy.unix_listener import unix_listener

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1024 * 1024


class AdminSocket:
    def __init__(self, path: Path, config_inbox: trio.MemorySendChannel[AdminRequest]) -> None:
        self._path = path
        self._config_inbox = config_inbox

    async def run(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        async with unix_listener(self._path) as listener, trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, [listener])
            log.info("admin socket listening on %s", self._path)
            task_status.started(self._path)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            lines = LineReader(stream, MAX_LINE_BYTES)
            while (line := await lines.next_line()) is not None:
                if isinstance(line, bytes) and not line.strip():
                    continue
                reply = await self._answer(line) if isinstance(line, bytes) else _too_long()
                try:
                    await stream.send_all(orjson.dumps(reply) + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            payload = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return _failure(
                InvalidJson(f"the line is not valid JSON ({exc}); send one JSON object per line")
            )
        request_id = payload.get("id") if isinstance(payload, dict) else None
        try:
            command = parse_admin_command(payload)
        except SopyError as error:
            return _failure(error, request_id)
        reply = await ask_config_store(self._config_inbox, command)
        if isinstance(reply, CommandSucceeded):
            return _with_id({"ok": True, "result": admin_result_json(reply.result)}, request_id)
        return _failure(reply.error, request_id)


def _too_long() -> dict[str, Any]:
    return _failure(
        PayloadTooLarge(f"the line is longer than {MAX_LINE_BYTES} bytes and was skipped")
    )


def _failure(error: SopyError, request_id: object = None) -> dict[str, Any]:
    return _with_id({"ok": False, "error": error.admin_body()}, request_id)


def _with_id(reply: dict[str, Any], request_id: object) -> dict[str, Any]:
    if request_id is not None:
        return {"id": request_id, **reply}
    return reply
