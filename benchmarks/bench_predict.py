"""The in-process predict API against bare onnxruntime, per call at batch 1.

A small MLP (scikit-learn, on the digits data set) is built into a bundle with the packager and
installed in a throw-away store. The same ``model.onnx`` is then run three ways, interleaved call by
call in one loop:

- ``bare``: ``onnxruntime.InferenceSession.run(None, feeds)`` with the session options the backend
  uses (intra-op threads from the profile, one inter-op thread);
- ``run``: ``LoadedModel.run`` (input checks + backend);
- ``predict``: ``LoadedModel.predict`` (``run`` plus the class labels; the reference-range flags
  are checked when the caller reads them);
- ``predict+ranges``: ``predict`` and then reading its range flags, as the CLI and the agent do
  (the digits pixels are categorical columns with gaps, the costliest case for those).

What the ratios measure is edgeship's per-call overhead: input checks, error wrapping, dicts.
The target (<= 1.10) is for ``run`` and ``predict``; ``predict+ranges`` is reported beside them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import skops.io as sio
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks._common import (
    BenchResult,
    Log,
    Ratio,
    build_bundle,
    fresh_store,
    interleaved,
    make_signer,
    median,
    percentile,
)
from runtime.install import install_bundle
from runtime.model import LoadedModel

ROUNDS = 300
BLOCK = 100  # calls per subject per round (1-2 ms): each is timed in its steady state
WARMUP = 500
TARGET = 1.10


def write_mlp(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """A scaler + MLP pipeline on digits as .skops, a sample (.npy), and the data as float32."""
    x, y = load_digits(return_X_y=True)
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64,), solver="lbfgs", max_iter=300, random_state=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    data = x.astype(np.float32)
    model_path, sample_path = folder / "mlp.skops", folder / "sample.npy"
    sio.dump(model, model_path)
    np.save(sample_path, data[::4])
    return model_path, sample_path, data


def bare_session(model_path: Path, threads: int) -> ort.InferenceSession:
    """A session configured exactly as ``runtime.backends.onnx.OnnxBackend`` configures one."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def run(work: Path, log: Log) -> BenchResult:
    log("predict: training an MLP on digits and building its bundle")
    signer = make_signer(work / "keys")
    model_path, sample_path, data = write_mlp(work)
    bundle = build_bundle(signer, model_path, sample_path, work / "dist", "digits")
    store = fresh_store(work / "device", signer)
    install_bundle(store, bundle)
    model = LoadedModel.open(store.active_dir("digits"))
    threads = model.manifest.target.threads
    session = bare_session(model.folder / "payload" / model.manifest.model.file, threads)
    (name,) = (spec.name for spec in model.manifest.model.inputs)
    feeds = {name: np.ascontiguousarray(data[:1])}

    expected = session.run(None, feeds)
    got = model.run(feeds)
    for (output, value), want in zip(got.items(), expected):
        if not np.array_equal(value, want):
            raise AssertionError(f"{output}: LoadedModel.run and bare onnxruntime disagree")

    log(f"predict: {ROUNDS} rounds of {BLOCK} calls at batch 1, {threads} intra-op thread(s)")
    times = interleaved(
        {
            "bare": lambda: session.run(None, feeds),
            "run": lambda: model.run(feeds),
            "predict": lambda: model.predict(feeds),
            "predict+ranges": lambda: model.predict(feeds).ranges,
        },
        ROUNDS,
        BLOCK,
        warmup=WARMUP,
    )
    med = {k: median(v) for k, v in times.items()}
    metrics = {}
    for key, values in times.items():
        metrics[f"{key}_median_us"] = med[key] * 1e6
        metrics[f"{key}_p95_us"] = percentile(values, 95) * 1e6
    return BenchResult(
        "predict",
        metrics,
        (
            Ratio("run/bare", med["run"] / med["bare"], TARGET, False),
            Ratio("predict/bare", med["predict"] / med["bare"], TARGET, False),
            Ratio("predict+ranges/bare", med["predict+ranges"] / med["bare"]),
            Ratio("run/bare p95", metrics["run_p95_us"] / metrics["bare_p95_us"]),
        ),
        {"rounds": ROUNDS, "block": BLOCK, "batch": 1, "intra_op_threads": threads, "input": name},
    )
