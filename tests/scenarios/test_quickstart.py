"""The README quickstart, pasted into a fresh shell, works (real CLIs, real subprocesses)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_block(marker: str) -> str:
    """The bash block that follows ``<!-- marker -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"README has no {marker} block"
    return match.group(1)


def quickstart_script() -> str:
    return readme_block("quickstart")


def test_readme_quickstart_runs(tmp_path):
    """The quickstart, then the README's Python example in the same shell."""
    script = quickstart_script() + readme_block("python-api")
    script = script.replace("/tmp/edgeship-quickstart", str(tmp_path / "qs"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHIP_")}
    env["VIRTUAL_ENV_DISABLE_PROMPT"] = "1"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rolled digits back from 1.1.0 to 1.0.0" in done.stdout
    listing = json.loads(done.stdout[done.stdout.rindex("[\n") : done.stdout.rindex("]\n") + 1])
    assert listing[0]["version"] == "1.0.0" and listing[0]["previous"] == "1.1.0"
    assert (tmp_path / "qs" / "dist" / "churn-1.0.0-aarch64-generic.eship").exists()
    # the Python example: the digits MLP's two outputs for the three rows, all in range
    python_lines = done.stdout[done.stdout.rindex("]\n") + 2 :].splitlines()
    assert python_lines == ["label (3,)", "probabilities (3, 10)", "out of range: none"]


def test_console_scripts_are_installed():
    bindir = Path(sys.executable).parent
    for script in ("edgeship", "edgeship-device"):
        done = subprocess.run([str(bindir / script), "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "Usage:" in done.stdout
