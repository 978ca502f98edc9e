"""One reading of booleans written as text: settings, `sopy admin` flags and admin REST query
fields accept the same spellings and name their source when refused."""

import pytest

from sopy.admin.command_text import field_value
from sopy.cli.main import command_payload
from sopy.errors import InvalidField, StartupError
from sopy.messages import GetAdminAuth
from sopy.settings import load_settings
from tests.conftest import SopyUnderTest

SPELLINGS = [
    *[(text, True) for text in ("true", "yes", "on", "1", "TRUE", " Yes ", "On")],
    *[(text, False) for text in ("false", "no", "off", "0", "", "FALSE", " No ", "Off")],
]


@pytest.mark.parametrize(("text", "meaning"), SPELLINGS)
def test_settings_and_admin_fields_read_every_spelling_alike(text: str, meaning: bool) -> None:
    assert load_settings({}, environ={"SOPY_NO_AUTH": text}).no_auth is meaning
    assert field_value(GetAdminAuth, "reveal", text) is meaning
    cli = command_payload("get-admin-auth", ["--name", "openai", "--reveal", text])
    assert cli == {"command": "get_admin_auth", "name": "openai", "reveal": meaning}


def test_refused_text_is_named_by_its_source() -> None:
    with pytest.raises(StartupError, match="SOPY_NO_AUTH must be true or false") as setting:
        load_settings({}, environ={"SOPY_NO_AUTH": "maybe"})
    with pytest.raises(InvalidField, match="field 'reveal' must be true or false") as field:
        field_value(GetAdminAuth, "reveal", "maybe")

    assert field.value.param == "reveal"
    for error in (setting.value, field.value):
        assert "yes/no, on/off, 1/0; got 'maybe'" in str(error)


async def test_admin_rest_query_booleans_use_the_same_spellings(sopy: SopyUnderTest) -> None:
    credential = "sk-provider-secret-0123456789"
    async with await sopy.admin() as admin:
        await admin.ok("add_admin_auth", name="openai", credentials=credential)
    async with sopy.admin_rest() as rest:
        revealed = await rest.get("/admin/admin_auth/openai", params={"reveal": "on"})
        refused = await rest.get("/admin/admin_auth/openai", params={"reveal": "maybe"})

    assert revealed.status_code == 200, revealed.text
    assert revealed.json()["result"]["credentials"] == credential
    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "reveal"
