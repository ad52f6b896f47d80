"""Install and verification throughput on a ~200 MB bundle, against bare hashlib.

Verification must hash every payload byte, so hashlib SHA-256 over the same file (1 MiB reads, from
the page cache) is the ceiling it is measured against. Four paths over the same bundle:

- ``verify``: ``read_bundle(path, verifier)``, no destination: one streaming read, hashing payload;
- ``hashlib``: ``hashlib.sha256`` over the file's bytes in 1 MiB reads;
- ``extract``: ``read_bundle`` into an empty folder (verification + writes + fsync);
- ``install``: ``install_bundle`` into a fresh store (extract + self-test + swap + state).

The model is one large initializer the graph barely touches (``y = x + Gather(W, [0..3])``), so the
self-test's cost is loading 200 MB, not computing.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks._common import (
    BenchResult,
    Log,
    Ratio,
    Signer,
    build_bundle,
    fresh_store,
    interleaved,
    make_signer,
    median,
)
from runtime.bundle import read_bundle
from runtime.install import install_bundle, this_device
from runtime.verify import BundleVerifier

MB = 1_000_000
WEIGHT_FLOATS = 50_000_000  # 200 MB of float32
FEATURES = 4
READ_CHUNK = 1024 * 1024
VERIFY_ROUNDS = 9
INSTALL_ROUNDS = 3
VERIFY_TARGET = 0.85


def write_big_model(folder: Path) -> tuple[Path, Path]:
    """An ONNX model with a ~200 MB initializer, and a sample for it (.npy)."""
    weight = np.random.default_rng(0).standard_normal(WEIGHT_FLOATS, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["weight", "index"], ["head"], axis=0),
            helper.make_node("Add", ["x", "head"], ["y"]),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", FEATURES])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(np.arange(FEATURES, dtype=np.int64), "index"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_path, sample_path = folder / "big.onnx", folder / "sample.npy"
    onnx.save_model(model, model_path)
    sample = np.random.default_rng(1).standard_normal((64, FEATURES)).astype(np.float32)
    np.save(sample_path, sample)
    return model_path, sample_path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verifier(signer: Signer) -> BundleVerifier:
    return BundleVerifier(signer.policy, this_device(), now=datetime.now(timezone.utc))


def run(work: Path, log: Log) -> BenchResult:
    log("install: writing a ~200 MB ONNX model")
    signer = make_signer(work / "keys")
    model, sample = write_big_model(work)
    log("install: building the bundle with the packager")
    bundle = build_bundle(signer, model, sample, work / "dist", "big")
    model.unlink()
    size = bundle.stat().st_size
    sha256_file(bundle)  # warm the page cache: every path below reads from memory

    log(f"install: verify vs hashlib, {VERIFY_ROUNDS} rounds")
    times = interleaved(
        {
            "verify": lambda: read_bundle(bundle, _verifier(signer)),
            "hashlib": lambda: sha256_file(bundle),
        },
        VERIFY_ROUNDS,
        warmup=1,
    )

    log(f"install: extract and full install, {INSTALL_ROUNDS} rounds")
    scratch = work / "scratch"

    def extract() -> None:
        scratch.mkdir()
        read_bundle(bundle, _verifier(signer), dest=scratch)

    def install() -> None:
        install_bundle(fresh_store(scratch, signer), bundle)

    times["extract"], times["install"] = [], []
    for _ in range(INSTALL_ROUNDS):
        for name, fn in (("extract", extract), ("install", install)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(scratch)
            sha256_file(bundle)  # each round writes 200 MB: keep the bundle in the page cache

    rate = {name: size / median(t) / MB for name, t in times.items()}
    metrics = {f"{name}_mb_s": value for name, value in rate.items()}
    metrics |= {f"{name}_seconds": median(t) for name, t in times.items()}
    metrics["bundle_mb"] = size / MB
    return BenchResult(
        "install",
        metrics,
        (
            Ratio("verify/hashlib", rate["verify"] / rate["hashlib"], VERIFY_TARGET, True),
            Ratio("extract/hashlib", rate["extract"] / rate["hashlib"]),
            Ratio("install/hashlib", rate["install"] / rate["hashlib"]),
        ),
        {"rounds": {"verify": VERIFY_ROUNDS, "install": INSTALL_ROUNDS}, "mb": "10^6 bytes"},
    )
