"""Learning a Responses API response's id from the backend's answer, as it is relayed.

The answer to one `POST /v1/responses` is a whole JSON body (`id_of_response_object`) or an SSE
stream, whose first event, `response.created`, names it: a `ResponseIdWatcher` reads the chunks
up to that event. It keeps only
the stream's unfinished line, up to `MAX_WATCHED_BYTES` in all: a stream that has not named its
id by then is not watched further (its follow-ups then get a 404), so a client cannot make the
gateway buffer without bound. `sopy.actors.websocket_relay` uses `id_of_created_event` on each
message of the WebSocket mode.
"""

from collections.abc import Callable

import orjson

# Generous: `response.created` repeats the request's instructions and tools, which coding
# agents make tens of kilobytes long.
MAX_WATCHED_BYTES = 1024 * 1024


def id_of_response_object(body: bytes) -> str | None:
    """The `id` of a response object, or None if `body` is not one."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(payload, dict) and payload.get("object") == "response":
        response_id = payload.get("id")
        if isinstance(response_id, str) and response_id:
            return response_id
    return None


def id_of_created_event(data: bytes | str) -> str | None:
    """The response id in a `response.created` event's JSON, or None for any other event."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("type") != "response.created":
        return None
    response = event.get("response")
    if not isinstance(response, dict):
        return None
    response_id = response.get("id")
    return response_id if isinstance(response_id, str) and response_id else None


class ResponseIdWatcher:
    """Watches the answer to one request for its response id and calls `found` with it, as
    soon as it is known (a follow-up such as `cancel` may come while the stream still runs)."""

    def __init__(self, found: Callable[[str], None]) -> None:
        self.done = False
        self._found = found
        self._line = bytearray()
        self._seen = 0

    def whole(self, status: int, body: bytes) -> None:
        """The answer came in one piece."""
        self.done = True
        response_id = id_of_response_object(body) if status == 200 else None
        if response_id is not None:
            self._found(response_id)

    def feed(self, chunk: bytes) -> None:
        """The next piece of an event stream."""
        if self.done:
            return
        self._seen += len(chunk)
        self._line += chunk
        *lines, rest = self._line.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                # `response.created` is the stream's first event: no need to look further.
                self.done = True
                response_id = id_of_created_event(bytes(line[5:]))
                if response_id is not None:
                    self._found(response_id)
                break
        if self.done or self._seen > MAX_WATCHED_BYTES:
            self.done = True
            self._line = bytearray()
        else:
            self._line = bytearray(rest)
