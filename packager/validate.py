"""The validation gate: for one target profile, make every candidate variant the profile allows,
measure each against the original model, choose one (:mod:`packager.choice`), and refuse to go on
when the chosen one breaks the gate.

Place in the design: ``build`` → here → ``quantize`` (make), ``evaluate`` (measure), ``choice``
(decide). One :class:`Gate` serves every target of a build: variants with the same settings are
made once, and a model's scores are computed once; latency is measured per profile, because
thread counts differ. :func:`settle` (choose, report, enforce) also serves TFLite models, whose
candidates ``packager.validate_tflite`` makes and measures with LiteRT.
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
from packager.evaluate import (
    EvalData,
    Latency,
    LatencySettings,
    Scores,
    host_threads,
    measure_latency,
    score,
    score_original,
)
from packager.prepass import prepare
from packager.quantize import FAILED, MODES, OK, QuantSettings, Variant, probe, produce
from runtime.errors import ConversionError, ParityError, UsageError

REQUESTS = ("auto", *MODES)
Report = Callable[[str], None]
Table = Callable[[str, dict[str, Any]], None]
"""Receives a profile name and its candidates report: ``candidates`` (rows as the manifest holds
them), ``measure`` (what the loss column means) and ``latency_measured_on``."""


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

    def quantization_doc(self, requested: str) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "requested": requested,
            "reason": self.reason,
            "settings": self.settings,
        }

    def candidates_doc(self, timings: bool = True) -> list[dict[str, Any]]:
        return [c.to_dict(timings) for c in self.candidates]


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
    decision = choice.choose(
        [_candidate(v, latency.get(m), scores.get(m)) for m, v in variants.items()],
        choice.Policy(
            requested=requested,
            max_loss=options.max_accuracy_drop,
            memory_budget_bytes=choice.memory_budget(profile.memory_mb),
            loss_name=loss_name,
        ),
    )
    rows = _rows(measured, decision, settings)
    table(
        profile.name,
        {
            "candidates": [r.to_dict() for r in rows],
            "measure": loss_name,
            "latency_measured_on": _where(profile),
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
    )


def _rows(
    measured: Measured, decision: choice.Decision, settings: Settings
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


def _candidate(v: Variant, t: Optional[Latency], s: Optional[Scores]) -> choice.Candidate:
    return choice.Candidate(
        mode=v.mode,
        status=v.status,
        detail=v.detail,
        size=v.size,
        latency_ms=t.median_ms if t else None,
        loss=s.loss if s else None,
    )


def _where(profile: Profile) -> str:
    here = host_arch()
    threads = host_threads(profile.threads)
    note = "" if profile.arch == here else f", not on a {profile.arch} device"
    return f"this {here} host ({platform.machine()}), {threads} thread(s), batch 1{note}"


def _round(value: Optional[float], digits: int = 6) -> Optional[float]:
    return None if value is None else round(float(value), digits)


_PRIMARY = ("accuracy", "r2", "label_agreement", "output_r2")


def table_lines(profile: str, report: dict[str, Any]) -> list[str]:
    """A Table report as text lines for people (the CLI prints them to stderr)."""
    rows = report["candidates"]
    metric = next((k for k in _PRIMARY if any(r["metrics"].get(k) is not None for r in rows)), "")
    lines = [f"{profile}: loss = {report['measure']}; latency on {report['latency_measured_on']}"]
    header = ("mode", "bytes", "x size", "p50 ms", "p95 ms", "x time", metric or "-", "loss")
    lines.append("  {:<8} {:>10} {:>6} {:>8} {:>8} {:>6} {:>9} {:>8}  verdict".format(*header))
    for r in rows:
        t = r.get("latency_ms") or {}
        cells = (
            r["mode"],
            _fmt(r["size"], "d"),
            _fmt(r["size_ratio"], ".2f"),
            _fmt(t.get("p50"), ".3f"),
            _fmt(t.get("p95"), ".3f"),
            _fmt(r.get("latency_ratio"), ".2f"),
            _fmt(r["metrics"].get(metric), ".4f"),
            _fmt(r["loss"], ".4f"),
        )
        verdict = r["verdict"] + (f" ({r['detail']})" if r["verdict"] == "not quantizable" else "")
        lines.append(
            "  {:<8} {:>10} {:>6} {:>8} {:>8} {:>6} {:>9} {:>8}  ".format(*cells) + verdict
        )
    return lines


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
