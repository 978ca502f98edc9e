"""The kinds of provider Sopy forwards to, declared once: how each takes its credential and what
every request to it must carry, and which wire formats it serves natively.

`sopy.messages` takes a provider's kind from this closed set (`add_admin_auth --kind`), the
config store keeps it beside the credential, and the upstream pool's header rule
(`sopy.routing.forwarded_headers`) sends the credential the way the kind says.
`sopy.routing.native_routes` decides from `formats` which requests reach a provider as sent and
which are translated (`sopy.translation`). A new kind is one entry here.
"""

import enum
from collections.abc import Mapping

import attrs


class WireFormat(enum.Enum):
    """The three request formats Sopy translates between: Chat Completions
    (`POST /v1/chat/completions`), the Responses API (`POST /v1/responses`) and Anthropic
    Messages (`POST /v1/messages`)."""

    CHAT = "chat"
    RESPONSES = "responses"
    MESSAGES = "messages"


@attrs.frozen
class ProviderKind:
    """`formats` are the wire formats the provider serves natively, the first the one a request
    in another format is translated to; `all_openai_routes` whether it serves every other
    OpenAI route too (embeddings, images, audio...). `credential_header` carries
    `credential_prefix` + the credential; `default_headers` are sent unless the client sent a
    header of the same name."""

    name: str
    formats: tuple[WireFormat, ...]
    credential_header: bytes
    credential_prefix: str = ""
    default_headers: tuple[tuple[bytes, bytes], ...] = ()
    all_openai_routes: bool = False


DEFAULT_PROVIDER_KIND = "openai"

_OPENAI_FORMATS = (WireFormat.CHAT, WireFormat.RESPONSES)

PROVIDER_KINDS: Mapping[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind(
            "openai", _OPENAI_FORMATS, b"authorization", "Bearer ", all_openai_routes=True
        ),
        # Azure OpenAI's v1 API, at https://<resource>.openai.azure.com/openai/v1.
        ProviderKind("azure", _OPENAI_FORMATS, b"api-key", all_openai_routes=True),
        # Chat Completions only: vLLM, Ollama, Groq, Gemini's OpenAI endpoint, most self-hosted
        # servers. Its credential goes as openai's.
        ProviderKind("openai-chat", (WireFormat.CHAT,), b"authorization", "Bearer "),
        ProviderKind(
            "anthropic",
            (WireFormat.MESSAGES,),
            b"x-api-key",
            default_headers=((b"anthropic-version", b"2023-06-01"),),
        ),
    )
}
