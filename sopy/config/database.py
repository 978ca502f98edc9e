"""SQLite storage of Sopy's configuration: the schema, its migrations, and the transaction behind
each admin command.

Only the config actor (`sopy.actors.config_store`) uses this module, and only from its single
worker thread, so one connection serves every call. Each write runs in one `BEGIN IMMEDIATE`
transaction that also bumps the persisted config version and appends the change to a bounded
journal, so a change is either wholly on disk or not at all; reads run in a plain read
transaction, which in WAL mode needs no lock another process could be holding.

The file is checked before it is trusted: its directory must be private and the file ours (the
same rules as the admin socket, `sopy.runtime.private_files`), it must be an SQLite database that
is undamaged and Sopy's own (`PRAGMA application_id`), and it is created mode 0600, which SQLite
passes on to its `-wal` and `-shm` files. Before each write the path must still name the file
that was opened, so a deleted or replaced database refuses writes instead of losing them. The
highest version ever handed out is also kept in a small file beside the database (the version
mark): a database that starts below it (new, or restored from a copy) continues above it, so a
version number is never reused. A write that SQLite refuses (disk full, locked, read-only) is
reported as a `ConfigStoreUnavailable` naming the cause; nothing is half done.
"""

import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import orjson

from sopy import keys
from sopy.codec import config_event_json, parse_config_event
from sopy.config import secret_box
from sopy.config.secret_box import SecretBox
from sopy.errors import (
    ConfigStoreFull,
    ConfigStoreLocked,
    ConfigStoreReadOnly,
    ConfigStoreReplaced,
    ConfigStoreUnavailable,
    Conflict,
    NotFound,
    StartupError,
)
from sopy.messages import (
    UNCHANGED,
    ActivateUserApiKey,
    AddAdminAuth,
    AddBackend,
    AddModelMapping,
    AddUserApiKey,
    AdminAuthAdded,
    AdminAuthEntry,
    AdminAuthRemoved,
    AdminAuthView,
    AdminResult,
    Backend,
    BackendAdded,
    BackendRemoved,
    ConfigCommand,
    ConfigEvent,
    ConfigSnapshot,
    DeactivateUserApiKey,
    GetAdminAuth,
    GetBackend,
    GetModelMapping,
    GetUserApiKey,
    JournalEntry,
    KeyLimits,
    ListAdminAuth,
    ListBackends,
    ListModelMappings,
    ListUserApiKeys,
    ModelMapping,
    ModelMappingAdded,
    ModelMappingRemoved,
    NewUserApiKey,
    ProviderBackends,
    ProviderCredential,
    RemoveAdminAuth,
    RemoveBackend,
    RemoveModelMapping,
    RemoveUserApiKey,
    RotateSecretKey,
    SecretKeyRotated,
    SecretKeyRotation,
    UpdateUserApiKey,
    UserApiKeyActivated,
    UserApiKeyAdded,
    UserApiKeyDeactivated,
    UserApiKeyRecord,
    UserApiKeyRemoved,
    UserApiKeyUpdated,
    UserApiKeyView,
)
from sopy.provider_backends import group_by_provider
from sopy.runtime.private_files import (
    existing_private_file,
    file_beside,
    make_private,
    open_private,
    own_file_exists,
    require_private_directory,
)

log = logging.getLogger(__name__)

JOURNAL_LENGTH = 10_000
# How long a write waits for another process's lock before it is refused as locked.
BUSY_TIMEOUT = 5.0
# "Sopy" in the database header: tells Sopy's files from other applications' SQLite files.
SOPY_APPLICATION_ID = int.from_bytes(b"Sopy", "big")
# Commands that only read: they run in a read transaction, which takes no write lock.
READ_COMMANDS = (
    ListAdminAuth,
    GetAdminAuth,
    ListUserApiKeys,
    GetUserApiKey,
    ListBackends,
    GetBackend,
    ListModelMappings,
    GetModelMapping,
)

