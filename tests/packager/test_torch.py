"""packager/convert/from_torch.py: real PyTorch models exported to ONNX, run with onnxruntime."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from packager.convert import Converted, convert
from packager.data import Dataset
from packager.runner import describe, run_packaged
from runtime.errors import ConversionError, UsageError
from runtime.manifest import TensorSpec

ROOT = Path(__file__).resolve().parents[2]
ROWS = np.random.default_rng(5).normal(size=(12, 4))


class TwoInputs(torch.nn.Module):
    """Two inputs, two outputs: what an .npz sample and output naming must cope with."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 2)
        self.b = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x) + self.b(z), torch.relu(self.a(x))


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1)
    ).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("torch")
    mlp = _mlp()
    example = (torch.randn(5, 4),)
    dynamic = torch.export.export(mlp, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(dynamic, folder / "mlp.pt2")
    torch.export.save(torch.export.export(mlp, example), folder / "static.pt2")
    torch.save(mlp, folder / "mlp.pt")
    torch.save(mlp.state_dict(), folder / "weights.pt")
    with (
        warnings.catch_warnings()
    ):  # torch 2.13 deprecates TorchScript; users still have such files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(mlp), folder / "scripted.pt")
    two = TwoInputs().eval()
    auto = {"x": {0: torch.export.Dim.AUTO}, "z": {0: torch.export.Dim.AUTO}}
    program = torch.export.export(two, (torch.randn(3, 4), torch.randn(3, 3)), dynamic_shapes=auto)
    torch.export.save(program, folder / "two.pt2")
    return {p.stem + p.suffix.replace(".", "_"): p for p in folder.iterdir()}


def _convert(path: Path, sample: Dataset) -> tuple[Converted, list[str]]:
    warnings: list[str] = []
    return convert(path, sample, warnings.append), warnings


def _torch_outputs(rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return _mlp()(torch.from_numpy(rows.astype(np.float32))).numpy()


def _batch_dim(converted: Converted) -> onnx.TensorShapeProto.Dimension:
    model = onnx.load_from_string(converted.model_bytes)
    return model.graph.input[0].type.tensor_type.shape.dim[0]


@pytest.mark.parametrize("name", ["mlp_pt2", "mlp_pt"])
def test_mlp_converts_with_parity_and_a_dynamic_batch(files: dict[str, Path], name: str) -> None:
    converted, warnings = _convert(files[name], Dataset({None: ROWS}))
    assert converted.model_format == "onnx"
    assert converted.source_format == f"pytorch ({name.split('_')[1]})"
    assert converted.task == "other"
    assert set(converted.inputs) == {"input"}
    assert converted.inputs["input"].dtype == np.float32
    assert set(converted.reference) == {"output"}
    np.testing.assert_allclose(converted.reference["output"], _torch_outputs(ROWS), atol=1e-6)
    packaged = run_packaged(converted.model_bytes, "onnx", converted.inputs)
    np.testing.assert_allclose(packaged["output"], converted.reference["output"], atol=1e-5)

    dim = _batch_dim(converted)
    assert dim.dim_param and not dim.HasField("dim_value")
    inputs, outputs = describe(converted.model_bytes, "onnx")
    assert inputs == (TensorSpec("input", "float32", (None, 4)),)
    assert outputs == (TensorSpec("output", "float32", (None, 3)),)
    for rows in (1, 7):
        x = ROWS[:rows].astype(np.float32)
        out = run_packaged(converted.model_bytes, "onnx", {"input": x})["output"]
        np.testing.assert_allclose(out, _torch_outputs(x), atol=1e-5)

    assert converted.converter["torch"] == torch.__version__
    assert converted.converter["exporter"] == "torch.onnx (dynamo)"
    assert {"onnxscript", "onnx"} <= set(converted.converter)
    code_warning = [w for w in warnings if "run code when loaded" in w]
    assert len(code_warning) == (1 if name == "mlp_pt" else 0)


def test_single_row_sample_still_exports_a_dynamic_batch(files: dict[str, Path]) -> None:
    converted, _ = _convert(files["mlp_pt"], Dataset({None: ROWS[:1]}))
    assert _batch_dim(converted).dim_param
    out = run_packaged(converted.model_bytes, "onnx", {"input": ROWS[:6].astype(np.float32)})
    np.testing.assert_allclose(out["output"], _torch_outputs(ROWS[:6]), atol=1e-5)


def test_static_exported_program_warns_and_keeps_its_batch(files: dict[str, Path]) -> None:
    converted, warnings = _convert(files["static_pt2"], Dataset({None: ROWS[:5]}))
    assert any("fixed batch size" in w for w in warnings)
    assert _batch_dim(converted).dim_value == 5
    packaged = run_packaged(converted.model_bytes, "onnx", converted.inputs)
    np.testing.assert_allclose(packaged["output"], _torch_outputs(ROWS[:5]), atol=1e-5)
    with pytest.raises(UsageError, match="takes shape 5x4"):
        convert(files["static_pt2"], Dataset({None: ROWS}), lambda _: None)


def test_torchscript_archive_falls_back_to_the_torchscript_exporter(
    files: dict[str, Path],
) -> None:
    converted, _ = _convert(files["scripted_pt"], Dataset({None: ROWS}))
    assert converted.converter["exporter"] == "torch.onnx (torchscript)"
    assert _batch_dim(converted).dim_param
    packaged = run_packaged(converted.model_bytes, "onnx", converted.inputs)
    np.testing.assert_allclose(packaged["output"], _torch_outputs(ROWS), atol=1e-5)


def test_two_inputs_are_named_from_forward_and_fed_from_npz(files: dict[str, Path]) -> None:
    rng = np.random.default_rng(2)
    sample = Dataset({"z": rng.normal(size=(4, 3)), "x": rng.normal(size=(4, 4))})
    converted, _ = _convert(files["two_pt2"], sample)
    assert list(converted.inputs) == ["x", "z"]
    assert list(converted.reference) == ["output_0", "output_1"]
    packaged = run_packaged(converted.model_bytes, "onnx", converted.inputs)
    for name in ("output_0", "output_1"):
        np.testing.assert_allclose(packaged[name], converted.reference[name], atol=1e-5)
    with pytest.raises(UsageError, match=r"takes 2 inputs \(x, z\)"):
        convert(files["two_pt2"], Dataset({None: ROWS}), lambda _: None)


def test_state_dict_is_refused_with_what_to_do(files: dict[str, Path]) -> None:
    with pytest.raises(ConversionError, match="state_dict"):
        convert(files["weights_pt"], Dataset({None: ROWS}), lambda _: None)


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_files_that_are_not_torch_models_are_conversion_errors(tmp_path: Path, suffix) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ConversionError, match=r"cannot load|not a torch\.export program"):
        convert(path, Dataset({None: ROWS}), lambda _: None)


BLOCK_TORCH = """
import importlib.abc, sys
from pathlib import Path
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("No module named 'torch'")
        return None
sys.meta_path.insert(0, Block())
import numpy as np
from packager.convert import convert
from packager.data import Dataset
from runtime.errors import ConversionError
try:
    convert(Path(sys.argv[1]), Dataset({None: np.zeros((2, 4))}), lambda _: None)
except ConversionError as e:
    print(e)
"""


def test_without_torch_the_error_says_how_to_install_it(files: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, str(files["mlp_pt2"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "pip install 'edgeship[torch]'" in done.stdout
