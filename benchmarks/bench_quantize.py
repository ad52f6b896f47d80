"""Quantization side by side: each variant's size and latency against float32, and its accuracy
drop, for a small conv net trained here on scikit-learn's 8x8 digits and for an MLP.

Both models go through the real ``edgeship build`` (``--quantize auto`` with ``--validation`` and
``--labels``) for the ``x86_64-generic`` profile; the numbers are the build's own candidates
table, so "what auto picks" is what a user would ship. Goals: conv net static int8 size
<= 0.30x float32; whatever auto picks never slower than float32 (within the build's 5% noise
margin, ``packager.choice.NOISE_MARGIN``); accuracy drop <= 1 point.

``python -m benchmarks.bench_quantize`` runs it alone.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks._common import PROFILE, BenchResult, Log, Ratio, make_signer
from packager.build import BuildOptions, build
from packager.choice import NOISE_MARGIN
from packager.evaluate import LatencySettings

LATENCY = LatencySettings(seconds=8.0, max_rounds=3000, min_rounds=200, warmup=20)
FILTERS = 32
EPOCHS = 12


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.75 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _patches(images: np.ndarray) -> np.ndarray:
    """(N, 64, 9): the 3x3 neighbourhood of every pixel of (N, 8, 8) images, zero padded."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    return np.stack(
        [
            padded[:, i : i + 8, j : j + 8].reshape(len(images), 64)
            for i in range(3)
            for j in range(3)
        ],
        axis=2,
    )


