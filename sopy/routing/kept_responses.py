"""The Responses API's stored responses that Sopy keeps itself: those made by a provider that
does not serve the Responses API (kind `openai-chat` or `anthropic`), whose answers Sopy
translates (`sopy.translation`). Such a provider stores nothing, so `previous_response_id`,
`GET`/`DELETE /v1/responses/{id}` and its `input_items` are answered from here.

Each kept response holds what its request added to the conversation (its `input` items, as the
client sent them in the Responses format) and the response object the client was given (whose
`output` items are the model's turn), plus a link to its own previous response. A follow-up's
conversation is the chain's items, oldest first: `conversation_items`. As at OpenAI, a
response's `instructions` are not carried over.

Bounded: per user key at most `max_per_key` responses and `max_bytes_per_key` bytes (the oldest
evicted first), each for at most `ttl` seconds; an evicted link ends a chain with 404, as an
expired response does at OpenAI. The map lives in memory (no I/O on the request path); like
`ResponseAffinity`, every change is noted as pending, and the response affinity store actor
(`sopy.actors.response_affinity_store`) writes the changes to its file and loads the map before
the front serves, so kept responses survive a restart.
"""

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import attrs
import orjson

from sopy.errors import InvalidRequest, PreviousResponseNotFound

# A chain longer than this is refused rather than walked (a cycle cannot form: ids are new).
MAX_CHAIN = 10_000


@attrs.frozen
class KeptResponse:
    """`input_items` is the JSON array of the request's input items; `response` the response
    object's JSON; `expires_at` wall-clock seconds, so it survives a restart."""

    key_id: int | None
    previous_response_id: str | None
    input_items: bytes
    response: bytes
    expires_at: float

    @property
    def size(self) -> int:
        return len(self.input_items) + len(self.response)


# A pending change for the store: the response to write, or None to delete the id.
PendingKept = KeptResponse | None


