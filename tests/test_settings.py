"""Settings precedence: flags over SOPY_* environment variables over defaults."""

from pathlib import Path

import pytest

from sopy.errors import StartupError
from sopy.settings import Settings, load_settings


def test_defaults_are_files_in_the_working_directory() -> None:
    settings = load_settings({}, environ={})
    assert settings == Settings()
    assert settings.db_path == Path("sopy_admin.db")
    assert settings.admin_socket == Path("sopy-admin.sock")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    environ = {"SOPY_PORT": "9001", "SOPY_DB_PATH": "/tmp/env.db", "SOPY_NO_AUTH": "yes"}
    from_env = load_settings({}, environ=environ)
    assert (from_env.port, from_env.db_path, from_env.no_auth) == (9001, Path("/tmp/env.db"), True)

    from_flags = load_settings(
        {"port": "9002", "db_path": None, "idle_timeout": "2.5"}, environ=environ
    )
    assert from_flags.port == 9002
    assert from_flags.idle_timeout == 2.5
    assert from_flags.db_path == Path("/tmp/env.db")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SOPY_PORT": "eighty"}, "SOPY_PORT must be a whole number from 0 to 65535"),
        ({"SOPY_PORT": "70000"}, "SOPY_PORT must be a whole number from 0 to 65535"),
        ({"SOPY_RETRIES": "-1"}, "SOPY_RETRIES must be a whole number from 0"),
        ({"SOPY_IDLE_TIMEOUT": "soon"}, "SOPY_IDLE_TIMEOUT must be a number"),
        ({"SOPY_CONNECT_TIMEOUT": "nan"}, "SOPY_CONNECT_TIMEOUT must be a number from 0.001"),
        ({"SOPY_BALANCE": "random"}, "SOPY_BALANCE must be one of least_in_flight, round_robin"),
        ({"SOPY_NO_AUTH": "maybe"}, "SOPY_NO_AUTH must be true or false"),
        ({"SOPY_LOG_LEVEL": "loud"}, "SOPY_LOG_LEVEL must be one of"),
        (
            {"SOPY_MAX_BODY_BYTES_IN_FLIGHT": "1000"},
            r"--max-body-bytes-in-flight \(1000\) is smaller than --max-body-bytes",
        ),
    ],
)
def test_bad_values_name_their_source(environ: dict[str, str], message: str) -> None:
    with pytest.raises(StartupError, match=message):
        load_settings({}, environ=environ)
