"""Sopy's configuration as one object: command-line flags over `SOPY_*` environment variables
over the embedded defaults (an SQLite file and an admin socket in the working directory)."""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from sopy.errors import StartupError


@attrs.frozen
class Settings:
    db_path: Path = Path("sopy_admin.db")
    admin_socket: Path = Path("sopy-admin.sock")
    host: str = "127.0.0.1"
    port: int = 8000
    no_auth: bool = False
    log_level: str = "info"
    event_buffer: int = 1000


ENVIRONMENT_VARIABLES: Mapping[str, str] = {
    field.name: f"SOPY_{field.name.upper()}" for field in attrs.fields(Settings)
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from flags (None means not given), then the environment, then the defaults."""
    values: dict[str, Any] = {}
    for field in attrs.fields(Settings):
        flag = flags.get(field.name)
        if flag is not None:
            values[field.name] = _parsed(field.name, flag, f"--{field.name.replace('_', '-')}")
            continue
        variable = ENVIRONMENT_VARIABLES[field.name]
        if variable in environ:
            values[field.name] = _parsed(field.name, environ[variable], variable)
    return Settings(**values)


def _parsed(name: str, value: Any, source: str) -> Any:
    if name in ("db_path", "admin_socket"):
        return Path(value)
    if name == "port":
        return _port(value, source)
    if name == "event_buffer":
        return _positive(value, source)
    if name == "no_auth":
        return _boolean(value, source)
    if name == "log_level":
        level = str(value).lower()
        if level not in _LOG_LEVELS:
            raise StartupError(f"{source} must be one of {', '.join(_LOG_LEVELS)} (got {value!r})")
        return level
    return value


def _port(value: Any, source: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise StartupError(f"{source} must be a TCP port from 0 to 65535 (got {value!r})")
    return port


def _positive(value: Any, source: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise StartupError(f"{source} must be a positive whole number (got {value!r})")
    return number


def _boolean(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise StartupError(f"{source} must be true or false (got {value!r})")
