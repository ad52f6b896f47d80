"""Shared fixtures: real keys, real scikit-learn models, real bundles built by the packager."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from packager.build import BuildOptions, build
from packager.keys import generate
from runtime.signing import load_public_key
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.broker import Broker


@dataclass(frozen=True)
class Keys:
    folder: Path

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def pub(self, name: str) -> Path:
        return self.folder / f"{name}.pub"

    def public(self, name: str) -> Any:
        return load_public_key(self.pub(name).read_bytes())


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Key pairs 'release', 'second', 'third' (trusted in the default policy: release only) and
    'stranger' (never trusted)."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("release", "second", "third", "stranger"):
        generate(folder, name)
    return Keys(folder)


@pytest.fixture(scope="session")
def iris(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scikit-learn Pipeline (scaler + logistic regression) on iris, as .skops, and data."""
    folder = tmp_path_factory.mktemp("iris")
    x, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    sio.dump(model, folder / "clf.skops")
    np.save(folder / "sample.npy", x[::3].astype(np.float32))
    np.save(folder / "rows.npy", x[:5].astype(np.float32))
    return {
        "model": folder / "clf.skops",
        "sample": folder / "sample.npy",
        "rows": folder / "rows.npy",
        "x": folder,
    }


BuildBundle = Callable[..., Path]


@pytest.fixture(scope="session")
def build_bundle(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, iris: dict[str, Path]
) -> BuildBundle:
    """Build a real iris bundle: ``build_bundle(version="1.0.0", sequence=10, **options)``."""
    out_root = tmp_path_factory.mktemp("bundles")
    counter = iter(range(10**6))

    def make(
        version: str = "1.0.0",
        sequence: int = 10,
        target: str = "x86_64-generic",
        key_names: tuple[str, ...] = ("release",),
        name: str = "iris",
        **options: Any,
    ) -> Path:
        out = out_root / str(next(counter))
        opts = BuildOptions(
            model=options.pop("model", iris["model"]),
            targets=(target,),
            keys=tuple(keys.key(k) for k in key_names),
            name=name,
            version=version,
            sample=options.pop("sample", iris["sample"]),
            out=out,
            sequence=sequence,
            **options,
        )
        return build(opts)[0].path

    return make


@pytest.fixture
def device(tmp_path: Path, keys: Keys) -> Store:
    """An initialized device store trusting the 'release' key."""
    store = Store(tmp_path / "device")
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    return store


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Start real mosquitto brokers (see tests/broker.py); all are stopped after the test."""
    started: list[Broker] = []

    def start(**options: Any) -> Broker:
        broker = Broker(tmp_path / f"broker{len(started)}", **options).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.kill()
