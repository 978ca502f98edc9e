"""Backend URLs are base URLs, as the OpenAI SDK's `base_url`: the request's path after `/v1`
is appended to the URL's own path, and a URL without a path gets `/v1`. Databases written
before this rule (and before provider kinds and model aliases) keep sending every request
where, and as, it went."""

import os
import sqlite3
from pathlib import Path

import httpx
import pytest
import trio

from sopy import keys
from sopy.config.database import MIGRATIONS, SOPY_APPLICATION_ID
from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream
from tests.admin_connection import open_events
from tests.conftest import SopyUnderTest
from tests.gateway import AUTH, USER_KEY, chat
from tests.test_admin_events import next_message

CREDENTIAL = "sk-provider-credential-0001"


async def forwarded_path(
    sopy: SopyUnderTest, nursery: trio.Nursery, base_path: str, url_path: str
) -> str:
    """The path a mock serving its API at `base_path` receives for one chat completion, when
    its backend URL is the mock's address + `url_path`."""
    upstream = MockUpstream("p", base_path=base_path)
    address = await nursery.start(upstream.serve)
    async with await sopy.admin() as admin:
        await admin.ok("add_backend", provider="p", url=address + url_path)
        await admin.ok("add_admin_auth", name="p", credentials=CREDENTIAL)
        await admin.ok("add_model_mapping", model_name="m", provider="p")
        await admin.ok("add_user_api_key", api_key=USER_KEY)
    await post_chat(sopy.http_url)
    return upstream.requests[-1].path


async def post_chat(http_url: str) -> None:
    async with httpx.AsyncClient(base_url=http_url, headers=AUTH) as http:
        response = await http.post("/v1/chat/completions", json=chat("m"))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("base_path", "url_path"),
    [
        ("/openai/v1", "/openai/v1"),  # Azure OpenAI's v1 API
        ("/v1beta/openai", "/v1beta/openai/"),  # Gemini's OpenAI-compatible API
        ("/v1", "/v1"),
        ("/v1", ""),  # no path: `/v1`, as the quick start has it
        ("/v1", "/"),
    ],
)
async def test_the_request_path_after_v1_is_appended_to_the_backend_url(
    sopy: SopyUnderTest, nursery: trio.Nursery, base_path: str, url_path: str
) -> None:
    path = await forwarded_path(sopy, nursery, base_path, url_path)

    assert path == f"{base_path}/chat/completions"


async def test_a_backend_url_is_stored_as_the_base_url_it_is(sopy: SopyUnderTest) -> None:
    async with await sopy.admin() as admin:
        await admin.ok("add_backend", provider="openai", url="https://API.openai.com")
        gemini = "https://generativelanguage.googleapis.com/v1beta/openai/"
        proxy = "http://localhost:8080/proxy"
        await admin.ok("add_backend", provider="gemini", url=gemini)
        await admin.ok("add_backend", provider="proxy", url=proxy)
        duplicate = await admin.error(
            "add_backend", provider="openai", url="https://api.openai.com/v1/"
        )
        listed = await admin.ok("list_backends")

    assert duplicate["code"] == "conflict"
    assert [(group["provider"], group["urls"]) for group in listed] == [
        ("gemini", ["https://generativelanguage.googleapis.com/v1beta/openai"]),
        ("openai", ["https://api.openai.com/v1"]),
        ("proxy", ["http://localhost:8080/proxy"]),
    ]


def old_database(path: Path, backend_url: str) -> None:
    """A database as Sopy wrote it before kinds and base URLs (schema version 3): the backend
    URL stored without its `/v1`, a credential, a mapping, a user key and their journal."""
    connection = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:3]:
        connection.executescript(migration)
    connection.executescript(
        f"""
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version (version) VALUES (3);
        PRAGMA application_id = {SOPY_APPLICATION_ID};
        INSERT INTO admin_auth (name, credentials, created_at) VALUES ('p', '{CREDENTIAL}', 1);
        INSERT INTO backends (provider, url, weight, created_at)
            VALUES ('p', '{backend_url}', 1, 1);
        INSERT INTO model_mappings (model_name, provider, created_at) VALUES ('m', 'p', 1);
        INSERT INTO user_api_keys (key_hash, prefix, description, active, created_at)
            VALUES ('{keys.hash_user_key(USER_KEY)}', 'sk-user', '', 1, 1);
        INSERT INTO config_events (version, at, event) VALUES
            (1, 1.0, '{{"kind":"backend_added","provider":"p","url":"{backend_url}","weight":1}}');
        UPDATE meta SET value = 1 WHERE key = 'config_version';
        """
    )
    connection.close()
    os.chmod(path, 0o600)


async def test_an_old_database_migrates_and_sends_requests_where_they_went(
    nursery: trio.Nursery, settings: Settings
) -> None:
    upstream = MockUpstream("p")
    address = await nursery.start(upstream.serve)
    old_database(settings.db_path, address)
    sopy = SopyUnderTest(nursery, settings)
    await sopy.start()

    await post_chat(sopy.http_url)
    async with await sopy.admin() as admin:
        backends = await admin.ok("get_backend", provider="p")
        credentials = await admin.ok("list_admin_auth")
        mapping = await admin.ok("get_model_mapping", model_name="m")
    journal = await open_events(nursery, settings.admin_socket, since=0)
    replayed = await next_message(journal)

    received = upstream.requests[-1]
    assert received.path == "/v1/chat/completions"
    assert received.headers["authorization"] == f"Bearer {CREDENTIAL}"
    assert backends["urls"] == [address + "/v1"]
    assert credentials == [{"name": "p", "kind": "openai"}]
    assert (mapping["upstream_model"], mapping["fallback_upstream_models"]) == ("m", {})
    assert received.json()["model"] == "m"
    assert (replayed["kind"], replayed["entity"]["url"]) == ("backend_added", address + "/v1")
    await journal.aclose()
    await sopy.stop()
