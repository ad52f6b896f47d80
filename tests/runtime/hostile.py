"""Taking real bundles apart and putting them back together wrong: the toolkit behind the hostile
bundle table (tests/runtime/test_hostile_bundles.py).

A bundle is a list of :class:`Member` values. ``unpack`` reads one the packager wrote, the edit
helpers return changed copies, and ``pack`` writes any list as ustar bytes, including headers no
honest writer would produce (links, devices, lying sizes), each with a correct checksum unless a
test breaks it on purpose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from packager.keys import load_private_key
from runtime.canonical import canonical_bytes
from runtime.signing import Envelope, Signature, sign
from runtime.tarfmt import BLOCK, END_OF_ARCHIVE, TarReader, header, padding

MANIFEST = "manifest.json"
SIGNATURES = "signatures.json"
MODEL = "payload/model.onnx"
SELFTEST = "payload/selftest.npz"

# ustar header fields: (start, end)
NAME = (0, 100)
SIZE = (124, 136)
CHECKSUM = (148, 156)
LINKNAME = (157, 257)
DEVMAJOR = (329, 337)
DEVMINOR = (337, 345)
PREFIX = (345, 500)


@dataclass(frozen=True)
class Member:
    """One tar member as written: ``kind`` is the ustar type flag, ``size`` the size the header
    declares when it should differ from ``len(data)``."""

    name: str
    data: bytes = b""
    kind: bytes = b"0"
    linkname: str = ""
    size: Optional[int] = None
    mode: int = 0o644

    def header(self) -> bytes:
        declared = len(self.data) if self.size is None else self.size
        block = header(self.name, max(declared, 0), 0, self.mode, self.kind)
        if self.linkname:
            block = set_field(block, LINKNAME, self.linkname.encode("utf-8"))
        if self.kind in (b"3", b"4"):
            block = set_field(block, DEVMAJOR, b"0000001\0")
            block = set_field(block, DEVMINOR, b"0000003\0")
        return block


def with_checksum(block: bytes) -> bytes:
    """``block`` with its checksum field recomputed (the sum of the header, field as spaces)."""
    out = bytearray(block)
    out[CHECKSUM[0] : CHECKSUM[1]] = b" " * 8
    out[CHECKSUM[0] : CHECKSUM[1]] = b"%06o\0 " % sum(out)
    return bytes(out)


def set_field(block: bytes, field: tuple[int, int], value: bytes) -> bytes:
    """Overwrite one header field (NUL-padded) and fix the checksum."""
    start, end = field
    if len(value) > end - start:
        raise ValueError(f"{value!r} does not fit in {end - start} bytes")
    out = bytearray(block)
    out[start:end] = value.ljust(end - start, b"\0")
    return with_checksum(bytes(out))


def unpack(bundle: Path) -> list[Member]:
    """The members of a real bundle, in order."""
    out = []
    with bundle.open("rb") as f:
        reader = TarReader(f)
        while (m := reader.next()) is not None:
            assert m.kind == "file", m
            out.append(Member(m.name, reader.read_all()))
    return out


def pack(members: Iterable[Member], trailer: bytes = END_OF_ARCHIVE) -> bytes:
    """ustar bytes for ``members``; each member's data is written as given, whatever its header
    says, then padded to a whole block."""
    parts = []
    for m in members:
        parts += [m.header(), m.data, padding(len(m.data))]
    parts.append(trailer)
    return b"".join(parts)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def offset_of(members: list[Member], name: str) -> int:
    """Where the header of member ``name`` starts in ``pack(members)``."""
    at = 0
    for m in members:
        if m.name == name:
            return at
        at += BLOCK + len(m.data) + len(padding(len(m.data)))
    raise LookupError(name)


# --- editing member lists ------------------------------------------------------------------------


def get(members: list[Member], name: str) -> Member:
    return next(m for m in members if m.name == name)


def replace(members: list[Member], name: str, **changes: Any) -> list[Member]:
    """A copy with member ``name`` changed (every field of :class:`Member` may change)."""
    if name not in {m.name for m in members}:
        raise LookupError(name)
    return [dataclasses.replace(m, **changes) if m.name == name else m for m in members]


def drop(members: list[Member], name: str) -> list[Member]:
    if name not in {m.name for m in members}:
        raise LookupError(name)
    return [m for m in members if m.name != name]


def insert(members: list[Member], index: int, *new: Member) -> list[Member]:
    return [*members[:index], *new, *members[index:]]


def flip_byte(data: bytes, at: int) -> bytes:
    """``data`` with the byte at ``at`` (negative counts from the end) changed."""
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


# --- manifests and signatures --------------------------------------------------------------------


def manifest_doc(members: list[Member]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(get(members, MANIFEST).data)
    return doc


def envelope(manifest_bytes: bytes, keys: Iterable[Path]) -> bytes:
    """A signatures.json with one signature per key file, in order (repeats allowed)."""
    signatures = tuple(sign(manifest_bytes, load_private_key(k)) for k in keys)
    return Envelope(signatures).to_bytes()


def envelope_doc(signatures: list[Signature], **fields: Any) -> bytes:
    """A signatures.json from raw entries; ``fields`` override the envelope's top-level fields."""
    doc = json.loads(Envelope(tuple(signatures)).to_bytes())
    doc.update(fields)
    return json.dumps(doc).encode("utf-8")


def resigned(
    members: list[Member],
    keys: Iterable[Path],
    edit: Callable[[dict[str, Any]], None] = lambda _: None,
    *,
    manifest_bytes: Optional[bytes] = None,
) -> list[Member]:
    """``members`` with the manifest edited by ``edit`` (or replaced by ``manifest_bytes``,
    signed as they are) and a fresh, valid signature envelope by ``keys``."""
    if manifest_bytes is None:
        doc = manifest_doc(members)
        edit(doc)
        manifest_bytes = canonical_bytes(doc)
    signed = replace(members, MANIFEST, data=manifest_bytes)
    return replace(signed, SIGNATURES, data=envelope(manifest_bytes, keys))


def with_payload(
    members: list[Member], keys: Iterable[Path], payload: dict[str, bytes]
) -> list[Member]:
    """A validly signed bundle whose payload is exactly ``payload`` (paths under payload/), with
    the manifest's file list rewritten to match."""

    def edit(doc: dict[str, Any]) -> None:
        doc["files"] = [
            {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for p, d in payload.items()
        ]

    head = resigned(members, keys, edit)[:2]
    return head + [Member("payload/" + p, d) for p, d in payload.items()]


def payload_of(members: list[Member]) -> dict[str, bytes]:
    return {m.name[len("payload/") :]: m.data for m in members if m.name.startswith("payload/")}


# --- the device side -----------------------------------------------------------------------------


def snapshot(models_dir: Path) -> dict[str, str]:
    """Everything under ``models_dir``: links by target, files by SHA-256, folders by mode."""
    out = {}
    for path in sorted(models_dir.rglob("*")):
        key = str(path.relative_to(models_dir))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[key] = f"dir {path.stat().st_mode:o}"
    return out
