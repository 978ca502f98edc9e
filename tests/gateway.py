"""A configured gateway for public-API tests: Sopy with mock upstream providers behind it."""

import re
from typing import Any

import attrs
import httpx
import pytest
import trio

from sopy.testing.mock_upstream import MockUpstream
from tests.conftest import SopyUnderTest
from tests.polling import eventually

USER_KEY = "sk-user-test-key-0001"
AUTH = {"authorization": f"Bearer {USER_KEY}"}


def chat(model: str = "gpt-4.1", content: str = "hi", **extra: Any) -> dict[str, Any]:
    """A chat completion request body with one user message."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@attrs.frozen
class Provider:
    name: str
    credential: str
    upstreams: tuple[MockUpstream, ...]


@attrs.frozen
class Gateway:
    sopy: SopyUnderTest
    providers: dict[str, Provider]

    @property
    def base_url(self) -> str:
        return self.sopy.http_url + "/v1"

    @property
    def root_url(self) -> str:
        return self.sopy.http_url

    def upstreams(self, provider: str) -> tuple[MockUpstream, ...]:
        return self.providers[provider].upstreams

    def client(self, base_url: str | None = None) -> httpx.AsyncClient:
        """An httpx client for the public port (or `base_url` on it) that sends USER_KEY."""
        return httpx.AsyncClient(base_url=base_url or self.root_url, headers=AUTH)

    async def admin_ok(self, command: str, **fields: Any) -> Any:
        async with await self.sopy.admin() as admin:
            return await admin.ok(command, **fields)

    async def raw_connection(self) -> trio.SocketStream:
        """A plain TCP connection to the public port, for speaking HTTP by hand."""
        return await open_raw_connection(self.root_url)


async def open_raw_connection(http_url: str) -> trio.SocketStream:
    """A plain TCP connection to the host and port of `http_url`."""
    host, port = http_url.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def receive_until(stream: trio.SocketStream, marker: bytes, within: float = 5) -> bytes:
    received = b""
    with trio.fail_after(within):
        while marker not in received:
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed before {marker!r}; got {received!r}"
            received += chunk
    return received


async def read_until_closed(stream: trio.SocketStream, within: float) -> bytes:
    received = b""
    with trio.fail_after(within):
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


def request_id_in(message: str) -> str:
    """The request id that a gateway error message gives the client."""
    found = re.search(r"request id ([0-9a-f]{16})", message)
    assert found is not None, message
    return found.group(1)


async def access_log_line(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    """The `sopy.access` line of request `request_id`, which is written just after its answer
    (the test must capture INFO from `sopy.access`)."""
    lines: list[str] = []

    def written() -> bool:
        lines[:] = [
            record.getMessage()
            for record in caplog.records
            if record.name == "sopy.access"
            and record.getMessage().startswith(f"request {request_id} ")
        ]
        return bool(lines)

    await eventually(written)
    assert len(lines) == 1, lines
    return lines[0]


async def start_gateway(
    sopy: SopyUnderTest,
    nursery: trio.Nursery,
    models: dict[str, str],
    upstreams_per_provider: int = 1,
) -> Gateway:
    """Start mock upstreams for each provider in `models` (model -> provider), register them,
    their credentials, the mappings and USER_KEY over the admin socket."""
    upstreams = {
        provider: [MockUpstream(f"{provider}-{i}") for i in range(upstreams_per_provider)]
        for provider in sorted(set(models.values()))
    }
    return await start_gateway_with(sopy, nursery, upstreams, models)


async def start_gateway_with(
    sopy: SopyUnderTest,
    nursery: trio.Nursery,
    upstreams: dict[str, list[MockUpstream]],
    models: dict[str, str],
    fallbacks: dict[str, list[str]] | None = None,
    weights: dict[str, list[int]] | None = None,
) -> Gateway:
    """Like `start_gateway`, with the given mock upstreams per provider, optional fallback
    providers per model and optional backend weights per provider."""
    providers: dict[str, Provider] = {}
    async with await sopy.admin() as admin:
        for provider, mocks in upstreams.items():
            provider_weights = (weights or {}).get(provider, [1] * len(mocks))
            for upstream, weight in zip(mocks, provider_weights, strict=True):
                url = await nursery.start(upstream.serve)
                await admin.ok("add_backend", provider=provider, url=url, weight=weight)
            credential = f"sk-{provider}-provider-credential"
            await admin.ok("add_admin_auth", name=provider, credentials=credential)
            providers[provider] = Provider(provider, credential, tuple(mocks))
        for model, provider in models.items():
            await admin.ok(
                "add_model_mapping",
                model_name=model,
                provider=provider,
                fallbacks=(fallbacks or {}).get(model, []),
            )
        await admin.ok("add_user_api_key", api_key=USER_KEY, description="tests")
    return Gateway(sopy, providers)


async def make_anthropic(gateway: Gateway, provider: str) -> None:
    """Make `provider` of kind anthropic, keeping its credential."""
    await make_kind(gateway, provider, "anthropic")


async def make_kind(gateway: Gateway, provider: str, kind: str) -> None:
    """Make `provider` of `kind`, keeping its credential."""
    credential = gateway.providers[provider].credential
    await gateway.admin_ok(
        "add_admin_auth", name=provider, credentials=credential, kind=kind, replace=True
    )
