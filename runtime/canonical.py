"""Canonical JSON bytes: what a manifest is signed as; and the strict reading of signed JSON.

Sorted keys, no insignificant whitespace, UTF-8, no NaN/Infinity. Verifiers check signatures over
the member's exact bytes, so only the writer needs :func:`canonical_bytes`; every reader of a
signed document (manifest, trust-policy update) parses it with :func:`strict_loads`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def canonical_bytes(document: Any) -> bytes:
    """Return ``document`` as canonical JSON bytes.

    Raises ValueError for values JSON cannot represent exactly (NaN, Infinity).
    """
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def strict_loads(data: bytes) -> Any:
    """Parse UTF-8 JSON more strictly than ``json.loads``.

    A key repeated in one object (readers that keep the first and readers that keep the last would
    see different documents under one signature) and numbers that are not finite (``NaN``, or
    ``1e999`` read as infinity) are refused. Raises UnicodeDecodeError, ValueError or
    RecursionError, for the caller to wrap in its own typed error.
    """
    return json.loads(
        data.decode("utf-8"),
        parse_constant=_refuse_constant,
        parse_float=_finite_float,
        object_pairs_hook=_unique_keys,
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not finite")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"key {key!r} appears twice in one object")
        doc[key] = value
    return doc
