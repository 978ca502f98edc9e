"""The admin REST routes: which HTTP method and path is which admin command.

This table is the only place the REST form of the admin API is defined: the admin socket's HTTP
side dispatches with `match_admin_route`, and the OpenAPI document is generated from it. Every
route ends in the same `AdminCommand` as its JSON-lines twin, so there is no second
implementation of any command.
"""

import urllib.parse

import attrs

from sopy.errors import MethodNotAllowed, NotFound
from sopy.messages import (
    ActivateUserApiKey,
    AddAdminAuth,
    AddBackend,
    AddModelMapping,
    AddUserApiKey,
    AdminCommand,
    DeactivateUserApiKey,
    GetAdminAuth,
    GetBackend,
    GetModelMapping,
    GetUsage,
    GetUserApiKey,
    ListAdminAuth,
    ListBackends,
    ListModelMappings,
    ListUserApiKeys,
    RemoveAdminAuth,
    RemoveBackend,
    RemoveModelMapping,
    RemoveUserApiKey,
    RotateSecretKey,
    UpdateUserApiKey,
)


@attrs.frozen
class AdminRoute:
    """`path` is an OpenAPI template; its one `{field}`, if any, is the path's last segment(s)."""

    method: str
    path: str
    command: type[AdminCommand]
    summary: str
    status: int = 200
    query_fields: tuple[str, ...] = ()

    @property
    def prefix(self) -> str:
        return self.path.split("{", 1)[0]

    @property
    def path_field(self) -> str | None:
        if "{" not in self.path:
            return None
        return self.path[self.path.index("{") + 1 : self.path.index("}")]

    @property
    def takes_body(self) -> bool:
        return self.method in ("POST", "DELETE", "PATCH") and self.path_field is None


ADMIN_ROUTES: tuple[AdminRoute, ...] = (
    AdminRoute("POST", "/admin/admin_auth", AddAdminAuth, "Add a provider credential", 201),
    AdminRoute("DELETE", "/admin/admin_auth/{name}", RemoveAdminAuth, "Remove a credential"),
    AdminRoute("GET", "/admin/admin_auth", ListAdminAuth, "List credentials: names and kinds"),
    AdminRoute(
        "GET",
        "/admin/admin_auth/{name}",
        GetAdminAuth,
        "Get a credential (masked unless reveal=true)",
        query_fields=("reveal",),
    ),
    AdminRoute("POST", "/admin/user_api_key", AddUserApiKey, "Add a user API key", 201),
    AdminRoute("DELETE", "/admin/user_api_key", RemoveUserApiKey, "Remove a user API key"),
    AdminRoute(
        "PATCH",
        "/admin/user_api_key",
        UpdateUserApiKey,
        "Change a user API key's limits (the fields sent; null clears one)",
    ),
    AdminRoute("GET", "/admin/user_api_keys", ListUserApiKeys, "List user API keys"),
    AdminRoute("GET", "/admin/user_api_key/{id}", GetUserApiKey, "Get a user API key"),
    AdminRoute(
        "PUT", "/admin/user_api_key/activate/{id}", ActivateUserApiKey, "Activate a user API key"
    ),
    AdminRoute(
        "PUT",
        "/admin/user_api_key/deactivate/{id}",
        DeactivateUserApiKey,
        "Deactivate a user API key",
    ),
    AdminRoute("POST", "/admin/backend", AddBackend, "Add a backend URL to a provider", 201),
    AdminRoute("DELETE", "/admin/backend", RemoveBackend, "Remove a backend URL"),
    AdminRoute("GET", "/admin/backend", ListBackends, "List providers and their backend URLs"),
    AdminRoute("GET", "/admin/backend/{provider}", GetBackend, "Get a provider's backend URLs"),
    AdminRoute("POST", "/admin/model_mapping", AddModelMapping, "Map a model to a provider", 201),
    AdminRoute(
        "DELETE", "/admin/model_mapping/{model_name}", RemoveModelMapping, "Remove a mapping"
    ),
    AdminRoute("GET", "/admin/model_mapping", ListModelMappings, "List model mappings"),
    AdminRoute(
        "GET", "/admin/model_mapping/{model_name}", GetModelMapping, "Get a model's provider"
    ),
    AdminRoute(
        "GET",
        "/admin/usage",
        GetUsage,
        "Token usage, filtered and grouped",
        query_fields=("key_id", "model", "provider", "since", "until", "group_by"),
    ),
    AdminRoute(
        "POST",
        "/admin/secret_key/rotate",
        RotateSecretKey,
        "Re-encrypt stored credentials with a new secret key",
    ),
)


def match_admin_route(method: str, raw_path: str) -> tuple[AdminRoute, dict[str, str]]:
    """The route for a request and its path parameter (percent-decoded), or NotFound/405.

    A path parameter takes the rest of the path, so model names containing '/' work.
    """
    path = raw_path.split("?", 1)[0]
    matches: list[tuple[AdminRoute, dict[str, str]]] = []
    for route in ADMIN_ROUTES:
        field = route.path_field
        if field is None:
            if path == route.path:
                matches.append((route, {}))
        elif path.startswith(route.prefix) and len(path) > len(route.prefix):
            matches.append((route, {field: urllib.parse.unquote(path[len(route.prefix) :])}))
    # "/admin/user_api_key/activate/3" also starts with "/admin/user_api_key/": the longest
    # prefix is the most specific route.
    matches.sort(key=lambda match: len(match[0].prefix), reverse=True)
    for route, params in matches:
        if route.method == method:
            return route, params
    if matches:
        allowed = sorted({r.method for r, _ in matches if r.prefix == matches[0][0].prefix})
        raise MethodNotAllowed(path, method, allowed)
    raise NotFound(
        f"no admin route {method} {path}; GET /openapi.json on the public port lists them"
    )
