"""The bundle manifest: a typed, lossless view of ``manifest.json`` (docs/bundle-format.md).

``Manifest.from_dict`` checks every field it knows (types, ranges, names) and keeps unknown
top-level fields, so a newer manifest's additions survive ``to_dict`` (nested objects are
normalized). It raises :class:`ManifestError` naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence

from runtime.errors import ManifestError

FORMAT = "edgeship.bundle/v1"
BACKENDS = ("onnxruntime", "litert")
MODEL_FORMATS = ("onnx", "tflite")
TASKS = ("classification", "regression", "other")
DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
)
PATH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,63}){0,3}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with second precision, the only time form a manifest holds."""
    utc = moment.astimezone(timezone.utc)
    # strftime's %Y does not pad years before 1000 on every platform ("603-01-01…"), which
    # parse_time would then refuse: a parsed manifest must survive its own round trip.
    return f"{utc.year:04d}" + utc.strftime(TIME_FORMAT[2:])


TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def parse_time(text: str, where: str) -> datetime:
    if not TIME_RE.match(text):
        raise ManifestError(f"{where}: expected a time like 2026-01-31T12:00:00Z")
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{where}: expected a time like 2026-01-31T12:00:00Z") from e


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise ManifestError(f"{where}.{key}: missing")
    value = doc[key]
    numeric = kind in (int, float) or (isinstance(kind, tuple) and int in kind)
    if isinstance(value, bool) and numeric:
        raise ManifestError(f"{where}.{key}: expected a number, got a boolean")
    if not isinstance(value, kind):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise ManifestError(f"{where}.{key}: expected {expected}, got {type(value).__name__}")
    return value