# Append-only: each entry upgrades the schema by one version. Never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('config_version', 0);
    CREATE TABLE admin_auth (
        name TEXT PRIMARY KEY,
        credentials TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE user_api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        description TEXT NOT NULL,
        active INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE backends (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        provider TEXT NOT NULL,
        url TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (provider, url)
    );
    CREATE TABLE model_mappings (
        model_name TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE config_events (
        version INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        event TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE backends ADD COLUMN weight INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE model_mappings ADD COLUMN fallbacks TEXT NOT NULL DEFAULT '[]';
    """,
    """
    CREATE TABLE store_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # Every provider stored before kinds existed was reached the OpenAI way.
    """
    ALTER TABLE admin_auth ADD COLUMN kind TEXT NOT NULL DEFAULT 'openai';
    """,
    # Backend URLs became base URLs that keep their `/v1` (the request's path after `/v1` is
    # appended); before, `/v1` was stripped and the request's whole path appended. Appending
    # `/v1` to every stored URL, in the journal too, keeps each backend's requests where they
    # went.
    """
    UPDATE backends SET url = url || '/v1';
    UPDATE config_events
        SET event = json_set(event, '$.url', json_extract(event, '$.url') || '/v1')
        WHERE json_extract(event, '$.kind') IN ('backend_added', 'backend_removed');
    """,
    # Model aliases: the model each provider knows. Existing mappings send the client's name.
    """
    ALTER TABLE model_mappings ADD COLUMN upstream_model TEXT;
    UPDATE model_mappings SET upstream_model = model_name;
    ALTER TABLE model_mappings ADD COLUMN fallback_upstream_models TEXT NOT NULL DEFAULT '{}';
    """,
    # Per-key limits (NULL: none; `models` a JSON array); `usage_reset_at` is when the key's
    # token budget count began, for the keys already there their creation.
    """
    ALTER TABLE user_api_keys ADD COLUMN rpm INTEGER;
    ALTER TABLE user_api_keys ADD COLUMN tpm INTEGER;
    ALTER TABLE user_api_keys ADD COLUMN max_parallel INTEGER;
    ALTER TABLE user_api_keys ADD COLUMN token_budget INTEGER;
    ALTER TABLE user_api_keys ADD COLUMN expires_at INTEGER;
    ALTER TABLE user_api_keys ADD COLUMN models TEXT;
    ALTER TABLE user_api_keys ADD COLUMN usage_reset_at REAL NOT NULL DEFAULT 0;
    UPDATE user_api_keys SET usage_reset_at = created_at;
    """,
    # What a key gets while the shared limit store is unreachable: refused ('closed') or
    # admitted ('open').
    """
    ALTER TABLE user_api_keys ADD COLUMN limit_failure TEXT NOT NULL DEFAULT 'closed';
    """,
)
# The columns of a user key's limits, in `KeyLimits`' order.
_LIMIT_COLUMNS = (
    "rpm, tpm, max_parallel, token_budget, expires_at, models, usage_reset_at, limit_failure"
)


@attrs.frozen
class Applied:
    """What one command did: its result and, if it changed anything, the change and the whole
    configuration after it."""

    result: AdminResult
    change: ConfigEvent | None
    snapshot: ConfigSnapshot | None


Outcome = tuple[AdminResult, ConfigEvent | None]


class ConfigDatabase:
    """One open `sopy_admin.db`; every method runs on the config actor's worker thread."""

    # Whether other Sopy instances write to the same store, so that the config actor must
    # follow their changes (`sopy.config.postgres_store`); an SQLite file has one writer.
    shared = False

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        identity: tuple[int, int],
        key_file: Path | None,
        journal_length: int,
    ) -> None:
        self._db = connection
        self._path = path
        self._identity = identity
        self._box = SecretBox(None)
        self._key_file = key_file
        self._journal_length = journal_length
        self._after_commit: list[Callable[[], None]] = []
        self._version_mark = file_beside(path, ".version")
        self.version = self._scalar("SELECT value FROM meta WHERE key = 'config_version'")

    @classmethod
    def open(
        cls,
        path: Path,
        box: SecretBox | None = None,
        key_file: Path | None = None,
        journal_length: int = JOURNAL_LENGTH,
    ) -> "ConfigDatabase":
        """Open (or create) the database at `path`, sealing with `box`, else with the key kept in
        `key_file` (created while nothing is sealed yet), else not at all. Anything that keeps
        it from serving is a one-line `StartupError`."""
        require_private_directory(path, "config database", "--db-path")
        connection, identity = _connect(path)
        try:
            _require_sopy_database(connection, path)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            # Overwrite deleted content, so a replaced plain-text credential leaves no trace.
            connection.execute("PRAGMA secure_delete = ON")
            _migrate(connection, path)
            database = cls(connection, path, identity, key_file, journal_length)
            database._settle_version()
            database._settle_secret_key(box)
        except sqlite3.Error as exc:
            connection.close()
            raise _startup_error(exc, path) from None
        except OSError as exc:
            connection.close()
            raise StartupError(f"cannot prepare the config database {path}: {exc}") from None
        except BaseException:
            connection.close()
            raise
        return database

    @property
    def sealing(self) -> bool:
        return self._box.sealing

    def close(self) -> None:
        self._db.close()

    def apply(self, command: ConfigCommand, now: float) -> Applied:
        """Run one command in one transaction; a raised SopyError leaves the database as it was.
        A write the storage refuses raises a `ConfigStoreUnavailable` naming the cause."""
        writes = not isinstance(command, READ_COMMANDS)
        try:
            if writes:
                self._require_same_file()
            with self._transaction(write=writes):
                result, change = self._dispatch(command, now)
                version = self.version
                if change is not None:
                    version += 1
                    self._record_change(version, now, change)
        except (sqlite3.Error, OSError) as exc:
            if writes:
                self._restore_version_mark()
            raise self._unavailable(exc, writes=writes) from None
        self.version = version
        return Applied(result, change, None if change is None else self.load_snapshot())

    def _require_same_file(self) -> None:
        """The path must still name the file we opened: a write to a deleted or replaced file
        would be acknowledged and then lost."""
        try:
            status = os.stat(self._path)
        except FileNotFoundError:
            raise ConfigStoreReplaced(
                f"the config database {self._path} was deleted while Sopy was running; the "
                "change was not made, and no write is accepted, because it would be lost with "
                "the deleted file. Restore the file, or restart Sopy to begin a new database "
                "there (its versions continue after the last one used)"
            ) from None
        if (status.st_dev, status.st_ino) != self._identity:
            raise ConfigStoreReplaced(
                f"the config database {self._path} was replaced by another file while Sopy was "
                "running; the change was not made, and no write is accepted until Sopy is "
                "restarted on the file now at that path"
            )

    def _unavailable(self, exc: sqlite3.Error | OSError, *, writes: bool) -> ConfigStoreUnavailable:
        """The error an admin sees when the storage refused a command, naming the cause."""
        not_made = "the change was not made" if writes else "nothing could be read"
        if _is_full(exc):
            return ConfigStoreFull(
                f"the disk holding the config database {self._path} is full; {not_made}. "
                "Free some space there and send it again"
            )
        if _is_locked(exc):
            return ConfigStoreLocked(
                f"another process has held a write lock on the config database {self._path} "
                f"for over {BUSY_TIMEOUT:.0f} s; {not_made}. Finish that process (an sqlite3 "
                "shell, a backup) and send it again"
            )
        if _is_read_only(exc):
            return ConfigStoreReadOnly(
                f"the config database {self._path} is read-only ({_cause(exc)}); {not_made}. "
                "Make the file and its directory writable for Sopy's user, or remount the "
                "filesystem read-write, and send it again"
            )
        return ConfigStoreUnavailable(
            f"the config database {self._path} failed ({_cause(exc)}); {not_made}. Check the "
            "disk and the server log"
        )

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[None]:
        """One transaction: `BEGIN IMMEDIATE` to write, a plain `BEGIN` (a read transaction,
        which needs no write lock) to read. Committed, then the work queued in
        `_after_commit` runs (it must not raise: the change is made whatever it does); or
        rolled back, and that work is dropped."""
        self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some failures (a full disk, an I/O error).
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._after_commit.clear()
            raise
        while self._after_commit:
            self._after_commit.pop(0)()

    def startup_snapshot(self) -> ConfigSnapshot:
        """The snapshot to serve first; a database that cannot give it is a `StartupError`."""
        try:
            return self.load_snapshot()
        except sqlite3.Error as exc:
            raise _startup_error(exc, self._path) from None
        except secret_box.WrongSecretKey as exc:
            raise StartupError(
                f"a credential in {self._path} does not open with the secret key ({exc}); "
                "restore the database or the key file from the same backup"
            ) from None

    def load_snapshot(self) -> ConfigSnapshot:
        return ConfigSnapshot(
            version=self.version,
            credentials=tuple(
                ProviderCredential(name, self._box.open(credentials), kind)
                for name, credentials, kind in self._rows(
                    "SELECT name, credentials, kind FROM admin_auth ORDER BY name"
                )
            ),
            user_api_keys=tuple(
                UserApiKeyRecord(
                    id_, key_hash, prefix, description, bool(active), created_at, _limits(limits)
                )
                for id_, key_hash, prefix, description, active, created_at, *limits in self._rows(
                    "SELECT id, key_hash, prefix, description, active, created_at, "
                    f"{_LIMIT_COLUMNS} FROM user_api_keys ORDER BY id"
                )
            ),
            backends=tuple(
                Backend(provider, url, weight)
                for provider, url, weight in self._rows(
                    "SELECT provider, url, weight FROM backends ORDER BY id"
                )
            ),
            model_mappings=self._model_mappings(),
        )

    def journal_since(self, since: int) -> tuple[JournalEntry, ...] | None:
        """Every change after version `since`, or None if the journal no longer covers it (or
        cannot be read just now: the follower then takes a snapshot)."""
        if since > self.version or since < 0:
            return None
        try:
            return self._journal_after(since)
        except sqlite3.Error as exc:
            log.warning("cannot read the change journal in %s: %s", self._path, exc)
            return None

    def _journal_after(self, since: int) -> tuple[JournalEntry, ...] | None:
        oldest = self._row("SELECT MIN(version) FROM config_events", ())[0]
        if since < self.version and (oldest is None or oldest > since + 1):
            return None
        rows = self._rows(
            "SELECT version, at, event FROM config_events WHERE version > ? ORDER BY version",
            (since,),
        )
        return tuple(
            JournalEntry(version, at, parse_config_event(orjson.loads(event)))
            for version, at, event in rows
        )

    def _record_change(self, version: int, now: float, change: ConfigEvent) -> None:
        # The mark goes first: a crash before the commit leaves it one ahead, which costs a
        # skipped version, never a reused one.
        self._write_version_mark(version)
        self._execute("UPDATE meta SET value = ? WHERE key = 'config_version'", (version,))
        self._execute(
            "INSERT INTO config_events (version, at, event) VALUES (?, ?, ?)",
            (version, now, orjson.dumps(config_event_json(change)).decode()),
        )
        self._execute(
            "DELETE FROM config_events WHERE version <= ?", (version - self._journal_length,)
        )
        self._announce_change(version)

    def _announce_change(self, version: int) -> None:
        """Tell other instances following this store of `version`, in the transaction; a file
        of this instance's own has none."""

    def _dispatch(self, command: ConfigCommand, at: float) -> Outcome:
        now = int(at)
        match command:
            case AddAdminAuth():
                return self._add_admin_auth(command, now)
            case RemoveAdminAuth(name=name):
                view = self._admin_auth(name, reveal=False)
                self._execute("DELETE FROM admin_auth WHERE name = ?", (name,))
                return view, AdminAuthRemoved(name)
            case ListAdminAuth():
                rows = self._rows("SELECT name, kind FROM admin_auth ORDER BY name")
                return tuple(AdminAuthEntry(name, kind) for name, kind in rows), None
            case GetAdminAuth(name=name, reveal=reveal):
                return self._admin_auth(name, reveal=reveal), None
            case AddUserApiKey():
                return self._add_user_api_key(command, at)
            case RemoveUserApiKey():
                return self._remove_user_api_key(command)
            case ListUserApiKeys():
                return tuple(self._user_key_views("ORDER BY id", ())), None
            case GetUserApiKey(id=key_id):
                return self._user_key_view(key_id), None
            case ActivateUserApiKey(id=key_id):
                return self._set_user_key_active(key_id, active=True)
            case DeactivateUserApiKey(id=key_id):
                return self._set_user_key_active(key_id, active=False)
            case UpdateUserApiKey():
                return self._update_user_api_key(command, at)
            case AddBackend():
                return self._add_backend(command, now)
            case RemoveBackend(provider=provider, url=url):
                return self._remove_backend(provider, url)
            case ListBackends():
                return self._all_provider_backends(), None
            case GetBackend(provider=provider):
                return self._backends_of(provider), None
            case AddModelMapping():
                return self._add_model_mapping(command, now)
            case RemoveModelMapping(model_name=model_name):
                mapping = self._model_mapping(model_name)
                self._execute("DELETE FROM model_mappings WHERE model_name = ?", (model_name,))
                return mapping, ModelMappingRemoved(model_name, mapping.provider)
            case ListModelMappings():
                return self._model_mappings(), None
            case GetModelMapping(model_name=model_name):
                return self._model_mapping(model_name), None
            case RotateSecretKey():
                return self._rotate_secret_key(command)

    def _add_admin_auth(self, command: AddAdminAuth, now: int) -> Outcome:
        exists = self._exists("SELECT 1 FROM admin_auth WHERE name = ?", (command.name,))
        if exists and not command.replace:
            raise Conflict(
                f"admin_auth '{command.name}' already exists; remove it first or send "
                '"replace": true to overwrite it',
                param="name",
            )
        self._execute(
            "INSERT INTO admin_auth (name, credentials, kind, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET credentials = excluded.credentials, "
            "kind = excluded.kind",
            (command.name, self._box.seal(command.credentials), command.kind, now),
        )
        view = AdminAuthView(command.name, keys.mask_credential(command.credentials), command.kind)
        return view, AdminAuthAdded(command.name, replaced=exists, provider_kind=command.kind)

    def _admin_auth(self, name: str, *, reveal: bool) -> AdminAuthView:
        row = self._row("SELECT credentials, kind FROM admin_auth WHERE name = ?", (name,))
        if row is None:
            raise NotFound(
                f"no admin_auth named '{name}'; list them with list_admin_auth", param="name"
            )
        stored, kind = row
        credential = self._box.open(stored)
        shown = credential if reveal else keys.mask_credential(credential)
        return AdminAuthView(name, shown, kind)

    def _add_user_api_key(self, command: AddUserApiKey, at: float) -> Outcome:
        now = int(at)
        api_key = command.api_key or keys.generate_user_key()
        key_hash = keys.hash_user_key(api_key)
        existing = self._row("SELECT id FROM user_api_keys WHERE key_hash = ?", (key_hash,))
        if existing is not None:
            raise Conflict(
                f"this api_key is already registered as id {existing[0]}; omit api_key to "
                "have Sopy generate a new one",
                param="api_key",
            )
        prefix = keys.user_key_prefix(api_key)
        limits = KeyLimits(
            command.rpm,
            command.tpm,
            command.max_parallel,
            command.token_budget,
            command.expires_at,
            command.models,
            usage_reset_at=at,
            limit_failure=command.limit_failure,
        )
        cursor = self._execute(
            "INSERT INTO user_api_keys (key_hash, prefix, description, active, created_at, "
            f"{_LIMIT_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (key_hash, prefix, command.description, now, *_limit_values(limits)),
        )
        key_id: int = cursor.fetchone()[0]
        created = NewUserApiKey(
            key_id, api_key, prefix, command.description, True, now, *_limit_fields(limits)
        )
        added = UserApiKeyAdded(
            key_id,
            prefix,
            command.description,
            limits.rpm,
            limits.tpm,
            limits.max_parallel,
            limits.token_budget,
            limits.expires_at,
            limits.models,
            limits.limit_failure,
        )
        return created, added

    def _update_user_api_key(self, command: UpdateUserApiKey, at: float) -> Outcome:
        view = self._user_key_view(command.id)
        before = _view_limits(view)
        changes = {
            field.name: value
            for field in attrs.fields(KeyLimits)
            if (value := getattr(command, field.name, UNCHANGED)) is not UNCHANGED
        }
        after = attrs.evolve(before, **changes)
        # A key given a budget it did not have starts its count then, as a reset does.
        reset = command.reset_usage or (
            before.token_budget is None and after.token_budget is not None
        )
        if reset:
            after = attrs.evolve(after, usage_reset_at=at)
        if after == before and not reset:
            return view, None
        self._execute(
            "UPDATE user_api_keys SET rpm = ?, tpm = ?, max_parallel = ?, token_budget = ?, "
            "expires_at = ?, models = ?, usage_reset_at = ?, limit_failure = ? WHERE id = ?",
            (*_limit_values(after), command.id),
        )
        updated = UserApiKeyUpdated(
            command.id,
            after.rpm,
            after.tpm,
            after.max_parallel,
            after.token_budget,
            after.expires_at,
            after.models,
            reset,
            after.limit_failure,
        )
        return self._user_key_view(command.id), updated

    def _remove_user_api_key(self, command: RemoveUserApiKey) -> Outcome:
        if command.api_key is not None:
            views = list(
                self._user_key_views("WHERE key_hash = ?", (keys.hash_user_key(command.api_key),))
            )
            if not views:
                raise NotFound(
                    "no user API key matches that api_key; list them with list_user_api_keys",
                    param="api_key",
                )
            view = views[0]
        else:
            assert command.id is not None
            view = self._user_key_view(command.id)
        self._execute("DELETE FROM user_api_keys WHERE id = ?", (view.id,))
        return view, UserApiKeyRemoved(view.id)

    def _set_user_key_active(self, key_id: int, *, active: bool) -> Outcome:
        view = self._user_key_view(key_id)
        if view.active == active:
            return view, None
        self._execute("UPDATE user_api_keys SET active = ? WHERE id = ?", (int(active), key_id))
        change = UserApiKeyActivated(key_id) if active else UserApiKeyDeactivated(key_id)
        return attrs.evolve(view, active=active), change

    def _user_key_view(self, key_id: int) -> UserApiKeyView:
        views = list(self._user_key_views("WHERE id = ?", (key_id,)))
        if not views:
            raise NotFound(
                f"no user API key with id {key_id}; list them with list_user_api_keys",
                param="id",
            )
        return views[0]

    def _user_key_views(self, where: str, params: tuple[Any, ...]) -> Iterable[UserApiKeyView]:
        rows = self._rows(
            f"SELECT id, prefix, description, active, created_at, {_LIMIT_COLUMNS} "
            "FROM user_api_keys " + where,
            params,
        )
        for id_, prefix, description, active, created_at, *limits in rows:
            yield UserApiKeyView(
                id_, prefix, description, bool(active), created_at, *_limit_fields(_limits(limits))
            )

    def _add_backend(self, command: AddBackend, now: int) -> Outcome:
        provider, url = command.provider, command.url
        if self._exists("SELECT 1 FROM backends WHERE provider = ? AND url = ?", (provider, url)):
            raise Conflict(
                f"backend {url} is already registered for provider '{provider}'; remove it "
                "first to change its weight",
                param="url",
            )
        self._execute(
            "INSERT INTO backends (provider, url, weight, created_at) VALUES (?, ?, ?, ?)",
            (provider, url, command.weight, now),
        )
        return self._backends_of(provider), BackendAdded(provider, url, command.weight)

    def _remove_backend(self, provider: str, url: str) -> Outcome:
        cursor = self._execute(
            "DELETE FROM backends WHERE provider = ? AND url = ?", (provider, url)
        )
        if cursor.rowcount == 0:
            raise NotFound(
                f"provider '{provider}' has no backend {url}; see get_backend for its URLs",
                param="url",
            )
        return self._stored_backends(provider), BackendRemoved(provider, url)

    def _all_provider_backends(self) -> tuple[ProviderBackends, ...]:
        rows = self._rows("SELECT provider, url, weight FROM backends ORDER BY id")
        return group_by_provider(Backend(*row) for row in rows)

    def _backends_of(self, provider: str) -> ProviderBackends:
        backends = self._stored_backends(provider)
        if not backends.urls:
            raise NotFound(
                f"provider '{provider}' has no backends; add one with add_backend",
                param="provider",
            )
        return backends

    def _stored_backends(self, provider: str) -> ProviderBackends:
        """The provider's backends, possibly none."""
        rows = self._rows(
            "SELECT url, weight FROM backends WHERE provider = ? ORDER BY id", (provider,)
        )
        return _provider_backends(provider, rows)

    def _add_model_mapping(self, command: AddModelMapping, now: int) -> Outcome:
        row = self._row(
            "SELECT provider FROM model_mappings WHERE model_name = ?", (command.model_name,)
        )
        if row is not None and not command.replace:
            raise Conflict(
                f"model '{command.model_name}' is already mapped to provider '{row[0]}'; "
                'remove it first or send "replace": true',
                param="model_name",
            )
        upstream_model = command.upstream_model or command.model_name
        fallback_models = dict(command.fallback_upstream_models)
        if row is not None:
            current = self._model_mapping(command.model_name)
            asked = (command.provider, command.fallbacks, upstream_model, fallback_models)
            if asked == (
                current.provider,
                current.fallbacks,
                current.upstream_model,
                current.fallback_upstream_models,
            ):
                return current, None
        self._execute(
            "INSERT INTO model_mappings (model_name, provider, fallbacks, upstream_model, "
            "fallback_upstream_models, created_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (model_name) DO UPDATE SET provider = excluded.provider, "
            "fallbacks = excluded.fallbacks, upstream_model = excluded.upstream_model, "
            "fallback_upstream_models = excluded.fallback_upstream_models",
            (
                command.model_name,
                command.provider,
                orjson.dumps(command.fallbacks).decode(),
                upstream_model,
                orjson.dumps(fallback_models).decode(),
                now,
            ),
        )
        mapping = self._model_mapping(command.model_name)
        change = ModelMappingAdded(
            command.model_name,
            command.provider,
            row is not None,
            command.fallbacks,
            upstream_model,
            fallback_models,
        )
        return mapping, change

    def _model_mapping(self, model_name: str) -> ModelMapping:
        row = self._row(
            "SELECT model_name, provider, created_at, fallbacks, upstream_model, "
            "fallback_upstream_models FROM model_mappings "
            "WHERE model_name = ?",
            (model_name,),
        )
        if row is None:
            raise NotFound(
                f"no model mapping for '{model_name}'; list them with list_model_mappings",
                param="model_name",
            )
        return _model_mapping(row)

    def _model_mappings(self) -> tuple[ModelMapping, ...]:
        rows = self._rows(
            "SELECT model_name, provider, created_at, fallbacks, upstream_model, "
            "fallback_upstream_models FROM model_mappings "
            "ORDER BY model_name"
        )
        return tuple(_model_mapping(row) for row in rows)

    def _rotate_secret_key(self, command: RotateSecretKey) -> Outcome:
        """Reseal every credential under a new key. With a key file, the new key is written
        beside it before the commit and moved into place after it, so a crash in between is
        finished on the next start (`_settle_secret_key`)."""
        new_key = command.new_key or secret_box.new_secret_key()
        new_box = SecretBox(new_key)
        if self._key_file is not None:
            self._move_waiting_key()
            secret_box.write_key_file(_pending_key_path(self._key_file), new_key)
        count = self._reseal(new_box)
        fingerprint = new_box.fingerprint()
        assert fingerprint is not None
        self._after_commit.append(lambda: self._adopt_box(new_box))
        shown = new_key if command.new_key is None and self._key_file is None else None
        key_file = None if self._key_file is None else str(self._key_file.absolute())
        rotation = SecretKeyRotation(fingerprint, count, key_file, shown)
        return rotation, SecretKeyRotated(fingerprint)

    def _move_waiting_key(self) -> None:
        """A key beside the key file that opens the database now (an earlier rotation could
        not move it into place) is the only copy of that key on disk: move it into the key file
        before a new key takes its place there, and refuse the rotation (OSError) if it still
        cannot be moved. A key there that opens nothing is left from a rotation that failed
        before its commit, and is simply replaced."""
        assert self._key_file is not None
        waiting = _pending_key_path(self._key_file)
        try:
            key = waiting.read_text(errors="replace").strip()
        except FileNotFoundError:
            return
        if secret_box.fingerprint_of(key) == self._box.fingerprint():
            os.replace(waiting, self._key_file)

    def _adopt_box(self, box: SecretBox) -> None:
        """Open with `box` from now on: the credentials sealed by it are committed. Runs after
        the commit, so nothing failing here may undo it: a new key that cannot be moved into
        the key file stays beside it, where the next start finds it and finishes the move
        (`_finish_interrupted_rotation`)."""
        self._box = box
        if self._key_file is not None:
            pending = _pending_key_path(self._key_file)
            try:
                os.replace(pending, self._key_file)
            except OSError as exc:
                log.error(
                    "the credentials are sealed with the new secret key, but it could not be "
                    "moved from %s to %s (%s); keep %s: the next start moves it into place",
                    pending,
                    self._key_file,
                    exc.strerror or exc,
                    pending,
                )
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Old sealed values out of the write-ahead log; a failure only leaves them longer."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("cannot checkpoint the config database %s: %s", self._path, exc)

    def _reseal(self, box: SecretBox) -> int:
        """Rewrite every credential sealed by `box`; the caller holds the transaction."""
        rows = self._rows("SELECT name, credentials FROM admin_auth")
        for name, stored in rows:
            self._execute(
                "UPDATE admin_auth SET credentials = ? WHERE name = ?",
                (box.seal(self._box.open(stored)), name),
            )
        self._execute(
            "INSERT INTO store_settings (name, value) VALUES ('key_fingerprint', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (box.fingerprint(),),
        )
        return len(rows)

    def _settle_version(self) -> None:
        """Reconcile the stored version with the version mark beside the database."""
        marked = self._read_version_mark()
        if marked > self.version:
            # Versions up to the mark were handed out by a database that is gone (deleted,
            # replaced, restored from an older copy): continue after them, and empty the journal
            # so that followers take a fresh snapshot instead of mixing two histories.
            with self._transaction():
                self._db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'config_version'", (marked,)
                )
                self._db.execute("DELETE FROM config_events")
            log.warning(
                "%s is at config version %d, below the %d already used (see %s); it continues "
                "from %d",
                self._path,
                self.version,
                marked,
                self._version_mark,
                marked,
            )
            self.version = marked
        elif marked < self.version:
            self._write_version_mark(self.version)

    def _restore_version_mark(self) -> None:
        """After a failed commit the mark is back at the committed version, so a restart does
        not take the failed attempt for a lost database. If even this fails, the mark stays one
        ahead, which skips a version but never reuses one."""
        with contextlib.suppress(OSError):
            self._write_version_mark(self.version)

    def _write_version_mark(self, version: int) -> None:
        """Durably record `version` as used. Rewritten in place: a few bytes in one block need
        no new space, so on a full disk it is the database that reports the fact."""
        text = f"{version}\n".encode()
        descriptor = open_private(self._version_mark, os.O_WRONLY)
        try:
            os.pwrite(descriptor, text, 0)
            os.ftruncate(descriptor, len(text))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _read_version_mark(self) -> int:
        if not existing_private_file(self._version_mark, "config version mark", "--db-path"):
            return 0
        text = self._version_mark.read_text().strip()
        if not text.isdigit():
            raise StartupError(
                f"the config version mark {self._version_mark} holds no version number; write "
                "into it the highest config version this installation has shown (0 if unsure)"
            )
        return int(text)

    def _settle_secret_key(self, box: SecretBox | None) -> None:
        """Choose the box (given, else from the key file, else none), make sure it opens this
        database, finishing an interrupted rotation and sealing credentials stored before a key
        was set."""
        path = self._path
        stored = self._row("SELECT value FROM store_settings WHERE name = 'key_fingerprint'", ())
        fingerprint = None if stored is None else stored[0]
        stored_credentials = [row for (row,) in self._rows("SELECT credentials FROM admin_auth")]
        anything_sealed = fingerprint is not None or any(
            map(secret_box.is_sealed, stored_credentials)
        )
        if box is None and self._key_file is not None:
            box = secret_box.box_from_key_file(self._key_file, create=not anything_sealed)
        self._box = box or SecretBox(None)
        if not self._box.sealing:
            if anything_sealed:
                raise StartupError(
                    f"the credentials in {path} are encrypted, but no secret key is set; set "
                    "SOPY_SECRET_KEY or --secret-key-file to the key they were sealed with"
                )
            return
        if fingerprint is not None and fingerprint != self._box.fingerprint():
            self._finish_interrupted_rotation(path, fingerprint)
        if fingerprint is None or not all(map(secret_box.is_sealed, stored_credentials)):
            with self._transaction():
                self._reseal(self._box)
            self._checkpoint()

    def _finish_interrupted_rotation(self, path: Path, fingerprint: str) -> None:
        pending = None if self._key_file is None else _pending_key_path(self._key_file)
        if pending is not None and pending.exists():
            pending_box = SecretBox(secret_box.read_key_file(pending))
            if pending_box.fingerprint() == fingerprint:
                self._adopt_box(pending_box)
                return
        raise StartupError(
            f"{path} was encrypted with a different secret key (fingerprint {fingerprint}); "
            "set SOPY_SECRET_KEY or --secret-key-file to that key"
        )

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Run one statement in the current transaction (`?` placeholders); its cursor."""
        return self._db.execute(sql, params)

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self._db.execute(sql, params).fetchall()

    def _row(self, sql: str, params: tuple[Any, ...]) -> Any:
        return self._db.execute(sql, params).fetchone()

    def _exists(self, sql: str, params: tuple[Any, ...]) -> bool:
        return self._row(sql, params) is not None

    def _scalar(self, sql: str) -> int:
        value: int = self._db.execute(sql).fetchone()[0]
        return value


def _limits(row: list[Any]) -> KeyLimits:
    """A key's limits from its `_LIMIT_COLUMNS`."""
    rpm, tpm, max_parallel, token_budget, expires_at, models, usage_reset_at, failure = row
    allowed = None if models is None else tuple(orjson.loads(models))
    return KeyLimits(
        rpm, tpm, max_parallel, token_budget, expires_at, allowed, usage_reset_at, failure
    )


