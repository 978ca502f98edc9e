"""Browser clients: `--cors-origins` answers the preflight of a listed origin and marks every
answer to it as readable; any other origin, and every origin when the setting is off (the
default), gets no CORS header at all."""

import attrs
import httpx
import pytest
import trio

from sopy.errors import StartupError
from sopy.routing.cors import CorsPolicy
from sopy.settings import Settings, load_settings
from tests.conftest import SopyUnderTest
from tests.gateway import AUTH, Gateway, chat, start_gateway

LISTED = "https://app.example.com"
UNLISTED = "https://evil.example.com"
PREFLIGHT = {
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type, x-stainless-os",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, cors_origins=(LISTED, "http://localhost:5173"))


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})


def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {
        name: value for name, value in response.headers.items() if name.startswith("access-control")
    }


async def test_a_listed_origin_gets_its_preflight_answered(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url) as browser:
        response = await browser.options(
            "/chat/completions", headers={"origin": LISTED, **PREFLIGHT}
        )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == LISTED
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"]
    assert allowed == "authorization, content-type, x-stainless-os"
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers
    assert "Origin" in response.headers["vary"]
    assert response.content == b""


async def test_an_unlisted_origin_gets_no_cors_header_on_preflight_or_request(
    gateway: Gateway,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url) as browser:
        preflight = await browser.options(
            "/chat/completions", headers={"origin": UNLISTED, **PREFLIGHT}
        )
        request = await browser.post(
            "/chat/completions", json=chat(), headers={"origin": UNLISTED, **AUTH}
        )
    assert preflight.status_code == 405
    assert _cors_headers(preflight) == {}
    assert request.status_code == 200
    assert _cors_headers(request) == {}


@pytest.mark.parametrize("stream", [False, True])
async def test_every_answer_to_a_listed_origin_is_readable_by_its_script(
    gateway: Gateway, stream: bool
) -> None:
    headers = {"origin": "http://localhost:5173", **AUTH}
    async with httpx.AsyncClient(base_url=gateway.base_url) as browser:
        completion = await browser.post(
            "/chat/completions", json=chat(stream=stream), headers=headers
        )
        models = await browser.get("/models", headers=headers)
        refused = await browser.get("/models", headers={"origin": "http://localhost:5173"})
    for response in (completion, models, refused):
        assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
        exposed = response.headers["access-control-expose-headers"]
        assert "x-request-id" in exposed
        assert "x-upstream-request-id" in exposed
    assert (completion.status_code, models.status_code, refused.status_code) == (200, 200, 401)


async def test_cors_is_off_by_default(sopy: SopyUnderTest, nursery: trio.Nursery) -> None:
    await sopy.stop()
    sopy.settings = attrs.evolve(sopy.settings, cors_origins=())
    await sopy.start()
    gateway = await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})
    async with httpx.AsyncClient(base_url=gateway.base_url) as browser:
        preflight = await browser.options("/models", headers={"origin": LISTED, **PREFLIGHT})
        request = await browser.get("/models", headers={"origin": LISTED, **AUTH})
    assert preflight.status_code == 405
    assert _cors_headers(preflight) == {}
    assert _cors_headers(request) == {}


def test_origins_are_read_comma_separated_from_the_environment() -> None:
    environ = {"SOPY_CORS_ORIGINS": "https://App.example.com/, http://localhost:5173"}
    loaded = load_settings({}, environ)
    assert loaded.cors_origins == ("https://app.example.com", "http://localhost:5173")
    assert load_settings({}, {}).cors_origins == ()


@pytest.mark.parametrize("origin", ["*", "https://*.example.com", "app.example.com", "https://a/b"])
def test_a_wildcard_or_anything_but_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(StartupError, match="--cors-origins"):
        load_settings({"cors_origins": origin}, {})


def test_a_preflight_asking_for_malformed_header_names_is_allowed_none() -> None:
    policy = CorsPolicy([LISTED])
    origin = LISTED.encode()
    asked = b"authorization\r\nx-injected: 1"
    headers = dict(policy.preflight_headers(origin, asked))
    assert b"access-control-allow-headers" not in headers
    assert headers[b"access-control-allow-origin"] == origin
    assert not policy.allows(None)
    assert not policy.allows(b"https://app.example.com.evil.com")
