"""The deterministic content every route of the mock upstream answers with.

Answers echo the mock's name, the model asked for and the last thing the user said, so that a
test sees which backend answered and what reached it. Tokens are words: a count any test can
work out by hand. A tool is called when the user's words name it (`"call get_weather"`).
"""

from collections.abc import Iterable
from typing import Any

CREATED = 1700000000


def reply_text(upstream_name: str, said: str | None) -> str:
    return f"Hello from {upstream_name}: you said {said or 'nothing'}"


def text_of(content: object) -> str:
    """The text of a message's content: a string, or the `text` of each part of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


def token_count(text: str) -> int:
    return len(text.split())


def pieces_of(content: str, count: int | None = None) -> list[str]:
    """The text split into one piece per word, or cycled through its words to `count` pieces."""
    words = content.split()
    total = count or len(words)
    return [words[i % len(words)] + (" " if i < total - 1 else "") for i in range(total)]


def tool_asked_for(tool_names: Iterable[str], said: str) -> str | None:
    """The first tool whose name the user's words contain, if any."""
    words = set(said.replace(",", " ").replace(".", " ").split())
    return next((name for name in tool_names if name in words), None)


def tool_names(payload: dict[str, Any]) -> list[str]:
    """The names of the tools a request body offers."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return []
    return [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]


def tool_arguments(said: str) -> dict[str, Any]:
    return {"text": said}
