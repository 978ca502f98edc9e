"""What admin-supplied values may look like: names, secrets, user keys and backend URLs.

These are attrs validators and converters used by the admin command messages in
`sopy.messages`, so an invalid value never gets past the message boundary. Each failure raises
`ValueError` with a message naming the field; `sopy.messages` turns it into `InvalidField`.
"""

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs

from sopy.keys import fernet_for
from sopy.provider_kinds import PROVIDER_KINDS

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}")
_TOKEN = re.compile(r"[\x21-\x7e]+")
# A URL's user name and password: whatever comes before an `@`, back to the last `/`.
_USER_INFO = re.compile(r"[^/@]*@")
_MAX_SECRET_LENGTH = 4096
_MIN_USER_KEY_LENGTH = 8
_MAX_USER_KEY_LENGTH = 256
_MAX_DESCRIPTION_LENGTH = 500
_MAX_URL_LENGTH = 2048
# Where the API lives on a backend URL given without a path, as at OpenAI.
DEFAULT_BASE_PATH = "/v1"


def _fail(attribute: "attrs.Attribute[Any]", problem: str) -> ValueError:
    return ValueError(f"field '{attribute.name}' {problem}")


def provider_name(_instance: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
    """Provider (and admin_auth) names: they appear in URLs and logs, so keep them plain."""
    if not _NAME.fullmatch(value):
        raise _fail(
            attribute,
            "must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (got {value!r})",
        )


def model_name(_instance: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
    if not _MODEL_NAME.fullmatch(value):
        raise _fail(
            attribute,
            "must be 1-256 characters of letters, digits and . _ : / @ + -, starting with a "
            f"letter or digit (got {value!r})",
        )


def provider_kind(_instance: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
    if value not in PROVIDER_KINDS:
        raise _fail(attribute, f"must be one of {', '.join(PROVIDER_KINDS)} (got {value!r})")


def optional_model_name(
    instance: object, attribute: "attrs.Attribute[Any]", value: str | None
) -> None:
    if value is not None:
        model_name(instance, attribute, value)


def secret(_instance: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
    """Credentials travel in an HTTP header: no spaces, control characters or non-ASCII."""
    if not value:
        raise _fail(attribute, "must not be empty")
    if len(value) > _MAX_SECRET_LENGTH:
        raise _fail(attribute, f"must be at most {_MAX_SECRET_LENGTH} characters")
    if not _TOKEN.fullmatch(value):
        raise _fail(attribute, "must be printable ASCII without spaces, tabs or line breaks")


def optional_user_key(
    _instance: object, attribute: "attrs.Attribute[Any]", value: str | None
) -> None:
    if value is None:
        return
    if not _MIN_USER_KEY_LENGTH <= len(value) <= _MAX_USER_KEY_LENGTH:
        raise _fail(
            attribute,
            f"must be {_MIN_USER_KEY_LENGTH}-{_MAX_USER_KEY_LENGTH} characters "
            "(omit it and Sopy generates a strong key)",
        )
    if not _TOKEN.fullmatch(value):
        raise _fail(attribute, "must be printable ASCII without spaces or line breaks")


def description(_instance: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
    if len(value) > _MAX_DESCRIPTION_LENGTH:
        raise _fail(attribute, f"must be at most {_MAX_DESCRIPTION_LENGTH} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise _fail(attribute, "must not contain control characters or line breaks")


MAX_BACKEND_WEIGHT = 1000
MAX_FALLBACKS = 8


def backend_weight(_instance: object, attribute: "attrs.Attribute[Any]", value: int) -> None:
    if not 1 <= value <= MAX_BACKEND_WEIGHT:
        raise _fail(attribute, f"must be from 1 to {MAX_BACKEND_WEIGHT} (got {value})")


def fallback_providers(
    instance: Any, attribute: "attrs.Attribute[Any]", value: tuple[str, ...]
) -> None:
    """An ordered list of other providers to try when the mapped one cannot answer."""
    if len(value) > MAX_FALLBACKS:
        raise _fail(attribute, f"may list at most {MAX_FALLBACKS} providers")
    for name in value:
        provider_name(instance, attribute, name)
    if len(set(value)) != len(value) or instance.provider in value:
        raise _fail(attribute, "must list distinct providers other than 'provider'")


def fallback_upstream_models(
    instance: Any, attribute: "attrs.Attribute[Any]", value: Mapping[str, str]
) -> None:
    """The model each fallback provider knows, for those that know it by another name."""
    strangers = sorted(set(value) - set(instance.fallbacks))
    if strangers:
        raise _fail(
            attribute,
            f"names provider(s) not in 'fallbacks': {', '.join(map(repr, strangers))}; "
            "list them in 'fallbacks' too",
        )
    for upstream_model in value.values():
        model_name(instance, attribute, upstream_model)


def optional_secret_key(
    _instance: object, attribute: "attrs.Attribute[Any]", value: str | None
) -> None:
    if value is not None and fernet_for(value) is None:
        raise _fail(
            attribute,
            "must be a Fernet key (44 characters of URL-safe base64); omit it and Sopy "
            "generates one",
        )


# Bounds that keep a mistyped limit from meaning something absurd; an rpm's window keeps one
# timestamp per request admitted, so it is bounded tighter.
MAX_KEY_LIMIT = 10**15
MAX_RPM = 1_000_000
MAX_ALLOWED_MODELS = 1000
# 9999-12-31T23:59:59Z
MAX_UNIX_TIME = 253_402_300_799


def key_limit(_instance: object, attribute: "attrs.Attribute[Any]", value: object) -> None:
    """A user key's limit: a positive integer, or None (no limit); other values (the
    `update_user_api_key` marker of a field not sent) are not limits to check."""
    if not isinstance(value, int) or isinstance(value, bool):
        return
    maximum = MAX_RPM if attribute.name == "rpm" else MAX_KEY_LIMIT
    if not 1 <= value <= maximum:
        raise _fail(attribute, f"must be from 1 to {maximum}, or null for no limit (got {value})")


LIMIT_FAILURES = ("open", "closed")


def limit_failure(_instance: object, attribute: "attrs.Attribute[Any]", value: object) -> None:
    """What a key's requests get while the shared limit store cannot be reached; other
    values (the `update_user_api_key` marker of a field not sent) are not choices to check."""
    if isinstance(value, str) and value not in LIMIT_FAILURES:
        raise _fail(
            attribute,
            f"must be open (admit the key's requests unlimited) or closed (refuse them with "
            f"503) while the limit store is unreachable (got {value!r})",
        )


def unix_time(_instance: object, attribute: "attrs.Attribute[Any]", value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        return
    if not 0 <= value <= MAX_UNIX_TIME:
        raise _fail(
            attribute, f"must be a Unix time in seconds from 0 to {MAX_UNIX_TIME} (got {value})"
        )


def model_allow_list(instance: object, attribute: "attrs.Attribute[Any]", value: object) -> None:
    """The model names a key may call: at least one, distinct; None allows every model."""
    if not isinstance(value, tuple):
        return
    if not value:
        raise _fail(attribute, "must name at least one model, or be null to allow every model")
    if len(value) > MAX_ALLOWED_MODELS:
        raise _fail(attribute, f"may name at most {MAX_ALLOWED_MODELS} models")
    if len(set(value)) != len(value):
        raise _fail(attribute, "must not name a model twice")
    for name in value:
        model_name(instance, attribute, name)


def positive_id(_instance: object, attribute: "attrs.Attribute[Any]", value: int | None) -> None:
    if value is not None and value < 1:
        raise _fail(attribute, f"must be a positive integer (got {value})")


def normalised_backend_url(value: str) -> str:
    """Return the canonical form of a backend base URL, or raise ValueError saying why not.

    A backend URL is a base URL, as the OpenAI SDK's `base_url`: the gateway appends the
    request's path after `/v1` to it (`https://generativelanguage.googleapis.com/v1beta/openai`
    + `/chat/completions`). The canonical form has a lower-case scheme and host and no trailing
    slash; a URL with no path gets `/v1`, so `https://api.openai.com`,
    `https://api.openai.com/` and `https://api.openai.com/v1` are the same backend.
    """
    if len(value) > _MAX_URL_LENGTH:
        raise ValueError(f"field 'url' must be at most {_MAX_URL_LENGTH} characters")
    if not _TOKEN.fullmatch(value):
        raise ValueError("field 'url' must be printable ASCII without spaces or line breaks")
    parts = urllib.parse.urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(
            f"field 'url' must start with http:// or https:// (got {_quotable(value)!r}), "
            "for example https://api.openai.com"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "field 'url' must not embed credentials; store them with add_admin_auth instead"
        )
    if not parts.hostname:
        raise ValueError(f"field 'url' has no host (got {_quotable(value)!r})")
    if parts.query or parts.fragment:
        raise ValueError("field 'url' must not have a query string or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"field 'url' has an invalid port (got {_quotable(value)!r})") from None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/") or DEFAULT_BASE_PATH
    return f"{scheme}://{netloc}{path}"


def _quotable(url: str) -> str:
    """`url` fit to quote in an error: what precedes an `@` (a user name and password, whether
    or not the rest parses as a URL) is masked, as errors carry no secrets."""
    return _USER_INFO.sub("***@", url)


USAGE_GROUPS = ("key_id", "model", "provider", "day")


def usage_groups(
    _instance: object, attribute: "attrs.Attribute[Any]", value: tuple[str, ...]
) -> None:
    unknown = [name for name in value if name not in USAGE_GROUPS]
    if unknown:
        raise _fail(
            attribute, f"cannot group by {unknown[0]!r}; use any of {', '.join(USAGE_GROUPS)}"
        )
