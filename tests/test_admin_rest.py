"""The seed's admin REST routes over the real admin Unix socket (httpx with a uds transport)."""

import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests.admin_connection import AdminConnection
from tests.conftest import SopyUnderTest


@pytest.fixture
async def rest(sopy: SopyUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    async with sopy.admin_rest() as client:
        yield client


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is True
    return body["result"]


def failed(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False
    assert body["error"]["code"] == code
    error: dict[str, Any] = body["error"]
    return error


async def test_admin_auth_routes(rest: httpx.AsyncClient) -> None:
    credential = "sk-provider-secret-0123456789"
    added = ok(
        await rest.post("/admin/admin_auth", json={"name": "openai", "credentials": credential}),
        201,
    )
    assert added == {"name": "openai", "credentials": "sk-...6789", "kind": "openai"}
    assert ok(await rest.get("/admin/admin_auth")) == [{"name": "openai", "kind": "openai"}]
    assert ok(await rest.get("/admin/admin_auth/openai"))["credentials"] == "sk-...6789"
    revealed = ok(await rest.get("/admin/admin_auth/openai", params={"reveal": "true"}))
    assert revealed["credentials"] == credential
    failed(
        await rest.post("/admin/admin_auth", json={"name": "openai", "credentials": credential}),
        409,
        "conflict",
    )
    ok(await rest.delete("/admin/admin_auth/openai"))
    failed(await rest.get("/admin/admin_auth/openai"), 404, "not_found")


async def test_user_api_key_routes(rest: httpx.AsyncClient) -> None:
    created = ok(await rest.post("/admin/user_api_key", json={"description": "rest"}), 201)
    assert created["api_key"].startswith("sk-sopy-")
    key_id = created["id"]

    listed = ok(await rest.get("/admin/user_api_keys"))
    assert [k["id"] for k in listed] == [key_id]
    assert created["api_key"] not in str(listed)
    assert ok(await rest.get(f"/admin/user_api_key/{key_id}"))["description"] == "rest"
    assert ok(await rest.put(f"/admin/user_api_key/deactivate/{key_id}"))["active"] is False
    assert ok(await rest.put(f"/admin/user_api_key/activate/{key_id}"))["active"] is True

    removed = await rest.request(
        "DELETE", "/admin/user_api_key", json={"api_key": created["api_key"]}
    )
    assert ok(removed)["id"] == key_id
    failed(await rest.get(f"/admin/user_api_key/{key_id}"), 404, "not_found")
    bad_id = failed(await rest.get("/admin/user_api_key/seven"), 400, "invalid_field")
    assert bad_id["field"] == "id"


async def test_backend_routes(rest: httpx.AsyncClient) -> None:
    body = {"provider": "openai", "url": "https://api.openai.com/v1/"}
    assert ok(await rest.post("/admin/backend", json=body), 201) == {
        "provider": "openai",
        "urls": ["https://api.openai.com/v1"],
        "weights": [1],
    }
    assert ok(await rest.get("/admin/backend")) == [
        {"provider": "openai", "urls": ["https://api.openai.com/v1"], "weights": [1]}
    ]
    assert ok(await rest.get("/admin/backend/openai"))["urls"] == ["https://api.openai.com/v1"]
    failed(await rest.post("/admin/backend", json=body), 409, "conflict")
    ok(await rest.request("DELETE", "/admin/backend", json=body))
    failed(await rest.get("/admin/backend/openai"), 404, "not_found")
    bad = failed(
        await rest.post("/admin/backend", json={"provider": "x", "url": "ftp://x"}),
        400,
        "invalid_field",
    )
    assert bad["field"] == "url"


async def test_model_mapping_routes_accept_names_with_slashes(rest: httpx.AsyncClient) -> None:
    body = {"model_name": "meta-llama/Llama-3:8b", "provider": "local"}
    assert ok(await rest.post("/admin/model_mapping", json=body), 201)["provider"] == "local"
    assert [m["model_name"] for m in ok(await rest.get("/admin/model_mapping"))] == [
        "meta-llama/Llama-3:8b"
    ]
    path = "/admin/model_mapping/meta-llama/Llama-3:8b"
    assert ok(await rest.get(path))["provider"] == "local"
    assert ok(await rest.delete(path))["model_name"] == "meta-llama/Llama-3:8b"
    failed(await rest.get(path), 404, "not_found")


async def test_rest_and_json_socket_give_the_same_result(
    rest: httpx.AsyncClient, admin: AdminConnection
) -> None:
    ok(await rest.post("/admin/backend", json={"provider": "p", "url": "http://h"}), 201)
    ok(await rest.post("/admin/model_mapping", json={"model_name": "m", "provider": "p"}), 201)
    for path, command in [
        ("/admin/backend", "list_backends"),
        ("/admin/model_mapping", "list_model_mappings"),
        ("/admin/backend/p", "get_backend"),
    ]:
        fields = {"provider": "p"} if command == "get_backend" else {}
        assert (await rest.get(path)).json() == await admin.call(command, **fields)


async def test_bad_requests_get_the_same_error_body(rest: httpx.AsyncClient) -> None:
    failed(await rest.get("/admin/nothing"), 404, "not_found")
    not_allowed = await rest.patch("/admin/backend")
    failed(not_allowed, 405, "method_not_allowed")
    assert not_allowed.headers["allow"] == "DELETE, GET, POST"
    failed(
        await rest.post("/admin/backend", content=b"{broken", headers={"content-type": "x"}),
        400,
        "invalid_json",
    )
    failed(await rest.post("/admin/backend", json=[1]), 400, "invalid_request")
    missing = failed(
        await rest.post("/admin/backend", json={"provider": "p"}), 400, "invalid_field"
    )
    assert missing["field"] == "url"
    extra = failed(
        await rest.get("/admin/admin_auth/x", params={"verbose": "1"}), 400, "invalid_field"
    )
    assert extra["field"] == "verbose"
    failed(
        await rest.post("/admin/backend", content=b"x" * (1024 * 1024 + 1)),
        413,
        "payload_too_large",
    )


async def test_keep_alive_serves_many_requests_on_one_connection(
    rest: httpx.AsyncClient,
) -> None:
    for i in range(10):
        ok(await rest.post("/admin/backend", json={"provider": "p", "url": f"http://h{i}"}), 201)
    assert len(ok(await rest.get("/admin/backend/p"))["urls"]) == 10


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_unix_socket_works(sopy: SopyUnderTest) -> None:
    socket_path = str(sopy.settings.admin_socket)
    await trio.run_process(
        [
            "curl",
            "-sf",
            "--unix-socket",
            socket_path,
            "-X",
            "POST",
            "http://sopy/admin/backend",
            "-d",
            '{"provider": "openai", "url": "https://api.openai.com"}',
        ],
        capture_stdout=True,
    )
    listed = await trio.run_process(
        ["curl", "-sf", "--unix-socket", socket_path, "http://sopy/admin/backend"],
        capture_stdout=True,
        stderr=subprocess.STDOUT,
    )
    assert orjson.loads(listed.stdout) == {
        "ok": True,
        "result": [{"provider": "openai", "urls": ["https://api.openai.com/v1"], "weights": [1]}],
    }
