"""``edgeship demo``: the whole story on this machine, with embedded defaults.

Trains a small scikit-learn model, makes a key, builds two signed versions, sets up a device store
in a folder, installs, predicts, upgrades, shows a tampered bundle refused, and rolls back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

Say = Callable[[str], None]


def run_demo(workdir: Path, say: Say) -> dict[str, Any]:
    """Run the demo in ``workdir`` (created if missing); returns what happened."""
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from devices import host_arch
    from packager.build import BuildOptions, build
    from packager.keys import generate
    from runtime.errors import BundleError
    from runtime.install import install_bundle, rollback
    from runtime.model import LoadedModel
    from runtime.signing import load_public_key
    from runtime.store import Store
    from runtime.trust import TrustPolicy

    workdir.mkdir(parents=True, exist_ok=True)
    say(f"working in {workdir}")
    x, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    sio.dump(model, workdir / "iris.skops")
    np.save(workdir / "sample.npy", x[::3])
    say("trained a scikit-learn pipeline on iris -> iris.skops")
    pair = generate(workdir / "keys", "demo") if not (workdir / "keys/demo.key").exists() else None
    key = workdir / "keys" / "demo.key"
    say(f"signing key {key}" + (f" (key id {pair.keyid[:16]}…)" if pair else ""))
    target = f"{host_arch()}-generic"
    bundles = []
    for sequence, version in enumerate(("1.0.0", "1.1.0"), start=1):
        opts = BuildOptions(model=workdir / "iris.skops", targets=(target,),
                            keys=(key,), name="iris", version=version,
                            sample=workdir / "sample.npy", out=workdir / "dist",
                            sequence=sequence)  # fmt: skip
        [result] = build(opts)
        bundles.append(result.path)
        say(f"built {result.path.name}: {result.size} bytes, parity "
            f"{result.parity.describe()}")  # fmt: skip
    store = Store(workdir / "device")
    store.save_policy(TrustPolicy.create([(load_public_key(key.with_suffix(".pub").read_bytes()), "demo")]))
    say(f"device store {store.home} trusts the demo key")
    first = install_bundle(store, bundles[0])
    say(f"installed iris {first.manifest.version} in slot {first.slot} (self-test passed)")
    prediction = LoadedModel.open(store.active_dir("iris")).predict({"input": x[[0, 75, 149]]})
    labels = prediction.outputs["label"].tolist()
    say(f"predicted classes {labels} for three flowers (expected {y[[0, 75, 149]].tolist()})")
    tampered = workdir / "dist" / "tampered.eship"
    data = bytearray(bundles[1].read_bytes())
    data[-2048] ^= 0xFF
    tampered.write_bytes(bytes(data))
    try:
        install_bundle(store, tampered)
        refused = ""
    except BundleError as e:
        refused = f"{e.step}: {e}"
        say(f"a tampered bundle was refused ({refused})")
    second = install_bundle(store, bundles[1])
    say(f"upgraded to {second.manifest.version} in slot {second.slot}")
    back = rollback(store, "iris")
    say(f"rolled back from {back.from_version} to {back.to_version}")
    return {"workdir": str(workdir), "bundles": [str(b) for b in bundles], "labels": labels,
            "tampered_refused": refused, "active": back.to_version}  # fmt: skip
