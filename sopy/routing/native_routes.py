"""How each route of a model request reaches each provider: natively (the body as the client sent
it, byte for byte but for a renamed model) or translated from the client's wire format to one the
provider serves (`sopy.translation.translate` does the translating), decided once here from the
provider kinds' declared formats (`sopy.provider_kinds`).

Only the three conversation routes translate: `POST /v1/chat/completions`, `POST /v1/responses`
and `POST /v1/messages`. `/v1/messages/count_tokens` goes to the model's providers that serve
Messages when its first one does (those alone: a chat completion counts nothing), and is
otherwise answered by the HTTP front's local estimate. Every other OpenAI route is served only by
the kinds that serve all of OpenAI's (`openai`, `azure`); a model mapped only to other kinds is a
400 that names the provider and its kind.

The model's providers keep the mapping's order (the fallback order is the operator's); each hop
is native or translated on its own. The HTTP front asks `model_routes` for the providers, the
relay asks `translation_for` per hop: one dict lookup, nothing for a native hop to pay.
"""

from collections.abc import Mapping

import attrs

from sopy.errors import ProviderKindMismatch
from sopy.messages import ProviderRoute
from sopy.provider_kinds import PROVIDER_KINDS, WireFormat
from sopy.routing.route_table import RouteTable

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

# The routes that translate, by the wire format their body is in.
CLIENT_FORMATS: Mapping[str, WireFormat] = {
    "/v1/chat/completions": WireFormat.CHAT,
    "/v1/responses": WireFormat.RESPONSES,
    "/v1/messages": WireFormat.MESSAGES,
    COUNT_TOKENS_PATH: WireFormat.MESSAGES,
}


@attrs.frozen
class Translation:
    """A hop's request goes from the `client`'s wire format to the `provider`'s, and its answer
    back."""

    client: WireFormat
    provider: WireFormat


def _plan() -> dict[tuple[str, str], Translation | None]:
    plan: dict[tuple[str, str], Translation | None] = {}
    for kind in PROVIDER_KINDS.values():
        for path, client in CLIENT_FORMATS.items():
            native = client in kind.formats
            plan[kind.name, path] = None if native else Translation(client, kind.formats[0])
    return plan


_TRANSLATIONS = _plan()
_ALL_OPENAI_ROUTES = frozenset(k.name for k in PROVIDER_KINDS.values() if k.all_openai_routes)


def translation_for(kind: str, path: str) -> Translation | None:
    """How a request on `path` (a route `model_routes` let through for this kind) reaches a
    provider of `kind`: None natively, else the translation."""
    return _TRANSLATIONS.get((kind, path))


def model_routes(table: RouteTable, model: str, path: str) -> tuple[ProviderRoute, ...]:
    """The model's providers that serve `path`, natively or translated, in the mapping's order;
    404 for an unmapped model, 400 naming the provider and its kind if none serves it."""
    routes = table.routes_for(model)
    if path == COUNT_TOKENS_PATH and translation_for(routes[0].kind, path) is None:
        # Counted by the providers that serve Messages: a chat completion counts nothing.
        return tuple(route for route in routes if translation_for(route.kind, path) is None)
    if path in CLIENT_FORMATS:
        return routes  # every kind serves the conversation routes, translated if need be
    for route in routes:
        if route.kind not in _ALL_OPENAI_ROUTES:
            return _serving_all_openai_routes(routes, model, path)
    return routes


def serves_natively(routes: tuple[ProviderRoute, ...], path: str) -> bool:
    """Whether some provider of `routes` serves `path` without translation."""
    return any(translation_for(route.kind, path) is None for route in routes)


def _serving_all_openai_routes(
    routes: tuple[ProviderRoute, ...], model: str, path: str
) -> tuple[ProviderRoute, ...]:
    eligible = tuple(route for route in routes if route.kind in _ALL_OPENAI_ROUTES)
    if not eligible:
        provider = routes[0]
        raise ProviderKindMismatch(
            f"Model '{model}' is mapped to provider '{provider.provider}', which is of kind "
            f"'{provider.kind}' and does not serve {path}. Map this model to a provider of kind "
            "'openai' or 'azure' for it; a provider of any kind serves POST "
            "/v1/chat/completions, POST /v1/responses and POST /v1/messages, translated where "
            "its kind speaks another format.",
            param="model",
        )
    return eligible
