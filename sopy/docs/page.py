"""The interactive API documentation page, `GET /docs`: Swagger UI, served entirely by Sopy.

Swagger UI's stylesheet, scripts and icons come from the `swagger-ui-py` package (Swagger UI 5;
4.x cannot render OpenAPI 3.1) and are served under `/docs/assets/`, so the page loads nothing
from the network and works offline. The page points Swagger UI at `/openapi.json`
(`sopy.docs.openapi`); both paths come from the public route table. The HTTP front answers every
path under `/docs` with `docs_response`; assets are read from disk once and kept in memory.
"""

import functools
import importlib.resources
import posixpath
from importlib.resources.abc import Traversable

from sopy.routing.public_routes import public_route

DOCS_PATH = public_route("docs_page").path
ASSETS_PREFIX = DOCS_PATH + "/assets/"
OPENAPI_PATH = public_route("openapi_document").path
HTML_CONTENT_TYPE = b"text/html; charset=utf-8"

_ASSET_CONTENT_TYPES: dict[str, bytes] = {
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".png": b"image/png",
    ".map": b"application/json",
}

_PAGE = f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Sopy API</title>
    <link rel="stylesheet" href="{ASSETS_PREFIX}swagger-ui.css">
    <link rel="icon" type="image/png" sizes="32x32" href="{ASSETS_PREFIX}favicon-32x32.png">
    <link rel="icon" type="image/png" sizes="16x16" href="{ASSETS_PREFIX}favicon-16x16.png">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="{ASSETS_PREFIX}swagger-ui-bundle.js"></script>
    <script>
      window.ui = SwaggerUIBundle({{
        url: "{OPENAPI_PATH}",
        dom_id: "#swagger-ui",
        deepLinking: true,
        validatorUrl: null,
        presets: [SwaggerUIBundle.presets.apis],
        layout: "BaseLayout",
      }});
    </script>
  </body>
</html>
""".encode()


def docs_response(path: str) -> tuple[int, bytes, bytes] | None:
    """(status, content type, body) for a path under `/docs`, or None for a 404."""
    if path in (DOCS_PATH, DOCS_PATH + "/"):
        return 200, HTML_CONTENT_TYPE, _PAGE
    if not path.startswith(ASSETS_PREFIX):
        return None
    name = path.removeprefix(ASSETS_PREFIX)
    if name not in _asset_files():
        return None
    return 200, _ASSET_CONTENT_TYPES[_suffix(name)], _asset_body(name)


@functools.cache
def _asset_files() -> dict[str, Traversable]:
    """The servable files by name. Only these names are ever opened, so a path with '..' or
    '/' in it cannot reach anything else."""
    return {
        entry.name: entry
        for entry in _assets_folder().iterdir()
        if entry.is_file() and _suffix(entry.name) in _ASSET_CONTENT_TYPES
    }


@functools.cache
def _asset_body(name: str) -> bytes:
    return _asset_files()[name].read_bytes()


def _assets_folder() -> Traversable:
    return importlib.resources.files("swagger_ui") / "static"


def _suffix(name: str) -> str:
    return posixpath.splitext(name)[1]
