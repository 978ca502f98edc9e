"""The request path's view of the configuration: who may call, and where each model goes.

Built once per `ConfigChanged` from its immutable snapshot, then only read: authentication is a
hash lookup, routing is two dict lookups, and the `/v1/models` body is rendered in advance.
"""

from collections.abc import Mapping

import attrs
import orjson

from sopy import keys
from sopy.errors import AuthenticationFailed, ModelNotFound, NoBackendAvailable
from sopy.messages import ConfigSnapshot, ModelMapping, ProviderBackends, ProviderRoute
from sopy.provider_backends import group_by_provider
from sopy.provider_kinds import DEFAULT_PROVIDER_KIND
from sopy.routing.key_limits import KeyPolicy, policies

# A provider known only by its credential or a mapping routes to no backend.
_NO_BACKENDS = ProviderBackends("", (), ())


@attrs.frozen
class RouteTable:
    version: int
    key_ids_by_hash: Mapping[str, int]
    inactive_key_hashes: frozenset[str]
    # Each mapped model's provider, then its fallbacks, as the pools need them.
    chains: Mapping[str, tuple[ProviderRoute, ...]]
    models_body: bytes
    model_bodies: Mapping[str, bytes]
    # Every provider with a backend, for requests pinned to one (Responses API follow-ups).
    providers: Mapping[str, ProviderRoute] = attrs.field(factory=dict)
    # The limits of the keys that have some (`sopy.routing.key_limits`).
    key_policies: Mapping[int, KeyPolicy] = attrs.field(factory=dict)

    @classmethod
    def from_snapshot(cls, snapshot: ConfigSnapshot) -> "RouteTable":
        backends = {group.provider: group for group in group_by_provider(snapshot.backends)}
        credentials = {c.provider: c for c in snapshot.credentials}

        def route(provider: str, mapping: ModelMapping | None = None) -> ProviderRoute:
            """`provider`'s route; for `mapping`'s chain, with the model it knows."""
            found = backends.get(provider, _NO_BACKENDS)
            stored = credentials.get(provider)
            upstream_model = None if mapping is None else mapping.upstream_model_of(provider)
            return ProviderRoute(
                provider,
                found.urls,
                found.weights,
                None if stored is None else stored.credential,
                DEFAULT_PROVIDER_KIND if stored is None else stored.kind,
                # None when unchanged: the request path then leaves the body alone.
                None if mapping is None or upstream_model == mapping.model_name else upstream_model,
            )

        models = [
            {
                "id": mapping.model_name,
                "object": "model",
                "created": mapping.created_at,
                "owned_by": mapping.provider,
                "upstream_model": mapping.upstream_model_of(mapping.provider),
            }
            for mapping in snapshot.model_mappings
        ]
        return cls(
            version=snapshot.version,
            key_ids_by_hash={k.key_hash: k.id for k in snapshot.user_api_keys if k.active},
            inactive_key_hashes=frozenset(
                k.key_hash for k in snapshot.user_api_keys if not k.active
            ),
            chains={
                m.model_name: tuple(route(provider, m) for provider in (m.provider, *m.fallbacks))
                for m in snapshot.model_mappings
            },
            providers={provider: route(provider) for provider in backends},
            models_body=orjson.dumps({"object": "list", "data": models}),
            model_bodies={str(model["id"]): orjson.dumps(model) for model in models},
            key_policies=policies(k for k in snapshot.user_api_keys if k.active),
        )

    def authenticate(self, authorization: bytes | None) -> int:
        """The id of the active user key in an `Authorization: Bearer` header, or raise 401."""
        if not authorization:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'; "
                "an admin can create one with `sopy admin add_user_api_key`."
            )
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("The Authorization header must be 'Bearer YOUR_KEY'.")
        return self._key_id(token)

    def authenticate_anthropic(self, x_api_key: bytes | None, authorization: bytes | None) -> int:
        """The id of the active user key sent as Anthropic clients send it: in `x-api-key`
        (Claude Code), else as `Authorization: Bearer` (the `anthropic` SDK); or raise 401."""
        token = (x_api_key or b"").decode("latin-1").strip()
        if token:
            return self._key_id(token)
        if not authorization:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send your Sopy key as 'x-api-key: YOUR_KEY' or "
                "'Authorization: Bearer YOUR_KEY'; an admin can create one with "
                "`sopy admin add_user_api_key`."
            )
        return self.authenticate(authorization)

    def _key_id(self, token: str) -> int:
        key_hash = keys.hash_user_key(token)
        key_id = self.key_ids_by_hash.get(key_hash)
        if key_id is not None:
            return key_id
        if key_hash in self.inactive_key_hashes:
            raise AuthenticationFailed(
                "This API key has been deactivated; ask an admin to reactivate it "
                "(activate_user_api_key) or to issue a new one."
            )
        raise AuthenticationFailed(
            "Incorrect API key provided. Check the key, or ask an admin for one "
            "(`sopy admin add_user_api_key`)."
        )

    def model_body(self, model: str, allowed: frozenset[str] | None = None) -> bytes:
        """The `/v1/models/{model}` body of a mapped model, or raise 404 (also for a model
        not `allowed`: the caller cannot tell which)."""
        body = self.model_bodies.get(model)
        if body is None or (allowed is not None and model not in allowed):
            raise _model_not_found(model)
        return body

    def models_body_of(self, allowed: frozenset[str]) -> bytes:
        """The `/v1/models` body listing only the `allowed` models, in the usual order."""
        bodies = [body for model, body in self.model_bodies.items() if model in allowed]
        return b'{"object":"list","data":[' + b",".join(bodies) + b"]}"

    def routes_for(self, model: str) -> tuple[ProviderRoute, ...]:
        """The model's provider, then its fallbacks in order, leaving out any without backends."""
        chain = self.chains.get(model)
        if chain is None:
            raise _model_not_found(model)
        routes = tuple(route for route in chain if route.urls)
        if not routes:
            provider = chain[0].provider
            raise NoBackendAvailable(
                f"Model '{model}' is mapped to provider '{provider}', which has no backend URL. "
                f"An admin can add one with `sopy admin add_backend --provider {provider} "
                "--url https://...`."
            )
        return routes

    def pinned_route(self, provider: str, backend: str, model: str | None) -> ProviderRoute | None:
        """`provider`'s route narrowed to its one `backend` (so the pool can neither retry on
        another backend nor the front fall back to another provider), as `model`'s chain has it
        if the chain includes the provider; None if the backend is no longer configured."""
        chain = self.chains.get(model, ()) if model is not None else ()
        route = next((r for r in chain if r.provider == provider), self.providers.get(provider))
        if route is None or backend not in route.urls:
            return None
        return attrs.evolve(route, urls=(backend,), weights=(1,))


def _model_not_found(model: str) -> ModelNotFound:
    return ModelNotFound(
        f"The model '{model}' does not exist or you do not have access to it. "
        "GET /v1/models lists the models this gateway serves; an admin maps new ones "
        "with `sopy admin add_model_mapping`.",
        param="model",
    )
