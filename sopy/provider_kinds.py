"""The kinds of provider Sopy forwards to, declared once: how each takes its credential and what
every request to it must carry.

`sopy.messages` takes a provider's kind from this closed set (`add_admin_auth --kind`), the
config store keeps it beside the credential, and the upstream pool's header rule
(`sopy.routing.forwarded_headers`) sends the credential the way the kind says. A new kind is one
entry here.
"""

from collections.abc import Mapping

import attrs


@attrs.frozen
class ProviderKind:
    """`credential_header` carries `credential_prefix` + the credential; `default_headers` are
    sent unless the client sent a header of the same name."""

    name: str
    credential_header: bytes
    credential_prefix: str = ""
    default_headers: tuple[tuple[bytes, bytes], ...] = ()


DEFAULT_PROVIDER_KIND = "openai"

PROVIDER_KINDS: Mapping[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind("openai", b"authorization", "Bearer "),
        # Azure OpenAI's v1 API, at https://<resource>.openai.azure.com/openai/v1.
        ProviderKind("azure", b"api-key"),
        ProviderKind("anthropic", b"x-api-key", "", ((b"anthropic-version", b"2023-06-01"),)),
    )
}
