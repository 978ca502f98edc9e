"""Booleans written as text: the one parser for settings (`SOPY_*` variables) and for admin
command fields given as text (`sopy admin ... --reveal no`, `GET ...?reveal=yes`).

Accepted spellings, in any letter case and with surrounding blanks ignored:

- true: `true`, `yes`, `on`, `1`
- false: `false`, `no`, `off`, `0`, and the empty text (`SOPY_NO_AUTH=`, `?reveal=`)

Callers turn `NotABoolean` into their own layer's error (a `StartupError` for settings, an
`InvalidField` for admin commands); its message already names the source.
"""

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0", "")


class NotABoolean(ValueError):
    def __init__(self, source: str, text: str) -> None:
        super().__init__(f"{source} must be true or false (or yes/no, on/off, 1/0; got {text!r})")


def is_boolean(text: str) -> bool:
    """Whether `text` is one of the accepted spellings."""
    return _word(text) in TRUE_WORDS + FALSE_WORDS


def parse_boolean(text: str, source: str) -> bool:
    """`text` as a boolean; `source` (such as `SOPY_NO_AUTH` or `field 'reveal'`) names where
    it came from in the NotABoolean raised for any other text."""
    word = _word(text)
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise NotABoolean(source, text)


def _word(text: str) -> str:
    return text.strip().lower()
