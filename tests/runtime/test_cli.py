"""edgeship-device through its real CLI (CliRunner): outputs, formats and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from packager.build import BuildOptions, build
from runtime.cli import main
from tests.packager.onnx_models import two_input_model


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()
    home = tmp_path / "home"

    def invoke(*args, input=None):
        return runner.invoke(main, [*args, "--home", str(home)], input=input)

    return invoke


@pytest.fixture
def installed(run, keys, build_bundle):
    assert run("init", "--trust", str(keys.pub("release"))).exit_code == 0
    result = run("install", str(build_bundle("1.0.0", 10)), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_install_reports_selftest(installed):
    assert installed["slot"] == "a" and installed["selftest"]["passed"]
    assert installed["selftest"]["rows"] > 0


@pytest.mark.parametrize("suffix", [".json", ".csv", ".npy", ".npz", "-dict.json", "-"])
def test_predict_reads_every_format(run, installed, iris, tmp_path, suffix):
    rows = np.load(iris["rows"])
    if suffix == ".json":
        path = tmp_path / "r.json"
        path.write_text(json.dumps(rows.tolist()))
    elif suffix == "-dict.json":
        path = tmp_path / "r.json"
        path.write_text(json.dumps({"inputs": {"input": rows.tolist()}}))
    elif suffix == ".csv":
        path = tmp_path / "r.csv"
        np.savetxt(path, rows, delimiter=",", header="a,b,c,d", comments="")
    elif suffix == ".npy":
        path = tmp_path / "r.npy"
        np.save(path, rows)
    elif suffix == ".npz":
        path = tmp_path / "r.npz"
        np.savez(path, input=rows)
    target = "-" if suffix == "-" else str(path)
    stdin = json.dumps(rows.tolist()) if suffix == "-" else None
    result = run("predict", "iris", "--input", target, "--json", input=stdin)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["outputs"]["label"] == [0, 0, 0, 0, 0]
    assert doc["classes"] == [0, 1, 2]
    assert np.allclose(np.sum(doc["outputs"]["probabilities"], axis=1), 1, atol=1e-5)


def test_predict_human_output_names_classes(run, installed, iris):
    result = run("predict", "iris", "--input", str(iris["rows"]))
    assert result.exit_code == 0
    assert "classes: [0, 1, 2]" in result.output and "label: [0, 0, 0, 0, 0]" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[1, 2, 3]]", "dimension 1 must be 4"),
        ("not json", "not valid JSON"),
        ('[[1, 2, 3, "x"]]', "expected float32"),
        ("[[1, 2], [3]]", "different lengths"),
        ('{"wrong": [[1, 2, 3, 4]]}', "missing input(s) input"),
        ("[[1, 2, 3, NaN]]", "NaN"),
        ("[[[1, 2, 3, 4]]]", "expected rank 2"),
    ],
)
def test_bad_requests_exit_5_with_a_clear_line(run, installed, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = run("predict", "iris", "--input", str(path))
    assert result.exit_code == 5
    assert message in result.output


def test_several_inputs_from_npz(run, keys, tmp_path):
    model = two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "s.npz",
        a=rng.normal(size=(4, 4)),
        b=rng.normal(size=(4, 3)),
        scale=np.array([3]),
    )
    [bundle] = build(
        BuildOptions(
            model=model,
            targets=("x86_64-generic",),
            keys=(keys.key("release"),),
            name="two",
            version="1.0.0",
            sample=tmp_path / "s.npz",
            out=tmp_path / "d",
        )
    )
    assert run("init", "--trust", str(keys.pub("release"))).exit_code == 0
    assert run("install", str(bundle.path)).exit_code == 0
    result = run("predict", "two", "--input", str(tmp_path / "s.npz"), "--json")
    assert result.exit_code == 0, result.output
    got = np.array(json.loads(result.output)["outputs"]["y"])
    data = np.load(tmp_path / "s.npz")
    want = data["a"] @ (np.arange(12).reshape(4, 3) / 10) + data["b"] * 3
    assert np.allclose(got, want, atol=1e-4)
    result = run("predict", "two", "--input", str(tmp_path / "s.npz").replace(".npz", ".npy"))
    assert result.exit_code == 2  # no such file: a usage error


def test_wrong_target_is_refused_unless_overridden(run, keys, build_bundle):
    run("init", "--trust", str(keys.pub("release")))
    arm = build_bundle(target="aarch64-generic")
    result = run("install", str(arm))
    assert result.exit_code == 1
    assert "target: bundle is for aarch64-generic (aarch64); this device is x86_64" in result.output
    assert run("install", str(arm), "--allow-any-target").exit_code == 0


def test_exit_codes(run, keys, build_bundle, tmp_path):
    assert run("install", str(build_bundle())).exit_code == 3  # not initialized: trust problem
    assert run("init", "--trust", str(keys.pub("release"))).exit_code == 0
    assert run("init", "--trust", str(keys.pub("release"))).exit_code == 6  # exists
    assert run("init", "--trust", str(keys.pub("release")), "--force").exit_code == 0
    assert run("install", str(tmp_path / "missing.eship")).exit_code == 2
    assert run("rollback", "iris").exit_code == 6
    assert run("predict", "iris", "--input", "x.json").exit_code == 6
    assert run("install", "--bogus").exit_code == 2
    stranger = build_bundle(key_names=("stranger",))
    result = run("install", str(stranger))
    assert result.exit_code == 1 and "signatures:" in result.output


def test_threshold_and_revocation_from_init(run, keys, build_bundle):
    args = ["--trust", str(keys.pub("release")), "--trust", str(keys.pub("second"))]
    assert run("init", *args, "--threshold", "2").exit_code == 0
    assert run("install", str(build_bundle())).exit_code == 1
    both = build_bundle(key_names=("release", "second"))
    assert run("install", str(both)).exit_code == 0
    from runtime.signing import key_id

    revoked = key_id(keys.public("second"))
    run("init", *args, "--revoke", revoked, "--force")
    result = run("install", str(build_bundle("1.1.0", 11, key_names=("second",))))
    assert result.exit_code == 1 and "revoked" in result.output


def test_list_and_status(run, installed):
    listing = json.loads(run("list", "--json").output)
    assert [(m["name"], m["version"], m["slot"]) for m in listing] == [("iris", "1.0.0", "a")]
    status = json.loads(run("status", "--json").output)
    model = status["models"][0]
    assert len(model["digest"]) == 64 and model["sequence"] == 10
    assert model["last_selftest"]["passed"]
    assert status["trust"]["threshold"] == 1
    assert "iris: 1.0.0 seq 10 slot a" in run("status").output
