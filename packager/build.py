"""``edgeship build``: convert → measure parity → golden vectors → manifest → sign → bundle.

One conversion serves every requested target profile; each target gets its own bundle. Nothing is
written when parity fails.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import devices
from packager import golden, parity
from packager.bundle_writer import write_bundle
from packager.convert import convert
from packager.convert.from_onnx import onnx_session, run_session
from packager.data import load_data
from packager.keys import load_private_key
from runtime import __version__
from runtime.backends.onnx import spec_from_ort
from runtime.canonical import canonical_bytes
from runtime.errors import UsageError
from runtime.manifest import FORMAT, NAME_RE, SEMVER_RE, Manifest, format_time
from runtime.signing import Envelope, sign

Report = Callable[[str], None]
MODEL_FILE = "model.onnx"
SELFTEST_FILE = "selftest.npz"
SELFTEST_RTOL = 1e-3
SELFTEST_ATOL = 1e-4


@dataclass(frozen=True)
class BuildOptions:
    model: Path
    targets: tuple[str, ...]
    keys: tuple[Path, ...]
    name: str
    version: str
    sample: Path
    out: Path = Path("dist")
    sequence: Optional[int] = None
    expires_days: int = 365
    tolerance: float = 1e-3
    min_label_agreement: float = 0.99
    description: str = ""
    profile_files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: Manifest
    size: int
    sha256: str
    parity: parity.ParityReport
    signers: tuple[str, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.manifest.name,
            "version": self.manifest.version,
            "sequence": self.manifest.sequence,
            "profile": self.manifest.target.profile,
            "size": self.size,
            "sha256": self.sha256,
            "expires": format_time(self.manifest.expires) if self.manifest.expires else None,
            "parity": self.parity.to_dict(),
            "signers": list(self.signers),
            "warnings": list(self.warnings),
        }


def build_clock() -> datetime:
    """``SOURCE_DATE_EPOCH`` when set (reproducible builds), else now; whole seconds, UTC."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is not None:
        try:
            return datetime.fromtimestamp(int(raw), timezone.utc)
        except ValueError as e:
            raise UsageError(f"SOURCE_DATE_EPOCH must be an integer, got {raw!r}") from e
    return datetime.now(timezone.utc).replace(microsecond=0)


def _check_options(opts: BuildOptions) -> None:
    if not NAME_RE.match(opts.name):
        raise UsageError(f"--name {opts.name!r}: use lowercase letters, digits, '.', '_', '-'")
    if not SEMVER_RE.match(opts.version):
        raise UsageError(f"--version {opts.version!r} is not a semantic version like 1.2.3")
    if opts.expires_days < 0:
        raise UsageError("--expires must be 0 (never) or a number of days")
    if opts.sequence is not None and not 0 <= opts.sequence < 2**63:
        raise UsageError("--sequence must be between 0 and 2^63-1")
    if not opts.targets:
        raise UsageError("give at least one --target")
    if not opts.keys:
        raise UsageError("give at least one --key")


def build(
    opts: BuildOptions, progress: Report = lambda _: None, warn: Report = lambda _: None
) -> list[BuildResult]:
    """Build one bundle per target. Raises ParityError (nothing written), ConversionError,
    KeyError_ or UsageError."""
    _check_options(opts)
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        warn(message)

    profiles = [devices.load_profile(t, opts.profile_files) for t in opts.targets]
    keys = [load_private_key(k) for k in opts.keys]
    clock = build_clock()
    if opts.expires_days == 0:
        note("--expires 0: this bundle never expires; devices will accept it forever")
    progress(f"loading sample {opts.sample}")
    sample = load_data(opts.sample)
    progress(f"converting {opts.model.name}")
    converted = convert(opts.model, sample, note)
    backends = {p.name: p.backend_for(converted.model_format) for p in profiles}
    progress("measuring parity with the original model on the sample")
    session = onnx_session(converted.model_bytes)
    packaged = run_session(session, converted.inputs)
    report = parity.measure(
        converted.reference,
        packaged,
        converted.label_output,
        opts.tolerance,
        opts.min_label_agreement,
    )
    parity.check(report)
    gold_in = golden.head(converted.inputs)
    gold_out = golden.head(packaged)
    selftest_bytes = golden.golden_npz(gold_in, gold_out)
    payload = {MODEL_FILE: converted.model_bytes, SELFTEST_FILE: selftest_bytes}
    files = [
        {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for p, d in payload.items()
    ]
    common = {
        "format": FORMAT,
        "name": opts.name,
        "version": opts.version,
        "sequence": opts.sequence if opts.sequence is not None else int(clock.timestamp()),
        "created": format_time(clock),
        "expires": format_time(clock + timedelta(days=opts.expires_days))
        if opts.expires_days
        else None,
        "description": opts.description,
        "files": files,
        "model": {
            "file": MODEL_FILE,
            "format": converted.model_format,
            "inputs": [spec_from_ort(a).to_dict() for a in session.get_inputs()],
            "outputs": [spec_from_ort(a).to_dict() for a in session.get_outputs()],
            "task": converted.task,
            "labels": converted.labels,
            "label_output": converted.label_output,
        },
        "quantization": {"mode": "none"},
        "validation": {"parity": report.to_dict()},
        "reference_profile": golden.reference_profile(converted.inputs, sample.columns),
        "provenance": {
            "source_file": opts.model.name,
            "source_format": converted.source_format,
            "source_sha256": converted.source_sha256,
            "tool": f"edgeship {__version__}",
            "converter": converted.converter,
        },
    }
    results = []
    for profile in profiles:
        progress(f"signing and writing the bundle for {profile.name}")
        doc = dict(common)
        doc["target"] = {
            "profile": profile.name,
            "arch": profile.arch,
            "backend": backends[profile.name],
            "threads": profile.threads,
        }
        doc["selftest"] = {
            "file": SELFTEST_FILE,
            "rtol": SELFTEST_RTOL,
            "atol": SELFTEST_ATOL,
            "max_latency_ms": profile.latency_budget_ms,
        }
        manifest = Manifest.from_dict(doc)  # the same checks a device will make
        manifest_bytes = canonical_bytes(doc)
        envelope = Envelope(tuple(sign(manifest_bytes, k) for k in keys))
        out = opts.out / manifest.bundle_filename
        write_bundle(out, manifest_bytes, envelope.to_bytes(), payload, int(clock.timestamp()))
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        signers = tuple(s.keyid for s in envelope.signatures)
        results.append(
            BuildResult(out, manifest, out.stat().st_size, digest, report, signers, tuple(warnings))
        )
    return results
