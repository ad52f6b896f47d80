from __future__ import annotations

import numpy as np

from runtime.install import install_bundle
from runtime.model import LoadedModel


def test_install_and_predict(device, build_bundle, iris):
    bundle = build_bundle()
    result = install_bundle(device, bundle)
    assert result.slot == "a"
    model = LoadedModel.open(device.active_dir("iris"))
    out = model.predict({"input": np.load(iris["rows"])})
    assert out.outputs["label"].tolist() == [0, 0, 0, 0, 0]
