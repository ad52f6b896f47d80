"""Quantization and the validation gate, with real conversions and real onnxruntime runs: the
pre-pass and the producers (packager/prepass.py, packager/quantize.py), and whole builds through
the gate (packager/validate.py, packager/build.py, the ``build`` command)."""

from __future__ import annotations

import json

import joblib
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import devices
from packager.build import BuildOptions, build
from packager.cli import main
from packager.convert import convert
from packager.data import Dataset
from packager.evaluate import LatencySettings
from packager.inspect import inspect_bundle
from packager.prepass import fold_constants, prepare
from packager.quantize import INT8_OPS, QuantSettings, produce
from runtime.errors import ConversionError, ParityError, UsageError
from runtime.install import install_bundle
from tests.packager import quant_models as qm

FAST = LatencySettings(seconds=0.5, max_rounds=100, min_rounds=10, warmup=2)
ALL_MODES = QuantSettings(modes=("none", "dynamic", "static", "fp16"))


def ops(model_bytes):
    return [n.op_type for n in onnx.load_from_string(model_bytes).graph.node]


def outputs(model_bytes, feed):
    import onnxruntime as ort

    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def options(keys, model, sample, out, **extra):
    extra.setdefault("latency", FAST)
    return BuildOptions(
        model=model,
        targets=extra.pop("targets", ("x86_64-generic",)),
        keys=(keys.key("release"),),
        name=extra.pop("name", "q"),
        version="1.0.0",
        sample=sample,
        out=out,
        **extra,
    )


def manifest_of(result):
    return inspect_bundle(result.path)["manifest"]


def profile_file(tmp_path, modes, memory_mb=1024, name="test-box"):
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\narch = "{devices.host_arch()}"\nbackend = "onnxruntime"\n'
        f"threads = 1\nmemory_mb = {memory_mb}\n\n[quantization]\nmodes = {json.dumps(modes)}\n"
        'activation_type = "uint8"\nweight_type = "int8"\nreduce_range = true\n'
    )
    return path