def _opt(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if doc.get(key) is None:
        return None
    return _get(doc, key, kind, where)


def _float(value: Any, where: str) -> float:
    """``value`` (a JSON int or float) as a float; an integer too large for one is refused."""
    try:
        return float(value)
    except OverflowError as e:
        raise ManifestError(f"{where}: number out of range") from e


def _match(value: str, pattern: re.Pattern[str], where: str, what: str) -> str:
    if not pattern.match(value):
        raise ManifestError(f"{where}: {value!r} is not {what}")
    return value


def _choice(value: str, choices: Sequence[str], where: str) -> str:
    if value not in choices:
        raise ManifestError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _extra(doc: Mapping[str, Any], known: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in known}


@dataclass(frozen=True)
class FileEntry:
    """One payload file: its path under ``payload/``, SHA-256 (hex) and size in bytes."""

    path: str
    sha256: str
    size: int

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> FileEntry:
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected an object")
        path = _match(_get(doc, "path", str, where), PATH_RE, f"{where}.path", "a safe path")
        digest = _match(_get(doc, "sha256", str, where), SHA256_RE, f"{where}.sha256", "hex")
        size = _get(doc, "size", int, where)
        if size < 0:
            raise ManifestError(f"{where}.size: must not be negative")
        return cls(path, digest, size)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, element type and shape (``None`` for a dynamic dim)."""

    name: str
    dtype: str
    shape: tuple[Optional[int], ...]

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> TensorSpec:
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected an object")
        name = _get(doc, "name", str, where)
        if not name or len(name) > 256:
            raise ManifestError(f"{where}.name: must be 1 to 256 characters")
        dtype = _choice(_get(doc, "dtype", str, where), DTYPES, f"{where}.dtype")
        raw_shape = _get(doc, "shape", list, where)
        if len(raw_shape) > 8:
            raise ManifestError(f"{where}.shape: more than 8 dimensions")
        shape: list[Optional[int]] = []
        for i, dim in enumerate(raw_shape):
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 0):
                raise ManifestError(f"{where}.shape[{i}]: expected a non-negative int or null")
            shape.append(dim)
        return cls(name, dtype, tuple(shape))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Target:
    """The device profile a bundle was built for."""

    profile: str
    arch: str
    backend: str
    threads: int = 1

    @classmethod
    def from_dict(cls, doc: Any) -> Target:
        where = "target"
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected an object")
        threads = _opt(doc, "threads", int, where)
        threads = 1 if threads is None else threads
        if not 1 <= threads <= 256:
            raise ManifestError("target.threads: must be between 1 and 256")
        return cls(
            profile=_match(_get(doc, "profile", str, where), NAME_RE, "target.profile", "a name"),
            arch=_match(_get(doc, "arch", str, where), NAME_RE, "target.arch", "an architecture"),
            backend=_choice(_get(doc, "backend", str, where), BACKENDS, "target.backend"),
            threads=threads,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "arch": self.arch,
            "backend": self.backend,
            "threads": self.threads,
        }


@dataclass(frozen=True)
class ModelInfo:
    """The model file, its signature, and how to read its outputs."""

    file: str
    format: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    task: str
    labels: Optional[tuple[Any, ...]] = None
    label_output: Optional[str] = None

    @classmethod
    def from_dict(cls, doc: Any) -> ModelInfo:
        where = "model"
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected an object")
        inputs = _get(doc, "inputs", list, where)
        outputs = _get(doc, "outputs", list, where)
        if not inputs or not outputs:
            raise ManifestError("model: needs at least one input and one output")
        labels = _opt(doc, "labels", list, where)
        if labels is not None and not all(isinstance(x, (str, int)) for x in labels):
            raise ManifestError("model.labels: expected strings or integers")
        info = cls(
            file=_match(_get(doc, "file", str, where), PATH_RE, "model.file", "a safe path"),
            format=_choice(_get(doc, "format", str, where), MODEL_FORMATS, "model.format"),
            inputs=tuple(
                TensorSpec.from_dict(x, f"model.inputs[{i}]") for i, x in enumerate(inputs)
            ),
            outputs=tuple(
                TensorSpec.from_dict(x, f"model.outputs[{i}]") for i, x in enumerate(outputs)
            ),
            task=_choice(_get(doc, "task", str, where), TASKS, "model.task"),
            labels=tuple(labels) if labels is not None else None,
            label_output=_opt(doc, "label_output", str, where),
        )
        names = [t.name for t in info.inputs] + [t.name for t in info.outputs]
        if len(set(names)) != len(names):
            raise ManifestError("model: input and output names must be unique")
        if info.label_output is not None and info.label_output not in names[len(info.inputs) :]:
            raise ManifestError(f"model.label_output: {info.label_output!r} is not an output")
        return info

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "task": self.task,
            "labels": list(self.labels) if self.labels is not None else None,
            "label_output": self.label_output,
        }


@dataclass(frozen=True)
class SelfTest:
    """Where the golden vectors are and how closely the device must reproduce them."""

    file: str
    rtol: float
    atol: float
    max_latency_ms: Optional[float] = None

    @classmethod
    def from_dict(cls, doc: Any) -> SelfTest:
        where = "selftest"
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected an object")
        rtol = _float(_get(doc, "rtol", (int, float), where), f"{where}.rtol")
        atol = _float(_get(doc, "atol", (int, float), where), f"{where}.atol")
        if not (0 <= rtol < 1 and atol >= 0):
            raise ManifestError("selftest: tolerances out of range")
        latency = _opt(doc, "max_latency_ms", (int, float), where)
        return cls(
            file=_match(_get(doc, "file", str, where), PATH_RE, "selftest.file", "a safe path"),
            rtol=rtol,
            atol=atol,
            max_latency_ms=None if latency is None else _float(latency, "selftest.max_latency_ms"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rtol": self.rtol,
            "atol": self.atol,
            "max_latency_ms": self.max_latency_ms,
        }


OUT_OF_RANGE_POLICIES = ("flag", "reject")


@dataclass(frozen=True)
class InputPolicy:
    """What the device does with request values outside the reference profile's ranges:
    ``flag`` (count and report them, the default) or ``reject`` (refuse the request)."""

    out_of_range: str = "flag"

    @classmethod
    def from_dict(cls, doc: Any) -> InputPolicy:
        where = "input_policy"
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected an object")
        value = _opt(doc, "out_of_range", str, where)
        if value is None:
            return cls()
        return cls(_choice(value, OUT_OF_RANGE_POLICIES, f"{where}.out_of_range"))

    def to_dict(self) -> dict[str, Any]:
        return {"out_of_range": self.out_of_range}


_KNOWN = (
    "format",
    "name",
    "version",
    "sequence",
    "created",
    "expires",
    "target",
    "files",
    "model",
    "selftest",
    "quantization",
    "validation",
    "reference_profile",
    "provenance",
    "description",
    "input_policy",
)


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest. ``extra`` keeps fields this version does not know."""

    name: str
    version: str
    sequence: int
    created: datetime
    expires: Optional[datetime]
    target: Target
    files: tuple[FileEntry, ...]
    model: ModelInfo
    selftest: SelfTest
    quantization: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    reference_profile: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    input_policy: Optional[InputPolicy] = None
    """Absent from the document: ``None``, and the default policy applies."""

    @classmethod
    def from_dict(cls, doc: Any) -> Manifest:
        """Parse and check a manifest document; raises ManifestError naming the bad field."""
        if not isinstance(doc, dict):
            raise ManifestError("manifest: expected a JSON object")
        fmt = _get(doc, "format", str, "manifest")
        if fmt != FORMAT:
            raise ManifestError(f"manifest.format: unknown format version {fmt!r} (want {FORMAT})")
        where = "manifest"
        sequence = _get(doc, "sequence", int, where)
        if not 0 <= sequence < 2**63:
            raise ManifestError("manifest.sequence: must be between 0 and 2^63-1")
        expires = _opt(doc, "expires", str, where)
        files = _get(doc, "files", list, where)
        entries = tuple(FileEntry.from_dict(x, f"manifest.files[{i}]") for i, x in enumerate(files))
        paths = [e.path for e in entries]
        if len(set(paths)) != len(paths):
            raise ManifestError("manifest.files: a path is listed twice")
        manifest = cls(
            name=_match(_get(doc, "name", str, where), NAME_RE, "manifest.name", "a valid name"),
            version=_match(
                _get(doc, "version", str, where),
                SEMVER_RE,
                "manifest.version",
                "a semantic version",
            ),
            sequence=sequence,
            created=parse_time(_get(doc, "created", str, where), "manifest.created"),
            expires=parse_time(expires, "manifest.expires") if expires is not None else None,
            target=Target.from_dict(_get(doc, "target", dict, where)),
            files=entries,
            model=ModelInfo.from_dict(_get(doc, "model", dict, where)),
            selftest=SelfTest.from_dict(_get(doc, "selftest", dict, where)),
            quantization=_opt(doc, "quantization", dict, where) or {},
            validation=_opt(doc, "validation", dict, where) or {},
            reference_profile=_opt(doc, "reference_profile", dict, where) or {},
            provenance=_opt(doc, "provenance", dict, where) or {},
            description=_opt(doc, "description", str, where) or "",
            extra=_extra(doc, _KNOWN),
            input_policy=InputPolicy.from_dict(doc["input_policy"])
            if doc.get("input_policy") is not None
            else None,
        )
        expected_backend = {"onnx": "onnxruntime", "tflite": "litert"}[manifest.model.format]
        if manifest.target.backend != expected_backend:
            raise ManifestError(
                f"target.backend: {manifest.model.format} models run on {expected_backend}"
            )
        for needed in (manifest.model.file, manifest.selftest.file):
            if needed not in paths:
                raise ManifestError(f"manifest.files: {needed!r} is referenced but not listed")
        return manifest

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            format=FORMAT,
            name=self.name,
            version=self.version,
            sequence=self.sequence,
            created=format_time(self.created),
            expires=format_time(self.expires) if self.expires is not None else None,
            target=self.target.to_dict(),
            files=[f.to_dict() for f in self.files],
            model=self.model.to_dict(),
            selftest=self.selftest.to_dict(),
            quantization=self.quantization,
            validation=self.validation,
            reference_profile=self.reference_profile,
            provenance=self.provenance,
            description=self.description,
        )
        if self.input_policy is not None:
            doc["input_policy"] = self.input_policy.to_dict()
        return doc

    @property
    def out_of_range_policy(self) -> str:
        """``flag`` or ``reject``: the bundle's ``input_policy.out_of_range``, default ``flag``."""
        return (self.input_policy or InputPolicy()).out_of_range

    @property
    def bundle_filename(self) -> str:
        return f"{self.name}-{self.version}-{self.target.profile}.eship"