def _limit_values(limits: KeyLimits) -> tuple[Any, ...]:
    """`limits` as the values of `_LIMIT_COLUMNS`."""
    models = None if limits.models is None else orjson.dumps(limits.models).decode()
    fields = _limit_fields(limits)
    return (*fields[:5], models, *fields[6:])


def _limit_fields(limits: KeyLimits) -> tuple[Any, ...]:
    return attrs.astuple(limits, recurse=False)


def _view_limits(view: UserApiKeyView) -> KeyLimits:
    return KeyLimits(**{field.name: getattr(view, field.name) for field in attrs.fields(KeyLimits)})


def _provider_backends(provider: str, rows: list[Any]) -> ProviderBackends:
    return ProviderBackends(
        provider, tuple(url for url, _ in rows), tuple(weight for _, weight in rows)
    )


def _model_mapping(row: Any) -> ModelMapping:
    model_name, provider, created_at, fallbacks, upstream_model, fallback_models = row
    return ModelMapping(
        model_name,
        provider,
        created_at,
        tuple(orjson.loads(fallbacks)),
        upstream_model,
        orjson.loads(fallback_models),
    )


def _pending_key_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".next")


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT version FROM schema_version").fetchone()
    current = 0 if row is None else int(row[0])
    if current > len(MIGRATIONS):
        raise StartupError(
            f"{path} has schema version {current}, newer than this Sopy understands "
            f"({len(MIGRATIONS)}); upgrade Sopy or point --db-path at another file"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        record = (
            "INSERT INTO schema_version (version) VALUES (1);"
            if version == 1
            else f"UPDATE schema_version SET version = {version};"
        )
        try:
            connection.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[version - 1]} {record} COMMIT;")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    if connection.execute("PRAGMA application_id").fetchone()[0] != SOPY_APPLICATION_ID:
        connection.execute(f"PRAGMA application_id = {SOPY_APPLICATION_ID}")


