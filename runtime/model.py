"""A loaded model: a verified bundle folder, its backend, and its input checks.

This is the in-process inference API (``LoadedModel.predict``); the CLI, the self-test and the local
API all go through it. ``predict`` also checks values against the reference profile's ranges
(``runtime.ranges``); ``run`` is the bare path (signature checks and the backend only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from runtime.backends.base import Backend, open_backend
from runtime.errors import ModelError
from runtime.inputs import InputChecker
from runtime.limits import DEFAULT_INPUT_LIMITS, InputLimits
from runtime.manifest import Manifest
from runtime.ranges import IN_RANGE, RangeChecker, RangeReport
from runtime.verify import MANIFEST_MEMBER, parse_manifest


@dataclass(frozen=True)
class Prediction:
    """A model's outputs, its class labels, and the request's out-of-range values (if any)."""

    outputs: dict[str, np.ndarray]
    classes: Optional[tuple[Any, ...]]
    ranges: RangeReport = field(default=IN_RANGE)

    @property
    def out_of_range(self) -> dict[str, int]:
        """Values outside the reference profile's ranges, per feature; empty when none."""
        return self.ranges.counts

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"outputs": {k: v.tolist() for k, v in self.outputs.items()}}
        if self.classes is not None:
            doc["classes"] = list(self.classes)
        if self.ranges:
            doc["out_of_range"] = self.ranges.counts
        return doc


class LoadedModel:
    """A model ready to run. Build with :meth:`open`; thread-safe for ``predict``."""

    def __init__(self, manifest: Manifest, folder: Path, backend: Backend,
                 limits: InputLimits = DEFAULT_INPUT_LIMITS) -> None:  # fmt: skip
        self.manifest = manifest
        self.folder = folder
        self.backend = backend
        self.checker = InputChecker(manifest.model.inputs, limits)
        self._check_signature()
        self.ranges = RangeChecker.from_manifest(manifest)

    @classmethod
    def open(cls, folder: Path, limits: InputLimits = DEFAULT_INPUT_LIMITS) -> LoadedModel:
        """Load the bundle extracted in ``folder`` (a store slot or staging folder)."""
        manifest = parse_manifest((folder / MANIFEST_MEMBER).read_bytes())
        model_path = folder / "payload" / manifest.model.file
        backend = open_backend(manifest.target.backend, model_path, manifest.target.threads)
        return cls(manifest, folder, backend, limits)

    def _check_signature(self) -> None:
        declared = {t.name for t in self.manifest.model.inputs}
        actual = {t.name for t in self.backend.inputs}
        if declared != actual:
            raise ModelError(
                f"manifest inputs {sorted(declared)} do not match the model's {sorted(actual)}"
            )

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Check ``feeds`` against the signature and run; raises InputError or ModelError."""
        return self.backend.run(self.checker.check(feeds))

    def predict(self, feeds: Mapping[str, Any]) -> Prediction:
        """Like :meth:`run`, with the class labels of a classifier's probability columns and the
        values outside the reference ranges. Raises InputError (also for out-of-range values
        when the bundle's policy rejects them) or ModelError."""
        checked = self.checker.check(feeds)
        report = self.ranges.check(checked)
        return Prediction(self.backend.run(checked), self.manifest.model.labels, report)
