"""``edgeship build``: convert → parity → quantize and validate → golden vectors → manifest →
sign → bundle.

One conversion serves every requested target profile; each target gets the variant its profile's
gate chose (``packager.validate``) in its own bundle. Nothing is written until every target has
passed: a parity failure or a gate failure for any target leaves the output folder untouched.
ARM targets' candidates also run on an emulated ARM device (``--emulate``, ``packager.emulated``),
prepared once for the whole build.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import devices
from packager import card, golden, parity, reference
from packager.bundle_writer import write_bundle
from packager.convert import Arrays, Converted, convert
from packager.convert.from_onnx import onnx_session, sample_inputs
from packager.data import load_data
from packager.emulated import EMULATE, ArmDevices
from packager.evaluate import EvalData, LatencySettings, check_labels
from packager.keys import load_private_key
from packager.runner import describe, run_packaged
from packager.validate import REQUESTS, Gate, GateOptions, Outcome, Table
from packager.validate_tflite import TFLiteGate
from runtime import __version__
from runtime.canonical import canonical_bytes
from runtime.errors import UsageError
from runtime.manifest import FORMAT, NAME_RE, SEMVER_RE, Manifest, format_time
from runtime.signing import Envelope, key_id, sign

Report = Callable[[str], None]
MODEL_FILES = {"onnx": "model.onnx", "tflite": "model.tflite"}
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
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """``--input-shape NAME=1,3,224,224``: fixed sizes for an ONNX input's dynamic dims."""
    reject_out_of_range: bool = False
    """``--reject-out-of-range``: devices refuse requests with values outside the reference
    profile's ranges (manifest ``input_policy``); by default they count and report them."""
    emulate: str = "auto"
    """``--emulate``: run ARM targets' candidates on an emulated ARM device too, ``auto`` (when
    this host can in seconds: root, the device prepared), ``on`` (or fail) or ``off``."""


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
            "arm_parity": self.outcome.arm_parity if self.outcome else None,
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
    if opts.emulate not in EMULATE:
        raise UsageError(f"--emulate must be one of {', '.join(EMULATE)}")
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
    (the conversion or the chosen variant breaks the gate, on the host or on the emulated ARM
    device, or an explicit mode is not quantizable; nothing written), ConversionError, KeyError_
    or UsageError (EmulationRequired: ``--emulate on`` and no emulated ARM device here).
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
    converted = convert(opts.model, sample, note, dict(opts.input_shapes))
    backends = {p.name: p.backend_for(converted.model_format) for p in profiles}
    progress("measuring parity with the original model on the sample")
    packaged = run_packaged(converted.model_bytes, converted.model_format, converted.inputs)
    report = parity.measure(
        converted.reference,
        packaged,
        converted.label_output,
        opts.tolerance,
        opts.min_label_agreement,
    )
    parity.check(report)
    eval_data = _eval_data(opts, converted)
    data_profile = reference.profile_data(_profiled_rows(converted, eval_data), sample.columns)
    for message in data_profile.warnings:
        note(message)
    if opts.reject_out_of_range and not data_profile.profile["features"]:
        note("--reject-out-of-range: the reference profile has no features; nothing is checked")
    with ArmDevices(opts.emulate, converted.model_format, progress, note) as arm:
        outcomes = _outcomes(opts, converted, eval_data, profiles, progress, table, arm)
    for outcome in outcomes:
        for message in outcome.warnings:
            note(message)
    gold_in = golden.head(converted.inputs)
    # A reproducible build (SOURCE_DATE_EPOCH) must not depend on how fast the host was: timings
    # then stay in the build's output and out of the signed manifest (ADR 0005).
    timings = os.environ.get("SOURCE_DATE_EPOCH") is None
    common = _common_doc(opts, clock, converted, data_profile.profile)
    extra = {"parity": report.to_dict(), "quantize": opts.quantize, "timings": timings}
    results = []
    for profile, outcome in zip(profiles, outcomes):
        progress(f"signing and writing the bundle for {profile.name}")
        payload, doc = _target_doc(
            common, profile, outcome, converted, gold_in, backends[profile.name], keys, extra
        )
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


