"""``edgeship build``: convert → parity → quantize and validate → golden vectors → manifest →
sign → bundle.

One conversion serves every requested target profile; each target gets the variant its profile's
gate chose (``packager.validate``) in its own bundle. Nothing is written until every target has
passed: a parity failure or a gate failure for any target leaves the output folder untouched.
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
from packager.convert import Arrays, Converted, convert
from packager.convert.from_onnx import onnx_session, run_session, sample_inputs
from packager.data import load_data
from packager.evaluate import EvalData, LatencySettings, check_labels, run_all
from packager.keys import load_private_key
from packager.validate import REQUESTS, Gate, GateOptions, Outcome, Table
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
SELFTEST_TOLERANCE = {
    "none": (SELFTEST_RTOL, SELFTEST_ATOL),
    "fp16": (5e-2, 1e-2),
    "dynamic": (5e-2, 5e-2),
    "static": (5e-2, 5e-2),
}
"""(rtol, atol) of the device self-test per shipped mode. A device runs the very model the golden
vectors came from, but with its own kernels: ARM float16 arithmetic accumulates in half precision,
and int8 requantization may round one step differently. The test exists to catch a wrong or broken
model, which misses by far more."""


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
    quantize: str = "auto"
    """``auto`` (measure every mode the profile allows and choose), or one of none, dynamic,
    static, fp16 (exactly that mode, or fail)."""
    calibration: Optional[Path] = None
    """Rows for static quantization's value ranges; default: the sample."""
    validation: Optional[Path] = None
    """Rows every candidate is scored on; default: the sample."""
    labels: Optional[Path] = None
    """True labels (or values) of the validation rows; needs ``validation``."""
    max_accuracy_drop: float = 0.01
    latency: LatencySettings = field(default_factory=LatencySettings)


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: Manifest
    size: int
    sha256: str
    parity: parity.ParityReport
    signers: tuple[str, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)
    outcome: Optional[Outcome] = None

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
            "quantization": self.manifest.quantization,
            "candidates": self.outcome.candidates_doc() if self.outcome else [],
            "metrics": self.manifest.validation.get("metrics", {}),
            "latency_measured_on": self.outcome.latency_note if self.outcome else None,
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
    if opts.quantize not in REQUESTS:
        raise UsageError(f"--quantize must be one of {', '.join(REQUESTS)}")
    if not 0 <= opts.max_accuracy_drop <= 1:
        raise UsageError("--max-accuracy-drop must be between 0 and 1")
    if opts.labels is not None and opts.validation is None:
        raise UsageError("--labels needs --validation: the labels belong to the validation rows")


def build(
    opts: BuildOptions,
    progress: Report = lambda _: None,
    warn: Report = lambda _: None,
    table: Table = lambda _profile, _report: None,
) -> list[BuildResult]:
    """Build one bundle per target, each with the variant its profile's gate chose.

    ``table(profile, report)`` receives every target's candidates table (mode, size, latency,
    metrics, verdict; ``packager.validate.Table``) as soon as it is measured, before a failing
    gate raises. Raises ParityError
    (the conversion or the chosen variant breaks the gate, or an explicit mode is not quantizable;
    nothing written), ConversionError, KeyError_ or UsageError.
    """
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
    gate = Gate(
        converted.model_bytes,
        _calibration(opts, session, converted),
        _eval_data(opts, converted),
        GateOptions(opts.quantize, opts.max_accuracy_drop, opts.latency),
        progress,
    )
    outcomes = [gate.run(p, table) for p in profiles]  # all pass before anything is written
    for outcome in outcomes:
        for message in outcome.warnings:
            note(message)
    gold_in = golden.head(converted.inputs)
    # A reproducible build (SOURCE_DATE_EPOCH) must not depend on how fast the host was: timings
    # then stay in the build's output and out of the signed manifest (ADR 0005).
    timings = os.environ.get("SOURCE_DATE_EPOCH") is None
    common: dict[str, Any] = {
        "format": FORMAT,
        "name": opts.name,
        "version": opts.version,
        "sequence": opts.sequence if opts.sequence is not None else int(clock.timestamp()),
        "created": format_time(clock),
        "expires": format_time(clock + timedelta(days=opts.expires_days))
        if opts.expires_days
        else None,
        "description": opts.description,
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
    for profile, outcome in zip(profiles, outcomes):
        progress(f"signing and writing the bundle for {profile.name}")
        chosen = onnx_session(outcome.model_bytes)
        gold_out = run_all(outcome.model_bytes, gold_in)  # the device tests what it runs
        payload = {
            MODEL_FILE: outcome.model_bytes,
            SELFTEST_FILE: golden.golden_npz(gold_in, gold_out),
        }
        rtol, atol = SELFTEST_TOLERANCE[outcome.mode]
        doc: dict[str, Any] = dict(common)
        doc["files"] = [
            {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for p, d in payload.items()
        ]
        doc["model"] = {
            "file": MODEL_FILE,
            "format": converted.model_format,
            "inputs": [spec_from_ort(a).to_dict() for a in chosen.get_inputs()],
            "outputs": [spec_from_ort(a).to_dict() for a in chosen.get_outputs()],
            "task": converted.task,
            "labels": converted.labels,
            "label_output": converted.label_output,
        }
        doc["quantization"] = outcome.quantization_doc(opts.quantize)
        doc["validation"] = {
            "parity": report.to_dict(),
            "candidates": outcome.candidates_doc(timings),
            "metrics": outcome.metrics,
        }
        if timings:
            doc["validation"]["latency_measured_on"] = outcome.latency_note
        doc["target"] = {
            "profile": profile.name,
            "arch": profile.arch,
            "backend": backends[profile.name],
            "threads": profile.threads,
        }
        doc["selftest"] = {
            "file": SELFTEST_FILE,
            "rtol": rtol,
            "atol": atol,
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
            BuildResult(
                out,
                manifest,
                out.stat().st_size,
                digest,
                report,
                signers,
                tuple(warnings),
                outcome,
            )
        )
    return results


def _calibration(opts: BuildOptions, session: Any, converted: Converted) -> Arrays:
    """The static quantizer's calibration rows, keyed and cast like the model's inputs."""
    if opts.calibration is None:
        return converted.inputs
    return sample_inputs(session, load_data(opts.calibration))


def _eval_data(opts: BuildOptions, converted: Converted) -> EvalData:
    """The rows candidates are scored on, with the original model's outputs on them: the sample,
    or ``--validation`` (converted again, so the reference is the source model's own answers)."""
    if opts.validation is None:
        return EvalData(
            converted.inputs, converted.reference, converted.task, converted.label_output
        )
    again = convert(opts.model, load_data(opts.validation), lambda _: None)
    labels = None
    if opts.labels is not None:
        rows = next(iter(again.inputs.values())).shape[0] if again.inputs else 0
        labels = check_labels(load_data(opts.labels).single(), rows)
    return EvalData(
        again.inputs,
        again.reference,
        converted.task,
        converted.label_output,
        labels,
        source="validation",
    )
