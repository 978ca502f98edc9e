"""Specs of the responses Sopy keeps itself (`sopy.routing.kept_responses`): conversations by
`previous_response_id`, per-key bounds, expiry, and durability through the response affinity
store actor."""

import time
from pathlib import Path

import orjson
import pytest
import trio

from sopy.actors.response_affinity_store import ResponseAffinityStore
from sopy.errors import PreviousResponseNotFound
from sopy.routing.kept_responses import KeptResponses
from sopy.routing.response_affinity import ResponseAffinity


def _response(text: str) -> bytes:
    message = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }
    return orjson.dumps({"id": "resp", "object": "response", "output": [message]})


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_a_chain_gives_the_whole_conversation_oldest_first() -> None:
    kept = KeptResponses(max_per_key=10, max_bytes_per_key=10**6, ttl=3600)
    kept.keep("resp_1", 7, None, [_user("one")], _response("first"))
    kept.keep("resp_2", 7, "resp_1", [_user("two")], _response("second"))

    items = kept.conversation_items("resp_2", 7)

    assert [item.get("content") for item in items] == [
        "one",
        [{"type": "output_text", "text": "first"}],
        "two",
        [{"type": "output_text", "text": "second"}],
    ]


def test_another_keys_response_is_not_found() -> None:
    kept = KeptResponses(max_per_key=10, max_bytes_per_key=10**6, ttl=3600)
    kept.keep("resp_1", 7, None, [_user("one")], _response("first"))

    assert kept.get("resp_1", 8) is None
    with pytest.raises(PreviousResponseNotFound):
        kept.conversation_items("resp_1", 8)


def test_each_key_keeps_at_most_its_count_and_bytes_oldest_evicted_first() -> None:
    kept = KeptResponses(max_per_key=2, max_bytes_per_key=10**6, ttl=3600)
    for number in range(3):
        kept.keep(f"resp_{number}", 7, None, [_user("x")], _response("y"))
    kept.keep("resp_other", 8, None, [_user("x")], _response("y"))

    assert [kept.get(f"resp_{n}", 7) is not None for n in range(3)] == [False, True, True]
    assert kept.get("resp_other", 8) is not None

    small = KeptResponses(max_per_key=100, max_bytes_per_key=300, ttl=3600)
    for number in range(5):
        small.keep(f"resp_{number}", 7, None, [_user("x" * 50)], _response("y" * 50))
    assert 1 <= len(small) < 5
    assert small.get("resp_4", 7) is not None


def test_an_expired_response_is_gone() -> None:
    kept = KeptResponses(max_per_key=10, max_bytes_per_key=10**6, ttl=0.01)
    kept.keep("resp_1", 7, None, [_user("one")], _response("first"))
    time.sleep(0.02)

    assert kept.get("resp_1", 7) is None


async def test_kept_responses_survive_a_restart_of_their_store(tmp_path: Path) -> None:
    path = tmp_path / "sopy_responses.db"
    before = KeptResponses(max_per_key=10, max_bytes_per_key=10**6, ttl=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(ResponseAffinityStore(path, ResponseAffinity(10, 3600), before).run)
        before.keep("resp_1", 7, None, [_user("one")], _response("first"))
        before.keep("resp_2", 7, "resp_1", [_user("two")], _response("second"))
        before.keep("resp_gone", 7, None, [_user("three")], _response("third"))
        before.forget("resp_gone")
        nursery.cancel_scope.cancel()

    after = KeptResponses(max_per_key=10, max_bytes_per_key=10**6, ttl=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(ResponseAffinityStore(path, ResponseAffinity(10, 3600), after).run)
        nursery.cancel_scope.cancel()

    assert after.conversation_items("resp_2", 7) == before.conversation_items("resp_2", 7)
    assert after.get("resp_gone", 7) is None