# --- producers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [qm.conv_net, qm.mlp])
@pytest.mark.parametrize("mode", ["dynamic", "static", "fp16"])
def test_each_mode_makes_a_smaller_variant_that_runs(tmp_path, builder, mode):
    path = builder(tmp_path / "m.onnx")
    shape = (64, 1, 8, 8) if builder is qm.conv_net else (64, 64)
    feed = {"x": qm.rows(shape, positive=True)}
    original = path.read_bytes()
    variant = produce(mode, prepare(original, feed), ALL_MODES, feed, feed)
    assert variant.status == "ok", variant.detail
    assert variant.size < (0.6 if mode == "fp16" else 0.35) * len(original)
    found = ops(variant.model_bytes)
    if mode == "fp16":
        halves = onnx.load_from_string(variant.model_bytes).graph.initializer
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in halves)
    elif mode == "dynamic":
        assert {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"} & set(found)
    else:
        assert {"QuantizeLinear", "DequantizeLinear"} <= set(found)
    want, got = outputs(original, feed), outputs(variant.model_bytes, feed)
    assert got.shape == want.shape and got.dtype == np.float32  # keep_io_types for fp16
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.99


@pytest.mark.parametrize(
    "estimator", [LogisticRegression(max_iter=500), RandomForestClassifier(5, random_state=0)]
)
def test_tree_and_linear_models_are_not_quantizable(tmp_path, estimator):
    x, y = load_iris(return_X_y=True)
    joblib.dump(estimator.fit(x, y), tmp_path / "m.joblib")
    converted = convert(tmp_path / "m.joblib", Dataset({None: x}), lambda _: None)
    prepared = prepare(converted.model_bytes, converted.inputs)
    for mode in ("dynamic", "static", "fp16"):
        variant = produce(mode, prepared, ALL_MODES, converted.inputs, converted.inputs)
        assert variant.status == "not quantizable", (mode, variant)
        assert variant.model_bytes is None
        assert any(op in variant.detail for op in ("LinearClassifier", "TreeEnsembleClassifier"))


def test_constant_node_weights_are_folded_so_int8_is_smaller(tmp_path):
    path = qm.constant_mlp(tmp_path / "c.onnx")
    raw = path.read_bytes()
    feed = {"x": qm.rows((32, 64))}
    unfolded = produce("dynamic", raw, ALL_MODES, feed, feed)
    assert unfolded.status == "not quantizable"  # weights in Constant nodes are not initializers
    model = onnx.load_from_string(raw)
    assert fold_constants(model) == 2
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    prepared = prepare(raw, feed)
    for mode in ("dynamic", "static"):
        variant = produce(mode, prepared, ALL_MODES, feed, feed)
        assert variant.status == "ok", variant.detail
        assert variant.size < 0.35 * len(raw)
    np.testing.assert_allclose(outputs(prepared, feed), outputs(raw, feed), rtol=1e-5, atol=1e-5)


def test_pre_pass_runs_the_graph_optimizer_where_it_helps(tmp_path):
    raw = qm.batchnorm_conv(tmp_path / "bn.onnx").read_bytes()
    feed = {"x": qm.rows((4, 1, 8, 8))}
    prepared = prepare(raw, feed)
    assert "BatchNormalization" in ops(raw)
    assert "BatchNormalization" not in ops(prepared)  # folded into the Conv
    np.testing.assert_allclose(outputs(prepared, feed), outputs(raw, feed), rtol=1e-4, atol=1e-5)
    mlp = qm.mlp(tmp_path / "mlp.onnx").read_bytes()
    assert ops(prepare(mlp, {"x": qm.rows((4, 64))})) == ["Gemm", "Relu", "Gemm"]  # MatMul+Add
    conv = qm.conv_net(tmp_path / "conv.onnx").read_bytes()  # nothing to gain: kept as it was
    assert prepare(conv, {"x": qm.rows((4, 1, 8, 8))}) == conv


def test_pre_pass_records_types_onnx_cannot_infer(tmp_path):
    # StandardScaler becomes ai.onnx.ml Scaler, whose output type onnx's inference leaves out;
    # once the optimizer has fused the graph around it, the dynamic quantizer and the float16
    # converter both fail on the MLP behind it unless the types are recorded.
    x, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), MLPClassifier((64,), max_iter=300, random_state=0))
    joblib.dump(model.fit(x, y), tmp_path / "m.joblib")
    converted = convert(tmp_path / "m.joblib", Dataset({None: x[:64]}), lambda _: None)
    raw, feed = converted.model_bytes, converted.inputs
    prepared = prepare(raw, feed)
    recorded = {v.name for v in onnx.load_from_string(prepared).graph.value_info}
    scaler = next(n for n in onnx.load_from_string(raw).graph.node if n.op_type == "Scaler")
    assert scaler.output[0] in recorded
    for mode in ("dynamic", "static", "fp16"):
        variant = produce(mode, prepared, ALL_MODES, feed, feed)
        assert variant.status == "ok", (mode, variant.detail)
        assert variant.size < len(raw)


def test_a_variant_onnxruntime_refuses_is_failed_never_kept(tmp_path):
    # Per-channel static QDQ writes DequantizeLinear(axis=…), which opset 11 does not have.
    path = qm.conv_net(tmp_path / "c.onnx")
    model = onnx.load(path)
    model.opset_import[0].version = 11
    raw = model.SerializeToString()
    feed = {"x": qm.rows((32, 1, 8, 8), positive=True)}
    variant = produce("static", raw, QuantSettings(per_channel=True), feed, feed)
    assert variant.status == "failed" and variant.model_bytes is None
    assert variant.verdict.startswith("failed: ") and "DequantizeLinear" in variant.detail


def test_a_quantizer_crash_is_failed(tmp_path):
    raw = qm.mlp(tmp_path / "m.onnx").read_bytes()
    feed = {"x": qm.rows((8, 64))}
    variant = produce("static", raw, ALL_MODES, {"x": feed["x"][:0]}, feed)
    assert variant.status == "failed" and "No data" in variant.detail


