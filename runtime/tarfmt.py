"""The one tar dialect bundles use: POSIX ustar, regular files only, written deterministically.

The reader is strict and streaming: it reports each member's type as found (so the verifier can
name a symlink or device file it refuses), checks header checksums, and raises
:class:`BundleFormatError` for anything truncated or malformed. It never follows a link or touches
the file system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional

from runtime.errors import BundleFormatError

BLOCK = 512
CHUNK = 1024 * 1024
_KINDS = {
    b"0": "file", b"\0": "file", b"7": "file", b"1": "hardlink", b"2": "symlink",
    b"3": "character device", b"4": "block device", b"5": "directory", b"6": "fifo",
    b"x": "pax header", b"g": "pax global header", b"L": "GNU long name", b"K": "GNU long link",
}  # fmt: skip


@dataclass(frozen=True)
class MemberHeader:
    name: str
    kind: str
    size: int


def _octal(field: bytes, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    # int(text, 8) alone would also take "-1", "+7", "0o17" and "1_0"; a negative size would
    # make the reader read to the end of the file, past every size limit.
    if text.strip(b"01234567"):
        raise BundleFormatError(f"corrupt tar header: bad {what} field")
    return int(text, 8) if text else 0


def _checksum_ok(block: bytes) -> bool:
    text = block[148:156].rstrip(b"\0 ").lstrip(b" ")
    if not text or text.strip(b"01234567"):
        return False
    return int(text, 8) == sum(block[:148]) + 8 * 32 + sum(block[156:])


class TarReader:
    """Reads members one after another from a binary stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pending = 0  # bytes of the current member's data (plus padding) not yet consumed
        self._remaining = 0
        self.bytes_read = 0
        self._first = True

    def _read(self, n: int) -> bytes:
        data = self._stream.read(n)
        self.bytes_read += len(data)
        return data

    def next(self) -> Optional[MemberHeader]:
        """Return the next member's header, or None at the end-of-archive marker."""
        if self._remaining:
            raise RuntimeError("read the current member's data before asking for the next")
        if self._pending:
            self._skip(self._pending)
            self._pending = 0
        block = self._read(BLOCK)
        first, self._first = self._first, False
        if not block and first:
            raise BundleFormatError("empty file: not a bundle")
        if len(block) < BLOCK:
            raise BundleFormatError(
                "not a tar archive" if first else "truncated archive: ends inside a header"
            )
        if block == bytes(BLOCK):
            self._check_tail()
            return None
        if not _checksum_ok(block):
            what = "not a tar archive" if first else "corrupt tar header (checksum mismatch)"
            raise BundleFormatError(what)
        if block[257:263] not in (b"ustar\x00", b"ustar "):
            raise BundleFormatError("not a ustar archive")
        name = block[0:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0] if block[257:263] == b"ustar\x00" else b""
        if prefix:
            name = prefix + b"/" + name
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BundleFormatError("member name is not UTF-8") from e
        if block[124] & 0x80:
            raise BundleFormatError(f"member {text!r}: base-256 sizes are not supported")
        size = _octal(block[124:136], "size")
        kind = _KINDS.get(block[156:157], "unknown type")
        self._remaining = size
        self._pending = 0
        return MemberHeader(text, kind, size)

    def chunks(self) -> Iterator[bytes]:
        """Yield the current member's data; raise BundleFormatError if the archive ends early."""
        while self._remaining:
            data = self._read(min(CHUNK, self._remaining))
            if not data:
                raise BundleFormatError("truncated archive: ends inside a member")
            self._remaining -= len(data)
            yield data
        self._pending = -self.bytes_read % BLOCK

    def read_all(self) -> bytes:
        return b"".join(self.chunks())

    def skip_data(self) -> None:
        for _ in self.chunks():
            pass

    def _skip(self, n: int) -> None:
        if len(self._read(n)) != n:
            raise BundleFormatError("truncated archive: ends inside padding")

    def _check_tail(self) -> None:
        while True:
            data = self._read(CHUNK)
            if not data:
                return
            if data.count(0) != len(data):
                raise BundleFormatError("data after the end-of-archive marker")


def header(name: str, size: int, mtime: int, mode: int = 0o644, kind: bytes = b"0") -> bytes:
    """A deterministic ustar header: uid/gid 0, no user or group names."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"member name longer than 100 bytes: {name!r}")
    block = bytearray(BLOCK)
    block[0 : len(encoded)] = encoded
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % mtime
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


END_OF_ARCHIVE = bytes(2 * BLOCK)