def train_conv_net(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Conv 3x3 (FILTERS, padded) → ReLU → dense 10, trained with Adam in numpy on (N, 64) rows."""
    rng = np.random.default_rng(seed)
    params = {
        "cw": rng.normal(0, np.sqrt(2 / 9), size=(FILTERS, 9)),
        "cb": np.zeros(FILTERS),
        "dw": rng.normal(0, np.sqrt(1 / (FILTERS * 64)), size=(FILTERS * 64, 10)),
        "db": np.zeros(10),
    }
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    cols = _patches(x.reshape(-1, 8, 8))
    onehot = np.eye(10)[y]
    step = 0
    for _ in range(EPOCHS):
        for batch in np.array_split(rng.permutation(len(x)), len(x) // 32):
            c = cols[batch]
            pre = c @ params["cw"].T + params["cb"]  # (B, 64, F)
            act = np.maximum(pre, 0)
            flat = act.transpose(0, 2, 1).reshape(len(batch), -1)  # channel-major, as Flatten
            logits = flat @ params["dw"] + params["db"]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            dlogits = (p - onehot[batch]) / len(batch)
            dflat = (dlogits @ params["dw"].T).reshape(len(batch), FILTERS, 64).transpose(0, 2, 1)
            dpre = dflat * (pre > 0)
            grads = {
                "dw": flat.T @ dlogits,
                "db": dlogits.sum(axis=0),
                "cw": np.einsum("bpf,bpk->fk", dpre, c),
                "cb": dpre.sum(axis=(0, 1)),
            }
            step += 1
            for k, g in grads.items():
                m, v = moments[k]
                m[:] = 0.9 * m + 0.1 * g
                v[:] = 0.999 * v + 0.001 * g * g
                params[k] -= 3e-3 * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return params


def export_conv_net(params: dict[str, np.ndarray], path: Path) -> Path:
    """The trained conv net as ONNX (Conv, Relu, Flatten, Gemm), input [N, 1, 8, 8]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tensors = {
        "cw": params["cw"].reshape(FILTERS, 1, 3, 3),
        "cb": params["cb"],
        "dw": params["dw"],
        "db": params["db"],
    }
    nodes = [
        helper.make_node("Conv", ["image", "cw", "cb"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "dw", "db"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _mlp(x: np.ndarray, y: np.ndarray, path: Path) -> Path:
    import joblib
    from sklearn.neural_network import MLPClassifier

    joblib.dump(MLPClassifier((256,), max_iter=300, random_state=0).fit(x, y), path)
    return path


def _build(
    signer: Any, model: Path, sample: Path, validation: Path, labels: Path, out: Path
) -> dict[str, Any]:
    [result] = build(
        BuildOptions(
            model=model,
            targets=(PROFILE,),
            keys=(signer.key,),
            name=model.stem.replace("_", "-"),
            version="1.0.0",
            sample=sample,
            out=out,
            validation=validation,
            labels=labels,
            latency=LATENCY,
        )
    )
    return result.to_dict()


def _rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for c in doc["candidates"]:
        rows.append(
            {
                "mode": c["mode"],
                "size_bytes": c["size"],
                "size_ratio": c["size_ratio"],
                "latency_ratio": c.get("latency_ratio"),
                "p50_ms": (c.get("latency_ms") or {}).get("p50"),
                "accuracy": c["metrics"].get("accuracy"),
                "accuracy_drop": c["loss"],
                "verdict": c["verdict"],
            }
        )
    return rows


def run(work: Optional[Path] = None, log: Log = lambda _: None) -> BenchResult:
    """Train, build with ``--quantize auto`` and report every candidate of both models."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="edgeship-bench-quantize-") as folder:
            return run(Path(folder), log)
    x, y, xv, yv = _digits()
    signer = make_signer(work / "keys")
    log("quantize: training the conv net (numpy) and the MLP (scikit-learn) on 8x8 digits")
    conv = export_conv_net(train_conv_net(x, y), work / "digits_conv.onnx")
    mlp = _mlp(x, y, work / "digits_mlp.joblib")
    np.save(work / "conv_sample.npy", x[:200].reshape(-1, 1, 8, 8))
    np.save(work / "conv_val.npy", xv.reshape(-1, 1, 8, 8))
    np.save(work / "mlp_sample.npy", x[:200])
    np.save(work / "mlp_val.npy", xv)
    np.save(work / "labels.npy", yv)
    tables: dict[str, list[dict[str, Any]]] = {}
    chosen: dict[str, str] = {}
    for name, model in (("conv", conv), ("mlp", mlp)):
        log(f"quantize: building {model.name} with --quantize auto for {PROFILE}")
        doc = _build(
            signer,
            model,
            work / f"{name}_sample.npy",
            work / f"{name}_val.npy",
            work / "labels.npy",
            work / "dist",
        )
        tables[name] = _rows(doc)
        chosen[name] = doc["quantization"]["mode"]
    metrics: dict[str, float] = {}
    ratios: list[Ratio] = []
    for name, rows in tables.items():
        for r in rows:
            if r["size_bytes"] is None:
                continue
            metrics[f"{name}_{r['mode']}_bytes"] = float(r["size_bytes"])
            metrics[f"{name}_{r['mode']}_p50_us"] = 1000 * (r["p50_ms"] or 0.0)
            metrics[f"{name}_{r['mode']}_accuracy_pct"] = 100 * (r["accuracy"] or 0.0)
            if r["mode"] != "none":
                ratios.append(Ratio(f"{name}_{r['mode']}_size_ratio", r["size_ratio"], None, False))
                ratios.append(
                    Ratio(f"{name}_{r['mode']}_latency_ratio", r["latency_ratio"], None, False)
                )
        picked = next(r for r in rows if r["mode"] == chosen[name])
        ratios.append(
            Ratio(f"{name}_auto_latency_ratio", picked["latency_ratio"], 1 + NOISE_MARGIN, False)
        )
        ratios.append(
            Ratio(f"{name}_auto_accuracy_drop_pts", 100 * picked["accuracy_drop"], 1.0, False)
        )
    static = next(r for r in tables["conv"] if r["mode"] == "static")
    ratios.append(Ratio("conv_static_size_target", static["size_ratio"] or 1.0, 0.30, False))
    ratios.append(
        Ratio("conv_static_accuracy_drop_pts", 100 * (static["accuracy_drop"] or 0.0), 1.0, False)
    )
    return BenchResult("quantize", metrics, tuple(ratios), {"auto": chosen, "candidates": tables})


def table(result: BenchResult) -> str:
    """The candidates of both models side by side, for people."""
    lines = []
    for name, rows in result.info["candidates"].items():
        lines.append(f"{name} (auto chose {result.info['auto'][name]}):")
        lines.append(
            f"  {'mode':<8} {'bytes':>9} {'x size':>7} {'p50 ms':>8} {'x time':>7} "
            f"{'accuracy':>9} {'drop pts':>9}  verdict"
        )
        for r in rows:
            lines.append(
                f"  {r['mode']:<8} {_f(r['size_bytes'], 'd'):>9} {_f(r['size_ratio'], '.3f'):>7} "
                f"{_f(r['p50_ms'], '.4f'):>8} {_f(r['latency_ratio'], '.2f'):>7} "
                f"{_f(r['accuracy'], '.4f'):>9} "
                f"{_f(None if r['accuracy_drop'] is None else 100 * r['accuracy_drop'], '.2f'):>9}"
                f"  {r['verdict']}"
            )
    for ratio in result.ratios:
        if ratio.target is not None:
            verdict = "ok" if ratio.met else "MISSED"
            lines.append(
                f"{ratio.name:<32} {ratio.value:8.3f}  (target {ratio.comparison} "
                f"{ratio.target}) {verdict}"
            )
    return "\n".join(lines)


def _f(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    outcome = run(log=lambda m: print(m, file=sys.stderr))
    print(table(outcome))
