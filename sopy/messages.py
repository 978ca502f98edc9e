"""Every message that crosses an actor boundary. Their JSON form is `sopy.codec`'s business.

Messages are frozen, slotted attrs classes: data, no behaviour. Four families live here:

- admin commands (the seed's 18, one class each, tagged by `command`) and their results;
- configuration state: `ConfigSnapshot`, the typed `ConfigEvent`s (tagged by `kind`) and
  `ConfigChanged`, which the config actor publishes after every committed change;
- the request/reply envelope between transports and the config actor (`AdminRequest`,
  `CommandSucceeded`, `CommandFailed`);
- the forwarding protocol between the HTTP front and an upstream pool: `ForwardRequest` in (and
  `CancelForward` if the front stops wanting the answer), then back on the request's own channel
  either one complete `ResponseStart` (with its body), or a streamed `ResponseStart`,
  `ResponseChunk`s and `ResponseEnd`, or one `UpstreamFailed`. Upstream events carry the
  backend's own headers and the pool's own words for a failure; the front decides what of them
  its client sees.
"""

import enum
from collections.abc import Mapping
from typing import ClassVar, TypeAlias

import attrs
import trio

from sopy import validators
from sopy.errors import SopyError
from sopy.provider_kinds import DEFAULT_PROVIDER_KIND, PROVIDER_KINDS

# -- admin commands -------------------------------------------------------------------------


