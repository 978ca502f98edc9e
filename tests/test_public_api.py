"""The public API over raw HTTP: routing, credentials, live config, streaming, cancellation."""

import logging
import socket
from collections.abc import AsyncIterator

import attrs
import httpx
import orjson
import pytest
import trio

from sopy.settings import Settings
from tests.conftest import SopyUnderTest
from tests.gateway import (
    USER_KEY,
    Gateway,
    access_log_line,
    chat,
    request_id_in,
    start_gateway,
)
from tests.polling import eventually


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(
        sopy, nursery, {"gpt-4.1": "openai", "claude-3": "anthropic"}, upstreams_per_provider=2
    )


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as client:
        yield client


async def test_greetings_and_health(http: httpx.AsyncClient) -> None:
    assert (await http.get("/")).json() == {"message": "Hello World"}
    assert (await http.get("/hello/Alice")).json() == {"message": "Hello Alice"}
    health = await http.get("/healthz", headers={"authorization": ""})
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["config_version"] > 0


async def test_unknown_route_and_wrong_method_are_openai_shaped(http: httpx.AsyncClient) -> None:
    missing = await http.get("/v2/nothing")
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    wrong = await http.get("/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"


async def test_requests_reach_the_right_provider_with_its_credential_and_rotate(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    for _ in range(4):
        assert (await http.post("/v1/chat/completions", json=chat("gpt-4.1"))).status_code == 200
    for _ in range(2):
        assert (await http.post("/v1/chat/completions", json=chat("claude-3"))).status_code == 200

    openai_a, openai_b = gateway.upstreams("openai")
    anthropic_a, anthropic_b = gateway.upstreams("anthropic")
    assert (len(openai_a.requests), len(openai_b.requests)) == (2, 2)
    assert (len(anthropic_a.requests), len(anthropic_b.requests)) == (1, 1)
    for upstream in (openai_a, openai_b):
        for received in upstream.requests:
            assert received.headers["authorization"] == "Bearer sk-openai-provider-credential"
            assert received.path == "/v1/chat/completions"
    for upstream in (anthropic_a, anthropic_b):
        for received in upstream.requests:
            assert received.headers["authorization"] == "Bearer sk-anthropic-provider-credential"
            assert received.json()["model"] == "claude-3"


async def test_body_is_forwarded_byte_for_byte_and_client_key_never(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    raw = b'{"model":"gpt-4.1",  "messages":[{"role":"user","content":"x"}], "temperature":0.5}'
    response = await http.post(
        "/v1/chat/completions",
        content=raw,
        headers={"content-type": "application/json", "x-api-key": USER_KEY},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"]
    received = [r for u in gateway.upstreams("openai") for r in u.requests]
    assert received[0].body == raw
    assert USER_KEY not in str(received[0].headers)


async def test_mapping_added_live_works_on_the_next_request_and_removed_404s(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    assert (await http.post("/v1/chat/completions", json=chat("gpt-5"))).status_code == 404

    await gateway.admin_ok("add_model_mapping", model_name="gpt-5", provider="openai")
    assert (await http.post("/v1/chat/completions", json=chat("gpt-5"))).status_code == 200

    await gateway.admin_ok("remove_model_mapping", model_name="gpt-5")
    gone = await http.post("/v1/chat/completions", json=chat("gpt-5"))
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "model_not_found"


async def test_deactivated_key_is_refused_on_the_very_next_request(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    key = await gateway.admin_ok("add_user_api_key", description="short-lived")
    headers = {"authorization": f"Bearer {key['api_key']}"}
    assert (await http.get("/v1/models", headers=headers)).status_code == 200

    await gateway.admin_ok("deactivate_user_api_key", id=key["id"])
    refused = await http.get("/v1/models", headers=headers)
    assert refused.status_code == 401
    assert "deactivated" in refused.json()["error"]["message"]

    await gateway.admin_ok("activate_user_api_key", id=key["id"])
    assert (await http.get("/v1/models", headers=headers)).status_code == 200


@pytest.mark.parametrize(
    "authorization", [None, "", "Basic abc", "Bearer", "Bearer sk-wrong-key-123"]
)
async def test_missing_or_bad_authorization_is_401(
    http: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    async with httpx.AsyncClient(base_url=str(http.base_url), headers=headers) as bare:
        response = await bare.post("/v1/chat/completions", json=chat())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 4}', "model"),
        (b'{"model": "gpt-4.1", "stream": 1}', "stream"),
        (b'{"model": "gpt-4.1", "stream_options": "on"}', "stream_options"),
        (b"\xff\xfe", None),
    ],
)
async def test_bad_bodies_get_400(http: httpx.AsyncClient, body: bytes, param: str | None) -> None:
    response = await http.post("/v1/chat/completions", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_oversized_body_gets_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", content=b"x" * (10 * 1024 * 1024 + 1))
    assert response.status_code == 413


async def test_provider_without_backend_gets_503_naming_the_fix(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    await gateway.admin_ok("add_model_mapping", model_name="local-llama", provider="local")
    response = await http.post("/v1/chat/completions", json=chat("local-llama"))
    assert response.status_code == 503
    assert "sopy admin add_backend --provider local" in response.json()["error"]["message"]


async def test_unreachable_backend_gets_502_with_the_request_id_and_the_log_names_the_backend(
    http: httpx.AsyncClient, gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead_url = f"http://127.0.0.1:{dead_port}"
    await gateway.admin_ok("add_backend", provider="dead", url=dead_url)
    await gateway.admin_ok("add_model_mapping", model_name="dead-model", provider="dead")

    response = await http.post("/v1/chat/completions", json=chat("dead-model"))

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_error"
    request_id = response.headers["x-request-id"]
    assert request_id_in(error["message"]) == request_id
    assert "Retry" in error["message"]
    assert str(dead_port) not in response.text
    line = await access_log_line(caplog, request_id)
    assert f"backend={dead_url}" in line
    assert "could not be reached" in line


async def test_removing_a_providers_last_backend_stops_routing_to_it(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    backends = (await gateway.admin_ok("get_backend", provider="anthropic"))["urls"]
    for url in backends:
        await gateway.admin_ok("remove_backend", provider="anthropic", url=url)
    response = await http.post("/v1/chat/completions", json=chat("claude-3"))
    assert response.status_code == 503


async def test_stream_arrives_incrementally(http: httpx.AsyncClient) -> None:
    body = chat(stream=True, mock={"chunks": 6, "chunk_delay": 0.15})
    arrivals: list[float] = []
    events: list[bytes] = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrivals.append(trio.current_time())
                events.append(line.encode())
    assert events[-1] == b"data: [DONE]"
    assert len(events) >= 8
    # Upstream needs ~1 s for the whole stream; the first event must come long before the last.
    assert arrivals[-1] - arrivals[0] >= 0.6
    assert orjson.loads(events[0][len(b"data: ") :])["object"] == "chat.completion.chunk"


async def test_client_disconnect_mid_stream_cancels_the_upstream_within_a_second(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    upstreams = gateway.upstreams("openai")
    body = chat(stream=True, mock={"chunks": 200, "chunk_delay": 0.05})
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.aiter_lines()
        await lines.__anext__()
        assert sum(u.in_flight for u in upstreams) == 1
    await eventually(lambda: sum(u.disconnects for u in upstreams) == 1)
    await eventually(lambda: sum(u.in_flight for u in upstreams) == 0)


async def test_client_disconnect_while_upstream_is_slow_cancels_it(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    upstreams = gateway.upstreams("openai")
    body = chat(mock={"headers_delay": 30})
    with trio.move_on_after(0.3):
        await http.post("/v1/chat/completions", json=body)
    await eventually(lambda: sum(u.disconnects for u in upstreams) == 1)


async def test_upstream_reset_mid_stream_ends_with_an_sse_error_event(
    http: httpx.AsyncClient, gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    body = chat(stream=True, mock={"chunks": 10, "reset_after": 3})
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert len(events) == 4
    error = orjson.loads(events[-1][len("data: ") :])["error"]
    assert error["code"] == "upstream_error"
    assert "broke off" in error["message"]
    assert request_id_in(error["message"]) == response.headers["x-request-id"]
    backend_urls = (await gateway.admin_ok("get_backend", provider="openai"))["urls"]
    assert not any(url in events[-1] for url in backend_urls)
    line = await access_log_line(caplog, response.headers["x-request-id"])
    assert any(f"backend={url}" in line for url in backend_urls)
    assert "broke off the response" in line


async def test_no_auth_mode_serves_without_keys(nursery: trio.Nursery, settings: Settings) -> None:
    open_sopy = SopyUnderTest(nursery, attrs.evolve(settings, no_auth=True))
    await open_sopy.start()
    gateway = await start_gateway(open_sopy, nursery, {"gpt-4.1": "openai"})
    async with httpx.AsyncClient(base_url=gateway.root_url) as anonymous:
        response = await anonymous.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    await open_sopy.stop()
