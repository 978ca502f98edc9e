"""Specs for the mock upstream provider, exercised over real sockets with httpx."""

import math
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing

from sopy.testing.mock_upstream import MockUpstream, RandomFault, ReceivedRequest
from tests.polling import eventually

NAME = "alpha"
SEED = 7
# Short, so that the hangs drawn by the random failure mode keep the file fast; the clients'
# default five-second timeout outlasts them.
HANG_SECONDS = 0.02


@pytest.fixture
def mock() -> MockUpstream:
    return MockUpstream(NAME)


@asynccontextmanager
async def client_of(
    upstream: MockUpstream, nursery: trio.Nursery
) -> AsyncIterator[httpx.AsyncClient]:
    base_url = await nursery.start(upstream.serve)
    async with httpx.AsyncClient(base_url=f"{base_url}/v1") as client:
        yield client


@pytest.fixture
async def client(mock: MockUpstream, nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(mock, nursery) as client:
        yield client


def chat_body(content: str = "tell me a story", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra}


async def stream_events(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


async def fault_seen_by_client(client: httpx.AsyncClient, *, stream: bool) -> str:
    """The `RandomFault` that one chat completion met, as a client sees it, when all must fail."""
    started = trio.current_time()
    lines: list[str] = []
    body = chat_body(stream=stream)
    try:
        async with client.stream("POST", "/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                lines.append(line)
    except httpx.RemoteProtocolError:
        assert response.status_code == 200
        assert sum(line.startswith("data: ") for line in lines) == (1 if stream else 0)
        return "reset"
    if response.status_code == 200:
        assert trio.current_time() - started >= HANG_SECONDS
        return "hang"
    error = orjson.loads("".join(lines))["error"]
    assert error["message"] == f"mock upstream {NAME} injected status {response.status_code}"
    if response.status_code == 429:
        assert response.headers["retry-after"] == "0"
    return f"status_{response.status_code}"


async def test_base_url_is_the_bound_origin(mock: MockUpstream, nursery: trio.Nursery) -> None:
    base_url = await nursery.start(mock.serve)

    assert base_url.startswith("http://127.0.0.1:")
    assert int(base_url.rsplit(":", 1)[1]) > 0


async def test_models_lists_the_mock_model_owned_by_the_upstream(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/models")

    assert response.status_code == 200
    assert response.headers["x-mock-upstream"] == NAME
    assert response.json() == {
        "object": "list",
        "data": [{"id": "mock-model", "object": "model", "created": 1700000000, "owned_by": NAME}],
    }


async def test_non_streaming_completion_is_a_deterministic_chat_completion(
    client: httpx.AsyncClient,
) -> None:
    body = chat_body("tell me a story")
    body["messages"].insert(0, {"role": "system", "content": "be brief"})

    response = await client.post("/chat/completions", json=body)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-mock-upstream"] == NAME
    content = f"Hello from {NAME}: you said tell me a story"
    assert response.json() == {
        "id": "chatcmpl-mock-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 6, "completion_tokens": 9, "total_tokens": 15},
    }


async def test_completion_ids_count_requests(client: httpx.AsyncClient) -> None:
    await client.get("/models")

    response = await client.post("/chat/completions", json=chat_body())

    assert response.json()["id"] == "chatcmpl-mock-2"


async def test_streaming_sends_one_event_per_word_then_stop_usage_and_done(
    client: httpx.AsyncClient,
) -> None:
    body = chat_body("hi", stream=True, stream_options={"include_usage": True})

    async with client.stream("POST", "/chat/completions", json=body) as response:
        events = [event async for event in stream_events(response)]

    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-mock-upstream"] == NAME
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    words = f"Hello from {NAME}: you said hi".split()
    content_chunks, stop_chunk, usage_chunk = chunks[:-2], chunks[-2], chunks[-1]
    assert [chunk["choices"][0]["delta"] for chunk in content_chunks] == [
        {"role": "assistant", "content": "Hello "},
        *({"content": f"{word} "} for word in words[1:-1]),
        {"content": words[-1]},
    ]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["model"] == "gpt-test" for chunk in chunks)
    assert {chunk["id"] for chunk in chunks} == {"chatcmpl-mock-1"}
    assert stop_chunk["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7}


async def test_streaming_without_include_usage_has_no_usage_chunk(
    client: httpx.AsyncClient,
) -> None:
    async with client.stream(
        "POST", "/chat/completions", json=chat_body("hi", stream=True)
    ) as response:
        events = [event async for event in stream_events(response)]

    chunks = [orjson.loads(event) for event in events[:-1]]
    assert events[-1] == "[DONE]"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in chunks)


async def test_chunks_fault_makes_a_stream_of_that_many_content_events(
    client: httpx.AsyncClient,
) -> None:
    body = chat_body("hi", stream=True, mock={"chunks": 20})

    async with client.stream("POST", "/chat/completions", json=body) as response:
        events = [event async for event in stream_events(response)]

    assert len(events) == 20 + 2  # content chunks, the stop chunk, [DONE]


async def test_streamed_events_arrive_incrementally(client: httpx.AsyncClient) -> None:
    delay = 0.05
    body = chat_body(stream=True, mock={"chunks": 5, "chunk_delay": delay})
    arrivals: list[float] = []

    async with client.stream("POST", "/chat/completions", json=body) as response:
        async for _ in stream_events(response):
            arrivals.append(trio.current_time())

    gaps = len(arrivals) - 1
    assert gaps == 6
    assert arrivals[-1] - arrivals[0] >= gaps * delay * 0.9


async def test_injected_500_is_an_openai_server_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body(mock={"status": 500}))

    assert response.status_code == 500
    assert response.headers["x-mock-upstream"] == NAME
    assert response.json() == {
        "error": {
            "message": f"mock upstream {NAME} injected status 500",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


async def test_injected_429_is_a_rate_limit_with_retry_after(client: httpx.AsyncClient) -> None:
    body = chat_body(stream=True, mock={"status": 429, "retry_after": 2})

    response = await client.post("/chat/completions", json=body)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"


async def test_headers_delay_holds_back_the_response_headers(client: httpx.AsyncClient) -> None:
    started = trio.current_time()

    response = await client.post("/chat/completions", json=chat_body(mock={"headers_delay": 0.2}))

    assert response.status_code == 200
    assert trio.current_time() - started >= 0.2


async def test_reset_after_breaks_the_connection_mid_body(client: httpx.AsyncClient) -> None:
    body = chat_body(stream=True, mock={"reset_after": 2})
    received: list[str] = []

    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        async with client.stream("POST", "/chat/completions", json=body) as response:
            async for event in stream_events(response):
                received.append(event)

    assert response.status_code == 200
    assert len(received) == 2


async def test_client_leaving_mid_stream_counts_a_disconnect_promptly(
    mock: MockUpstream, client: httpx.AsyncClient
) -> None:
    body = chat_body(stream=True, mock={"chunks": 100, "chunk_delay": 0.05})
    async with client.stream("POST", "/chat/completions", json=body) as response:
        async for _ in stream_events(response):
            assert mock.in_flight == 1
            break

    await eventually(lambda: mock.disconnects == 1 and mock.in_flight == 0)


async def test_client_leaving_during_headers_delay_counts_a_disconnect(
    mock: MockUpstream, client: httpx.AsyncClient
) -> None:
    with trio.move_on_after(0.1):
        await client.post("/chat/completions", json=chat_body(mock={"headers_delay": 5}))

    await eventually(lambda: mock.disconnects == 1 and mock.in_flight == 0)


async def test_completed_responses_are_not_counted_as_disconnects(
    mock: MockUpstream, client: httpx.AsyncClient
) -> None:
    await client.post("/chat/completions", json=chat_body())
    async with client.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
        await response.aread()

    await trio.testing.wait_all_tasks_blocked()  # lets the server see its end-of-response events
    assert (mock.disconnects, mock.in_flight) == (0, 0)


async def test_requests_are_recorded_with_headers_and_body(
    mock: MockUpstream, client: httpx.AsyncClient
) -> None:
    body = orjson.dumps(chat_body("record me"))

    await client.post(
        "/chat/completions",
        content=body,
        headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json"},
    )
    await client.get("/models")

    first, second = mock.requests
    assert isinstance(first, ReceivedRequest)
    assert (first.method, first.path, first.body) == ("POST", "/v1/chat/completions", body)
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["content-type"] == "application/json"
    assert first.json()["messages"][0]["content"] == "record me"
    assert (second.method, second.path, second.body) == ("GET", "/v1/models", b"")


async def test_unknown_route_is_an_openai_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/fine_tuning/jobs", json={})

    assert response.status_code == 404
    assert response.headers["x-mock-upstream"] == NAME
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (None, None)
    assert "/v1/fine_tuning/jobs" in error["message"]


async def test_a_base_path_moves_every_route_under_it(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(NAME, base_path="/openai/v1")
    origin = await nursery.start(upstream.serve)

    async with httpx.AsyncClient(base_url=origin) as client:
        moved = await client.post("/openai/v1/chat/completions", json=chat_body())
        embedded = await client.post("/openai/v1/embeddings", json={"model": "m", "input": "x"})
        default = await client.post("/v1/chat/completions", json=chat_body())

    assert (moved.status_code, embedded.status_code) == (200, 200)
    assert default.status_code == 404
    assert "/v1/chat/completions" in default.json()["error"]["message"]
    assert [request.path for request in upstream.requests] == [
        "/openai/v1/chat/completions",
        "/openai/v1/embeddings",
        "/v1/chat/completions",
    ]


@pytest.mark.parametrize("base_path", ["v1", "/v1/", "/", ""])
def test_a_base_path_must_be_a_path(base_path: str) -> None:
    with pytest.raises(ValueError, match="base_path"):
        MockUpstream(NAME, base_path=base_path)


async def test_invalid_json_is_an_openai_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", content=b"{not json")

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_malformed_mock_object_is_an_openai_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body(mock={"status": "boom"}))

    assert response.status_code == 400
    assert "'mock'" in response.json()["error"]["message"]


async def test_full_failure_rate_fails_every_completion_in_each_random_way(
    nursery: trio.Nursery,
) -> None:
    upstream = MockUpstream(NAME, failure_rate=1.0, seed=SEED, hang_seconds=HANG_SECONDS)

    async with client_of(upstream, nursery) as client:
        streams = [number % 2 == 1 for number in range(40)]
        faults = [await fault_seen_by_client(client, stream=stream) for stream in streams]

    assert Counter(faults) == upstream.injected
    assert set(upstream.injected) == {fault.value for fault in RandomFault}
    resets = [stream for stream, fault in zip(streams, faults, strict=True) if fault == "reset"]
    assert set(resets) == {False, True}


async def reply_status(client: httpx.AsyncClient) -> int | str:
    try:
        response = await client.post("/chat/completions", json=chat_body())
    except httpx.RemoteProtocolError:
        return "reset"
    return response.status_code


async def test_a_seed_replays_the_same_random_failures(nursery: trio.Nursery) -> None:
    upstreams = [MockUpstream(NAME, failure_rate=0.5, seed=SEED, hang_seconds=0) for _ in range(2)]
    replies: list[list[int | str]] = []
    for upstream in upstreams:
        async with client_of(upstream, nursery) as client:
            replies.append([await reply_status(client) for _ in range(20)])

    first, second = upstreams
    assert replies[0] == replies[1]
    assert first.injected == second.injected
    assert 0 < first.injected.total() < 20


async def test_zero_failure_rate_answers_every_completion(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(NAME, failure_rate=0.0, seed=SEED)

    async with client_of(upstream, nursery) as client:
        statuses = [
            (await client.post("/chat/completions", json=chat_body(stream=n % 2 == 1))).status_code
            for n in range(20)
        ]

    assert statuses == [200] * 20
    assert not upstream.injected


async def test_random_failures_never_override_explicit_faults(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(NAME, failure_rate=1.0, seed=SEED)

    async with client_of(upstream, nursery) as client:
        body = chat_body(mock={"status": 418})
        statuses = [
            (await client.post("/chat/completions", json=body)).status_code for _ in range(10)
        ]
        chunked = await client.post("/chat/completions", json=chat_body(mock={"chunks": 3}))

    assert statuses == [418] * 10
    assert chunked.status_code == 200
    assert not upstream.injected


async def test_random_failures_never_touch_the_model_list(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(NAME, failure_rate=1.0, seed=SEED)

    async with client_of(upstream, nursery) as client:
        statuses = [(await client.get("/models")).status_code for _ in range(10)]

    assert statuses == [200] * 10
    assert not upstream.injected


@pytest.mark.parametrize("failure_rate", [1.5, -0.1, math.nan])
def test_a_failure_rate_outside_zero_to_one_is_rejected(failure_rate: float) -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        MockUpstream(NAME, failure_rate=failure_rate)


def test_a_negative_hang_is_rejected() -> None:
    with pytest.raises(ValueError, match="hang_seconds"):
        MockUpstream(NAME, hang_seconds=-1)


async def test_retry_after_may_be_any_header_text(client: httpx.AsyncClient) -> None:
    body = chat_body(mock={"status": 429, "retry_after": "\u00b2"})

    response = await client.post("/chat/completions", json=body)

    assert response.status_code == 429
    assert dict(response.headers.raw)[b"retry-after"] == b"\xb2"


@pytest.mark.parametrize("length_unknown", [False, True])
async def test_body_bytes_sends_a_body_of_that_size(
    mock: MockUpstream, client: httpx.AsyncClient, length_unknown: bool
) -> None:
    size = 3 * 65536 + 5
    body = chat_body(mock={"body_bytes": size, "length_unknown": length_unknown})

    response = await client.post("/chat/completions", json=body)

    assert response.status_code == 200
    assert response.content == b"x" * size
    assert ("content-length" not in response.headers) is length_unknown
    assert mock.padding_sent == size


async def test_endless_line_bytes_streams_one_line_that_never_ends(
    client: httpx.AsyncClient,
) -> None:
    body = chat_body(stream=True, mock={"endless_line_bytes": 200_000})

    response = await client.post("/chat/completions", json=body)

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b"data: " + b"x" * (200_000 - 6)
