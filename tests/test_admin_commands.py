"""Every one of the seed's 18 admin commands, driven over the real admin socket."""

from tests.admin_connection import AdminConnection

CREDENTIAL = "sk-provider-secret-0123456789"


async def test_admin_auth_add_list_get_masked_reveal_remove(admin: AdminConnection) -> None:
    added = await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)
    assert added == {"name": "openai", "credentials": "sk-...6789", "kind": "openai"}

    assert await admin.ok("list_admin_auth") == [{"name": "openai", "kind": "openai"}]
    masked = await admin.ok("get_admin_auth", name="openai")
    assert masked["credentials"] == "sk-...6789"
    revealed = await admin.ok("get_admin_auth", name="openai", reveal=True)
    assert revealed["credentials"] == CREDENTIAL

    removed = await admin.ok("remove_admin_auth", name="openai")
    assert removed["name"] == "openai"
    assert CREDENTIAL not in str(removed)
    assert await admin.ok("list_admin_auth") == []


async def test_duplicate_admin_auth_is_a_conflict_unless_replace(admin: AdminConnection) -> None:
    await admin.ok("add_admin_auth", name="openai", credentials=CREDENTIAL)

    conflict = await admin.error("add_admin_auth", name="openai", credentials="sk-other-value-1")
    assert conflict["code"] == "conflict"
    assert "replace" in conflict["message"]

    await admin.ok("add_admin_auth", name="openai", credentials="sk-new-value-abcdef", replace=True)
    revealed = await admin.ok("get_admin_auth", name="openai", reveal=True)
    assert revealed["credentials"] == "sk-new-value-abcdef"


async def test_removing_or_getting_missing_things_is_not_found(admin: AdminConnection) -> None:
    cases = [
        ("remove_admin_auth", {"name": "nope"}),
        ("get_admin_auth", {"name": "nope"}),
        ("remove_user_api_key", {"api_key": "sk-never-added"}),
        ("remove_user_api_key", {"id": 42}),
        ("get_user_api_key", {"id": 42}),
        ("activate_user_api_key", {"id": 42}),
        ("deactivate_user_api_key", {"id": 42}),
        ("remove_backend", {"provider": "openai", "url": "https://api.openai.com"}),
        ("get_backend", {"provider": "openai"}),
        ("remove_model_mapping", {"model_name": "gpt-4.1"}),
        ("get_model_mapping", {"model_name": "gpt-4.1"}),
    ]
    for command, fields in cases:
        error = await admin.error(command, **fields)
        assert error["code"] == "not_found", (command, error)


async def test_user_key_given_is_stored_hashed_and_shown_by_prefix(admin: AdminConnection) -> None:
    created = await admin.ok("add_user_api_key", api_key="sk-user-123", description="Test key")
    assert created["api_key"] == "sk-user-123"
    assert created["active"] is True
    key_id = created["id"]

    listed = await admin.ok("list_user_api_keys")
    assert listed == [
        {
            "id": key_id,
            "prefix": created["prefix"],
            "description": "Test key",
            "active": True,
            "created_at": created["created_at"],
            **dict.fromkeys(("rpm", "tpm", "max_parallel", "token_budget", "expires_at")),
            "models": None,
            "usage_reset_at": created["usage_reset_at"],
            "limit_failure": "closed",
        }
    ]
    assert "sk-user-123" not in str(listed)
    assert len(created["prefix"]) <= len("sk-user-123") // 4

    fetched = await admin.ok("get_user_api_key", id=key_id)
    assert fetched == listed[0]


async def test_user_key_generated_when_omitted_is_strong_and_shown_once(
    admin: AdminConnection,
) -> None:
    created = await admin.ok("add_user_api_key", description="generated")
    key = created["api_key"]
    assert key.startswith("sk-sopy-")
    assert len(key) >= 40

    other = await admin.ok("add_user_api_key")
    assert other["api_key"] != key
    assert other["id"] > created["id"]
    assert key not in str(await admin.ok("get_user_api_key", id=created["id"]))


