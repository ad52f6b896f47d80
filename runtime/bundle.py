"""Reading a bundle file: the I/O around :class:`runtime.verify.BundleVerifier`.

``read_bundle`` streams the archive once: it reads the manifest and signatures, lets the verifier
decide, then hashes every payload member while (optionally) writing it into a destination folder.
Nothing is written before the manifest and signatures are verified, and a caller must treat the
destination as garbage unless ``read_bundle`` returns.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Optional

from runtime.errors import BundleFormatError, UsageError
from runtime.fsutil import fsync_dir, out_of_space
from runtime.tarfmt import TarReader
from runtime.verify import (
    MANIFEST_MEMBER,
    SIGNATURES_MEMBER,
    BundleVerifier,
    VerifiedManifest,
    check_member_header,
)

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a bundle is read."""


@dataclass(frozen=True)
class VerifiedBundle:
    verified: VerifiedManifest
    bundle_bytes: int


def read_bundle(
    path: Path,
    verifier: BundleVerifier,
    dest: Optional[Path] = None,
    progress: Optional[Progress] = None,
) -> VerifiedBundle:
    """Verify the bundle at ``path``; with ``dest`` (an empty folder), extract it there too.

    ``dest`` receives ``manifest.json``, ``signatures.json`` and ``payload/...``, each fsynced.
    Raises a BundleError subclass naming the failed step, UsageError if the file is missing, or
    StoreError when ``dest`` runs out of space.
    """
    stream = _open_regular(path)
    with stream:
        total = os.fstat(stream.fileno()).st_size
        verifier.check_size(total)
        reader = TarReader(stream)
        manifest_bytes = _leading_member(
            reader, MANIFEST_MEMBER, verifier.limits.max_manifest_bytes
        )
        envelope_bytes = _leading_member(
            reader, SIGNATURES_MEMBER, verifier.limits.max_signatures_bytes
        )
        verified = verifier.check_manifest(manifest_bytes, envelope_bytes)
        if dest is not None:
            _write(dest / MANIFEST_MEMBER, [manifest_bytes])
            _write(dest / SIGNATURES_MEMBER, [envelope_bytes])
        checker = verifier.payload(verified)
        while (member := reader.next()) is not None:
            checker.begin(member.name, member.kind, member.size)
            digest = hashlib.sha256()
            chunks = reader.chunks()
            if dest is not None:
                _write(dest / member.name, chunks, digest)
            else:
                for chunk in chunks:
                    digest.update(chunk)
            checker.end(digest.hexdigest())
            if progress is not None:
                progress(reader.bytes_read, total)
        checker.finish()
        if dest is not None:
            for folder in {p.parent for p in dest.rglob("*") if p.is_file()}:
                fsync_dir(folder)
        return VerifiedBundle(verified, total)


def _open_regular(path: Path) -> BinaryIO:
    """Open a bundle for reading; refuse anything but a regular file.

    A device (``/dev/zero``) or a FIFO never ends, and a FIFO would block the open: it is opened
    non-blocking and checked on the open descriptor, so a swap after a check cannot slip past.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise UsageError(f"no such bundle: {path}") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise UsageError(f"{path} is a folder, not a bundle")
        raise BundleFormatError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


def _leading_member(reader: TarReader, expected: str, limit: int) -> bytes:
    member = reader.next()
    if member is None:
        raise BundleFormatError(f"archive ends before {expected}")
    check_member_header(member.name, member.kind, member.size, expected, limit)
    return reader.read_all()


def _write(target: Path, chunks: Iterable[bytes], digest: Optional[Any] = None) -> None:
    """Write one member; a full disk raises StoreError naming the file (the destination is then
    garbage, like after any other failure)."""
    with out_of_space(f"cannot extract {target}"):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                if digest is not None:
                    digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
