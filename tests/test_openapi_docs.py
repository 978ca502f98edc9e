"""The OpenAPI document (`sopy.docs.openapi`) and the offline docs page (`sopy.docs.page`).

Unit specs call the two modules directly. The live specs at the bottom run against a real
gateway and a headless Chromium; they need `/openapi.json` and `/docs` wired into the HTTP front.
"""

import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from sopy.admin.routes import ADMIN_ROUTES
from sopy.docs.openapi import openapi_document, openapi_json
from sopy.docs.page import docs_response
from tests.conftest import SopyUnderTest

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
OPENAI_ERROR = {"$ref": "#/components/schemas/OpenAIError"}


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """Every documented (method, path) pair."""
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def operation(method: str, path: str) -> dict[str, Any]:
    documented: dict[str, Any] = openapi_document()["paths"][path][method.lower()]
    return documented


def schema(reference: dict[str, str]) -> dict[str, Any]:
    name = reference["$ref"].removeprefix("#/components/schemas/")
    found: dict[str, Any] = openapi_document()["components"]["schemas"][name]
    return found


def body_schema(method: str, path: str) -> dict[str, Any]:
    return schema(operation(method, path)["requestBody"]["content"]["application/json"]["schema"])


def parameters(method: str, path: str) -> dict[str, dict[str, Any]]:
    return {parameter["name"]: parameter for parameter in operation(method, path)["parameters"]}


def referenced_urls(page: bytes) -> list[str]:
    return re.findall(r'(?:src|href|url:)\s*=?\s*"([^"]+)"', page.decode())


# -- the OpenAPI document ---------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1_about_this_sopy() -> None:
    document = openapi_document()

    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "Sopy"
    assert document["info"]["version"] == importlib.metadata.version("sopy")


def test_the_json_form_is_the_document() -> None:
    assert orjson.loads(openapi_json()) == openapi_document()


def test_the_public_routes_are_documented() -> None:
    documented = operations(openapi_document())

    public = {
        ("get", "/"),
        ("get", "/hello/{name}"),
        ("get", "/healthz"),
        ("get", "/v1/models"),
        ("post", "/v1/chat/completions"),
        ("get", "/openapi.json"),
        ("get", "/docs"),
    }
    assert public <= documented