def _connect(path: Path) -> tuple[sqlite3.Connection, tuple[int, int]]:
    """A connection to `path` and the (device, inode) of the file it opened."""
    what, flag = "config database", "--db-path"
    try:
        exists = own_file_exists(path, what, flag)
        for companion in _COMPANIONS:
            own_file_exists(Path(f"{path}{companion}"), what, flag)
        if not exists:
            # SQLite gives the -wal and -shm files the database file's mode: create it 0600.
            os.close(open_private(path, os.O_RDWR | os.O_EXCL))
        before = os.stat(path)
        connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
        )
    except OSError as exc:
        raise StartupError(f"cannot open the config database {path}: {exc.strerror}") from None
    except sqlite3.Error as exc:
        raise _startup_error(exc, path) from None
    after = os.stat(path)
    if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino):
        connection.close()
        raise StartupError(f"the config database {path} was replaced while Sopy opened it")
    return connection, (after.st_dev, after.st_ino)


def _require_sopy_database(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse another application's SQLite file rather than add Sopy's tables to it, and a
    damaged one rather than fail later mid-command."""
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    tables = {
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    # Before application ids, a Sopy database was known by its schema_version table.
    older_sopy = application_id == 0 and (not tables or "schema_version" in tables)
    if application_id != SOPY_APPLICATION_ID and not older_sopy:
        holds = (
            f"application id {application_id:#x}"
            if application_id
            else f"tables {', '.join(sorted(tables)[:5])}"
        )
        raise StartupError(
            f"{path} is not a Sopy database (it holds {holds}); Sopy does not add its tables to "
            "another application's file: point --db-path at Sopy's database or a new file"
        )
    problems = [row[0] for row in connection.execute("PRAGMA quick_check(1)")]
    if problems != ["ok"]:
        raise StartupError(_damaged(path, problems[0]))
    # Only now that the file is known to be Sopy's: an older Sopy created it readable by all.
    for companion in ("", *_COMPANIONS):
        make_private(Path(f"{path}{companion}"), "config database file")


def _damaged(path: Path, detail: str) -> str:
    return (
        f"the config database {path} is damaged ({' '.join(detail.split())}); restore it from a "
        "backup, or move it away to start with an empty configuration"
    )


def _startup_error(exc: sqlite3.Error, path: Path) -> StartupError:
    primary = _sqlite_primary_code(exc)
    if primary == _SQLITE_NOTADB:
        return StartupError(
            f"{path} is not an SQLite database ({exc}); point --db-path at Sopy's database or "
            "a new file"
        )
    if primary == _SQLITE_CORRUPT:
        return StartupError(_damaged(path, str(exc)))
    if primary == _SQLITE_CANTOPEN:
        return StartupError(
            f"cannot open the config database {path} ({exc}); Sopy's user must be able to read "
            "and write it and create files beside it, on a filesystem mounted read-write"
        )
    if _is_full(exc):
        return StartupError(f"cannot prepare the config database {path}: the disk is full")
    if _is_locked(exc):
        return StartupError(
            f"the config database {path} is locked by another process (waited "
            f"{BUSY_TIMEOUT:.0f} s); is another Sopy using it?"
        )
    if _is_read_only(exc):
        return StartupError(
            f"the config database {path} is read-only ({exc}), and Sopy must write to it to "
            "start; make it writable for Sopy's user"
        )
    return StartupError(f"cannot open the config database {path}: {exc}")


# The files SQLite keeps beside a database in WAL mode.
_COMPANIONS = ("-wal", "-shm")
# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


def _sqlite_primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return _sqlite_primary_code(exc) == _SQLITE_FULL


def _is_locked(exc: BaseException) -> bool:
    return _sqlite_primary_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _is_read_only(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    return _sqlite_primary_code(exc) == _SQLITE_READONLY


def _cause(exc: sqlite3.Error | OSError) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
