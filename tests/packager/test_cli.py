"""edgeship (host CLI) through CliRunner: keygen, profiles, build, verify, inspect, demo."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from packager.cli import main
from runtime.signing import key_id, load_public_key


@pytest.fixture
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args))


def test_keygen_prints_the_key_id(run, tmp_path):
    result = run("keygen", "--out", str(tmp_path), "--name", "k", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["keyid"] == key_id(load_public_key((tmp_path / "k.pub").read_bytes()))
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "k.key").read_bytes()  # PKCS#8
    again = run("keygen", "--out", str(tmp_path), "--name", "k")
    assert again.exit_code == 2 and "exists" in again.output


def test_profiles(run):
    doc = json.loads(run("profiles", "--json").output)
    names = {p["name"]: p for p in doc}
    assert names["x86_64-generic"]["arch"] == "x86_64"
    assert names["aarch64-generic"]["arch"] == "aarch64"


def test_profile_file_adds_a_profile(run, tmp_path):
    (tmp_path / "p.toml").write_text('name = "my-box"\narch = "aarch64"\nbackend = "onnxruntime"\n')
    doc = json.loads(run("profiles", "--profile-file", str(tmp_path / "p.toml"), "--json").output)
    assert "my-box" in {p["name"] for p in doc}
    (tmp_path / "bad.toml").write_text('name = "x"\narch = "sparc"\nbackend = "onnxruntime"\n')
    result = run("profiles", "--profile-file", str(tmp_path / "bad.toml"))
    assert result.exit_code == 2 and "arch must be one of" in result.output


def test_build_verify_inspect(run, keys, iris, tmp_path):
    result = run(
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
        "--out",
        str(tmp_path),
        "--json",
    )
    assert result.exit_code == 0, result.output
    [built] = json.loads(result.output)
    bundle = built["path"]
    verified = run("verify", bundle, "--trust", str(keys.pub("release")), "--json")
    assert verified.exit_code == 0 and json.loads(verified.output)["valid"]
    assert run("verify", bundle, "--trust", str(keys.pub("stranger"))).exit_code == 1
    doc = json.loads(run("inspect", bundle, "--json").output)
    assert doc["claimed_signers"] == [key_id(keys.public("release"))]
    assert doc["payload_ok"] and doc["manifest"]["name"] == "iris"
    human = run("inspect", bundle).output
    assert "signature claims key " + key_id(keys.public("release")) in human
    data = bytearray(open(bundle, "rb").read())
    data[-1500] ^= 1
    tampered = tmp_path / "t.eship"
    tampered.write_bytes(bytes(data))
    result = run("verify", str(tampered), "--trust", str(keys.pub("release")))
    assert result.exit_code == 1 and "payload:" in result.output
    assert json.loads(run("inspect", str(tampered), "--json").output)["payload_ok"] is False


def test_build_parity_failure_exits_1(run, keys, tmp_path):
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = 1.0 + rng.integers(0, 50, size=(100, 1)) * 1e-9
    joblib.dump(
        make_pipeline(StandardScaler(), LogisticRegression()).fit(x, x[:, 0] > 1 + 25e-9),
        tmp_path / "m.joblib",
    )
    np.save(tmp_path / "x.npy", x)
    result = run(
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
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 1
    assert "disagrees with the original" in result.output
    assert not (tmp_path / "out").exists()


def test_demo_runs_end_to_end(run, tmp_path):
    result = run("demo", "--dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["labels"] == [0, 1, 2]
    assert doc["tampered_refused"].startswith("payload")
    assert doc["active"] == "1.0.0"
    live = doc["live"]
    assert live["requests"] == 30 and live["counted"] == 30
    assert live["status"]["device"] == "device-1" and not live["status"]["online"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'name = "x"\narch = "aarch64"\nbackend = "onnxruntime"\nlatency_budget_ms = "fast"\n',
            "latency_budget_ms",
        ),
        (
            'name = "x"\narch = "aarch64"\nbackend = "onnxruntime"\nquantization = 3\n',
            "quantization",
        ),
        (
            'name = "x"\narch = "aarch64"\nbackend = "onnxruntime"\ncpu_features = "neon"\n',
            "cpu_features",
        ),
        ('name = "Big Box"\narch = "aarch64"\nbackend = "onnxruntime"\n', "name must be"),
        ('name = "x"\narch = "aarch64"\nbackend = "onnxruntime"\nthreads = 1000\n', "threads"),
        ('name = "x"\narch = "aarch64"\nbackend = "tensorrt"\n', "backend"),
        ("name = [", "not valid TOML"),
    ],
)
def test_bad_profile_files_get_one_clear_line(run, tmp_path, body, message):
    (tmp_path / "p.toml").write_text(body)
    result = run("profiles", "--profile-file", str(tmp_path / "p.toml"))
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
