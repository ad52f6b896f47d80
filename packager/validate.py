"""The validation gate: for one target profile, make every candidate variant the profile allows,
measure each against the original model, choose one (:mod:`packager.choice`), and refuse to go on
when the chosen one breaks the gate.

Place in the design: ``build`` → here → ``quantize`` (make), ``evaluate`` (measure), ``choice``
(decide). One :class:`Gate` serves every target of a build: variants with the same settings are
made once, and a model's scores are computed once; latency is measured per profile, because
thread counts differ. :func:`settle` (choose, report, enforce) also serves TFLite models, whose
candidates ``packager.validate_tflite`` makes and measures with LiteRT. For ARM profiles it also
has every candidate run on an emulated ARM device (``packager.emulated``, ``GateOptions.arm``) and
scores those outputs like the host's, so ``choice`` can reject a variant that breaks the budget
there.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from devices import Profile, host_arch
from packager import choice
from packager.convert import Arrays
from packager.emulated import ArmDevices
from packager.evaluate import (
    ArmScore,
    EvalData,
    Latency,
    LatencySettings,
    Scores,
    host_threads,
    measure_latency,
    score,
    score_arm,
    score_original,
)
from packager.prepass import prepare
from packager.quantize import FAILED, MODES, OK, QuantSettings, Variant, probe, produce
from runtime.errors import ConversionError, ParityError, UsageError

REQUESTS = ("auto", *MODES)
Report = Callable[[str], None]
Table = Callable[[str, dict[str, Any]], None]
"""Receives a profile name and its candidates report: ``candidates`` (rows as the manifest holds
them), ``measure`` (what the loss column means), ``latency_measured_on`` and ``arm_parity`` (None
for profiles of the host's own architecture)."""


class Settings(Protocol):
    """What shaped each mode's variant, as the manifest records it (``QuantSettings`` for ONNX)."""

    def for_mode(self, mode: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GateOptions:
    """``quantize``: ``auto`` or one of MODES. ``max_accuracy_drop``: the most the gate's loss
    (metrics.loss) may be, absolute."""

    quantize: str = "auto"
    max_accuracy_drop: float = 0.01
    latency: LatencySettings = field(default_factory=LatencySettings)
    arm: Optional[ArmDevices] = None
    """Runs the candidates of ARM profiles on an emulated device; None: the host only."""


@dataclass(frozen=True)
class CandidateReport:
    """One row of the candidates table."""

    mode: str
    verdict: str
    detail: str = ""
    size: Optional[int] = None
    size_ratio: Optional[float] = None
    latency: Optional[Latency] = None
    latency_ratio: Optional[float] = None
    loss: Optional[float] = None
    metrics: dict[str, Optional[float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    arm: Optional[ArmScore] = None
    """Its numbers on the emulated ARM device, when it ran there or failed to."""

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        """As the manifest and ``--json`` hold it; ``timings=False`` leaves the latency out (a
        reproducible build must not depend on how fast the host was)."""
        doc: dict[str, Any] = {
            "mode": self.mode,
            "verdict": self.verdict,
            "detail": self.detail,
            "size": self.size,
            "size_ratio": _round(self.size_ratio),
            "loss": _round(self.loss),
            "metrics": {k: _round(v) for k, v in self.metrics.items()},
            "settings": self.settings,
        }
        if self.arm is not None:
            doc["arm"] = self.arm.to_dict()
        if timings:
            doc["latency_ms"] = self.latency.to_dict() if self.latency else None
            doc["latency_ratio"] = _round(self.latency_ratio)
        return doc


@dataclass(frozen=True)
class Outcome:
    """The variant that ships for one profile, and the report that says why."""

    profile: str
    mode: str
    model_bytes: bytes
    reason: str
    settings: dict[str, Any]
    candidates: tuple[CandidateReport, ...]
    metrics: dict[str, Any]
    latency_note: str = ""
    """Where latency was measured (this host, threads; ARM profiles: not on the device)."""
    warnings: tuple[str, ...] = ()
    arm_parity: Optional[dict[str, Any]] = None
    """ARM profiles: where parity was measured besides the host (``measured``, ``device``,
    ``rows``, ``note``, ``seconds``), or why it was not; None for the host's own arch."""

    def quantization_doc(self, requested: str) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "requested": requested,
            "reason": self.reason,
            "settings": self.settings,
        }

    def candidates_doc(self, timings: bool = True) -> list[dict[str, Any]]:
        return [c.to_dict(timings) for c in self.candidates]

    def arm_parity_doc(self, timings: bool = True) -> Optional[dict[str, Any]]:
        """``arm_parity``; ``timings=False`` leaves the emulated run's seconds out."""
        if self.arm_parity is None or timings:
            return self.arm_parity
        return {k: v for k, v in self.arm_parity.items() if k != "seconds"}


class Gate:
    """Candidates, measurements and decisions for every target of one build."""

    def __init__(
        self,
        float32: bytes,
        calibration: Arrays,
        data: EvalData,
        options: GateOptions,
        progress: Report = lambda _: None,
    ) -> None:
        if options.quantize not in REQUESTS:
            raise UsageError(f"--quantize must be one of {', '.join(REQUESTS)}")
        self._float32 = float32
        self._calibration = calibration
        self._data = data
        self._options = options
        self._progress = progress
        self._prepared: Optional[bytes] = None
        self._none = Variant("none", OK, model_bytes=float32)
        self._variants: dict[str, Variant] = {}
        self._scores: dict[str, Scores] = {}
        self._original = score_original(data)

    def run(self, profile: Profile, table: Table = lambda _p, _r: None) -> Outcome:
        """Choose the variant for ``profile``. ``table`` receives the candidates table before any
        verdict is enforced. Raises ParityError when the chosen variant breaks the gate (or an
        explicit mode is not quantizable), ConversionError when an explicitly requested quantizer
        failed, UsageError when the profile does not allow the requested mode."""
        settings = QuantSettings.from_profile(profile)
        variants = {
            mode: self._variant(mode, settings)
            for mode in candidate_modes(profile, settings, self._options.quantize)
        }
        scores = score_variants(variants, self._score)
        usable = {m: v.model_bytes for m, v in variants.items() if v.model_bytes is not None}
        self._progress(f"timing {', '.join(usable)} on this host for {profile.name}")
        latency = measure_latency(usable, self._data.inputs, profile.threads, self._options.latency)
        measured = Measured(variants, scores, latency, len(self._float32))
        return settle(profile, measured, self._data, self._original, self._options, settings, table)

    def _variant(self, mode: str, settings: QuantSettings) -> Variant:
        if mode == "none":
            return self._none
        key = mode + json.dumps(settings.for_mode(mode), sort_keys=True)
        if key not in self._variants:
            if self._prepared is None:
                self._progress("folding constants and optimizing the graph for quantization")
                self._prepared = prepare(self._float32, probe(self._float32, self._calibration))
            self._progress(f"making the {mode} variant")
            self._variants[key] = produce(
                mode,
                self._prepared,
                settings,
                self._calibration,
                probe(self._float32, self._data.inputs),
            )
        return self._variants[key]

    def _score(self, model_bytes: bytes) -> Scores:
        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest not in self._scores:
            self._scores[digest] = score(model_bytes, self._data, self._original)
        return self._scores[digest]


@dataclass(frozen=True)
class Measured:
    """What was made and measured for one profile: every candidate (failed ones too), the scores
    and latency of those that ran, and float32's size."""

    variants: dict[str, Variant]
    scores: dict[str, Scores]
    latency: dict[str, Latency]
    base_size: int


def score_variants(
    variants: dict[str, Variant], score: Callable[[bytes], Scores]
) -> dict[str, Scores]:
    """Score every variant that has a model; a quantized one that cannot run on the evaluation
    data becomes ``failed`` in ``variants``. ConversionError when float32 itself cannot run."""
    scores: dict[str, Scores] = {}
    for mode, v in list(variants.items()):
        if v.model_bytes is None:
            continue
        try:
            scores[mode] = score(v.model_bytes)
        except ConversionError as e:
            if mode == "none":
                raise
            variants[mode] = Variant(mode, FAILED, str(e))
    return scores


def settle(
    profile: Profile,
    measured: Measured,
    data: EvalData,
    original: dict[str, Optional[float]],
    options: GateOptions,
    settings: Settings,
    table: Table,
) -> Outcome:
    """Choose among the measured candidates (:mod:`packager.choice`), hand ``table`` the
    candidates table, and enforce the verdict. ``settings`` says what shaped each mode's
    variant. Raises ParityError when nothing may ship (ConversionError when an explicitly
    requested variant failed to be made)."""
    variants, scores, latency = measured.variants, measured.scores, measured.latency
    requested = options.quantize
    loss_name = scores["none"].loss_name
    on_arm, arm_parity = _on_arm(profile, measured, data, original, options.arm)
    decision = choice.choose(
        [_candidate(v, latency.get(m), scores.get(m), on_arm.get(m)) for m, v in variants.items()],
        choice.Policy(
            requested=requested,
            max_loss=options.max_accuracy_drop,
            memory_budget_bytes=choice.memory_budget(profile.memory_mb),
            loss_name=loss_name,
            arm_device=(arm_parity or {}).get("device", ""),
        ),
    )
    rows = _rows(measured, decision, settings, on_arm)
    table(
        profile.name,
        {
            "candidates": [r.to_dict() for r in rows],
            "measure": loss_name,
            "latency_measured_on": _where(profile),
            "arm_parity": arm_parity,
        },
    )
    if decision.chosen is None:
        failed = requested != "auto" and variants[requested].status == FAILED
        error = ConversionError if failed else ParityError
        raise error(f"{profile.name}: {decision.reason}")
    warnings = []
    if decision.slower and decision.chosen != "none":
        why = (
            "the profile's memory budget forces it"
            if decision.forced_by_memory
            else (f"--quantize {requested}")
        )
        warnings.append(
            f"{profile.name}: shipping {decision.chosen}, slower than float32 on this host, "
            f"because {why}"
        )
    chosen = scores[decision.chosen]
    model_bytes = variants[decision.chosen].model_bytes
    assert model_bytes is not None  # a chosen candidate ran
    return Outcome(
        profile=profile.name,
        mode=decision.chosen,
        model_bytes=model_bytes,
        reason=decision.reason,
        settings=settings.for_mode(decision.chosen),
        candidates=tuple(rows),
        metrics={
            "data": data.source,
            "rows": data.rows,
            "labels": data.labels is not None,
            "gate": {
                "measure": chosen.loss_name,
                "value": _round(chosen.loss),
                "max": options.max_accuracy_drop,
                "passed": True,
            },
            "original": {k: _round(v) for k, v in original.items()},
            "packaged": {k: _round(v) for k, v in chosen.metrics.items()},
        },
        latency_note=_where(profile),
        warnings=tuple(warnings),
        arm_parity=arm_parity,
    )


def _on_arm(
    profile: Profile,
    measured: Measured,
    data: EvalData,
    original: dict[str, Optional[float]],
    arm: Optional[ArmDevices],
) -> tuple[dict[str, ArmScore], Optional[dict[str, Any]]]:
    """Every candidate that ran on the host, run on the profile's emulated ARM device and scored
    like the host's; and the report's ``arm_parity``. Nothing for the host's own architecture."""
    if arm is None or not arm.applies(profile):
        return {}, None
    models = {
        m: v.model_bytes
        for m, v in measured.variants.items()
        if m in measured.scores and v.model_bytes is not None
    }
    run = arm.run(profile, models, data.inputs)
    if isinstance(run, str):
        return {}, {"measured": False, "note": run}
    found = {
        m: score_arm(run.outputs[m], measured.scores[m], data, original, run.device)
        if m in run.outputs
        else ArmScore(run.device, data.rows, detail=run.failed.get(m, "no outputs"))
        for m in models
    }
    return found, run.report(data.rows, data.source)


def _rows(
    measured: Measured,
    decision: choice.Decision,
    settings: Settings,
    on_arm: dict[str, ArmScore],
) -> list[CandidateReport]:
    base_time = measured.latency["none"].median_ms
    rows = []
    for mode, v in measured.variants.items():
        t, s = measured.latency.get(mode), measured.scores.get(mode)
        rows.append(
            CandidateReport(
                mode=mode,
                verdict=decision.verdicts[mode],
                detail=v.detail,
                size=v.size,
                size_ratio=v.size / measured.base_size if v.size is not None else None,
                latency=t,
                latency_ratio=t.median_ms / base_time if t and base_time > 0 else None,
                loss=s.loss if s else None,
                metrics=dict(s.metrics) if s else {},
                settings=settings.for_mode(mode),
                arm=on_arm.get(mode),
            )
        )
    return rows


def candidate_modes(profile: Profile, settings: QuantSettings, requested: str) -> tuple[str, ...]:
    """The modes to try: all the profile allows for ``auto``, else float32 and the one asked for;
    UsageError when the profile does not allow it."""
    if requested == "auto":
        return settings.modes
    if requested not in settings.modes:
        raise UsageError(
            f"profile {profile.name} does not allow --quantize {requested} "
            f"(its modes: {', '.join(settings.modes)})"
        )
    return tuple(dict.fromkeys(("none", requested)))


def _candidate(
    v: Variant, t: Optional[Latency], s: Optional[Scores], arm: Optional[ArmScore]
) -> choice.Candidate:
    return choice.Candidate(
        mode=v.mode,
        status=v.status,
        detail=v.detail,
        size=v.size,
        latency_ms=t.median_ms if t else None,
        loss=s.loss if s else None,
        arm_loss=arm.loss if arm else None,
        arm_detail=arm.detail if arm else "",
    )


def _where(profile: Profile) -> str:
    here = host_arch()
    threads = host_threads(profile.threads)
    note = "" if profile.arch == here else f", not on an {profile.arch} device nor under emulation"
    return f"this {here} host ({platform.machine()}), {threads} thread(s), batch 1{note}"


def _round(value: Optional[float], digits: int = 6) -> Optional[float]:
    return None if value is None else round(float(value), digits)