def test_every_built_in_profile_has_valid_settings():
    for profile in devices.list_profiles().values():
        settings = QuantSettings.from_profile(profile)
        assert settings.modes[0] == "none"
        assert not settings.per_channel  # ADR 0005
    x86 = QuantSettings.from_profile(devices.load_profile("x86_64-generic"))
    vnni = QuantSettings.from_profile(devices.load_profile("x86_64-vnni"))
    assert x86.reduce_range and not vnni.reduce_range
    pi5 = QuantSettings.from_profile(devices.load_profile("raspberry-pi-5"))
    assert pi5.activation_type == "int8"


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"modes": ["int4"]}, "modes"),
        ({"activation_type": "float"}, "activation_type"),
        ({"reduce_range": "yes"}, "reduce_range"),
        ({"op_types": "Conv"}, "op_types"),
    ],
)
def test_bad_quantization_table_is_a_profile_error(table, field):
    profile = devices.Profile("p", "x86_64", "onnxruntime", quantization=table, source="p.toml")
    with pytest.raises(devices.ProfileError, match=field):
        QuantSettings.from_profile(profile)


def test_int8_op_list_names_the_integer_kernels():
    assert {"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger"} <= INT8_OPS


# --- whole builds ------------------------------------------------------------------------------


def test_auto_rejects_a_variant_slower_than_float32(keys, tmp_path):
    model = qm.wide_conv(tmp_path / "wide.onnx")
    np.save(tmp_path / "x.npy", qm.rows((8, 16, 32, 32)))
    box = profile_file(tmp_path, ["none", "dynamic"])
    [result] = build(
        options(
            keys,
            model,
            tmp_path / "x.npy",
            tmp_path / "out",
            targets=("test-box",),
            profile_files=(box,),
        )
    )
    m = manifest_of(result)
    verdicts = {c["mode"]: c["verdict"] for c in m["validation"]["candidates"]}
    assert verdicts == {"none": "chosen", "dynamic": "rejected: slower"}
    dynamic = next(c for c in m["validation"]["candidates"] if c["mode"] == "dynamic")
    assert dynamic["latency_ratio"] > 1.5 and dynamic["size_ratio"] < 0.35
    assert m["quantization"]["mode"] == "none" and m["quantization"]["requested"] == "auto"


def test_explicit_static_ships_that_variant_and_the_device_self_test_passes(keys, tmp_path, device):
    model = qm.conv_net(tmp_path / "conv.onnx")
    np.save(tmp_path / "x.npy", qm.rows((64, 1, 8, 8), positive=True))
    [result] = build(options(keys, model, tmp_path / "x.npy", tmp_path / "out", quantize="static"))
    m = manifest_of(result)
    assert m["quantization"]["mode"] == "static"
    assert m["quantization"]["settings"]["reduce_range"] is True  # x86-64 without VNNI
    assert m["quantization"]["settings"]["activation_type"] == "uint8"
    assert [c["mode"] for c in m["validation"]["candidates"]] == ["none", "static"]
    model_entry = next(f for f in m["files"] if f["path"] == "model.onnx")
    assert model_entry["size"] < 0.35 * model.stat().st_size
    installed = install_bundle(device, result.path)
    # the golden vectors are the shipped int8 model's own outputs, not float32's
    assert installed.selftest.max_abs_diff <= 1e-6


def test_gate_fails_for_an_explicit_mode_that_ruins_accuracy(keys, tmp_path):
    model = qm.mlp(tmp_path / "outlier.onnx", outlier=1000.0)
    x = qm.rows((200, 64))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", qm.predict(model, x).argmax(axis=1))
    out = tmp_path / "out"
    tables = []
    with pytest.raises(ParityError, match="accuracy drop"):
        build(
            options(
                keys,
                model,
                tmp_path / "x.npy",
                out,
                quantize="dynamic",
                validation=tmp_path / "x.npy",
                labels=tmp_path / "y.npy",
            ),
            table=lambda profile, report: tables.append(report),
        )
    assert not out.exists()
    [report] = tables  # the table came before the refusal
    assert report["measure"] == "accuracy drop"
    assert {c["mode"]: c["verdict"] for c in report["candidates"]}["dynamic"] == (
        "rejected: accuracy"
    )
    # auto passes the gate by shipping a variant that keeps the accuracy
    [result] = build(
        options(
            keys,
            model,
            tmp_path / "x.npy",
            out,
            validation=tmp_path / "x.npy",
            labels=tmp_path / "y.npy",
        )
    )
    m = manifest_of(result)
    assert m["quantization"]["mode"] in ("none", "fp16")
    verdicts = {c["mode"]: c["verdict"] for c in m["validation"]["candidates"]}
    assert verdicts["dynamic"] == verdicts["static"] == "rejected: accuracy"
    gate = m["validation"]["metrics"]["gate"]
    assert gate["passed"] and gate["value"] <= 0.01 and gate["max"] == 0.01
    assert m["validation"]["metrics"]["original"]["accuracy"] == 1.0


