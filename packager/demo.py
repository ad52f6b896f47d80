"""``edgeship demo``: the whole story on this machine, with embedded defaults.

Trains a small scikit-learn model, makes a key, builds two signed versions, sets up a device store
in a folder, installs, predicts, upgrades, shows a tampered bundle refused, and rolls back; then
runs the device agent against a private broker with the fleet monitor watching (demo_live.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from devices import host_arch
from packager.build import BuildOptions, build
from packager.demo_live import run_live
from packager.keys import generate
from runtime.errors import BundleError
from runtime.install import install_bundle, rollback
from runtime.model import LoadedModel
from runtime.signing import load_public_key
from runtime.store import Store
from runtime.trust import TrustPolicy

Say = Callable[[str], None]


def _train(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    sio.dump(model, workdir / "iris.skops")
    np.save(workdir / "sample.npy", x[::3])
    return x, y


def _build_versions(workdir: Path, key: Path, say: Say) -> list[Path]:
    bundles = []
    for sequence, version in enumerate(("1.0.0", "1.1.0"), start=1):
        opts = BuildOptions(
            model=workdir / "iris.skops",
            targets=(f"{host_arch()}-generic",),
            keys=(key,),
            name="iris",
            version=version,
            sample=workdir / "sample.npy",
            out=workdir / "dist",
            sequence=sequence,
        )
        [result] = build(opts)
        bundles.append(result.path)
        say(f"built {result.path.name}: {result.size} bytes; parity {result.parity.describe()}")
    return bundles


def _tamper(bundle: Path) -> Path:
    data = bytearray(bundle.read_bytes())
    data[-2048] ^= 0xFF  # a byte inside the last payload member
    tampered = bundle.with_name("tampered.eship")
    tampered.write_bytes(bytes(data))
    return tampered


def run_demo(workdir: Path, say: Say) -> dict[str, Any]:
    """Run the demo in ``workdir`` (created if missing); returns what happened."""
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"working in {workdir}")
    x, y = _train(workdir)
    say("trained a scikit-learn pipeline on iris -> iris.skops")
    key = workdir / "keys" / "demo.key"
    if not key.exists():
        say(f"made signing key {key} (key id {generate(key.parent, 'demo').keyid[:16]}…)")
    bundles = _build_versions(workdir, key, say)
    store = Store(workdir / "device")
    public = load_public_key(key.with_suffix(".pub").read_bytes())
    store.save_policy(TrustPolicy.create([(public, "demo")]))
    say(f"device store {store.home} trusts the demo key")
    first = install_bundle(store, bundles[0])
    say(f"installed iris {first.manifest.version} in slot {first.slot} (self-test passed)")
    rows = [0, 75, 149]
    labels = LoadedModel.open(store.active_dir("iris")).run({"input": x[rows]})["label"].tolist()
    say(f"predicted classes {labels} for three flowers (true classes {y[rows].tolist()})")
    refused = ""
    try:
        install_bundle(store, _tamper(bundles[1]))
    except BundleError as e:
        refused = f"{e.step}: {e}"
        say(f"a tampered bundle was refused ({refused})")
    second = install_bundle(store, bundles[1])
    say(f"upgraded to {second.manifest.version} in slot {second.slot}")
    back = rollback(store, "iris")
    say(f"rolled back from {back.from_version} to {back.to_version}")
    live = run_live(workdir, store.home, "iris", x[::5].astype(np.float32), say)
    return {
        "workdir": str(workdir),
        "bundles": [str(b) for b in bundles],
        "labels": labels,
        "tampered_refused": refused,
        "active": back.to_version,
        "live": live,
    }
