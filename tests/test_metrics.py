"""`GET /metrics` and `x-sopy-overhead-ms`: the counts match the requests sent, every histogram
counts them, no label carries a key or client text, `--metrics-port` serves them apart, and every
answer says how long Sopy itself took."""

from collections.abc import AsyncIterator

import attrs
import httpx
import orjson
import pytest
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream
from tests.admin_connection import open_events
from tests.conftest import SopyUnderTest
from tests.gateway import USER_KEY, Gateway, chat, start_gateway, start_gateway_with

# The time the mock upstream holds back its answer: far more than Sopy's own time.
UPSTREAM_DELAY = 0.3


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(sopy, nursery, {"gpt-4.1": "openai", "claude-3": "anthropic"})


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as client:
        yield client


def samples(text: str) -> list[Sample]:
    """Every sample of the exposition, parsed by prometheus-client's own parser."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
    return sum(
        sample.value
        for sample in samples(text)
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def scrape(http: httpx.AsyncClient, url: str = "/metrics") -> str:
    answer = await http.get(url, headers={"authorization": ""})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


async def test_request_counts_match_the_requests_sent_by_route_model_provider_and_status(
    http: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
    assert (
        await http.post("/v1/completions", json={"model": "claude-3", "prompt": "hi"})
    ).status_code == 200
    failed = await http.post("/v1/chat/completions", json=chat(mock={"status": 500}))
    assert failed.status_code == 500
    unknown = await http.post("/v1/chat/completions", json=chat(model="no-such-model"))
    assert unknown.status_code == 404

    text = await scrape(http)

    chat_route = {"route": "/v1/chat/completions"}
    assert (
        value(
            text,
            "sopy_requests_total",
            **chat_route,
            model="gpt-4.1",
            provider="openai",
            status="200",
        )
        == 3
    )
    assert (
        value(
            text,
            "sopy_requests_total",
            route="/v1/completions",
            model="claude-3",
            provider="anthropic",
            status="200",
        )
        == 1
    )
    assert (
        value(
            text,
            "sopy_requests_total",
            **chat_route,
            model="gpt-4.1",
            provider="openai",
            status="500",
        )
        == 1
    )
    assert (
        value(text, "sopy_requests_total", **chat_route, model="-", provider="-", status="404") == 1
    )
    assert value(text, "sopy_requests_total") == 6
    # Every histogram counts the requests it is about.
    assert value(text, "sopy_request_duration_seconds_count", **chat_route) == 5
    assert value(text, "sopy_overhead_seconds_count") == 6
    assert value(text, "sopy_upstream_duration_seconds_count", provider="openai") == 4
    assert value(text, "sopy_upstream_duration_seconds_count", provider="anthropic") == 1
    assert value(text, "sopy_config_version") > 0


async def test_a_stream_counts_its_time_to_first_token(http: httpx.AsyncClient) -> None:
    async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as answer:
        assert answer.status_code == 200
        await answer.aread()
    text = await scrape(http)
    labels = {"route": "/v1/chat/completions", "provider": "openai"}
    assert value(text, "sopy_time_to_first_token_seconds_count", **labels) == 1
    assert value(text, "sopy_requests_total", model="gpt-4.1", status="200") == 1


async def test_no_key_credential_or_client_text_in_any_label(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    hostile = [
        USER_KEY,
        'evil"} 1\nsopy_injected_total 99 #',
        "x" * 5000,
        "gpt-4.1\n",
        "é\\\u2028",
    ]
    for model in hostile:
        await http.post("/v1/chat/completions", json=chat(model=model))
    await http.post(
        "/v1/chat/completions", json=chat(), headers={"authorization": "Bearer sk-wrong-key"}
    )
    await http.post("/v1/chat/completions", json=chat())

    text = await scrape(http)

    credential = gateway.providers["openai"].credential
    for secret in (USER_KEY, "sk-wrong-key", credential, "evil", "xxxxx", "injected"):
        assert secret not in text
    models = {sample.labels["model"] for sample in samples(text) if "model" in sample.labels}
    assert models == {"gpt-4.1", "-"}
    assert not any("key_id" in sample.labels for sample in samples(text))


async def test_metrics_per_key_labels_key_ids_only(
    nursery: trio.Nursery, settings: Settings
) -> None:
    sopy = SopyUnderTest(nursery, attrs.evolve(settings, metrics_per_key=True))
    await sopy.start()
    gateway = await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})
    async with gateway.client() as http:
        await http.post("/v1/chat/completions", json=chat())
        text = await scrape(http)
    await sopy.stop()
    keys = {sample.labels["key_id"] for sample in samples(text) if "key_id" in sample.labels}
    assert len(keys) == 1
    assert keys.pop().isdigit()
    assert USER_KEY not in text


async def test_metrics_port_serves_metrics_apart_from_the_public_port(
    nursery: trio.Nursery, settings: Settings
) -> None:
    sopy = SopyUnderTest(nursery, attrs.evolve(settings, metrics_port=0))
    running = await sopy.start()
    gateway = await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})
    assert running.metrics_url is not None and running.metrics_url != running.http_url
    async with gateway.client() as http, httpx.AsyncClient(base_url=running.metrics_url) as metrics:
        await http.post("/v1/chat/completions", json=chat())
        text = await scrape(metrics)
        assert value(text, "sopy_requests_total", model="gpt-4.1", status="200") == 1
        public = await http.get("/metrics")
        assert public.status_code == 404
        assert "--metrics-port" in public.json()["error"]["message"]
        elsewhere = await metrics.get("/v1/models")
        assert elsewhere.status_code == 404
        assert set(elsewhere.json()["error"]) == {"message", "type", "param", "code"}
    await sopy.stop()


def overhead_ms(answer: httpx.Response) -> float:
    overhead = float(answer.headers["x-sopy-overhead-ms"])
    assert overhead >= 0
    return overhead


async def test_every_answer_carries_its_overhead_without_the_upstream_time(
    http: httpx.AsyncClient,
) -> None:
    delay = {"headers_delay": UPSTREAM_DELAY}
    slow = await http.post("/v1/chat/completions", json=chat(mock=delay))
    assert slow.status_code == 200
    total_ms = slow.elapsed.total_seconds() * 1000
    assert total_ms >= UPSTREAM_DELAY * 1000
    # Sopy's own time, not the provider's: well under the delay it waited for.
    assert overhead_ms(slow) < UPSTREAM_DELAY * 1000 / 2

    async with http.stream(
        "POST", "/v1/chat/completions", json=chat(stream=True, mock=delay)
    ) as stream:
        assert stream.status_code == 200
        assert overhead_ms(stream) < UPSTREAM_DELAY * 1000 / 2
        await stream.aread()

    failed = await http.post("/v1/chat/completions", json=chat(mock={"status": 503, **delay}))
    assert failed.status_code == 503
    assert overhead_ms(failed) < UPSTREAM_DELAY * 1000 / 2

    for answer in (
        await http.post("/v1/chat/completions", json=chat(model="no-such-model")),
        await http.post("/v1/chat/completions", json=chat(), headers={"authorization": ""}),
        await http.get("/v2/nowhere"),
        await http.get("/healthz"),
        await http.get("/metrics"),
    ):
        assert overhead_ms(answer) <= answer.elapsed.total_seconds() * 1000


async def test_overhead_histogram_leaves_out_the_upstream_time(http: httpx.AsyncClient) -> None:
    await http.post("/v1/chat/completions", json=chat(mock={"headers_delay": UPSTREAM_DELAY}))
    text = await scrape(http)
    route = {"route": "/v1/chat/completions"}
    assert value(text, "sopy_request_duration_seconds_sum", **route) >= UPSTREAM_DELAY
    assert value(text, "sopy_upstream_duration_seconds_sum", provider="openai") >= UPSTREAM_DELAY
    assert value(text, "sopy_overhead_seconds_sum", **route) < UPSTREAM_DELAY / 2


async def test_retries_and_backend_cooldowns_are_counted_by_provider(
    nursery: trio.Nursery, settings: Settings
) -> None:
    sopy = SopyUnderTest(nursery, attrs.evolve(settings, cooldown_after=1, retries=1))
    await sopy.start()
    gateway = await start_gateway(sopy, nursery, {"gpt-4.1": "openai"}, upstreams_per_provider=2)
    async with gateway.client() as http:
        failed = await http.post("/v1/chat/completions", json=chat(mock={"status": 500}))
        assert failed.status_code == 500
        text = await scrape(http)
    await sopy.stop()
    # The first backend failed and rested; the request was resent to the second, which did too.
    assert value(text, "sopy_upstream_retries_total", provider="openai") == 1
    assert value(text, "sopy_backend_cooldowns_total", provider="openai") == 2


async def test_event_subscribers_are_counted_while_connected(
    http: httpx.AsyncClient, gateway: Gateway, nursery: trio.Nursery
) -> None:
    assert value(await scrape(http), "sopy_event_subscribers") == 0
    ws = await open_events(nursery, gateway.sopy.settings.admin_socket)
    await ws.get_message()  # the snapshot: the subscription is live
    assert value(await scrape(http), "sopy_event_subscribers") == 1
    await ws.aclose()
    # The server notices the close on its own time; each scrape is a round trip that lets it.
    with trio.fail_after(5):
        while value(await scrape(http), "sopy_event_subscribers") != 0:
            pass


async def test_a_client_that_leaves_unanswered_is_counted_without_an_overhead(
    http: httpx.AsyncClient,
) -> None:
    with trio.move_on_after(UPSTREAM_DELAY / 3):
        await http.post("/v1/chat/completions", json=chat(mock={"headers_delay": 5}))
    # The gateway notices on its own time; each scrape is a round trip that lets it.
    with trio.fail_after(5):
        while value(text := await scrape(http), "sopy_requests_total", status="499") != 1:
            pass
    assert value(text, "sopy_overhead_seconds_count") == 0
    assert value(text, "sopy_request_duration_seconds_count") == 1


async def test_a_websocket_session_counts_its_upgrade_as_overhead_not_its_length(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    upstreams = {"openai": [MockUpstream("openai-0", websocket=True)]}
    gateway = await start_gateway_with(sopy, nursery, upstreams, {"gpt-4.1": "openai"})
    url = gateway.base_url.replace("http://", "ws://") + "/responses"
    headers = [(b"authorization", f"Bearer {USER_KEY}".encode())]
    async with trio_websocket.open_websocket_url(url, extra_headers=headers) as connection:
        create = {"type": "response.create", "model": "gpt-4.1", "input": "hi"}
        await connection.send_message(orjson.dumps(create).decode())
        while orjson.loads(await connection.get_message())["type"] != "response.completed":
            pass
        await trio.sleep(UPSTREAM_DELAY)  # a session that lasts: its length is no overhead
    route = {"route": "/v1/responses (websocket)"}
    async with gateway.client() as http:
        with trio.fail_after(5):
            while value(text := await scrape(http), "sopy_overhead_seconds_count", **route) != 1:
                pass
    assert value(text, "sopy_request_duration_seconds_sum", **route) >= UPSTREAM_DELAY
    assert value(text, "sopy_overhead_seconds_sum", **route) < UPSTREAM_DELAY / 2