class Unchanged(enum.Enum):
    """The value of an `update_user_api_key` field the admin did not send (`null` clears)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


@attrs.frozen
class AddAdminAuth:
    """`kind` says how the provider takes its credential and which wire formats it serves
    (`sopy.provider_kinds`): `openai` (`Authorization: Bearer`), `azure` (`api-key`),
    `openai-chat` (Chat Completions only, `Authorization: Bearer`), `anthropic` (`x-api-key`,
    with `anthropic-version: 2023-06-01` unless the client sent one)."""

    command: ClassVar[str] = "add_admin_auth"
    name: str = attrs.field(validator=validators.provider_name)
    credentials: str = attrs.field(validator=validators.secret, repr=False)
    replace: bool = False
    kind: str = attrs.field(
        default=DEFAULT_PROVIDER_KIND,
        validator=validators.provider_kind,
        metadata={"enum": tuple(PROVIDER_KINDS)},
    )


@attrs.frozen
class RemoveAdminAuth:
    command: ClassVar[str] = "remove_admin_auth"
    name: str = attrs.field(validator=validators.provider_name)


@attrs.frozen
class ListAdminAuth:
    command: ClassVar[str] = "list_admin_auth"


@attrs.frozen
class GetAdminAuth:
    command: ClassVar[str] = "get_admin_auth"
    name: str = attrs.field(validator=validators.provider_name)
    reveal: bool = False


@attrs.frozen
class AddUserApiKey:
    """Every limit is optional (none: unlimited): `rpm` requests and `tpm` tokens per minute,
    `max_parallel` requests at once, `token_budget` tokens in all (counted from the key's
    creation), `expires_at` (Unix seconds), `models` (the model names it may call)."""

    command: ClassVar[str] = "add_user_api_key"
    api_key: str | None = attrs.field(
        default=None, validator=validators.optional_user_key, repr=False
    )
    description: str = attrs.field(default="", validator=validators.description)
    rpm: int | None = attrs.field(default=None, validator=validators.key_limit)
    tpm: int | None = attrs.field(default=None, validator=validators.key_limit)
    max_parallel: int | None = attrs.field(default=None, validator=validators.key_limit)
    token_budget: int | None = attrs.field(default=None, validator=validators.key_limit)
    expires_at: int | None = attrs.field(default=None, validator=validators.unix_time)
    models: tuple[str, ...] | None = attrs.field(
        default=None, validator=validators.model_allow_list
    )
    limit_failure: str = attrs.field(default="closed", validator=validators.limit_failure)


@attrs.frozen
class UpdateUserApiKey:
    """Changes the fields sent, keeps the others; `null` clears a limit. `reset_usage: true`
    starts the `token_budget` count over (so does giving a budget to a key that had none).
    Applies from the next request."""

    command: ClassVar[str] = "update_user_api_key"
    id: int = attrs.field(validator=validators.positive_id)
    rpm: int | Unchanged | None = attrs.field(default=UNCHANGED, validator=validators.key_limit)
    tpm: int | Unchanged | None = attrs.field(default=UNCHANGED, validator=validators.key_limit)
    max_parallel: int | Unchanged | None = attrs.field(
        default=UNCHANGED, validator=validators.key_limit
    )
    token_budget: int | Unchanged | None = attrs.field(
        default=UNCHANGED, validator=validators.key_limit
    )
    expires_at: int | Unchanged | None = attrs.field(
        default=UNCHANGED, validator=validators.unix_time
    )
    models: tuple[str, ...] | Unchanged | None = attrs.field(
        default=UNCHANGED, validator=validators.model_allow_list
    )
    limit_failure: str | Unchanged = attrs.field(
        default=UNCHANGED, validator=validators.limit_failure
    )
    reset_usage: bool = False


@attrs.frozen
class RemoveUserApiKey:
    """Removes by the key itself (as the seed does) or by its id; exactly one is required."""

    command: ClassVar[str] = "remove_user_api_key"
    api_key: str | None = attrs.field(
        default=None, validator=validators.optional_user_key, repr=False
    )
    id: int | None = attrs.field(default=None, validator=validators.positive_id)

    def __attrs_post_init__(self) -> None:
        if (self.api_key is None) == (self.id is None):
            raise ValueError("field 'api_key' or field 'id' is required, but not both")


@attrs.frozen
class ListUserApiKeys:
    command: ClassVar[str] = "list_user_api_keys"


@attrs.frozen
class GetUserApiKey:
    command: ClassVar[str] = "get_user_api_key"
    id: int = attrs.field(validator=validators.positive_id)


@attrs.frozen
class ActivateUserApiKey:
    command: ClassVar[str] = "activate_user_api_key"
    id: int = attrs.field(validator=validators.positive_id)


@attrs.frozen
class DeactivateUserApiKey:
    command: ClassVar[str] = "deactivate_user_api_key"
    id: int = attrs.field(validator=validators.positive_id)


@attrs.frozen
class AddBackend:
    command: ClassVar[str] = "add_backend"
    provider: str = attrs.field(validator=validators.provider_name)
    url: str = attrs.field(converter=validators.normalised_backend_url)
    weight: int = attrs.field(default=1, validator=validators.backend_weight)


@attrs.frozen
class RemoveBackend:
    command: ClassVar[str] = "remove_backend"
    provider: str = attrs.field(validator=validators.provider_name)
    url: str = attrs.field(converter=validators.normalised_backend_url)


@attrs.frozen
class ListBackends:
    command: ClassVar[str] = "list_backends"


@attrs.frozen
class GetBackend:
    command: ClassVar[str] = "get_backend"
    provider: str = attrs.field(validator=validators.provider_name)


@attrs.frozen
class AddModelMapping:
    """`upstream_model` is the `model` sent to `provider` (default: `model_name`);
    `fallback_upstream_models` names the one sent to a fallback provider (default: `model_name`),
    e.g. `{"azure": "my-gpt-4o-deployment"}`."""

    command: ClassVar[str] = "add_model_mapping"
    model_name: str = attrs.field(validator=validators.model_name)
    provider: str = attrs.field(validator=validators.provider_name)
    replace: bool = False
    fallbacks: tuple[str, ...] = attrs.field(default=(), validator=validators.fallback_providers)
    upstream_model: str | None = attrs.field(default=None, validator=validators.optional_model_name)
    # Excluded from the hash: a dict is not hashable, and the other fields identify the command.
    fallback_upstream_models: Mapping[str, str] = attrs.field(
        factory=dict, hash=False, validator=validators.fallback_upstream_models
    )


@attrs.frozen
class RemoveModelMapping:
    command: ClassVar[str] = "remove_model_mapping"
    model_name: str = attrs.field(validator=validators.model_name)


@attrs.frozen
class ListModelMappings:
    command: ClassVar[str] = "list_model_mappings"


@attrs.frozen
class GetModelMapping:
    command: ClassVar[str] = "get_model_mapping"
    model_name: str = attrs.field(validator=validators.model_name)


@attrs.frozen
class RotateSecretKey:
    """Re-encrypt every stored credential with a new key (generated when not given), in one
    transaction. With a key file, the file is rewritten; otherwise the reply shows the new key
    once, and SOPY_SECRET_KEY must be set to it before the next start."""

    command: ClassVar[str] = "rotate_secret_key"
    new_key: str | None = attrs.field(
        default=None, validator=validators.optional_secret_key, repr=False
    )


@attrs.frozen
class GetUsage:
    """Token usage summed per group of the records that match every filter given; `since` and
    `until` are Unix seconds (`until` excluded), `day` groups by UTC day."""

    command: ClassVar[str] = "get_usage"
    key_id: int | None = None
    model: str | None = None
    provider: str | None = None
    since: int | None = None
    until: int | None = None
    group_by: tuple[str, ...] = attrs.field(default=(), validator=validators.usage_groups)


ConfigCommand: TypeAlias = (
    AddAdminAuth
    | RemoveAdminAuth
    | ListAdminAuth
    | GetAdminAuth
    | AddUserApiKey
    | RemoveUserApiKey
    | ListUserApiKeys
    | GetUserApiKey
    | ActivateUserApiKey
    | DeactivateUserApiKey
    | UpdateUserApiKey
    | AddBackend
    | RemoveBackend
    | ListBackends
    | GetBackend
    | AddModelMapping
    | RemoveModelMapping
    | ListModelMappings
    | GetModelMapping
    | RotateSecretKey
)
"""The admin commands the config actor answers."""

AdminCommand: TypeAlias = ConfigCommand | GetUsage
"""Every admin command; `get_usage` is the usage actor's."""

