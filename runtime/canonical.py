"""Canonical JSON bytes: what a manifest is signed as.

Sorted keys, no insignificant whitespace, UTF-8, no NaN/Infinity. Verifiers check signatures over
the member's exact bytes, so only the writer needs this function.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_bytes(document: Any) -> bytes:
    """Return ``document`` as canonical JSON bytes.

    Raises ValueError for values JSON cannot represent exactly (NaN, Infinity).
    """
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