def test_gate_failure_through_the_cli_exits_1_and_prints_the_table(keys, tmp_path):
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "m.joblib")
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(
        main,
        [
            "build",
            str(tmp_path / "m.joblib"),
            "--target",
            "x86_64-generic",
            "--key",
            str(keys.key("release")),
            "--name",
            "m",
            "--version",
            "1.0.0",
            "--sample",
            str(tmp_path / "x.npy"),
            "--quantize",
            "static",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1
    assert "--quantize static: not quantizable" in result.output
    assert "static" in result.stderr and "verdict" in result.stderr  # the table
    assert not (tmp_path / "out").exists()


def test_classifier_metrics_with_labels_for_every_candidate(keys, tmp_path):
    x, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=400, random_state=0))
    joblib.dump(model.fit(x[:400], y[:400]), tmp_path / "m.joblib")
    np.save(tmp_path / "s.npy", x[:100])
    np.save(tmp_path / "v.npy", x[400:])
    np.savetxt(tmp_path / "y.csv", y[400:], header="label", comments="")
    [result] = build(
        options(
            keys,
            tmp_path / "m.joblib",
            tmp_path / "s.npy",
            tmp_path / "out",
            validation=tmp_path / "v.npy",
            labels=tmp_path / "y.csv",
        )
    )
    m = manifest_of(result)
    metrics_doc = m["validation"]["metrics"]
    assert metrics_doc["data"] == "validation" and metrics_doc["rows"] == len(x) - 400
    expected = {"accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"}
    assert expected <= set(metrics_doc["original"])
    assert metrics_doc["gate"]["measure"] == "accuracy drop"
    candidates = {c["mode"]: c for c in m["validation"]["candidates"]}
    assert set(candidates) == {"none", "dynamic", "static", "fp16"}
    for c in candidates.values():
        assert c["verdict"], c
        if c["size"] is not None:
            assert expected <= set(c["metrics"])
            assert c["latency_ms"]["p50"] > 0 and c["latency_ms"]["p95"] >= c["latency_ms"]["p50"]
    assert result.to_dict()["candidates"] == m["validation"]["candidates"]


def test_regressor_metrics_with_labels(keys, tmp_path):
    x, y = load_diabetes(return_X_y=True)
    joblib.dump(Ridge().fit(x, y), tmp_path / "r.joblib")
    np.save(tmp_path / "v.npy", x)
    np.save(tmp_path / "y.npy", y)
    [result] = build(
        options(
            keys,
            tmp_path / "r.joblib",
            tmp_path / "v.npy",
            tmp_path / "out",
            tolerance=1e-2,
            validation=tmp_path / "v.npy",
            labels=tmp_path / "y.npy",
        )
    )
    m = manifest_of(result)
    original = m["validation"]["metrics"]["original"]
    assert set(original) == {"mae", "rmse", "r2"} and original["r2"] > 0.4
    assert m["validation"]["metrics"]["gate"]["measure"] == "R² drop"
    verdicts = {c["mode"]: c["verdict"] for c in m["validation"]["candidates"]}
    assert verdicts == {
        "none": "chosen",
        "dynamic": "not quantizable",
        "static": "not quantizable",
        "fp16": "not quantizable",
    }


def test_agreement_without_labels(keys, iris, tmp_path):
    [result] = build(options(keys, iris["model"], iris["sample"], tmp_path / "a"))
    metrics_doc = manifest_of(result)["validation"]["metrics"]
    assert metrics_doc["gate"]["measure"] == "label disagreement"
    assert metrics_doc["packaged"]["label_agreement"] == 1.0
    assert {"max_abs_diff", "mean_abs_diff"} <= set(metrics_doc["packaged"])
    model = qm.conv_net(tmp_path / "conv.onnx")
    np.save(tmp_path / "x.npy", qm.rows((32, 1, 8, 8), positive=True))
    [result] = build(options(keys, model, tmp_path / "x.npy", tmp_path / "b", quantize="dynamic"))
    metrics_doc = manifest_of(result)["validation"]["metrics"]
    assert metrics_doc["gate"]["measure"] == "1 - output R²" and metrics_doc["labels"] is False
    assert 0 < metrics_doc["packaged"]["max_abs_diff"] < 0.5