ADMIN_COMMANDS: Mapping[str, type[AdminCommand]] = {
    cls.command: cls for cls in AdminCommand.__args__
}

# -- admin results --------------------------------------------------------------------------


@attrs.frozen
class AdminAuthView:
    """A provider credential as admins see it: masked unless revealed on request."""

    name: str
    credentials: str = attrs.field(repr=False)
    kind: str = DEFAULT_PROVIDER_KIND


@attrs.frozen
class AdminAuthEntry:
    """One provider credential in list_admin_auth: its name and kind, never the credential."""

    name: str
    kind: str = DEFAULT_PROVIDER_KIND


@attrs.frozen
class KeyLimits:
    """A user key's limits (None: none); `usage_reset_at` (Unix time) is when its
    `token_budget` count began; `limit_failure` whether the key is admitted (`open`) or refused
    (`closed`) while the shared limit store (`--limits`) cannot be reached."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    token_budget: int | None = None
    expires_at: int | None = None
    models: tuple[str, ...] | None = None
    usage_reset_at: float = 0.0
    limit_failure: str = "closed"

    @property
    def unlimited(self) -> bool:
        return (
            self.rpm is None
            and self.tpm is None
            and self.max_parallel is None
            and self.token_budget is None
            and self.expires_at is None
            and self.models is None
        )


@attrs.frozen
class UserApiKeyView:
    """A user key as admins see it after creation: never the key, only a short prefix; then
    its limits (`sopy.messages.KeyLimits`)."""

    id: int
    prefix: str
    description: str
    active: bool
    created_at: int
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    token_budget: int | None = None
    expires_at: int | None = None
    models: tuple[str, ...] | None = None
    usage_reset_at: float = 0.0
    limit_failure: str = "closed"


@attrs.frozen
class NewUserApiKey:
    """The reply to add_user_api_key: the only time the full key is ever shown."""

    id: int
    api_key: str = attrs.field(repr=False)
    prefix: str
    description: str
    active: bool
    created_at: int
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    token_budget: int | None = None
    expires_at: int | None = None
    models: tuple[str, ...] | None = None
    usage_reset_at: float = 0.0
    limit_failure: str = "closed"


@attrs.frozen
class ProviderBackends:
    """A provider's backend URLs in the order they were added, and their weights, likewise."""

    provider: str
    urls: tuple[str, ...]
    weights: tuple[int, ...]


