"""A provider that knows a model by another name (`ProviderRoute.upstream_model`) is sent that
name, in JSON and in a multipart form, each provider of a chain its own; everything else of the
body arrives byte for byte.

Until the admin side sets `upstream_model`, the chains come from a `RouteTable` built here: a
real HTTP server hands each request to the relay (`sopy.actors.relay.proxy`), which forwards it
through the real upstream pools to mock upstreams.
"""

import socket

import attrs
import httpx
import orjson
import pytest
import trio

from sopy.actors.relay import ProxiedRequest, proxy
from sopy.actors.upstream_pool import ProviderPools
from sopy.messages import (
    Backend,
    ConfigSnapshot,
    ModelMapping,
    ProviderCredential,
)
from sopy.protocol.server import HttpExchange, HttpServer, ServerLimits
from sopy.routing.model_field import form_boundary, form_model
from sopy.routing.route_table import RouteTable
from sopy.runtime.change_feed import ChangeFeed
from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream

AUDIO = b"RIFF" + b"\r\n--not-a-boundary\r\n" * 50


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def _relay_server(
    nursery: trio.Nursery, settings: Settings, table: RouteTable, aliases: dict[str, str]
) -> str:
    """A server that relays every request along `table`'s chain for its model, each provider
    named in `aliases` being sent that model name."""
    pools = ProviderPools(ChangeFeed(), settings)
    await nursery.start(pools.run)

    async def relay(exchange: HttpExchange) -> None:
        body = b""
        while (chunk := await exchange.read_body_chunk()) is not None:
            body += chunk
        request = ProxiedRequest(b"0123456789abcdef", "/v1/chat/completions")
        boundary = form_boundary(exchange.header(b"content-type"))
        if boundary is None:
            request.model = orjson.loads(body)["model"]
        else:
            model, request.form_model_span = form_model(body, boundary)
            assert model is not None
            request.model = model
        routes = tuple(
            attrs.evolve(route, upstream_model=aliases.get(route.provider))
            for route in table.routes_for(request.model)
        )
        await proxy(pools.inbox_for, routes, request, exchange, body)

    limits = ServerLimits(header_timeout=5, drain_timeout=1, send_timeout=5)
    server = HttpServer(relay, limits, lambda status, message: ([], message.encode()))
    url: str = await nursery.start(server.serve, "127.0.0.1", 0, trio.sleep_forever)
    return url


@attrs.frozen
class Upstreams:
    """Two mock providers, and the URL of each provider (one of which cannot be reached)."""

    mocks: dict[str, MockUpstream]
    urls: dict[str, str]


@pytest.fixture
async def upstreams(nursery: trio.Nursery) -> Upstreams:
    mocks = {name: MockUpstream(name) for name in ("azure", "local")}
    # Stored backend URLs are base URLs: the mock serves its API under /v1.
    urls = {name: await nursery.start(mock.serve) + "/v1" for name, mock in mocks.items()}
    return Upstreams(mocks, {**urls, "down": _closed_port_url()})


def _table(upstreams: Upstreams, chain: tuple[str, ...]) -> RouteTable:
    return RouteTable.from_snapshot(
        ConfigSnapshot(
            version=1,
            credentials=tuple(ProviderCredential(name, f"sk-{name}") for name in upstreams.urls),
            user_api_keys=(),
            backends=tuple(Backend(name, url) for name, url in upstreams.urls.items()),
            model_mappings=(ModelMapping("gpt-4.1", chain[0], 0, chain[1:]),),
        )
    )


async def test_each_provider_of_a_chain_is_sent_its_own_model_name(
    nursery: trio.Nursery, settings: Settings, upstreams: Upstreams
) -> None:
    # Given gpt-4.1 on an unreachable provider, falling back to one that calls it otherwise
    table = _table(upstreams, ("down", "azure"))
    aliases = {"down": "gpt-41-down", "azure": "gpt-41-prod"}
    url = await _relay_server(nursery, settings, table, aliases)
    body = b'{ "input" : "hi",\n "model":"gpt-4.1", "a": {"model": "gpt-4.1"}, "x": "\\u00e9" }'
    # When the client asks for gpt-4.1
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/v1/embeddings", content=body, headers={"content-type": "application/json"}
        )
    # Then the fallback answers, having received its name for the model and nothing else changed
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "gpt-41-prod"
    assert response.headers["x-mock-upstream"] == "azure"
    [received] = upstreams.mocks["azure"].requests
    assert received.body == body.replace(b'"model":"gpt-4.1"', b'"model":"gpt-41-prod"')


async def test_a_multipart_model_field_is_renamed_and_the_file_arrives_unchanged(
    nursery: trio.Nursery, settings: Settings, upstreams: Upstreams
) -> None:
    url = await _relay_server(nursery, settings, _table(upstreams, ("local",)), {"local": "w-1"})
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/v1/audio/transcriptions",
            data={"model": "gpt-4.1", "language": "en"},
            files={"file": ("a.wav", AUDIO, "audio/wav")},
        )
    assert response.status_code == 200, response.text
    assert response.json() == {"text": f"local heard {len(AUDIO)} bytes with w-1"}
    [received] = upstreams.mocks["local"].requests
    form = received.form()
    assert (form["model"].text, form["language"].text, form["file"].value) == ("w-1", "en", AUDIO)


async def test_a_provider_without_an_alias_gets_the_body_as_sent(
    nursery: trio.Nursery, settings: Settings, upstreams: Upstreams
) -> None:
    url = await _relay_server(nursery, settings, _table(upstreams, ("local",)), {})
    body = b'{"model": "gpt-4.1", "input": "hi"}'
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/v1/embeddings", content=body)
    assert response.status_code == 200, response.text
    assert upstreams.mocks["local"].requests[0].body == body