def test_memory_budget_forces_a_smaller_variant(keys, tmp_path):
    model = qm.conv_net(tmp_path / "big.onnx", filters=128)  # ~330 KB > a quarter of 1 MB
    np.save(tmp_path / "x.npy", qm.rows((32, 1, 8, 8), positive=True))
    box = profile_file(tmp_path, ["none", "dynamic", "static"], memory_mb=1, name="tiny-box")
    [result] = build(
        options(
            keys,
            model,
            tmp_path / "x.npy",
            tmp_path / "out",
            targets=("tiny-box",),
            profile_files=(box,),
        )
    )
    q = manifest_of(result)["quantization"]
    assert q["mode"] in ("dynamic", "static") and "memory budget" in q["reason"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"labels": "y.npy"}, "--labels needs --validation"),
        ({"validation": "sample", "labels": "short.npy"}, "--labels has 5 rows"),
        ({"quantize": "fp16", "targets": ("raspberry-pi-4",)}, "does not allow --quantize fp16"),
        ({"quantize": "int4"}, "--quantize must be one of"),
    ],
)
def test_usage_errors(keys, iris, tmp_path, extra, message):
    np.save(tmp_path / "short.npy", np.zeros(5))
    np.save(tmp_path / "y.npy", np.zeros(50))
    files = {
        "sample": iris["sample"],
        "short.npy": tmp_path / "short.npy",
        "y.npy": tmp_path / "y.npy",
    }
    extra = {k: files.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}
    with pytest.raises(UsageError, match=message):
        build(options(keys, iris["model"], iris["sample"], tmp_path / "out", **extra))
    assert not (tmp_path / "out").exists()


def test_reproducible_build_keeps_timings_out_of_the_manifest(keys, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    model = qm.conv_net(tmp_path / "conv.onnx")
    np.save(tmp_path / "x.npy", qm.rows((32, 1, 8, 8), positive=True))
    built = [
        build(options(keys, model, tmp_path / "x.npy", tmp_path / d, quantize="static"))[0]
        for d in ("a", "b")
    ]
    assert built[0].path.read_bytes() == built[1].path.read_bytes()
    candidates = manifest_of(built[0])["validation"]["candidates"]
    assert all("latency_ms" not in c for c in candidates)
    assert all(c["latency_ms"] for c in built[0].to_dict()["candidates"])  # still reported


def test_json_output_carries_the_candidates(keys, iris, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "build",
            str(iris["model"]),
            "--target",
            "x86_64-generic",
            "--key",
            str(keys.key("release")),
            "--name",
            "iris",
            "--version",
            "1.0.0",
            "--sample",
            str(iris["sample"]),
            "--target",
            "raspberry-pi-4",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    x86, pi4 = json.loads(result.stdout)
    assert x86["quantization"]["mode"] == pi4["quantization"]["mode"] == "none"
    assert {c["mode"] for c in x86["candidates"]} == {"none", "dynamic", "static", "fp16"}
    assert {c["mode"] for c in pi4["candidates"]} == {"none", "dynamic", "static"}  # no fp16
    assert x86["metrics"]["gate"]["passed"] is True
    # ARM profiles are timed on this host, and say so
    assert ("not on an aarch64 device" in pi4["latency_measured_on"]) == (
        devices.host_arch() != "aarch64"
    )


def test_quantization_failure_of_an_explicit_mode_is_a_conversion_error(keys, tmp_path):
    model = qm.mlp(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", qm.rows((8, 64)))
    np.save(tmp_path / "empty.npy", qm.rows((0, 64)))
    with pytest.raises(ConversionError, match="No data"):
        build(
            options(
                keys,
                model,
                tmp_path / "x.npy",
                tmp_path / "out",
                quantize="static",
                calibration=tmp_path / "empty.npy",
            )
        )