@attrs.frozen
class ModelMapping:
    """`fallbacks`: other providers to try, in order, when `provider` cannot answer.
    `upstream_model`: the `model` sent to `provider` (the config store always fills it in; None
    means `model_name`); `fallback_upstream_models`: the one sent to a fallback, for those that
    have their own (the others get `model_name`)."""

    model_name: str
    provider: str
    created_at: int
    fallbacks: tuple[str, ...] = ()
    upstream_model: str | None = None
    fallback_upstream_models: Mapping[str, str] = attrs.field(factory=dict, hash=False)

    def upstream_model_of(self, provider: str) -> str:
        """The `model` to send `provider` (this mapping's provider or one of its fallbacks)."""
        if provider == self.provider:
            return self.upstream_model or self.model_name
        return self.fallback_upstream_models.get(provider, self.model_name)


@attrs.frozen
class SecretKeyRotation:
    """`new_key` is set only when Sopy generated the key and has no key file to keep it in."""

    fingerprint: str
    credentials: int
    key_file: str | None
    new_key: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class UsageReport:
    """One entry per group: the group's fields (those of `group_by`), then `requests` and the
    token sums."""

    groups: tuple[Mapping[str, int | str | None], ...]


AdminResult: TypeAlias = (
    AdminAuthView
    | UsageReport
    | UserApiKeyView
    | NewUserApiKey
    | ProviderBackends
    | ModelMapping
    | SecretKeyRotation
    | tuple[AdminAuthEntry, ...]
    | tuple[UserApiKeyView, ...]
    | tuple[ProviderBackends, ...]
    | tuple[ModelMapping, ...]
)

# -- configuration state --------------------------------------------------------------------


@attrs.frozen
class ProviderCredential:
    provider: str
    credential: str = attrs.field(repr=False)
    kind: str = DEFAULT_PROVIDER_KIND


@attrs.frozen
class UserApiKeyRecord:
    id: int
    key_hash: str = attrs.field(repr=False)
    prefix: str
    description: str
    active: bool
    created_at: int
    limits: KeyLimits = KeyLimits()


@attrs.frozen
class Backend:
    provider: str
    url: str
    weight: int = 1


@attrs.frozen
class ConfigSnapshot:
    """The whole live configuration at one version; replaced, never mutated."""

    version: int
    credentials: tuple[ProviderCredential, ...]
    user_api_keys: tuple[UserApiKeyRecord, ...]
    backends: tuple[Backend, ...]
    model_mappings: tuple[ModelMapping, ...]


@attrs.frozen
class AdminAuthAdded:
    kind: ClassVar[str] = "admin_auth_added"
    name: str
    replaced: bool
    provider_kind: str = DEFAULT_PROVIDER_KIND


@attrs.frozen
class AdminAuthRemoved:
    kind: ClassVar[str] = "admin_auth_removed"
    name: str


@attrs.frozen
class UserApiKeyAdded:
    kind: ClassVar[str] = "user_api_key_added"
    id: int
    prefix: str
    description: str
    # None in journal entries written before keys had limits.
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    token_budget: int | None = None
    expires_at: int | None = None
    models: tuple[str, ...] | None = None
    limit_failure: str = "closed"


