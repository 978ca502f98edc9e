"""Which provider and backend made each stored Responses API response, and for which user key.

OpenAI's Responses API is stateful: `GET`/`DELETE /v1/responses/{id}`, its `cancel` and
`input_items`, and a new response naming `previous_response_id`, only work on the backend that
stored the response. The HTTP front records every response id it relays (`remember`) and looks
follow-ups up here (`owner_for`) without any I/O: the map lives in memory.

The map is bounded: at most `max_entries` ids (the oldest evicted first) for at most `ttl`
seconds each. It is made durable off the request path: every change is also noted as pending,
and the affinity store actor (`sopy.actors.response_affinity_store`) alone takes those notes
(`take_changes`) and writes them to its own SQLite file in batches, and fills the map from that
file (`load`) before the front serves.
"""

import time
from collections import OrderedDict
from collections.abc import Iterable

import attrs


@attrs.frozen
class ResponseOwner:
    """Where response `id` lives and who may reach it. `key_id` is None under --no-auth;
    `expires_at` is wall-clock seconds, so it survives a restart."""

    provider: str
    backend: str
    key_id: int | None
    expires_at: float


# A pending change for the store: the owner to write, or None to delete the id.
PendingChange = ResponseOwner | None


class ResponseAffinity:
    def __init__(self, max_entries: int, ttl: float) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._owners: OrderedDict[str, ResponseOwner] = OrderedDict()
        self._pending: dict[str, PendingChange] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def remember(self, response_id: str, provider: str, backend: str, key_id: int | None) -> None:
        owner = ResponseOwner(provider, backend, key_id, time.time() + self.ttl)
        self._owners[response_id] = owner
        self._owners.move_to_end(response_id)
        self._pending[response_id] = owner
        self._evict_beyond_bound()

    def owner_for(self, response_id: str, key_id: int | None) -> ResponseOwner | None:
        """The owner of `response_id` if `key_id` made it and it has not expired. Another key's
        id and an unknown one look the same to the caller."""
        owner = self._owners.get(response_id)
        if owner is None or owner.key_id != key_id:
            return None
        if owner.expires_at <= time.time():
            self.forget(response_id)
            return None
        return owner

    def forget(self, response_id: str) -> None:
        if self._owners.pop(response_id, None) is not None:
            self._pending[response_id] = None

    def load(self, entries: Iterable[tuple[str, ResponseOwner]]) -> None:
        """Fill the map from the store, oldest first; expired and excess entries are dropped
        (and their deletion noted for the store)."""
        now = time.time()
        for response_id, owner in entries:
            if owner.expires_at > now:
                self._owners[response_id] = owner
            else:
                self._pending[response_id] = None
        self._evict_beyond_bound()

    def take_changes(self) -> dict[str, PendingChange]:
        """The changes since the last call, for the store to write."""
        changes, self._pending = self._pending, {}
        return changes

    def _evict_beyond_bound(self) -> None:
        while len(self._owners) > self.max_entries:
            evicted, _ = self._owners.popitem(last=False)
            self._pending[evicted] = None