class KeptResponses:
    def __init__(self, max_per_key: int, max_bytes_per_key: int, ttl: float) -> None:
        self.max_per_key = max_per_key
        self.max_bytes_per_key = max_bytes_per_key
        self.ttl = ttl
        self._kept: dict[str, KeptResponse] = {}
        # Per key, its response ids oldest first, and their bytes.
        self._by_key: dict[int | None, OrderedDict[str, int]] = {}
        self._bytes: dict[int | None, int] = {}
        self._pending: dict[str, PendingKept] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, response_id: str) -> bool:
        return response_id in self._kept

    def keep(
        self,
        response_id: str,
        key_id: int | None,
        previous_response_id: str | None,
        input_items: list[Any],
        response: bytes,
    ) -> None:
        kept = KeptResponse(
            key_id,
            previous_response_id,
            orjson.dumps(input_items),
            response,
            time.time() + self.ttl,
        )
        self._add(response_id, kept)
        self._pending[response_id] = kept

    def get(self, response_id: str, key_id: int | None) -> KeptResponse | None:
        """The kept response if `key_id` made it and it has not expired; another key's id and
        an unknown one look the same to the caller."""
        kept = self._kept.get(response_id)
        if kept is None or kept.key_id != key_id:
            return None
        if kept.expires_at <= time.time():
            self.forget(response_id)
            return None
        return kept

    def conversation_items(self, previous_response_id: str, key_id: int | None) -> list[Any]:
        """The conversation so far, for a request naming `previous_response_id`: each response's
        input items then its output items, oldest response first. 404 if the chain's head is
        not kept for this key; a chain cut by eviction ends where it is cut."""
        chain: list[KeptResponse] = []
        response_id: str | None = previous_response_id
        while response_id is not None and len(chain) < MAX_CHAIN:
            kept = self.get(response_id, key_id)
            if kept is None:
                if not chain:
                    raise PreviousResponseNotFound(
                        f"Previous response with id '{previous_response_id}' not found. It was "
                        "not made with this API key through this gateway, or it expired or was "
                        "deleted; start a new conversation without it.",
                        param="previous_response_id",
                    )
                break
            chain.append(kept)
            response_id = kept.previous_response_id
        items: list[Any] = []
        for kept in reversed(chain):
            items.extend(orjson.loads(kept.input_items))
            items.extend(orjson.loads(kept.response).get("output", []))
        return items

    def continued(
        self, payload: dict[str, Any], key_id: int | None
    ) -> tuple[dict[str, Any], list[Any]] | None:
        """For a request whose `previous_response_id` names a response kept here: the request
        with the whole conversation in its `input` and no `previous_response_id` (for any
        provider, native ones included), and its own input items (to keep with its answer).
        None when the previous response is not kept here (another key's, or a provider's own)."""
        previous = payload.get("previous_response_id")
        if not isinstance(previous, str) or self.get(previous, key_id) is None:
            return None
        own = own_input_items(payload)
        continued = {key: value for key, value in payload.items() if key != "previous_response_id"}
        continued["input"] = self.conversation_items(previous, key_id) + own
        return continued, own

    def input_items(self, response_id: str, key_id: int | None) -> dict[str, Any] | None:
        """`GET /v1/responses/{id}/input_items` of a kept response: the input its answer was
        made from (the conversation before it and its own input), newest first as OpenAI lists
        them, each with an id."""
        kept = self.get(response_id, key_id)
        if kept is None:
            return None
        items = orjson.loads(kept.input_items)
        if kept.previous_response_id is not None:
            with contextlib.suppress(PreviousResponseNotFound):
                items = self.conversation_items(kept.previous_response_id, key_id) + items
        data = [
            _listed(item, f"{response_id}_input_{index}")
            for index, item in enumerate(items)
            if isinstance(item, dict)
        ]
        data.reverse()
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }

    def put(self, response_id: str, kept: KeptResponse) -> None:
        """Keep a response another process made (a worker's, in the primary of
        `--workers N`), noted for the store like one kept here."""
        self._add(response_id, kept)
        self._pending[response_id] = kept

    def kept_of(self, response_id: str) -> KeptResponse | None:
        """The kept response whichever key made it, unless expired: for the primary process,
        which answers a worker's miss (the worker checks the key, as `get` does)."""
        kept = self._kept.get(response_id)
        return None if kept is None or kept.expires_at <= time.time() else kept

    def forget(self, response_id: str) -> bool:
        kept = self._kept.pop(response_id, None)
        if kept is None:
            return False
        ids = self._by_key[kept.key_id]
        self._bytes[kept.key_id] -= ids.pop(response_id)
        if not ids:
            del self._by_key[kept.key_id], self._bytes[kept.key_id]
        self._pending[response_id] = None
        return True

    def load(self, entries: Iterable[tuple[str, KeptResponse]]) -> None:
        """Fill the map from the store, oldest first; expired and excess entries are dropped
        (and their deletion noted for the store)."""
        now = time.time()
        for response_id, kept in entries:
            if kept.expires_at > now:
                self._add(response_id, kept)
            else:
                self._pending[response_id] = None

    def take_changes(self) -> dict[str, PendingKept]:
        changes, self._pending = self._pending, {}
        return changes

    def give_back(self, changes: dict[str, PendingKept]) -> None:
        """Changes the store could not write; a change noted since is newer and wins."""
        changes.update(self._pending)
        self._pending = changes

    def _add(self, response_id: str, kept: KeptResponse) -> None:
        if response_id in self._kept:
            self.forget(response_id)
            self._pending.pop(response_id, None)
        self._kept[response_id] = kept
        ids = self._by_key.setdefault(kept.key_id, OrderedDict())
        ids[response_id] = kept.size
        self._bytes[kept.key_id] = self._bytes.get(kept.key_id, 0) + kept.size
        while len(ids) > self.max_per_key or (
            self._bytes[kept.key_id] > self.max_bytes_per_key and len(ids) > 1
        ):
            self.forget(next(iter(ids)))


def own_input_items(payload: dict[str, Any]) -> list[Any]:
    """A Responses request's `input` as a list of items (a string is one user message)."""
    given = payload.get("input")
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if isinstance(given, list):
        return given
    raise InvalidRequest("'input' must be a string or a list of input items.", param="input")


def _listed(item: dict[str, Any], default_id: str) -> dict[str, Any]:
    """An input item as OpenAI lists it: with its id, its type, and a message's content as
    parts (the shorthand `{"role", "content": "text"}` written out)."""
    listed = {"id": default_id, **item}
    if "type" not in listed and "role" in listed:
        listed["type"] = "message"
    content = listed.get("content")
    if listed["type"] == "message" and isinstance(content, str):
        part = "output_text" if listed.get("role") == "assistant" else "input_text"
        listed["content"] = [{"type": part, "text": content}]
    return listed
