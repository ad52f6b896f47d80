"""Device profiles: named descriptions of target devices, kept as TOML files in
``devices/profiles/`` and read through :func:`load_profile` (the one loader).

A profile says what a bundle built for it may assume: CPU architecture and features, the inference
backend, threads, and memory and latency budgets. Both the packager (to build) and the device (to
check a bundle's target) use this module; it depends on nothing host-only.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from runtime import tomlio
from runtime.errors import UsageError

PROFILE_DIR = Path(__file__).with_name("profiles")
MAX_PROFILE_BYTES = 64 * 1024
ARCHES = ("x86_64", "aarch64", "armv7")
_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64",
                 "armv7l": "armv7", "armv7": "armv7", "armhf": "armv7"}  # fmt: skip


class ProfileError(UsageError):
    """A profile is unknown or its file is malformed."""


@dataclass(frozen=True)
class Profile:
    """One device profile (see docs/profiles.md for every field)."""

    name: str
    arch: str
    backend: str
    description: str = ""
    cpu_features: tuple[str, ...] = ()
    threads: int = 1
    memory_mb: Optional[int] = None
    latency_budget_ms: Optional[float] = None
    quantization: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str) -> Profile:
        def need(key: str, kind: type) -> Any:
            value = doc.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
                raise ProfileError(f"{source}: '{key}' must be a {kind.__name__}")
            return value

        arch = need("arch", str)
        if arch not in ARCHES:
            raise ProfileError(f"{source}: arch must be one of {', '.join(ARCHES)}")
        backend = need("backend", str)
        if backend not in ("onnxruntime", "litert"):
            raise ProfileError(f"{source}: backend must be onnxruntime or litert")
        threads = doc.get("threads", 1)
        if not isinstance(threads, int) or threads < 1:
            raise ProfileError(f"{source}: threads must be a positive integer")
        budget = doc.get("latency_budget_ms")
        memory = doc.get("memory_mb")
        return cls(
            name=need("name", str),
            arch=arch,
            backend=backend,
            description=str(doc.get("description", "")),
            cpu_features=tuple(str(f) for f in doc.get("cpu_features", [])),
            threads=threads,
            memory_mb=int(memory) if memory is not None else None,
            latency_budget_ms=float(budget) if budget is not None else None,
            quantization=dict(doc.get("quantization", {})),
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "backend": self.backend,
            "description": self.description,
            "cpu_features": list(self.cpu_features),
            "threads": self.threads,
            "memory_mb": self.memory_mb,
            "latency_budget_ms": self.latency_budget_ms,
            "quantization": self.quantization,
        }


def read_profile_file(path: Path) -> Profile:
    """Read one profile file; raises ProfileError when it is missing, too big or malformed."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise ProfileError(f"cannot read profile {path}: {e.strerror}") from e
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{path}: larger than {MAX_PROFILE_BYTES} bytes")
    try:
        doc = tomlio.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomlio.TOMLDecodeError) as e:
        raise ProfileError(f"{path}: not valid TOML: {e}") from e
    return Profile.from_dict(doc, str(path))


def list_profiles(extra_files: tuple[Path, ...] = ()) -> dict[str, Profile]:
    """Every built-in profile, plus the given files (which may override a built-in by name)."""
    found = {p.name: p for p in map(read_profile_file, sorted(PROFILE_DIR.glob("*.toml")))}
    for path in extra_files:
        profile = read_profile_file(path)
        found[profile.name] = profile
    return found


def load_profile(name: str, extra_files: tuple[Path, ...] = ()) -> Profile:
    """The profile called ``name``; raises ProfileError listing the known names."""
    profiles = list_profiles(extra_files)
    if name not in profiles:
        raise ProfileError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name]


def host_arch(machine: Optional[str] = None) -> str:
    """This machine's architecture in profile terms (x86_64, aarch64, armv7)."""
    raw = (machine or platform.machine()).lower()
    return _ARCH_ALIASES.get(raw, raw)
