"""Which of a model's providers may serve an Anthropic Messages request (`POST /v1/messages`
and `/v1/messages/count_tokens`): only providers of kind `anthropic`, which speak that API
natively, in the order of the model's mapping. The HTTP front asks this module instead of
`RouteTable.routes_for` on those routes.
"""

from sopy.errors import ProviderKindMismatch
from sopy.messages import ProviderRoute
from sopy.provider_kinds import PROVIDER_KINDS
from sopy.routing.route_table import RouteTable

ANTHROPIC_KIND = PROVIDER_KINDS["anthropic"].name


def messages_routes(table: RouteTable, model: str) -> tuple[ProviderRoute, ...]:
    """The model's providers of kind `anthropic` that have backends, its mapped provider first
    and then its fallbacks; 404 for an unmapped model, 400 naming the provider and its kind if
    none of them is of kind `anthropic`."""
    routes = table.routes_for(model)
    eligible = tuple(route for route in routes if route.kind == ANTHROPIC_KIND)
    if not eligible:
        provider = routes[0]
        raise ProviderKindMismatch(
            f"Model '{model}' is mapped to provider '{provider.provider}', which is of kind "
            f"'{provider.kind}' and does not serve the Anthropic Messages API. Map this model to "
            "a provider of kind 'anthropic' (`sopy admin add_admin_auth --kind anthropic`), or "
            "call its OpenAI routes, such as POST /v1/chat/completions.",
            param="model",
        )
    return eligible
