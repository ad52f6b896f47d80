"""A loaded model: a verified bundle folder, its backend, and its input checks.

This is the in-process inference API (``LoadedModel.predict``); the CLI, the self-test and the local
API all go through it. ``predict`` also checks values against the reference profile's ranges
(``runtime.ranges``) when the caller reads them; ``run`` is the bare path (signature checks and
the backend only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from runtime.backends.base import Backend, open_backend
from runtime.errors import ModelError
from runtime.inputs import InputChecker
from runtime.limits import DEFAULT_INPUT_LIMITS, InputLimits
from runtime.manifest import Manifest
from runtime.ranges import RangeChecker, RangeReport
from runtime.verify import MANIFEST_MEMBER, parse_manifest


class Prediction:
    """A model's outputs, its class labels, and the request's out-of-range values (if any).

    ``ranges`` is checked against the reference profile when first read, from the request's
    arrays as ``predict`` passed them to the model (``inputs``): a caller that never reads it
    pays nothing for it. The CLI, the local API and the agent read it at once; a caller that
    reuses its input buffers should read it before changing them in place. A bundle whose policy
    rejects out-of-range inputs is checked before the model runs.

    Made by :meth:`LoadedModel.predict`; it holds three references, so that making one costs
    little next to the model run.
    """

    __slots__ = ("_model", "_ranges", "inputs", "outputs")

    _ranges: RangeReport

    def __init__(
        self, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray], model: LoadedModel
    ) -> None:
        self.outputs = outputs
        self.inputs = inputs
        """The arrays the model ran on (after the input checks)."""
        self._model = model

    @property
    def classes(self) -> Optional[tuple[Any, ...]]:
        """The class labels of a classifier's probability columns; None for other models."""
        return self._model.manifest.model.labels

    @property
    def ranges(self) -> RangeReport:
        """The request's values outside the reference ranges (empty when none)."""
        try:
            return self._ranges
        except AttributeError:  # not read yet
            report = self._ranges = self._model.ranges.check(self.inputs)
            return report

    @property
    def out_of_range(self) -> dict[str, int]:
        """Values outside the reference profile's ranges, per feature; empty when none."""
        return self.ranges.counts

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"outputs": {k: v.tolist() for k, v in self.outputs.items()}}
        classes = self.classes
        if classes is not None:
            doc["classes"] = list(classes)
        ranges = self.ranges
        if ranges:
            doc["out_of_range"] = ranges.counts
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
        self._reject = self.ranges.reject

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
        values outside the reference ranges (checked when the prediction's ``ranges`` is first
        read). Raises InputError (also for out-of-range values when the bundle's policy rejects
        them, checked before the model runs) or ModelError."""
        checked = self.checker.check(feeds)
        if self._reject:
            report = self.ranges.check(checked)
            prediction = Prediction(self.backend.run(checked), checked, self)
            prediction._ranges = report
            return prediction
        return Prediction(self.backend.run(checked), checked, self)
