"""Re-signing a real bundle after changing it: for bundles that are validly signed but wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from packager.bundle_writer import write_bundle
from packager.keys import load_private_key
from runtime.canonical import canonical_bytes
from runtime.signing import Envelope, sign
from runtime.tarfmt import TarReader


def members(bundle: Path) -> dict[str, bytes]:
    out = {}
    with bundle.open("rb") as f:
        reader = TarReader(f)
        while (m := reader.next()) is not None:
            out[m.name] = reader.read_all()
    return out


def resign(
    bundle: Path,
    out: Path,
    key: Path,
    edit_manifest: Callable[[dict[str, Any]], None] = lambda _: None,
    edit_payload: Callable[[dict[str, bytes]], None] = lambda _: None,
) -> Path:
    """Apply the edits, refresh the file digests and sizes, sign with ``key``, write ``out``."""
    parts = members(bundle)
    doc = json.loads(parts["manifest.json"])
    payload = {k[len("payload/") :]: v for k, v in parts.items() if k.startswith("payload/")}
    edit_payload(payload)
    doc["files"] = [
        {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for p, d in payload.items()
    ]
    edit_manifest(doc)
    manifest_bytes = canonical_bytes(doc)
    envelope = Envelope((sign(manifest_bytes, load_private_key(key)),))
    write_bundle(out, manifest_bytes, envelope.to_bytes(), payload, 0)
    return out
