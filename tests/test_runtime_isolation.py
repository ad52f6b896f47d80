"""runtime/ never imports packager/ or host-only dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_ONLY = (
    "packager",
    "onnx",
    "skl2onnx",
    "sklearn",
    "skops",
    "joblib",
    "rich",
    "onnxconverter_common",
    "torch",
    "tensorflow",
    "scipy",
)

BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"host-only module imported on the device: {name}")
        return None
sys.meta_path.insert(0, Block())
"""

DEVICE_SESSION = (
    BLOCKER
    + """
import pkgutil, importlib, runtime, devices
for info in pkgutil.walk_packages(runtime.__path__, "runtime."):
    if info.name != "runtime.backends.litert":
        importlib.import_module(info.name)
from runtime.cli import main
home, pub, bundle, rows = sys.argv[2:6]
for args in (["init", "--trust", pub], ["install", bundle], ["predict", "iris", "--input", rows],
             ["list", "--json"], ["status"]):
    try:
        main(args + ["--home", home], standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("DEVICE-OK")
"""
)


def test_no_host_import_statements_in_runtime_or_devices():
    offenders = []
    for folder in ("runtime", "devices"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in HOST_ONLY]
    assert offenders == []


def test_device_workflow_runs_with_host_modules_blocked(tmp_path, keys, build_bundle, iris):
    bundle = build_bundle()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            DEVICE_SESSION,
            ",".join(HOST_ONLY),
            str(tmp_path / "home"),
            str(keys.pub("release")),
            str(bundle),
            str(iris["rows"]),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DEVICE-OK" in done.stdout
    assert "installed iris 1.0.0" in done.stdout


def test_the_blocker_really_blocks(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER + "import packager.build", "packager"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode != 0 and "host-only module" in done.stderr
