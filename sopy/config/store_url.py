"""The `--store` URL, read without the PostgreSQL client: whether it names PostgreSQL, and how
it is shown in logs and errors (never with its password). The config actor decides with it
whether to load `sopy.config.postgres_store` at all.
"""

import urllib.parse

URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(store: str) -> bool:
    return store.startswith(URL_SCHEMES)


def redacted(url: str) -> str:
    """`url` without its password, for logs and errors."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = "" if parts.username is None else parts.username
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
