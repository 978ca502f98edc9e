"""Specs for reading token counts from answers as they are relayed (`sopy.routing.usage_counts`):
whole bodies, streams cut at any byte, the usage-only chat chunk stripped when Sopy asked for it,
and a bounded line buffer."""

import itertools

import orjson
from hypothesis import given
from hypothesis import strategies as st

from sopy.messages import TokenCounts
from sopy.routing.usage_counts import (
    MAX_EVENT_LINE_BYTES,
    StreamUsageWatcher,
    usage_of_body,
    with_usage_requested,
)

CHAT_USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 3},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
CONTENT_CHUNK = b'data: {"choices":[{"delta":{"content":"\\"usage\\": {}"}}],"usage":null}\n\n'
USAGE_CHUNK = b"data: " + orjson.dumps({"choices": [], "usage": CHAT_USAGE}) + b"\n\n"
CHAT_STREAM = CONTENT_CHUNK + USAGE_CHUNK + b"data: [DONE]\n\n"


def test_the_top_level_usage_of_a_whole_answer_is_read_not_a_quoted_one() -> None:
    body = orjson.dumps({"choices": [{"text": '"usage": {"prompt_tokens": 99}'}]})
    assert usage_of_body(body) is None
    assert usage_of_body(body[:-1] + b', "usage": ' + orjson.dumps(CHAT_USAGE) + b"}") == (
        TokenCounts(11, 7, 3, 2)
    )


def test_anthropic_and_responses_names_are_read() -> None:
    anthropic = {"usage": {"input_tokens": 5, "output_tokens": 4, "cache_read_input_tokens": 2}}
    responses = {
        "usage": {
            "input_tokens": 8,
            "output_tokens": 6,
            "input_tokens_details": {"cached_tokens": 1},
            "output_tokens_details": {"reasoning_tokens": 3},
        }
    }
    assert usage_of_body(orjson.dumps(anthropic)) == TokenCounts(5, 4, 2, 0)
    assert usage_of_body(orjson.dumps(responses)) == TokenCounts(8, 6, 1, 3)


@given(st.lists(st.integers(min_value=0, max_value=len(CHAT_STREAM)), max_size=8))
def test_a_stripped_chat_stream_loses_only_its_usage_chunk_wherever_it_is_cut(
    cuts: list[int],
) -> None:
    watcher = StreamUsageWatcher(strip_usage_chunk=True)
    bounds = [0, *sorted(cuts), len(CHAT_STREAM)]
    sent = b"".join(watcher.feed(CHAT_STREAM[a:b]) for a, b in itertools.pairwise(bounds))
    sent += watcher.end()
    assert sent == CONTENT_CHUNK + b"data: [DONE]\n\n"
    assert watcher.tokens == TokenCounts(11, 7, 3, 2)


def test_a_watched_stream_is_relayed_unchanged() -> None:
    watcher = StreamUsageWatcher()
    assert watcher.feed(CHAT_STREAM[:20]) + watcher.feed(CHAT_STREAM[20:]) == CHAT_STREAM
    assert watcher.tokens == TokenCounts(11, 7, 3, 2)


def test_anthropic_stream_counts_merge_message_start_and_message_delta() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}
    delta = {"type": "message_delta", "usage": {"output_tokens": 12}}
    watcher = StreamUsageWatcher()
    for event in (start, delta):
        watcher.feed(b"event: x\ndata: " + orjson.dumps(event) + b"\n\n")
    assert watcher.tokens == TokenCounts(9, 12, 0, 0)


def test_a_line_longer_than_the_bound_is_passed_on_not_kept() -> None:
    watcher = StreamUsageWatcher(strip_usage_chunk=True)
    piece = b"x" * (MAX_EVENT_LINE_BYTES // 4)
    sent = b"".join(watcher.feed(piece) for _ in range(5))
    sent += watcher.feed(b"tail\n" + USAGE_CHUNK)
    assert sent == piece * 5 + b"tail\n"
    assert watcher.tokens == TokenCounts(11, 7, 3, 2)


def test_the_usage_option_is_spliced_in_without_reserialising() -> None:
    body = b'{ "model" : "m",\n "stream": true }'
    spliced = with_usage_requested(body)
    assert spliced.endswith(body[1:])
    assert orjson.loads(spliced)["stream_options"] == {"include_usage": True}


def test_a_usage_that_is_not_the_last_key_is_read_too() -> None:
    body = orjson.dumps({"usage": CHAT_USAGE, "choices": [{"text": "}"}], "id": "x"})
    assert usage_of_body(body) == TokenCounts(11, 7, 3, 2)
