"""Sopy's configuration as one object: command-line flags over `SOPY_*` environment variables
over the embedded defaults (an SQLite file and an admin socket in the working directory).

Each field's type, bounds and help text live on the field itself; `load_settings` parses and
checks text from flags and the environment against them, and `sopy serve --help` shows them.
"""

import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from sopy.boolean_text import NotABoolean, parse_boolean
from sopy.errors import StartupError

BALANCE_STRATEGIES = ("least_in_flight", "round_robin")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _about(
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    auto_is_cores: bool = False,
) -> dict[str, Any]:
    return {
        "help": help, "low": low, "high": high, "choices": choices, "auto_is_cores": auto_is_cores
    }  # fmt: skip


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), which `auto` stands for."""
    return len(os.sched_getaffinity(0))


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s*,]+", re.IGNORECASE)


def _origins(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated browser origins (scheme://host[:port]) as a tuple; StartupError for
    anything else, a wildcard included."""
    if isinstance(value, tuple):
        return value
    origins = tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise StartupError(
                f"--cors-origins takes exact origins such as https://app.example.com, "
                f"comma-separated (no path, no wildcard); got {origin!r}"
            )
    return tuple(origin.lower() for origin in origins)


@attrs.frozen
class Settings:
    db_path: Path = attrs.field(
        default=Path("sopy_admin.db"), metadata=_about("the SQLite configuration database")
    )
    admin_socket: Path = attrs.field(
        default=Path("sopy-admin.sock"), metadata=_about("the admin Unix socket")
    )
    store: str | None = attrs.field(
        default=None,
        repr=False,
        metadata=_about(
            "a postgresql:// URL: keep the configuration and the usage records in PostgreSQL, "
            "shared by every instance given the same URL (default: the --db-path file)"
        ),
    )
    limits: str | None = attrs.field(
        default=None,
        repr=False,
        metadata=_about(
            "a redis:// URL (Redis or Valkey): keep the keys' rate limits, max_parallel and "
            "budget counts there, exact across every instance given the same URL (default: in "
            "this process)"
        ),
    )
    host: str = attrs.field(default="127.0.0.1", metadata=_about("address of the public API"))
    port: int = attrs.field(
        default=8000,
        metadata=_about("port of the public API (0 picks a free one)", low=0, high=65535),
    )
    no_auth: bool = attrs.field(
        default=False, metadata=_about("serve /v1 without client keys (local experiments only)")
    )
    metrics_port: int | None = attrs.field(
        default=None,
        metadata=_about(
            "serve GET /metrics on this port of --host instead of the public port (0 picks a "
            "free one)",
            low=0,
            high=65535,
        ),
    )
    metrics_per_key: bool = attrs.field(
        default=False,
        metadata=_about("label the request counts of /metrics with the user key id too"),
    )
    log_level: str = attrs.field(
        default="info", metadata=_about("log verbosity", choices=LOG_LEVELS)
    )
    event_buffer: int = attrs.field(
        default=1000, metadata=_about("changes queued per /admin/events subscriber", low=1)
    )
    balance: str = attrs.field(
        default="least_in_flight",
        metadata=_about("how a provider's backend is chosen", choices=BALANCE_STRATEGIES),
    )
    retries: int = attrs.field(
        default=2, metadata=_about("retries on another backend before giving up", low=0, high=20)
    )
    connect_timeout: float = attrs.field(
        default=5.0, metadata=_about("seconds to connect to a backend", low=0.001)
    )
    first_byte_timeout: float = attrs.field(
        default=300.0,
        metadata=_about("seconds to wait for a backend's response headers", low=0.001),
    )
    idle_timeout: float = attrs.field(
        default=120.0, metadata=_about("seconds of silence allowed between chunks", low=0.001)
    )
    total_timeout: float = attrs.field(
        default=900.0, metadata=_about("seconds a whole upstream exchange may take", low=0.001)
    )
    upstream_idle_timeout: float = attrs.field(
        default=30.0, metadata=_about("seconds an unused upstream connection stays open", low=0.001)
    )
    cooldown_after: int = attrs.field(
        default=3, metadata=_about("consecutive failures that put a backend in cooldown", low=1)
    )
    cooldown: float = attrs.field(
        default=1.0,
        metadata=_about("first cooldown in seconds; doubles on each relapse, up to 60", low=0.001),
    )
    secret_key: str | None = attrs.field(
        default=None,
        repr=False,
        metadata=_about("Fernet key sealing provider credentials at rest (`sopy secret-key`)"),
    )
    secret_key_file: Path | None = attrs.field(
        default=None,
        metadata=_about(
            "file holding the secret key, created (mode 0600) if missing; rotation rewrites it. "
            "Without this, --secret-key or --no-secret-key: the database's name with .key, "
            "beside it"
        ),
    )
    no_secret_key: bool = attrs.field(
        default=False,
        metadata=_about("store provider credentials in plain text, with no key file (not advised)"),
    )
    max_body_bytes: int = attrs.field(
        default=10 * 1024 * 1024, metadata=_about("largest request body accepted", low=1)
    )
    # 64 MiB holds the largest answers the API gives whole: a full 2048-input batch of
    # 3072-dimension embeddings in base64 (the SDK's default encoding) is ~34 MB, ten
    # high-resolution images as b64_json ~40 MB. (That batch as JSON floats, ~130 MB, needs a
    # higher limit.) An answer read whole holds up to twice this much memory for a moment.
    max_response_bytes: int = attrs.field(
        default=64 * 1024 * 1024,
        metadata=_about(
            "largest non-streaming upstream response body buffered; reading stops there and "
            "the client gets a 502 (streams are relayed as they arrive, whatever their size)",
            low=1,
        ),
    )
    max_body_bytes_in_flight: int = attrs.field(
        default=256 * 1024 * 1024,
        metadata=_about(
            "bytes of request bodies held at once (at least --max-body-bytes); "
            "a request beyond gets a 503 with Retry-After",
            low=1,
        ),
    )
    header_timeout: float = attrs.field(
        default=5.0,
        metadata=_about(
            "seconds a connection may take to send request headers, "
            "and may stay idle between requests",
            low=0.001,
        ),
    )
    body_timeout: float = attrs.field(
        default=60.0, metadata=_about("seconds a client may take to send its body", low=0.001)
    )
    send_timeout: float = attrs.field(
        default=30.0,
        metadata=_about(
            "seconds a client may leave response bytes unread before it is disconnected",
            low=0.001,
        ),
    )
    max_concurrent_requests: int = attrs.field(
        default=1000, metadata=_about("requests served at once; more get a 503", low=1)
    )
    response_affinity_max: int = attrs.field(
        default=1_000_000,
        metadata=_about(
            "Responses API response ids remembered with the backend that made them "
            "(for follow-ups); the oldest are forgotten beyond",
            low=1,
        ),
    )
    response_affinity_ttl: float = attrs.field(
        default=30 * 24 * 3600.0,
        metadata=_about(
            "seconds a response id is remembered (OpenAI keeps responses 30 days)", low=1.0
        ),
    )
    kept_responses_per_key: int = attrs.field(
        default=10_000,
        metadata=_about(
            "Responses API responses kept by Sopy itself per user key (those of providers that "
            "do not serve the Responses API); the oldest are forgotten beyond",
            low=1,
        ),
    )
    kept_response_bytes_per_key: int = attrs.field(
        default=256 * 1024 * 1024,
        metadata=_about(
            "bytes of responses kept by Sopy itself per user key; the oldest are forgotten beyond",
            low=1,
        ),
    )
    usage_retention_days: float = attrs.field(
        default=90.0,
        metadata=_about(
            "days usage records are kept in sopy_usage.db (beside the config database)",
            low=0.001,
        ),
    )
    drain_timeout: float = attrs.field(
        default=30.0,
        metadata=_about("seconds in-flight requests may finish after SIGTERM", low=0.0),
    )
    workers: int = attrs.field(
        default=1,
        metadata=_about(
            "worker processes serving the public port (auto: one per usable core); 1 serves "
            "from this one process",
            low=1,
            high=1024,
            auto_is_cores=True,
        ),
    )
    apply_timeout: float = attrs.field(
        default=2.0,
        metadata=_about(
            "with --workers 2 or more: seconds an admin reply waits for every worker to apply "
            "its change; a worker still behind then is named in the reply and restarted",
            low=0.01,
        ),
    )
    cors_origins: tuple[str, ...] = attrs.field(
        default=(),
        converter=_origins,
        metadata=_about(
            "browser origins allowed to call the API (CORS), comma-separated exact origins "
            "such as https://app.example.com"
        ),
    )

    def __attrs_post_init__(self) -> None:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise StartupError(
                f"--max-body-bytes-in-flight ({self.max_body_bytes_in_flight}) is smaller than "
                f"--max-body-bytes ({self.max_body_bytes}), so a body of the largest size could "
                "never be accepted; raise the first or lower the second"
            )


