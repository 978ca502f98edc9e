"""How `sopy admin` shows a reply to a person: key/value lines, tables and plain lists."""

from typing import Any


def format_result(result: Any) -> str:
    if isinstance(result, dict) and len(result) == 1:
        # A result that is one named list (get_usage's `groups`) reads as that list's table.
        (only,) = result.values()
        if isinstance(only, list):
            return format_result(only)
    if isinstance(result, dict):
        return _key_values(result)
    if isinstance(result, list):
        if not result:
            return "(none)"
        if all(isinstance(item, dict) for item in result):
            return _table(result)
        return "\n".join(_cell(item) for item in result)
    return _cell(result)


def format_error(error: dict[str, Any]) -> str:
    return f"error [{error.get('code', 'unknown')}]: {error.get('message', '')}"


def _key_values(row: dict[str, Any]) -> str:
    width = max((len(key) for key in row), default=0)
    return "\n".join(f"{key.ljust(width)}  {_cell(value)}" for key, value in row.items())


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)
    ]
    lines = [columns, *cells]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_cell(item) for item in value)
    if value is None:
        return "-"
    return str(value)


def where_the_new_key_lives(rotation: dict[str, Any]) -> str:
    """After `rotate-secret-key`: where the key that now opens the database is kept."""
    if rotation.get("key_file"):
        return (
            f"The new key is in {rotation['key_file']}; only it opens the database from now on. "
            "Back it up together with the database."
        )
    if rotation.get("new_key"):
        return (
            "The new key is shown above, once: set SOPY_SECRET_KEY to it before the next start, "
            "or the stored credentials cannot be opened."
        )
    return "The new key is the one you gave: set SOPY_SECRET_KEY to it before the next start."
