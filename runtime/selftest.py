"""The on-device self-test: load a staged bundle, run its golden vectors, compare within the
manifest's tolerance and check the latency budget, before the bundle may become active."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from runtime.errors import EdgeshipError, SelfTestError
from runtime.model import LoadedModel

RUNS = 5


@dataclass(frozen=True)
class SelfTestReport:
    passed: bool
    max_abs_diff: float
    latency_ms: float
    rows: int
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "max_abs_diff": self.max_abs_diff,
            "latency_ms": round(self.latency_ms, 3),
            "rows": self.rows,
            "detail": self.detail,
        }


def load_golden(folder: Path, file: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The golden inputs (``in/NAME``) and outputs (``out/NAME``) from ``selftest.npz``."""
    with np.load(folder / "payload" / file, allow_pickle=False) as archive:
        inputs = {k[3:]: archive[k] for k in archive.files if k.startswith("in/")}
        outputs = {k[4:]: archive[k] for k in archive.files if k.startswith("out/")}
    return inputs, outputs


def compare(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> Optional[float]:
    """Max absolute difference if within tolerance, None if not (exact for non-float outputs)."""
    if actual.shape != expected.shape:
        return None
    if expected.dtype.kind == "f":
        a, e = actual.astype(np.float64), expected.astype(np.float64)
        diff = float(np.max(np.abs(a - e))) if a.size else 0.0
        return diff if np.allclose(a, e, rtol=rtol, atol=atol) else None
    return 0.0 if np.array_equal(actual, expected) else None


def run_selftest(folder: Path) -> tuple[LoadedModel, SelfTestReport]:
    """Run the self-test of the bundle extracted in ``folder``.

    Returns the loaded model and its report; raises SelfTestError when it fails.
    """
    try:
        model = LoadedModel.open(folder)
        test = model.manifest.selftest
        inputs, expected = load_golden(folder, test.file)
        outputs = model.run(inputs)
        timings = []
        for _ in range(RUNS):
            start = time.perf_counter()
            model.run(inputs)
            timings.append((time.perf_counter() - start) * 1000)
    except SelfTestError:
        raise
    except EdgeshipError as e:
        raise SelfTestError(f"self-test could not run the model: {e}") from e
    except (OSError, ValueError, KeyError) as e:
        raise SelfTestError(f"self-test could not read its golden vectors: {e}") from e
    worst = 0.0
    for name, want in expected.items():
        got = outputs.get(name)
        diff = None if got is None else compare(got, want, test.rtol, test.atol)
        if diff is None:
            raise SelfTestError(
                f"self-test failed: output {name!r} differs from the golden vector beyond "
                f"rtol={test.rtol} atol={test.atol}"
            )
        worst = max(worst, diff)
    latency = float(np.median(timings))
    if test.max_latency_ms is not None and latency > test.max_latency_ms:
        raise SelfTestError(
            f"self-test failed: {latency:.1f} ms per golden batch, budget {test.max_latency_ms} ms"
        )
    rows = next(iter(inputs.values())).shape[0] if inputs else 0
    return model, SelfTestReport(True, worst, latency, int(rows))
