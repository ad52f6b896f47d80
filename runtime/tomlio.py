"""Reading TOML on every Python a device may run (3.9+), and writing the few flat documents
edgeship itself keeps (trust policies)."""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on older device Pythons
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps(doc: Mapping[str, Any]) -> str:
    """Write scalars and lists at the top, then arrays of tables (``[[name]]``) of scalars."""
    lines = [f"{k} = {_value(v)}" for k, v in doc.items() if not _is_table_list(v)]
    for key, tables in doc.items():
        if _is_table_list(tables):
            for table in tables:
                lines.append("")
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