def test_only_the_v1_routes_need_a_bearer_key() -> None:
    document = openapi_document()

    bearer = document["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    for method, path in operations(document):
        needs_key = "security" in operation(method, path)
        assert needs_key == path.startswith("/v1/"), (method, path)


def test_a_chat_completion_needs_model_and_messages_and_may_stream() -> None:
    request = body_schema("POST", "/v1/chat/completions")
    responses = operation("POST", "/v1/chat/completions")["responses"]

    assert set(request["required"]) == {"model", "messages"}
    assert request["properties"]["model"]["type"] == "string"
    assert request["properties"]["messages"]["type"] == "array"
    assert "boolean" in request["properties"]["stream"]["type"]
    assert "object" in request["properties"]["stream_options"]["type"]
    assert request["additionalProperties"] is True
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    for status in ("400", "401", "404", "413", "502", "503", "504"):
        assert responses[status]["content"]["application/json"]["schema"] == OPENAI_ERROR


def test_errors_have_the_openai_shape() -> None:
    error = schema(OPENAI_ERROR)["properties"]["error"]

    assert set(error["required"]) == {"message", "type", "param", "code"}
    assert error["properties"]["message"]["type"] == "string"
    assert error["properties"]["param"]["type"] == ["string", "null"]
    assert error["properties"]["code"]["type"] == ["string", "null"]


def test_models_are_an_openai_list() -> None:
    ok = operation("GET", "/v1/models")["responses"]["200"]
    model_list = schema(ok["content"]["application/json"]["schema"])

    assert model_list["properties"]["object"] == {"const": "list"}
    model = schema(model_list["properties"]["data"]["items"])
    assert set(model["required"]) == {"id", "object", "created", "owned_by", "upstream_model"}
    assert model["properties"]["created"]["type"] == "integer"


def test_every_admin_route_is_documented_with_its_method_summary_and_status() -> None:
    for route in ADMIN_ROUTES:
        documented = operation(route.method, route.path)

        assert documented["summary"] == route.summary
        assert documented["operationId"] == route.command.command
        assert documented["tags"] == ["admin"]
        assert "--unix-socket" in documented["description"]
        assert str(route.status) in documented["responses"]
        assert {"400", "404", "405", "409", "413"} <= set(documented["responses"])


def test_the_admin_section_holds_exactly_the_admin_routes_and_the_event_streams() -> None:
    document = openapi_document()

    admin = {(m, p) for m, p in operations(document) if "admin" in operation(m, p)["tags"]}

    expected = {(route.method.lower(), route.path) for route in ADMIN_ROUTES}
    assert admin == expected | {("get", "/admin/events"), ("get", "/admin/usage/events")}


def test_the_add_backend_body_requires_provider_and_url() -> None:
    body = body_schema("POST", "/admin/backend")

    assert set(body["required"]) == {"provider", "url"}
    assert body["properties"]["provider"] == {"type": "string"}
    assert body["properties"]["url"] == {"type": "string"}
    assert body["additionalProperties"] is False


def test_optional_admin_fields_carry_their_default_and_may_be_null() -> None:
    body = body_schema("DELETE", "/admin/user_api_key")

    assert body["required"] == []
    assert body["properties"]["id"] == {"type": ["integer", "null"], "default": None}
    assert body["properties"]["api_key"] == {"type": ["string", "null"], "default": None}
    assert body_schema("POST", "/admin/admin_auth")["properties"]["replace"] == {
        "type": "boolean",
        "default": False,
    }


def test_admin_path_and_query_parameters_are_typed() -> None:
    by_id = parameters("GET", "/admin/user_api_key/{id}")
    by_name = parameters("GET", "/admin/admin_auth/{name}")

    assert by_id["id"]["in"] == "path"
    assert by_id["id"]["schema"] == {"type": "integer"}
    assert by_name["name"]["schema"] == {"type": "string"}
    assert by_name["reveal"]["in"] == "query"
    assert by_name["reveal"]["required"] is False
    assert by_name["reveal"]["schema"]["type"] == "boolean"


def test_the_admin_replies_are_the_admin_envelope() -> None:
    responses = operation("POST", "/admin/backend")["responses"]

    success = schema(responses["201"]["content"]["application/json"]["schema"])
    failure = schema(responses["409"]["content"]["application/json"]["schema"])
    assert success["properties"]["ok"] == {"const": True}
    assert "result" in success["required"]
    assert failure["properties"]["ok"] == {"const": False}
    assert set(failure["properties"]["error"]["required"]) == {"code", "message"}
    assert "field" in failure["properties"]["error"]["properties"]


def test_every_admin_route_documents_the_config_store_being_unavailable() -> None:
    codes = ["config_store_unavailable", "config_store_full", "config_store_locked"]
    codes += ["config_store_read_only", "config_store_replaced"]
    for route in ADMIN_ROUTES:
        unavailable = operation(route.method, route.path)["responses"].get("503")
        assert unavailable is not None, route
        for code in codes:
            assert f"`{code}`" in unavailable["description"], (route, code)


def test_the_event_stream_is_documented_as_an_admin_websocket() -> None:
    events = operation("GET", "/admin/events")

    assert events["tags"] == ["admin"]
    assert parameters("GET", "/admin/events")["since"]["schema"] == {"type": "integer"}
    assert "101" in events["responses"]
    assert '"type": "snapshot"' in events["description"]
    assert '"type": "event"' in events["description"]


# -- the docs page ----------------------------------------------------------------------------


def test_the_docs_page_loads_only_its_own_assets_and_the_document() -> None:
    answer = docs_response("/docs")

    assert answer is not None
    status, content_type, page = answer
    assert (status, content_type) == (200, b"text/html; charset=utf-8")
    urls = referenced_urls(page)
    assert "/openapi.json" in urls
    assert all(url == "/openapi.json" or url.startswith("/docs/assets/") for url in urls), urls
    assert b"http://" not in page
    assert b"https://" not in page


def test_every_asset_the_page_references_is_served_from_memory() -> None:
    answer = docs_response("/docs")
    assert answer is not None

    assets = [url for url in referenced_urls(answer[2]) if url.startswith("/docs/assets/")]

    assert any(url.endswith(".js") for url in assets)
    assert any(url.endswith(".css") for url in assets)
    content_types = {".js": b"text/javascript", ".css": b"text/css", ".png": b"image/png"}
    for url in assets:
        served = docs_response(url)
        assert served is not None, url
        status, content_type, body = served
        assert status == 200
        assert content_type.startswith(content_types[url[url.rfind(".") :]])
        assert len(body) > 0
        again = docs_response(url)
        assert again is not None
        assert again[2] is body, "an asset is read from disk once"


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/../openapi.py",
        "/docs/assets/../../../../etc/passwd",
        "/docs/assets//etc/passwd",
        "/docs/assets/%2e%2e/%2e%2e/etc/passwd",
        "/docs/assets/",
        "/docs/assets/missing.js",
        "/docs/assets/LICENSE",
        "/docs/assets/nested/swagger-ui.css",
        "/docs/elsewhere",
        "/docsx",
        "/etc/passwd",
    ],
)
def test_paths_outside_the_assets_are_not_served(path: str) -> None:
    assert docs_response(path) is None


