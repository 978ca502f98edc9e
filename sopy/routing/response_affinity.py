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

`previous_response_route` is how a new response naming `previous_response_id` finds its
backend, on the HTTP route and in the WebSocket mode alike.
"""

import time
from collections import OrderedDict
from collections.abc import Iterable

import attrs

from sopy.errors import InvalidRequest, PreviousResponseNotFound
from sopy.messages import ProviderRoute
from sopy.routing.route_table import RouteTable


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

    def owner_of(self, response_id: str) -> ResponseOwner | None:
        """The owner of `response_id` whichever key made it: for the primary process, which
        answers a worker's miss (the worker checks the key, as `owner_for` does)."""
        owner = self._owners.get(response_id)
        return None if owner is None or owner.expires_at <= time.time() else owner

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

    def give_back(self, changes: dict[str, PendingChange]) -> None:
        """Changes the store could not write, to be taken again with the next ones; a change
        noted since they were taken is newer and wins."""
        changes.update(self._pending)
        self._pending = changes

    def _evict_beyond_bound(self) -> None:
        while len(self._owners) > self.max_entries:
            evicted, _ = self._owners.popitem(last=False)
            self._pending[evicted] = None


def previous_response_route(
    previous_id: object,
    key_id: int | None,
    model: str,
    table: RouteTable,
    affinity: "ResponseAffinity",
) -> ProviderRoute:
    """The route, narrowed to its one backend, of the response a new one names as its
    `previous_response_id` (a request's field, as sent); 400 if the field is not a non-empty
    string, 404 if the caller's key made no such response or its backend is gone."""
    if not isinstance(previous_id, str) or not previous_id:
        raise InvalidRequest(
            "'previous_response_id' must be a non-empty string.", param="previous_response_id"
        )
    owner = affinity.owner_for(previous_id, key_id)
    if owner is None:
        raise PreviousResponseNotFound(
            f"Previous response with id '{previous_id}' not found. It was not made with this "
            "API key through this gateway, or it expired or was deleted; start a new "
            "conversation without it.",
            param="previous_response_id",
        )
    route = table.pinned_route(owner.provider, owner.backend, model)
    if route is None:
        raise PreviousResponseNotFound(
            f"Previous response with id '{previous_id}' is stored on a backend of provider "
            f"'{owner.provider}' that is no longer in the gateway's configuration, so it cannot "
            "be reached; start a new conversation without it.",
            param="previous_response_id",
        )
    return route
