"""Learning a response's id from the answer the gateway relays: from a whole JSON body, or from
the `response.created` event of an SSE stream however it is cut into chunks, and never by
holding more than `MAX_WATCHED_BYTES` of a stream."""

import orjson

from sopy.routing.response_ids import MAX_WATCHED_BYTES, ResponseIdWatcher

CREATED = b"event: response.created\ndata: " + orjson.dumps(
    {"type": "response.created", "response": {"id": "resp_1", "object": "response"}}
)


def _watcher() -> tuple[ResponseIdWatcher, list[str]]:
    found: list[str] = []
    return ResponseIdWatcher(found.append), found


def test_the_id_of_a_whole_response_is_found_only_in_a_success() -> None:
    body = orjson.dumps({"id": "resp_1", "object": "response"})
    watcher, found = _watcher()
    watcher.whole(200, body)
    refused, not_found = _watcher()
    refused.whole(400, body)

    assert (found, not_found) == (["resp_1"], [])


def test_the_created_event_is_found_however_the_stream_is_cut() -> None:
    stream = CREATED + b"\n\nevent: response.in_progress\ndata: {}\n\n"
    for size in (1, 7, len(stream)):
        watcher, found = _watcher()
        for start in range(0, len(stream), size):
            if not watcher.done:
                watcher.feed(stream[start : start + size])

        assert found == ["resp_1"], size


def test_a_stream_that_names_no_id_within_the_bound_stops_being_watched() -> None:
    watcher, found = _watcher()
    piece = b"data: " + b"x" * 65536
    fed = 0
    while not watcher.done:
        watcher.feed(piece)
        fed += len(piece)

    assert fed <= MAX_WATCHED_BYTES + len(piece)
    assert found == []
    # Nothing is held once it gave up.
    watcher.feed(CREATED + b"\n")
    assert found == []