@attrs.frozen
class UserApiKeyUpdated:
    """A key's limits after `update_user_api_key`, all of them; `usage_reset` when its
    `token_budget` count started over."""

    kind: ClassVar[str] = "user_api_key_updated"
    id: int
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    token_budget: int | None
    expires_at: int | None
    models: tuple[str, ...] | None
    usage_reset: bool
    # "closed" in journal entries written before keys had it.
    limit_failure: str = "closed"


@attrs.frozen
class UserApiKeyRemoved:
    kind: ClassVar[str] = "user_api_key_removed"
    id: int


@attrs.frozen
class UserApiKeyActivated:
    kind: ClassVar[str] = "user_api_key_activated"
    id: int


@attrs.frozen
class UserApiKeyDeactivated:
    kind: ClassVar[str] = "user_api_key_deactivated"
    id: int


@attrs.frozen
class BackendAdded:
    kind: ClassVar[str] = "backend_added"
    provider: str
    url: str
    weight: int = 1


@attrs.frozen
class BackendRemoved:
    kind: ClassVar[str] = "backend_removed"
    provider: str
    url: str


@attrs.frozen
class ModelMappingAdded:
    kind: ClassVar[str] = "model_mapping_added"
    model_name: str
    provider: str
    replaced: bool
    fallbacks: tuple[str, ...] = ()
    # None in journal entries written before model aliases existed.
    upstream_model: str | None = None
    fallback_upstream_models: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class ModelMappingRemoved:
    kind: ClassVar[str] = "model_mapping_removed"
    model_name: str
    provider: str


@attrs.frozen
class SecretKeyRotated:
    kind: ClassVar[str] = "secret_key_rotated"
    fingerprint: str


ConfigEvent: TypeAlias = (
    AdminAuthAdded
    | AdminAuthRemoved
    | UserApiKeyAdded
    | UserApiKeyRemoved
    | UserApiKeyActivated
    | UserApiKeyDeactivated
    | UserApiKeyUpdated
    | BackendAdded
    | BackendRemoved
    | ModelMappingAdded
    | ModelMappingRemoved
    | SecretKeyRotated
)

CONFIG_EVENTS: Mapping[str, type[ConfigEvent]] = {cls.kind: cls for cls in ConfigEvent.__args__}


@attrs.frozen
class ConfigChanged:
    """Published after every commit; `change` is None when a whole snapshot was (re)loaded."""

    version: int
    at: float
    change: ConfigEvent | None
    snapshot: ConfigSnapshot


# -- transport <-> config actor envelope ----------------------------------------------------


@attrs.frozen
class CommandSucceeded:
    """`lagging_workers`: with several worker processes, the PIDs of those that had not applied
    the change when `--apply-timeout` ran out (they are being restarted)."""

    result: AdminResult
    lagging_workers: tuple[int, ...] = ()


@attrs.frozen
class CommandFailed:
    error: SopyError


CommandReply: TypeAlias = CommandSucceeded | CommandFailed


@attrs.frozen
class AdminRequest:
    command: ConfigCommand
    reply_to: trio.MemorySendChannel[CommandReply]


@attrs.frozen
class JournalEntry:
    """One committed change as the journal keeps it."""

    version: int
    at: float
    change: ConfigEvent


@attrs.frozen
class JournalRequest:
    """Asks the config actor for every change after `since`. The reply is None when the journal
    no longer reaches back that far (or `since` is from the future): start from a snapshot."""

    since: int
    reply_to: trio.MemorySendChannel[tuple[JournalEntry, ...] | None]


ConfigRequest: TypeAlias = AdminRequest | JournalRequest


# -- HTTP front <-> upstream pool ------------------------------------------------------------

Headers: TypeAlias = tuple[tuple[bytes, bytes], ...]