# -- live: a real gateway, httpx and headless Chromium ------------------------------------------
# These need GET /openapi.json and the /docs prefix wired into the HTTP front.

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_TIMEOUT = 60
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Resolve no host but the gateway's: the page must render without any network.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--virtual-time-budget=10000",
)


def chromium_or_skip() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(apt-get install -y chromium)"
        )
    pytest.skip(f"{CHROMIUM} is not installed (Debian package: chromium)")


async def run_chromium(chromium: Path, profile: Path, *arguments: str) -> bytes:
    command = [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
    with trio.fail_after(CHROMIUM_TIMEOUT):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout


def rendered_operations(dom: str) -> set[tuple[str, str]]:
    """(method, path) of each operation block Swagger UI rendered."""
    blocks = re.findall(r'<div class="opblock opblock-(\w+)"[^>]*>.*?data-path="([^"]+)"', dom)
    return set(blocks)


async def test_live_openapi_json_is_served_and_valid(sopy: SopyUnderTest) -> None:
    async with httpx.AsyncClient(base_url=sopy.http_url) as http:
        response = await http.get("/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == openapi_document()
    validate(response.json(), cls=OpenAPIV31SpecValidator)


async def test_live_docs_page_and_its_assets_are_served(sopy: SopyUnderTest) -> None:
    async with httpx.AsyncClient(base_url=sopy.http_url) as http:
        page = await http.get("/docs")
        assets = [url for url in referenced_urls(page.content) if url.startswith("/docs/")]
        statuses = {url: (await http.get(url)).status_code for url in assets}
        missing = await http.get("/docs/assets/../openapi.py")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert b'id="swagger-ui"' in page.content
    assert statuses
    assert set(statuses.values()) == {200}, statuses
    assert missing.status_code == 404


async def test_live_docs_render_every_operation_in_headless_chromium(
    sopy: SopyUnderTest, tmp_path: Path
) -> None:
    chromium = chromium_or_skip()
    docs_url = sopy.http_url + "/docs"
    screenshot = tmp_path / "docs.png"

    dom = await run_chromium(
        chromium,
        tmp_path / "profile",
        "--dump-dom",
        f"--screenshot={screenshot}",
        "--window-size=1280,2000",
        docs_url,
    )

    rendered = rendered_operations(dom.decode())
    assert ("post", "/v1/chat/completions") in rendered
    assert ("post", "/admin/backend") in rendered
    assert rendered == operations(openapi_document())
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    assert screenshot.stat().st_size > 20_000
