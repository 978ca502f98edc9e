"""Provider credentials at rest: sealed with Fernet (`cryptography`) when a secret key is set.

The key comes from `--secret-key` / `SOPY_SECRET_KEY` or from a key file (`--secret-key-file`,
first line), by default the database's name with `.key` beside it, created mode 0600 on the first
start. A sealed value is stored as `fernet:<token>`; only with `--no-secret-key` are values
stored as given, and Sopy warns at every start. The database keeps the key's
fingerprint (an HMAC, not the key), so starting with the wrong key fails loudly instead of
serving garbage. Only the config actor's storage (`sopy.config.database`) seals and opens values.
"""

import contextlib
import hashlib
import hmac
import logging
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from sopy.errors import StartupError
from sopy.keys import fernet_for
from sopy.runtime.private_files import (
    file_beside,
    own_file_exists,
    require_private_directory,
    write_private_file,
)
from sopy.settings import Settings

log = logging.getLogger(__name__)

SEALED_PREFIX = "fernet:"
_FINGERPRINT_LABEL = b"sopy secret key fingerprint v1"


class WrongSecretKey(Exception):
    """A sealed value does not open with the configured key."""


class SecretBox:
    def __init__(self, key: str | None) -> None:
        self._fernet = None if key is None else fernet_for(key)
        if key is not None and self._fernet is None:
            raise StartupError(
                "the secret key is not a Fernet key (44 characters of URL-safe base64); "
                "generate one with `sopy secret-key`"
            )
        self._key = key

    @property
    def sealing(self) -> bool:
        return self._fernet is not None

    def fingerprint(self) -> str | None:
        return None if self._key is None else fingerprint_of(self._key)

    def seal(self, plaintext: str) -> str:
        if self._fernet is None:
            return plaintext
        return SEALED_PREFIX + self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def open(self, stored: str) -> str:
        if not is_sealed(stored):
            return stored
        if self._fernet is None:
            raise WrongSecretKey("a credential is encrypted but no secret key is set")
        try:
            return self._fernet.decrypt(stored[len(SEALED_PREFIX) :].encode("ascii")).decode()
        except InvalidToken:
            raise WrongSecretKey("a credential does not decrypt with the secret key") from None


def fingerprint_of(key: str) -> str:
    """What the database keeps to recognise `key` by: an HMAC of a label, never the key."""
    digest = hmac.new(key.encode("utf-8"), _FINGERPRINT_LABEL, hashlib.sha256)
    return digest.hexdigest()[:16]


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


def new_secret_key() -> str:
    return Fernet.generate_key().decode("ascii")


def key_file_for(settings: Settings) -> Path | None:
    """The key file the settings ask for: the one given, else (with no key given and sealing not
    turned off) the database's name with `.key`, beside it."""
    chosen = [
        flag
        for flag, given in (
            ("--secret-key", settings.secret_key is not None),
            ("--secret-key-file", settings.secret_key_file is not None),
            ("--no-secret-key", settings.no_secret_key),
        )
        if given
    ]
    if len(chosen) > 1:
        raise StartupError(
            f"{' and '.join(chosen)} contradict each other (or their SOPY_* variables); keep one"
        )
    if settings.secret_key is not None or settings.no_secret_key:
        return None
    return settings.secret_key_file or file_beside(settings.db_path, ".key")


def box_from_key_file(path: Path, *, create: bool) -> SecretBox:
    """The box for the key kept in `path`; a missing file is created with a new key if `create`,
    which the caller allows only while nothing is sealed yet."""
    require_private_directory(path, "secret key file", "--secret-key-file")
    with contextlib.suppress(FileNotFoundError):
        mode = path.lstat().st_mode
        # Refused, not narrowed: the key may have been seen.
        if stat.S_ISREG(mode) and mode & 0o077:
            raise StartupError(
                f"the secret key file {path} is readable by other users; the key may have been "
                "seen: run chmod 600 on it, then rotate the key"
            )
    try:
        exists = own_file_exists(path, "secret key file", "--secret-key-file")
        if not exists and create:
            write_key_file(path, new_secret_key())
            log.info("created the secret key file %s (mode 0600)", path)
    except OSError as exc:
        raise StartupError(f"cannot create the secret key file {path}: {exc.strerror}") from exc
    if not exists and not create:
        raise StartupError(
            f"the secret key file {path} is missing, but the credentials in the database are "
            "sealed; restore that file, or set SOPY_SECRET_KEY to the key they were sealed with"
        )
    return SecretBox(read_key_file(path))


def read_key_file(path: Path) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise StartupError(f"cannot read the secret key file {path}: {exc.strerror}") from exc
    if not lines or not lines[0].strip():
        raise StartupError(f"the secret key file {path} is empty; put a key from `sopy secret-key`")
    return lines[0].strip()


def write_key_file(path: Path, key: str) -> None:
    """Write `key` to `path` (mode 0600) durably, replacing it atomically."""
    write_private_file(path, key + "\n")
