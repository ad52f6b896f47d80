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
from runtime.manifest import BACKENDS, NAME_RE

PROFILE_DIR = Path(__file__).with_name("profiles")
MAX_PROFILE_BYTES = 64 * 1024
ARCHES = ("x86_64", "aarch64", "armv7")
_ARCH_ALIASES = {
    "amd64": "x86_64",
    "x86_64": "x86_64",
    "arm64": "aarch64",
    "aarch64": "aarch64",
    "armv7l": "armv7",
    "armv7": "armv7",
    "armhf": "armv7",
}


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
    backends: tuple[str, ...] = ()
    """Every backend the device can run; ``backend`` is the preferred one."""
    source: str = ""

    def backend_for(self, model_format: str) -> str:
        """The backend that runs ``model_format`` (onnx, tflite) here; ProfileError if none."""
        wanted = {"onnx": "onnxruntime", "tflite": "litert"}[model_format]
        if wanted not in self.backends:
            raise ProfileError(
                f"profile {self.name} runs {', '.join(self.backends)} only, "
                f"not {model_format} models"
            )
        return wanted

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str) -> Profile:
        """Check a profile document; raises ProfileError naming the file and field."""

        def need(key: str, kind: type, default: Any = None, required: bool = False) -> Any:
            value = doc.get(key, default)
            if value is None and not required:
                return None
            ok = isinstance(value, kind) and not isinstance(value, bool)
            if kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise ProfileError(f"{source}: '{key}' must be a {kind.__name__}")
            return value

        name = need("name", str, required=True)
        if not NAME_RE.match(name):
            raise ProfileError(f"{source}: name must be lowercase letters, digits, '.', '_', '-'")
        arch = need("arch", str, required=True)
        if arch not in ARCHES:
            raise ProfileError(f"{source}: arch must be one of {', '.join(ARCHES)}")
        backend = need("backend", str, required=True)
        backends = need("backends", list, [backend])
        if backend not in BACKENDS or backend not in backends or not set(backends) <= set(BACKENDS):
            raise ProfileError(
                f"{source}: backend and backends must be among {', '.join(BACKENDS)}, "
                "and backends must include backend"
            )
        threads = need("threads", int, 1)
        if not 1 <= threads <= 256:
            raise ProfileError(f"{source}: threads must be between 1 and 256")
        features = need("cpu_features", list, [])
        if not all(isinstance(f, str) for f in features):
            raise ProfileError(f"{source}: cpu_features must be a list of strings")
        memory, budget = need("memory_mb", int), need("latency_budget_ms", float)
        if (memory is not None and memory <= 0) or (budget is not None and budget <= 0):
            raise ProfileError(f"{source}: memory_mb and latency_budget_ms must be positive")
        return cls(
            name=name,
            arch=arch,
            backend=backend,
            description=need("description", str, ""),
            cpu_features=tuple(features),
            threads=threads,
            memory_mb=memory,
            latency_budget_ms=float(budget) if budget is not None else None,
            quantization=dict(need("quantization", dict, {})),
            backends=tuple(backends),
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "backend": self.backend,
            "backends": list(self.backends),
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
