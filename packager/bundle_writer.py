"""Writing a bundle file: manifest, signatures, payload, as deterministic ustar (docs §3).

The file appears under its final name only when complete (temp file in the same folder, then
rename).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from runtime.tarfmt import END_OF_ARCHIVE, header, padding
from runtime.verify import MANIFEST_MEMBER, PAYLOAD_PREFIX, SIGNATURES_MEMBER


def write_bundle(
    out: Path, manifest_bytes: bytes, envelope_bytes: bytes, payload: dict[str, bytes], mtime: int
) -> None:
    """Write the bundle to ``out``; ``payload`` maps paths (in manifest order) to bytes."""
    members = [(MANIFEST_MEMBER, manifest_bytes), (SIGNATURES_MEMBER, envelope_bytes)]
    members += [(PAYLOAD_PREFIX + path, data) for path, data in payload.items()]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for name, data in members:
                f.write(header(name, len(data), mtime))
                f.write(data)
                f.write(padding(len(data)))
            f.write(END_OF_ARCHIVE)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