async def test_user_key_activate_deactivate_and_remove_by_key_or_id(admin: AdminConnection) -> None:
    first = await admin.ok("add_user_api_key", api_key="sk-user-first-1")
    second = await admin.ok("add_user_api_key", api_key="sk-user-second-2")

    deactivated = await admin.ok("deactivate_user_api_key", id=first["id"])
    assert deactivated["active"] is False
    assert (await admin.ok("get_user_api_key", id=first["id"]))["active"] is False
    activated = await admin.ok("activate_user_api_key", id=first["id"])
    assert activated["active"] is True

    await admin.ok("remove_user_api_key", api_key="sk-user-first-1")
    await admin.ok("remove_user_api_key", id=second["id"])
    assert await admin.ok("list_user_api_keys") == []


async def test_duplicate_user_key_is_a_conflict(admin: AdminConnection) -> None:
    await admin.ok("add_user_api_key", api_key="sk-user-123")
    error = await admin.error("add_user_api_key", api_key="sk-user-123")
    assert error["code"] == "conflict"


async def test_backends_are_normalised_and_a_provider_may_have_many(admin: AdminConnection) -> None:
    await admin.ok("add_backend", provider="openai", url="https://API.openai.com/v1/")
    await admin.ok("add_backend", provider="openai", url="http://127.0.0.1:9000")
    await admin.ok("add_backend", provider="local", url="http://localhost:8080/proxy/v1")

    assert await admin.ok("get_backend", provider="openai") == {
        "provider": "openai",
        "urls": ["https://api.openai.com/v1", "http://127.0.0.1:9000/v1"],
        "weights": [1, 1],
    }
    assert await admin.ok("list_backends") == [
        {"provider": "local", "urls": ["http://localhost:8080/proxy/v1"], "weights": [1]},
        {
            "provider": "openai",
            "urls": ["https://api.openai.com/v1", "http://127.0.0.1:9000/v1"],
            "weights": [1, 1],
        },
    ]

    duplicate = await admin.error("add_backend", provider="openai", url="https://api.openai.com")
    assert duplicate["code"] == "conflict"

    await admin.ok("remove_backend", provider="openai", url="https://api.openai.com/v1")
    assert (await admin.ok("get_backend", provider="openai"))["urls"] == [
        "http://127.0.0.1:9000/v1"
    ]


async def test_backend_urls_must_be_http_or_https(admin: AdminConnection) -> None:
    for url in ["ftp://example.com", "example.com", "https://", "https://u:p@example.com"]:
        error = await admin.error("add_backend", provider="openai", url=url)
        assert error["code"] == "invalid_field", url
        assert error["field"] == "url"


async def test_a_refused_backend_url_is_never_echoed_with_its_credentials(
    admin: AdminConnection,
) -> None:
    for url in ["ftp://user:sekrit@example.com", "user:sekrit@example.com/v1"]:
        error = await admin.error("add_backend", provider="openai", url=url)
        assert error["code"] == "invalid_field", url
        assert "sekrit" not in error["message"], error
        assert "example.com" in error["message"], error


async def test_model_mappings_add_list_get_replace_remove(admin: AdminConnection) -> None:
    added = await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="openai")
    assert added["model_name"] == "gpt-4.1"
    assert added["provider"] == "openai"
    await admin.ok("add_model_mapping", model_name="claude-3", provider="anthropic")

    mappings = await admin.ok("list_model_mappings")
    assert [(m["model_name"], m["provider"]) for m in mappings] == [
        ("claude-3", "anthropic"),
        ("gpt-4.1", "openai"),
    ]
    assert (await admin.ok("get_model_mapping", model_name="gpt-4.1"))["provider"] == "openai"

    conflict = await admin.error("add_model_mapping", model_name="gpt-4.1", provider="azure")
    assert conflict["code"] == "conflict"
    await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="azure", replace=True)
    assert (await admin.ok("get_model_mapping", model_name="gpt-4.1"))["provider"] == "azure"

    removed = await admin.ok("remove_model_mapping", model_name="gpt-4.1")
    assert removed["provider"] == "azure"
    assert [m["model_name"] for m in await admin.ok("list_model_mappings")] == ["claude-3"]
