"""How secrets are derived and shown: user API key generation, hashing and prefixes, and the
masking of provider credentials, and telling a Fernet secret key from anything else.

The config actor stores only `hash_user_key(key)`; the HTTP front hashes the presented bearer
token the same way and looks the hash up in the snapshot, so the key itself is never stored.
"""

import hashlib
import secrets

from cryptography.fernet import Fernet

GENERATED_KEY_PREFIX = "sk-sopy-"
_PREFIX_MAX_LENGTH = 12
_MASK_VISIBLE_TAIL = 4
_MASK_MIN_LENGTH = 16


def generate_user_key() -> str:
    """A new key with 256 bits of randomness, recognisable by its `sk-sopy-` prefix."""
    return GENERATED_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_user_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def user_key_prefix(key: str) -> str:
    """Enough of a key to recognise it, never more than a quarter of it."""
    return key[: min(_PREFIX_MAX_LENGTH, len(key) // 4)]


def mask_credential(credential: str) -> str:
    """`sk-...wxyz` for long credentials; short ones reveal nothing."""
    if len(credential) < _MASK_MIN_LENGTH:
        return "****"
    return f"{credential[:3]}...{credential[-_MASK_VISIBLE_TAIL:]}"


def fernet_for(key: str) -> Fernet | None:
    """The cipher for `key`, or None if `key` is not a Fernet key."""
    try:
        return Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