@attrs.frozen
class ProviderRoute:
    """Where a provider's requests for one model go: its backend base URLs with their weights,
    its credential and kind, and the model name the provider knows."""

    provider: str
    urls: tuple[str, ...]
    weights: tuple[int, ...]
    credential: str | None = attrs.field(repr=False)
    # How the provider takes its credential and which wire formats it serves natively.
    kind: str = DEFAULT_PROVIDER_KIND
    # The `model` to send this provider for the model the client asked for; None: unchanged.
    upstream_model: str | None = None


@attrs.frozen
class ResponseStart:
    """The upstream answered. `retryable` marks a final 429/5xx that another provider might
    answer better; `backend` and `attempts` say who answered after how many tries. `headers` are
    the backend's, as it sent them. `body` is the whole body of an answer that is not a stream:
    then no ResponseChunk or ResponseEnd follows."""

    status: int
    headers: Headers
    backend: str
    attempts: int
    retryable: bool = False
    body: bytes | None = None


@attrs.frozen
class ResponseChunk:
    data: bytes


@attrs.frozen
class ResponseEnd:
    """The upstream body is complete, or (with `error`, the pool's account of why, for the
    operator's log) broke off after it had started."""

    error: str | None = None


@attrs.frozen
class UpstreamFailed:
    """No response could be had; nothing has been sent to the client yet. `error` is in the
    pool's words, naming backends: for the operator's log, not for the client."""

    error: SopyError
    attempts: int = 0
    backend: str | None = None


UpstreamEvent: TypeAlias = ResponseStart | ResponseChunk | ResponseEnd | UpstreamFailed


@attrs.frozen
class ForwardRequest:
    """One client request for a provider, as the client sent it: `headers` are the client's own
    (the pool decides which of them the backend sees, and adds the provider credential). The
    answer goes back on `reply_to`; closing its receiving end tells the pool nobody listens."""

    request_id: str
    method: str
    path: str
    headers: Headers = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)
    route: ProviderRoute
    reply_to: trio.MemorySendChannel[UpstreamEvent]


@attrs.frozen
class CancelForward:
    """The front no longer wants the answer to `request_id` (its client left, or it fell back to
    another provider): the pool cancels that exchange and closes its upstream connection."""

    request_id: str


PoolMessage: TypeAlias = ForwardRequest | CancelForward


# -- HTTP front -> usage actor ----------------------------------------------------------------


@attrs.frozen
class TokenCounts:
    """Token counts as a provider reported them, in OpenAI's terms (`input`/`output`, cached
    input, reasoning); a count the provider did not report is 0."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0


@attrs.frozen
class UsageRecord:
    """One model request, as the usage actor stores and streams it. `at` is when it ended (Unix
    seconds); `tokens_from_provider` is false when the answer reported no usage (the counts are
    then 0); `cut_short` when a stream ended before its end (counts are what was seen);
    `client_gone` when the client left before the end."""

    at: float
    request_id: str
    key_id: int | None
    model: str
    provider: str
    backend: str | None
    route: str
    status: int
    tokens: TokenCounts
    tokens_from_provider: bool
    upstream_ms: float
    first_token_ms: float | None
    client_gone: bool
    cut_short: bool


@attrs.frozen
class UsageQuery:
    """`get_usage`, from an admin transport to the usage actor."""

    command: GetUsage
    reply_to: trio.MemorySendChannel[CommandReply]


@attrs.frozen
class TokenTotalsQuery:
    """From the HTTP front, before it serves: the tokens (input plus output) each key in
    `since` used from the Unix time given for it, to seed the `token_budget` counts."""

    since: Mapping[int, float] = attrs.field(hash=False)
    reply_to: trio.MemorySendChannel[Mapping[int, int]]


UsageRequest: TypeAlias = UsageQuery | TokenTotalsQuery
"""What the usage actor answers."""
