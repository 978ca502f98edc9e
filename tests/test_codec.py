"""The messages' JSON form (`sopy.codec`): what a client sends parses back to the same command,
and every config event survives the journal's JSON form unchanged."""

from sopy.codec import (
    admin_command_json,
    admin_reply_json,
    config_event_json,
    parse_admin_command,
    parse_config_event,
)
from sopy.errors import NotFound
from sopy.messages import (
    CONFIG_EVENTS,
    AddBackend,
    AddModelMapping,
    AdminAuthAdded,
    AdminAuthRemoved,
    BackendAdded,
    BackendRemoved,
    CommandFailed,
    CommandSucceeded,
    ConfigEvent,
    GetAdminAuth,
    ListBackends,
    ModelMappingAdded,
    ModelMappingRemoved,
    ProviderBackends,
    RemoveUserApiKey,
    SecretKeyRotated,
    UpdateUserApiKey,
    UserApiKeyActivated,
    UserApiKeyAdded,
    UserApiKeyDeactivated,
    UserApiKeyRemoved,
    UserApiKeyUpdated,
)

EVERY_EVENT: list[ConfigEvent] = [
    AdminAuthAdded("openai", replaced=True),
    AdminAuthRemoved("openai"),
    UserApiKeyAdded(3, "sk-u...", "ci"),
    UserApiKeyRemoved(3),
    UserApiKeyActivated(3),
    UserApiKeyDeactivated(3),
    UserApiKeyUpdated(3, 5, None, 2, 1000, 1900000000, ("gpt-4.1",), usage_reset=True),
    BackendAdded("openai", "http://a", 2),
    BackendRemoved("openai", "http://a"),
    ModelMappingAdded("gpt-4.1", "openai", replaced=False, fallbacks=("azure",)),
    ModelMappingRemoved("gpt-4.1", "openai"),
    SecretKeyRotated("f1e2d3"),
]


def test_every_config_event_survives_the_journal_form() -> None:
    assert {type(event) for event in EVERY_EVENT} == set(CONFIG_EVENTS.values())
    for event in EVERY_EVENT:
        stored = config_event_json(event)
        assert stored["kind"] == event.kind
        assert parse_config_event(stored) == event


def test_a_command_parses_back_from_the_json_a_client_sends() -> None:
    for command in (
        AddBackend("openai", "http://a", 3),
        AddModelMapping("gpt-4.1", "openai", replace=True, fallbacks=("azure",)),
        GetAdminAuth("openai", reveal=True),
        RemoveUserApiKey(id=4),
        UpdateUserApiKey(id=4, rpm=None, models=("gpt-4.1",), reset_usage=True),
        ListBackends(),
    ):
        assert parse_admin_command(admin_command_json(command)) == command


def test_replies_share_one_envelope_and_echo_the_request_id() -> None:
    listed = CommandSucceeded((ProviderBackends("openai", ("http://a",), (1,)),))
    assert admin_reply_json(listed, "req-1") == {
        "id": "req-1",
        "ok": True,
        "result": [{"provider": "openai", "urls": ["http://a"], "weights": [1]}],
    }
    missing = admin_reply_json(CommandFailed(NotFound("no such provider", param="provider")))
    assert missing == {
        "ok": False,
        "error": {"code": "not_found", "message": "no such provider", "field": "provider"},
    }
