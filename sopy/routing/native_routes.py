"""Which of a model's providers may serve a request in a given API family: only those whose kind
speaks it natively (`sopy.provider_kinds`), in the order of the model's mapping. The OpenAI
routes are served by providers of kind `openai` or `azure`, the Anthropic Messages routes
(`POST /v1/messages`, `/v1/messages/count_tokens`) by providers of kind `anthropic`; until
Sopy translates between the formats, a model mapped only to providers of another kind is a 400
that names the provider and its kind. The HTTP front asks `openai_routes` or `messages_routes`
instead of `RouteTable.routes_for`.
"""

from sopy.errors import ProviderKindMismatch
from sopy.messages import ProviderRoute
from sopy.provider_kinds import ANTHROPIC_API, OPENAI_API, PROVIDER_KINDS
from sopy.routing.route_table import RouteTable

_SERVING = {
    api: frozenset(kind.name for kind in PROVIDER_KINDS.values() if kind.api == api)
    for api in (OPENAI_API, ANTHROPIC_API)
}


def openai_routes(table: RouteTable, model: str) -> tuple[ProviderRoute, ...]:
    """The model's providers that serve the OpenAI API (all of them, in the usual case)."""
    routes = table.routes_for(model)
    serving = _SERVING[OPENAI_API]
    for route in routes:
        if route.kind not in serving:
            return _native(routes, model, serving, OPENAI_API, _OPENAI_HINT)
    return routes


def messages_routes(table: RouteTable, model: str) -> tuple[ProviderRoute, ...]:
    """The model's providers of kind `anthropic` that have backends, its mapped provider first
    and then its fallbacks; 404 for an unmapped model, 400 naming the provider and its kind if
    none of them is of kind `anthropic`."""
    routes = table.routes_for(model)
    return _native(routes, model, _SERVING[ANTHROPIC_API], ANTHROPIC_API, _ANTHROPIC_HINT)


_OPENAI_HINT = (
    "Map this model to a provider of kind 'openai' or 'azure', or call it through the Anthropic "
    "Messages API, POST /v1/messages."
)
_ANTHROPIC_HINT = (
    "Map this model to a provider of kind 'anthropic' (`sopy admin add_admin_auth --kind "
    "anthropic`), or call its OpenAI routes, such as POST /v1/chat/completions."
)


def _native(
    routes: tuple[ProviderRoute, ...], model: str, serving: frozenset[str], api: str, hint: str
) -> tuple[ProviderRoute, ...]:
    eligible = tuple(route for route in routes if route.kind in serving)
    if not eligible:
        provider = routes[0]
        raise ProviderKindMismatch(
            f"Model '{model}' is mapped to provider '{provider.provider}', which is of kind "
            f"'{provider.kind}' and does not serve the {api} API. {hint}",
            param="model",
        )
    return eligible
