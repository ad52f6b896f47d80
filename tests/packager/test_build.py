"""edgeship build: every input kind converts, runs, and is checked against the original."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from packager.build import BuildOptions, build
from packager.inspect import inspect_bundle
from runtime.errors import ConversionError, KeyError_, ParityError, UsageError
from tests.packager.onnx_models import constant_weight_mlp, two_input_model


def options(keys, model, sample, out, **extra):
    return BuildOptions(
        model=model,
        targets=extra.pop("targets", ("x86_64-generic",)),
        keys=(keys.key("release"),),
        name=extra.pop("name", "m"),
        version="1.0.0",
        sample=sample,
        out=out,
        **extra,
    )


def manifest_of(path):
    return inspect_bundle(path)["manifest"]


def test_classifier_pipeline_has_plain_outputs_and_labels(keys, iris, tmp_path):
    [result] = build(options(keys, iris["model"], iris["sample"], tmp_path))
    m = manifest_of(result.path)
    assert m["model"]["task"] == "classification"
    assert m["model"]["labels"] == [0, 1, 2]
    assert m["model"]["label_output"] == "label"
    outputs = {o["name"]: o for o in m["model"]["outputs"]}
    assert outputs["probabilities"]["dtype"] == "float32"  # a matrix, not a ZipMap sequence
    assert outputs["probabilities"]["shape"] == [None, 3]
    assert m["model"]["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 4]}]
    assert m["validation"]["parity"]["label_agreement"] == 1.0
    assert result.path.name == "m-1.0.0-x86_64-generic.eship"


def test_string_labels_random_forest_from_pickle(keys, tmp_path):
    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, names)
    (tmp_path / "rf.pkl").write_bytes(__import__("pickle").dumps(model))
    np.save(tmp_path / "x.npy", x[::5])
    warnings = []
    [result] = build(
        options(keys, tmp_path / "rf.pkl", tmp_path / "x.npy", tmp_path / "out"),
        warn=warnings.append,
    )
    assert manifest_of(result.path)["model"]["labels"] == ["setosa", "versicolor", "virginica"]
    assert any("run code when loaded" in w for w in warnings)


def test_regressor_pipeline_with_imputer_from_joblib_and_csv(keys, tmp_path):
    x, y = load_diabetes(return_X_y=True)
    model = make_pipeline(SimpleImputer(), StandardScaler(), Ridge()).fit(x, y)
    joblib.dump(model, tmp_path / "reg.joblib")
    header = ",".join(f"f{i}" for i in range(x.shape[1]))
    np.savetxt(tmp_path / "x.csv", x[:50], delimiter=",", header=header, comments="")
    [result] = build(
        options(keys, tmp_path / "reg.joblib", tmp_path / "x.csv", tmp_path / "o", tolerance=1e-2)
    )
    m = manifest_of(result.path)
    assert m["model"]["task"] == "regression"
    assert m["model"]["labels"] is None
    assert sorted(m["reference_profile"]["features"]) == sorted(header.split(","))
    assert m["reference_profile"]["features"]["f0"]["count"] == 50


def test_onnx_with_several_inputs_from_npz(keys, tmp_path):
    model = two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "s.npz",
        a=rng.normal(size=(6, 4)),
        b=rng.normal(size=(6, 3)),
        scale=np.array([2]),
    )
    [result] = build(options(keys, model, tmp_path / "s.npz", tmp_path / "o"))
    m = manifest_of(result.path)
    inputs = {i["name"]: i for i in m["model"]["inputs"]}
    assert inputs["a"]["shape"] == [None, 4]
    assert inputs["scale"]["dtype"] == "int64"
    assert m["model"]["task"] == "other"
    assert m["provenance"]["source_format"] == "onnx"


def test_onnx_several_inputs_needs_npz(keys, tmp_path):
    model = two_input_model(tmp_path / "two.onnx")
    np.save(tmp_path / "a.npy", np.zeros((2, 4)))
    with pytest.raises(UsageError, match="several inputs"):
        build(options(keys, model, tmp_path / "a.npy", tmp_path / "o"))


def test_onnx_with_constant_node_weights(keys, tmp_path):
    model = constant_weight_mlp(tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(10, 8)))
    [result] = build(options(keys, model, tmp_path / "x.npy", tmp_path / "o"))
    assert inspect_bundle(result.path)["payload_ok"]


def test_parity_failure_writes_nothing_and_reports(keys, tmp_path):
    # Features that only float64 can tell apart: float32 conversion collapses them.
    rng = np.random.default_rng(0)
    x = 1.0 + rng.integers(0, 50, size=(200, 1)) * 1e-9
    y = (x[:, 0] > 1.0 + 25e-9).astype(int)
    joblib.dump(
        make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y), tmp_path / "fine.joblib"
    )
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    with pytest.raises(ParityError) as info:
        build(options(keys, tmp_path / "fine.joblib", tmp_path / "x.npy", out))
    assert "label agreement" in str(info.value)
    assert "max |difference|" in str(info.value)
    assert not out.exists()


def test_unsupported_estimator_is_named(keys, tmp_path):
    x, _ = load_iris(return_X_y=True)
    joblib.dump(KMeans(n_clusters=2, n_init=1).fit(x), tmp_path / "k.joblib")
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ConversionError, match="KMeans"):
        build(options(keys, tmp_path / "k.joblib", tmp_path / "x.npy", tmp_path / "o"))


def test_unknown_profile_lists_known(keys, iris, tmp_path):
    with pytest.raises(UsageError, match="x86_64-generic"):
        build(options(keys, iris["model"], iris["sample"], tmp_path, targets=("pdp-11",)))


def test_several_targets_one_bundle_each(keys, iris, tmp_path):
    results = build(
        options(
            keys,
            iris["model"],
            iris["sample"],
            tmp_path,
            targets=("x86_64-generic", "aarch64-generic"),
        )
    )
    arches = {manifest_of(r.path)["target"]["arch"] for r in results}
    assert arches == {"x86_64", "aarch64"}


def test_deterministic_with_source_date_epoch(keys, iris, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    [a] = build(options(keys, iris["model"], iris["sample"], tmp_path / "a"))
    [b] = build(options(keys, iris["model"], iris["sample"], tmp_path / "b"))
    assert a.path.read_bytes() == b.path.read_bytes()
    m = manifest_of(a.path)
    assert m["sequence"] == 1790000000  # the default sequence is the build clock
    assert m["created"] == "2026-09-21T14:13:20Z"
    assert m["expires"] == "2027-09-21T14:13:20Z"  # 365 days by default
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000001")
    [c] = build(options(keys, iris["model"], iris["sample"], tmp_path / "c"))
    assert c.path.read_bytes() != a.path.read_bytes()
    assert manifest_of(c.path)["sequence"] > m["sequence"]


def test_expires_zero_means_never_with_warning(keys, iris, tmp_path):
    warnings = []
    [r] = build(
        options(keys, iris["model"], iris["sample"], tmp_path, expires_days=0), warn=warnings.append
    )
    assert manifest_of(r.path)["expires"] is None
    assert any("never expires" in w for w in warnings)


def test_encrypted_key_needs_passphrase(iris, tmp_path, monkeypatch):
    from packager.keys import generate

    monkeypatch.setenv("EDGESHIP_KEY_PASSPHRASE", "correct horse")
    pair = generate(tmp_path / "k", "enc")
    assert pair.encrypted and b"ENCRYPTED" in pair.private_path.read_bytes()
    opts = BuildOptions(
        model=iris["model"],
        targets=("x86_64-generic",),
        keys=(pair.private_path,),
        name="m",
        version="1.0.0",
        sample=iris["sample"],
        out=tmp_path / "o",
    )
    assert build(opts)[0].signers == (pair.keyid,)
    monkeypatch.setenv("EDGESHIP_KEY_PASSPHRASE", "wrong")
    with pytest.raises(KeyError_, match="wrong passphrase"):
        build(opts)
    monkeypatch.delenv("EDGESHIP_KEY_PASSPHRASE")
    with pytest.raises(KeyError_, match="EDGESHIP_KEY_PASSPHRASE"):
        build(opts)


def test_bad_name_and_version_are_usage_errors(keys, iris, tmp_path):
    with pytest.raises(UsageError, match="--name"):
        build(options(keys, iris["model"], iris["sample"], tmp_path, name="Bad Name"))
    opts = options(keys, iris["model"], iris["sample"], tmp_path)
    with pytest.raises(UsageError, match="semantic version"):
        build(BuildOptions(**{**opts.__dict__, "version": "1.0"}))


def test_manifest_is_canonical_json(keys, iris, tmp_path):
    from runtime.tarfmt import TarReader

    [r] = build(options(keys, iris["model"], iris["sample"], tmp_path))
    with r.path.open("rb") as f:
        reader = TarReader(f)
        reader.next()
        raw = reader.read_all()
    doc = json.loads(raw)
    assert (
        raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_profile_that_cannot_run_the_model_format_is_refused(keys, iris, tmp_path):
    with pytest.raises(UsageError, match="armv7-tflite runs litert only"):
        build(
            options(
                keys,
                iris["model"],
                iris["sample"],
                tmp_path / "o",
                targets=("x86_64-generic", "armv7-tflite"),
            )
        )
    assert not (tmp_path / "o").exists()