ENVIRONMENT_VARIABLES: Mapping[str, str] = {
    field.name: f"SOPY_{field.name.upper()}" for field in attrs.fields(Settings)
}


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from flags (None means not given), then the environment, then the defaults."""
    values: dict[str, Any] = {}
    for field in attrs.fields(Settings):
        flag = flags.get(field.name)
        if flag is not None:
            values[field.name] = _parsed(field, flag, f"--{field.name.replace('_', '-')}")
            continue
        variable = ENVIRONMENT_VARIABLES[field.name]
        if variable in environ:
            values[field.name] = _parsed(field, environ[variable], variable)
    return Settings(**values)


def _parsed(field: "attrs.Attribute[Any]", value: Any, source: str) -> Any:
    optional = [member for member in typing.get_args(field.type) if member is not type(None)]
    kind = optional[0] if optional else field.type
    if kind is Path:
        return Path(value)
    if kind is bool:
        return _boolean(value, source)
    if field.metadata["auto_is_cores"] and str(value).strip().lower() == "auto":
        return usable_cores()
    if kind is int or kind is float:
        return _number(float if kind is float else int, field.metadata, value, source)
    choices = field.metadata["choices"]
    if choices is not None and str(value).lower() not in choices:
        raise StartupError(f"{source} must be one of {', '.join(choices)} (got {value!r})")
    return str(value).lower() if choices else str(value)


def _number(kind: type, metadata: Mapping[str, Any], value: Any, source: str) -> int | float:
    low, high = metadata["low"], metadata["high"]
    bounds = f"from {low}" + ("" if high is None else f" to {high}")
    described = "a whole number" if kind is int else "a number"
    try:
        number = kind(value)
    except ValueError:
        raise StartupError(f"{source} must be {described} {bounds} (got {value!r})") from None
    # Written so that NaN, which compares false with everything, is out of bounds too.
    if not ((low is None or number >= low) and (high is None or number <= high)):
        raise StartupError(f"{source} must be {described} {bounds} (got {value!r})")
    return number  # type: ignore[no-any-return]


def _boolean(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return parse_boolean(str(value), source)
    except NotABoolean as exc:
        raise StartupError(str(exc)) from None
