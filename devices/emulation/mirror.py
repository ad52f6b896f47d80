"""Which Debian mirror this host's apt uses, read from its sources files.

The emulated root is bootstrapped from the same mirror, so a machine that can only reach a local
mirror (or a snapshot) works unchanged; no host name is written into the harness.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

APT_DIR = Path("/etc/apt")
SCHEMES = ("http://", "https://", "ftp://", "file:/")


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` entry: its first URI, suites and components."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def _one_line_entries(text: str) -> Iterable[AptSource]:
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options such as [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield AptSource(words[0], (words[1],), tuple(words[2:]))


def _deb822_entries(text: str) -> Iterable[AptSource]:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        uris = fields.get("uris", "").split()
        if uris:
            yield AptSource(
                uris[0],
                tuple(fields.get("suites", "").split()),
                tuple(fields.get("components", "").split()),
            )


def apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every enabled ``deb`` entry in ``sources.list`` and ``sources.list.d/*.list|*.sources``."""
    found: list[AptSource] = []
    main = apt_dir / "sources.list"
    if main.is_file():
        found.extend(_one_line_entries(main.read_text(errors="replace")))
    folder = apt_dir / "sources.list.d"
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix == ".list":
                found.extend(_one_line_entries(path.read_text(errors="replace")))
            elif path.suffix == ".sources":
                found.extend(_deb822_entries(path.read_text(errors="replace")))
    return found


def debian_mirror(suite: str, apt_dir: Path = APT_DIR) -> Optional[str]:
    """The URI of the host's Debian archive mirror: an entry carrying ``suite`` itself (not
    ``suite-security`` or ``suite-updates``) with the ``main`` component; else any entry whose
    path ends in ``/debian``. None when apt has neither."""
    sources = [s for s in apt_sources(apt_dir) if s.uri.startswith(SCHEMES)]
    for source in sources:
        if suite in source.suites and "main" in source.components:
            return source.uri
    for source in sources:
        if source.uri.rstrip("/").endswith("/debian") and "main" in source.components:
            return source.uri
    return None
