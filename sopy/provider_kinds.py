"""The kinds of provider Sopy forwards to, declared once: how each takes its credential and what
every request to it must carry, and which API family it speaks natively.

`sopy.messages` takes a provider's kind from this closed set (`add_admin_auth --kind`), the
config store keeps it beside the credential, and the upstream pool's header rule
(`sopy.routing.forwarded_headers`) sends the credential the way the kind says. A new kind is one
entry here.
"""

from collections.abc import Mapping

import attrs

OPENAI_API = "OpenAI"
ANTHROPIC_API = "Anthropic Messages"


@attrs.frozen
class ProviderKind:
    """`api` is the API family the provider speaks natively; `credential_header` carries
    `credential_prefix` + the credential; `default_headers` are sent unless the client sent a
    header of the same name."""

    name: str
    api: str
    credential_header: bytes
    credential_prefix: str = ""
    default_headers: tuple[tuple[bytes, bytes], ...] = ()


DEFAULT_PROVIDER_KIND = "openai"

PROVIDER_KINDS: Mapping[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind("openai", OPENAI_API, b"authorization", "Bearer "),
        # Azure OpenAI's v1 API, at https://<resource>.openai.azure.com/openai/v1.
        ProviderKind("azure", OPENAI_API, b"api-key"),
        ProviderKind(
            "anthropic", ANTHROPIC_API, b"x-api-key", "", ((b"anthropic-version", b"2023-06-01"),)
        ),
    )
}
