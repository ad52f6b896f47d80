"""What every benchmark shares: result records, interleaved timing, and a real signed bundle
installed in a throw-away device store."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from packager.build import BuildOptions, build
from packager.keys import generate
from runtime.signing import load_public_key
from runtime.store import Store
from runtime.trust import TrustPolicy

Log = Callable[[str], None]
PROFILE = "x86_64-generic"


@dataclass(frozen=True)
class Ratio:
    """A measured ratio and the target it should meet (``value >= target`` when
    ``higher_is_better``, else ``value <= target``); no target: reported for information."""

    name: str
    value: float
    target: Optional[float] = None
    higher_is_better: bool = True

    @property
    def comparison(self) -> str:
        return ">=" if self.higher_is_better else "<="

    @property
    def met(self) -> Optional[bool]:
        if self.target is None:
            return None
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 4),
            "target": self.target,
            "comparison": self.comparison if self.target is not None else None,
            "met": self.met,
        }


@dataclass(frozen=True)
class BenchResult:
    """One benchmark's numbers: ``metrics`` carry their unit in the key (``_mb_s``, ``_us``)."""

    name: str
    metrics: dict[str, float]
    ratios: tuple[Ratio, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": {k: round(v, 3) for k, v in self.metrics.items()},
            "ratios": {r.name: r.to_dict() for r in self.ratios},
            "info": self.info,
        }


def interleaved(
    subjects: dict[str, Callable[[], object]], rounds: int, block: int = 1, warmup: int = 0
) -> dict[str, list[float]]:
    """Time every call of every subject: each round runs ``block`` calls of each subject in turn,
    rotating the order every round; returns the seconds each call took, per subject.

    Blocks longer than one call time a subject in its steady state rather than right after
    another subject ran; rotating the order spreads any drift of the machine over all of them.
    The garbage collector is paused while timing, as ``timeit`` does.
    """
    names = list(subjects)
    for _ in range(warmup):
        for name in names:
            subjects[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(rounds):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                fn, out = subjects[name], times[name]
                for _ in range(block):
                    start = clock()
                    fn()
                    out.append(clock() - start)
    finally:
        if enabled:
            gc.enable()
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Signer:
    key: Path
    policy: TrustPolicy


def make_signer(folder: Path) -> Signer:
    """A fresh release key in ``folder`` and a trust policy that trusts it alone."""
    pair = generate(folder, "release")
    public = load_public_key(pair.public_path.read_bytes())
    return Signer(pair.private_path, TrustPolicy.create([(public, "release")]))


def build_bundle(
    signer: Signer, model: Path, sample: Path, out: Path, name: str, sequence: int = 1
) -> Path:
    """Build one bundle for the generic x86-64 profile with the real packager, float32 as given
    (no quantization: the benchmarks measure edgeship's paths, not a variant's speed)."""
    options = BuildOptions(
        model=model,
        targets=(PROFILE,),
        keys=(signer.key,),
        name=name,
        version="1.0.0",
        sample=sample,
        out=out,
        sequence=sequence,
        quantize="none",
    )
    return build(options)[0].path


def fresh_store(folder: Path, signer: Signer) -> Store:
    """An initialized, empty device store at ``folder`` trusting ``signer``."""
    store = Store(folder)
    store.save_policy(signer.policy)
    return store
