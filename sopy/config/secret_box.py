"""Provider credentials at rest: sealed with Fernet (`cryptography`) when a secret key is set.

The key comes from `--secret-key` / `SOPY_SECRET_KEY` or from a key file
(`--secret-key-file`, first line). A sealed value is stored as `fernet:<token>`; without a key
values are stored as given and Sopy warns once at start. The database keeps the key's
fingerprint (an HMAC, not the key), so starting with the wrong key fails loudly instead of
serving garbage. Only the config actor's storage (`sopy.config.database`) seals and opens values.
"""

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from sopy.errors import StartupError
from sopy.keys import fernet_for

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
        if self._key is None:
            return None
        digest = hmac.new(self._key.encode("ascii"), _FINGERPRINT_LABEL, hashlib.sha256)
        return digest.hexdigest()[:16]

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


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


def new_secret_key() -> str:
    return Fernet.generate_key().decode("ascii")


def secret_box_for(key: str | None, key_file: Path | None) -> SecretBox:
    """The box for the configured key: given directly, or kept in `key_file`, which is created
    with a new key (mode 0600) the first time."""
    if key is not None and key_file is not None:
        raise StartupError("set either SOPY_SECRET_KEY or --secret-key-file, not both")
    if key_file is None:
        return SecretBox(key)
    if not key_file.exists():
        write_key_file(key_file, new_secret_key())
    if key_file.stat().st_mode & 0o077:
        raise StartupError(
            f"the secret key file {key_file} is readable by other users; run chmod 600 on it"
        )
    return SecretBox(read_key_file(key_file))


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
    temporary = path.with_name(f".{path.name}.{os.getpid()}.writing")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
