"""Range checks against the reference profile (runtime/ranges.py), through real bundles."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from click.testing import CliRunner
from sklearn.linear_model import LinearRegression

from runtime.cli import main
from runtime.errors import InputError, ManifestError, ModelError
from runtime.install import install_bundle
from runtime.manifest import InputPolicy, Manifest
from runtime.model import LoadedModel
from runtime.ranges import RangeChecker, reference_features
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.packager.onnx_models import two_input_model

HEIGHT, WEIGHT, COLOUR = 0, 1, 2


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A regression on (height, weight, colour): colour is categorical with levels {0, 1, 3}."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(7)
    rows = 120
    x = np.column_stack(
        [
            rng.normal(170, 10, rows),
            rng.normal(70, 8, rows),
            rng.choice([0, 1, 3], rows),
        ]
    ).astype(np.float32)
    y = x @ np.array([0.5, -0.2, 3.0]) + 1.0
    sio.dump(LinearRegression().fit(x, y), folder / "reg.skops")
    np.savetxt(folder / "sample.csv", x, delimiter=",", header="height,weight,colour", comments="")
    return {"model": folder / "reg.skops", "sample": folder / "sample.csv", "x": x}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, keys, build_bundle, table) -> Store:
    """A device store with 'mixed' (flag policy) and 'strict' (reject policy) installed."""
    store = Store(tmp_path_factory.mktemp("device"))
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    for name, reject in (("mixed", False), ("strict", True)):
        bundle = build_bundle(
            name=name,
            model=table["model"],
            sample=table["sample"],
            quantize="none",
            reject_out_of_range=reject,
        )
        install_bundle(store, bundle)
    return store


def _open(store: Store, name: str) -> LoadedModel:
    return LoadedModel.open(store.active_dir(name))


def _planted(x: np.ndarray, features: dict[str, Any], rows: int) -> tuple[np.ndarray, dict]:
    """``rows`` rows of the sample with out-of-range values planted at known places."""
    data = np.resize(x, (rows, 3)).copy()
    h = features["height"]
    last = rows - 1
    data[0, HEIGHT] = h["max"] + 1
    data[last, HEIGHT] = h["min"] - 1
    data[last // 2, HEIGHT] = np.nextafter(np.float32(h["max"]), np.float32(np.inf))
    data[1, COLOUR] = 2  # inside [0, 3] but never seen
    data[last, COLOUR] = 0.5  # not a level
    data[last - 1, COLOUR] = 7  # above the range
    data[2, COLOUR] = -1  # below the range
    data[3, WEIGHT] = features["weight"]["max"]  # the bounds themselves are in range
    data[4, WEIGHT] = features["weight"]["min"]
    return data, {"height": 3, "colour": 4}


def test_the_profile_is_read_with_kinds_and_levels(store):
    model = _open(store, "mixed")
    by_label = {f.label: f for f in model.ranges.features}
    assert by_label["height"].kind == "numeric" and by_label["height"].mean is not None
    assert by_label["colour"].kind == "categorical" and by_label["colour"].levels == (0, 1, 3)
    assert model.manifest.out_of_range_policy == "flag"
    assert _open(store, "strict").manifest.out_of_range_policy == "reject"


def test_in_range_requests_report_nothing(store, table):
    prediction = _open(store, "mixed").predict({"input": table["x"]})
    assert prediction.out_of_range == {}
    assert "out_of_range" not in prediction.to_dict()


@pytest.mark.parametrize("rows", [5, 16, 300])
def test_planted_out_of_range_values_are_counted_exactly(store, table, rows):
    model = _open(store, "mixed")
    features = model.manifest.reference_profile["features"]
    data, expected = _planted(table["x"], features, rows)
    prediction = model.predict({"input": data})
    assert prediction.out_of_range == expected
    assert prediction.to_dict()["out_of_range"] == expected
    # flagged, not rejected: every row still has its prediction
    assert np.asarray(prediction.outputs["variable"]).shape == (rows, 1)
    flags = {f.feature: f for f in prediction.ranges.flags}
    assert flags["height"].row == 0 and flags["height"].value == pytest.approx(
        features["height"]["max"] + 1
    )
    assert flags["colour"].row == 1 and flags["colour"].value == 2
    assert "never" not in prediction.ranges.summary()  # the wording names the expected levels
    assert "colour: 4 value(s) not one of the reference levels {0, 1, 3}" in (
        prediction.ranges.summary()
    )


@pytest.mark.parametrize("rows", [1, 300])
def test_every_kind_of_categorical_miss_alone(store, table, rows):
    model = _open(store, "mixed")
    data = np.resize(table["x"], (rows, 3)).copy()
    assert model.predict({"input": data}).out_of_range == {}
    for value in (2.0, 0.25, 3.5, 4.0, -1.0):
        data[rows - 1, COLOUR] = value
        assert model.predict({"input": data}).out_of_range == {"colour": 1}, value


def test_flag_policy_checks_ranges_when_first_read_and_once(store, table, monkeypatch):
    """A caller that never reads the flags pays nothing for them (benchmarks/bench_predict.py);
    one that does gets the same report as an eager check, computed once."""
    model = _open(store, "mixed")
    checks = []
    real = model.ranges.check
    monkeypatch.setattr(model.ranges, "check", lambda arrays: checks.append(1) or real(arrays))
    data, expected = _planted(table["x"], model.manifest.reference_profile["features"], 16)
    prediction = model.predict({"input": data})
    assert checks == [] and prediction.inputs is not None
    assert prediction.out_of_range == expected and prediction.to_dict()["out_of_range"] == expected
    assert prediction.ranges is prediction.ranges and checks == [1]
    # the reject policy checks before the model runs, whether or not the caller reads the flags
    strict = _open(store, "strict")
    real_strict = strict.ranges.check
    monkeypatch.setattr(strict.ranges, "check", lambda a: checks.append(2) or real_strict(a))
    strict.predict({"input": table["x"][:3]})
    assert checks == [1, 2]


def test_reject_policy_names_feature_value_and_range(store, table):
    model = _open(store, "strict")
    assert model.predict({"input": table["x"]}).out_of_range == {}
    data = table["x"][:4].copy()
    data[2, WEIGHT] = 1000.0
    with pytest.raises(InputError) as e:
        model.predict({"input": data})
    weight = model.manifest.reference_profile["features"]["weight"]
    message = str(e.value)
    assert "weight: value 1000 (row 2)" in message
    assert f"[{weight['min']:g}, {weight['max']:g}]" in message
    assert "rejects out-of-range inputs" in message
    # the bare inference path does no range work
    assert model.run({"input": data})["variable"].shape == (4, 1)


def test_several_inputs_are_checked_each_against_its_own_columns(keys, build_bundle, tmp_path):
    model_path = two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    sample = {"a": rng.normal(size=(60, 4)), "b": rng.normal(size=(60, 3)), "scale": np.array([2])}
    np.savez(tmp_path / "s.npz", **sample)
    store = Store(tmp_path / "device")
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    install_bundle(store, build_bundle(name="two", model=model_path, sample=tmp_path / "s.npz"))
    model = _open(store, "two")
    feeds = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in sample.items()}
    feeds["b"] = feeds["b"].copy()
    feeds["b"][5, 2] = 99.0
    feeds["b"][6, 2] = 98.0
    feeds["scale"] = np.array([3])
    assert model.predict(feeds).out_of_range == {"b[2]": 2, "scale[0]": 1}


# --- the manifest's input_policy ----------------------------------------------------------------


def _manifest_doc(store: Store, name: str) -> dict[str, Any]:
    return _open(store, name).manifest.to_dict()


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("reject", "input_policy: expected an object"),
        ({"out_of_range": "drop"}, "input_policy.out_of_range: 'drop' is not one of flag, reject"),
        ({"out_of_range": True}, "input_policy.out_of_range: expected str"),
        ([], "input_policy: expected an object"),
    ],
)
def test_bad_input_policies_are_manifest_errors(store, policy, message):
    doc = _manifest_doc(store, "mixed")
    doc["input_policy"] = policy
    with pytest.raises(ManifestError, match="input_policy") as e:
        Manifest.from_dict(doc)
    assert message in str(e.value)


def test_input_policy_round_trip_and_default(store):
    doc = _manifest_doc(store, "strict")
    assert doc["input_policy"] == {"out_of_range": "reject"}
    assert Manifest.from_dict(doc).to_dict() == doc
    del doc["input_policy"]
    manifest = Manifest.from_dict(doc)
    assert manifest.input_policy is None and manifest.out_of_range_policy == "flag"
    assert "input_policy" not in manifest.to_dict()
    doc["input_policy"] = {}
    assert Manifest.from_dict(doc).input_policy == InputPolicy("flag")


# --- malformed reference profiles ---------------------------------------------------------------


def _with_height(**changes: Any) -> dict[str, Any]:
    entry = {"input": "input", "index": 0, "kind": "numeric", "min": 1.0, "max": 2.0, "mean": 1.5}
    entry.update(changes)
    return {"features": {"height": entry}}


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"features": []}, "features: expected an object"),
        ({"features": {"x": 3}}, "expected an object"),
        (_with_height(input="other"), "'other' is not an input"),
        (_with_height(index=3), "column 3 does not exist"),
        (_with_height(index=-1), "non-negative integer"),
        (_with_height(index=True), "non-negative integer"),
        (_with_height(min=3.0), "min is above max"),
        (_with_height(max="big"), "max: expected a finite number"),
        (_with_height(mean=None), "mean: expected a finite number"),
        (_with_height(kind="ordinal"), "kind: expected one of numeric, categorical"),
        (_with_height(kind="categorical"), "frequencies: expected a non-empty object"),
        (_with_height(kind="categorical", frequencies={"x": 1}), "not an integer level"),
        (_with_height(kind="categorical", frequencies={"9": 1}), "outside [min, max]"),
        (_with_height(kind="categorical", frequencies={"1": -2}), "expected a count"),
        (
            {
                "features": {
                    **_with_height()["features"],
                    "again": _with_height()["features"]["height"],
                }
            },
            "two features name the same input column",
        ),
    ],
)
def test_malformed_profiles_are_model_errors(store, profile, message):
    manifest = dataclasses.replace(_open(store, "mixed").manifest, reference_profile=profile)
    with pytest.raises(ModelError) as e:
        RangeChecker.from_manifest(manifest)
    assert message in str(e.value)


def test_features_without_reference_values_are_not_checked(store):
    manifest = _open(store, "mixed").manifest
    profile = {"features": {"height": {"input": "input", "index": 0, "count": 0, "missing": 9}}}
    (feature,) = reference_features(profile, manifest.model.inputs)
    assert feature.kind is None and feature.baseline is None
    checker = RangeChecker([feature], manifest.model.inputs, reject=True)
    assert not checker.check({"input": np.full((2, 3), 1e9, np.float32)})


@pytest.mark.parametrize("rows", [1, 40])
def test_categorical_range_is_that_of_its_levels(store, rows):
    manifest = _open(store, "mixed").manifest
    entry = {"input": "input", "index": 2, "kind": "categorical", "min": -5, "max": 5}
    entry["frequencies"] = {"0": 3, "2": 1}
    (feature,) = reference_features({"features": {"c": entry}}, manifest.model.inputs)
    assert (feature.low, feature.high, feature.baseline) == (0.0, 2.0, 0.0)
    checker = RangeChecker([feature], manifest.model.inputs)
    x = np.zeros((rows, 3), np.float32)
    assert not checker.check({"input": x})
    for value in (-3.0, -1.0, -0.5, 1.0, 3.0, 5.0):
        x[-1, 2] = value
        assert checker.check({"input": x}).counts == {"c": 1}, value


# --- the CLIs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "policy"), [((), "flag"), (("--reject-out-of-range",), "reject")])
def test_build_option_writes_the_policy(keys, table, tmp_path, flag, policy):
    from packager.cli import main as host

    args = ["build", str(table["model"]), "--target", "x86_64-generic", "--quantize", "none"]
    args += ["--key", str(keys.key("release")), "--name", "m", "--version", "1.0.0"]
    args += ["--sample", str(table["sample"]), "--out", str(tmp_path), "--json", *flag]
    result = CliRunner().invoke(host, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(
        CliRunner().invoke(host, ["inspect", json.loads(result.stdout)[0]["path"], "--json"]).stdout
    )
    assert doc["manifest"]["input_policy"] == {"out_of_range": policy}


def _predict(store: Store, name: str, path: Path, *args: str):
    return CliRunner().invoke(
        main, ["predict", name, "--input", str(path), "--home", str(store.home), *args]
    )


def test_cli_warns_in_human_mode_and_reports_in_json(store, table, tmp_path):
    features = _open(store, "mixed").manifest.reference_profile["features"]
    data, expected = _planted(table["x"], features, 10)
    np.save(tmp_path / "rows.npy", data)
    human = _predict(store, "mixed", tmp_path / "rows.npy")
    assert human.exit_code == 0, human.output
    assert "warning: out of the reference range: height: 3 value(s)" in human.stderr
    assert "colour: 4 value(s)" in human.stderr and "warning" not in human.stdout
    as_json = _predict(store, "mixed", tmp_path / "rows.npy", "--json")
    assert as_json.exit_code == 0 and as_json.stderr == ""
    assert json.loads(as_json.stdout)["out_of_range"] == expected


def test_cli_in_range_request_has_no_warning(store, table, tmp_path):
    np.save(tmp_path / "rows.npy", table["x"][:3])
    result = _predict(store, "mixed", tmp_path / "rows.npy", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    assert "out_of_range" not in json.loads(result.stdout)


def test_cli_reject_policy_exits_5(store, table, tmp_path):
    data = table["x"][:3].copy()
    data[1, HEIGHT] = -5.0
    np.save(tmp_path / "rows.npy", data)
    result = _predict(store, "strict", tmp_path / "rows.npy")
    assert result.exit_code == 5
    assert "error: height: value -5 (row 1) is not within the reference range" in result.stderr