def _target_doc(
    common: dict[str, Any],
    profile: devices.Profile,
    outcome: Outcome,
    converted: Converted,
    gold_in: Arrays,
    backend: str,
    keys: list[Any],
    extra: dict[str, Any],
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The payload (model, golden vectors, card) and manifest document of one target's bundle."""
    model_file = MODEL_FILES[converted.model_format]
    # the device tests what it runs, with the backend it runs it on
    gold_out = run_packaged(outcome.model_bytes, converted.model_format, gold_in)
    specs_in, specs_out = describe(outcome.model_bytes, converted.model_format)
    payload = {
        model_file: outcome.model_bytes,
        SELFTEST_FILE: golden.golden_npz(gold_in, gold_out),
    }
    doc: dict[str, Any] = dict(common)
    doc["model"] = {
        "file": model_file,
        "format": converted.model_format,
        "inputs": [s.to_dict() for s in specs_in],
        "outputs": [s.to_dict() for s in specs_out],
        "task": converted.task,
        "labels": converted.labels,
        "label_output": converted.label_output,
    }
    doc["quantization"] = outcome.quantization_doc(extra["quantize"])
    doc["validation"] = {
        "parity": extra["parity"],
        "candidates": outcome.candidates_doc(extra["timings"]),
        "metrics": outcome.metrics,
    }
    if outcome.arm_parity is not None:
        doc["validation"]["arm_parity"] = outcome.arm_parity_doc(extra["timings"])
    if extra["timings"]:
        doc["validation"]["latency_measured_on"] = outcome.latency_note
    doc["target"] = {
        "profile": profile.name,
        "arch": profile.arch,
        "backend": backend,
        "threads": profile.threads,
    }
    rtol, atol = SELFTEST_TOLERANCE[outcome.mode]
    doc["selftest"] = {
        "file": SELFTEST_FILE,
        "rtol": rtol,
        "atol": atol,
        "max_latency_ms": profile.latency_budget_ms,
    }
    keyids = [key_id(k.public_key()) for k in keys]
    payload[card.CARD_FILE] = card.render_card({**doc, "files": []}, keyids).encode("utf-8")
    doc["files"] = [
        {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for p, d in payload.items()
    ]
    return payload, doc


def _outcomes(
    opts: BuildOptions,
    converted: Converted,
    eval_data: EvalData,
    profiles: list[devices.Profile],
    progress: Report,
    table: Table,
    arm: ArmDevices,
) -> list[Outcome]:
    """Each target's chosen variant; all targets pass the gate before anything is written."""
    options = GateOptions(opts.quantize, opts.max_accuracy_drop, opts.latency, arm)
    if converted.model_format == "onnx":
        gate = Gate(
            converted.model_bytes,
            _calibration(opts, onnx_session(converted.model_bytes), converted),
            eval_data,
            options,
            progress,
        )
        return [gate.run(p, table) for p in profiles]
    calibration = load_data(opts.calibration) if opts.calibration is not None else None
    litert = TFLiteGate(converted, calibration, eval_data, options, progress)
    return [litert.run(p, table) for p in profiles]


def _common_doc(
    opts: BuildOptions, clock: datetime, converted: Converted, data_profile: dict[str, Any]
) -> dict[str, Any]:
    """The manifest fields every target's bundle shares."""
    expires = clock + timedelta(days=opts.expires_days) if opts.expires_days else None
    return {
        "format": FORMAT,
        "name": opts.name,
        "version": opts.version,
        "sequence": opts.sequence if opts.sequence is not None else int(clock.timestamp()),
        "created": format_time(clock),
        "expires": format_time(expires) if expires else None,
        "description": opts.description,
        "reference_profile": data_profile,
        "input_policy": {"out_of_range": "reject" if opts.reject_out_of_range else "flag"},
        "provenance": {
            "source_file": opts.model.name,
            "source_format": converted.source_format,
            "source_sha256": converted.source_sha256,
            "tool": f"edgeship {__version__}",
            "converter": converted.converter,
        },
    }


def _profiled_rows(converted: Converted, eval_data: EvalData) -> Arrays:
    """The sample's rows, plus the validation rows when they were given."""
    if eval_data.source != "validation":
        return converted.inputs
    return {
        name: np.concatenate([rows, eval_data.inputs[name]])
        if name in eval_data.inputs and rows.shape[1:] == eval_data.inputs[name].shape[1:]
        else rows
        for name, rows in converted.inputs.items()
    }


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
