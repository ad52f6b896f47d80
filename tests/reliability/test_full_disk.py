"""A full disk during install: one clear typed error, the old model still active and serving, and a
store that passes ``edgeship-device check``.

Two ways to run out of room, both real:

- ``RLIMIT_FSIZE`` set in the installing process (with SIGXFSZ ignored, so a write past the limit
  fails with EFBIG, "File too large"): the install fails while it extracts the manifest, or in the
  middle of the model file;
- a small tmpfs as the device home, filled with a file until only N bytes are left, for N from 0 up
  in steps of one page group until the install fits ("No space left on device"): the disk fills at
  one point of the install after another (extraction, the state write, the swap).

Every command runs as its own process through the real ``edgeship-device`` entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from runtime.store import Store
from runtime.verify import MANIFEST_MEMBER
from tests.reliability.disk import KiB, file_size_limit, leave_free, tmpfs

DEVICE_CLI = Path(sys.executable).parent / "edgeship-device"
STEP = 8 * KiB
FS_SIZE = 512 * KiB


@pytest.fixture(scope="module")
def bundles(build_bundle, tmp_path_factory) -> dict[str, Path]:
    """iris 1.0.0 (small) and 1.1.0, whose model file (a wide network) is larger than its
    manifest, so that a file size limit between the two stops the install mid-payload."""
    folder = tmp_path_factory.mktemp("full-disk-models")
    x, y = load_iris(return_X_y=True)
    wide = MLPClassifier((1024,), solver="lbfgs", max_iter=200, random_state=0)
    sio.dump(make_pipeline(StandardScaler(), wide).fit(x, y), folder / "wide.skops")
    # float32 named: --quantize auto could ship the wide network as int8, whose file is smaller
    # than the limit when the machine happens to time int8 no slower
    return {
        "1.0.0": build_bundle("1.0.0", 10, quantize="none"),
        "1.1.0": build_bundle("1.1.0", 11, model=folder / "wide.skops", quantize="none"),
    }


def device(
    home: Path, *args: str, preexec: Optional[Callable[[], None]] = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEVICE_CLI), *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=preexec,
    )


def initialized(home: Path, keys, bundle: Path) -> None:
    """A store at ``home`` with ``bundle`` installed."""
    assert device(home, "init", "--trust", str(keys.pub("release"))).returncode == 0
    installed = device(home, "install", str(bundle))
    assert installed.returncode == 0, installed.stderr


def answer(home: Path, rows: Path) -> dict[str, Any]:
    done = device(home, "predict", "iris", "--input", str(rows), "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def assert_refused_cleanly(
    home: Path, done: subprocess.CompletedProcess[str], wording: str, rows: Path, old: Any
) -> str:
    """The install failed with one typed line (exit 6), and the old version serves on."""
    assert done.returncode == 6, (done.returncode, done.stderr)
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("edgeship-device: error: cannot ")
    assert wording in line
    checked = device(home, "check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    store = Store(home)
    assert store.active_slot("iris") == "a"
    assert store.slot_manifest("iris", "a").version == "1.0.0"
    assert answer(home, rows) == old
    return line


@pytest.mark.parametrize(
    ("limit", "where"),
    [(1 * KiB, f"/{MANIFEST_MEMBER}: "), (16 * KiB, "/payload/model.onnx: ")],
    ids=["at-the-manifest", "mid-model-file"],
)
def test_file_size_limit_mid_extraction(tmp_path, keys, bundles, iris, limit, where):
    home = tmp_path / "home"
    initialized(home, keys, bundles["1.0.0"])
    old = answer(home, iris["rows"])
    new = bundles["1.1.0"]
    done = device(home, "install", str(new), preexec=file_size_limit(limit))
    line = assert_refused_cleanly(home, done, "File too large", iris["rows"], old)
    assert where in line
    assert (home / "models" / "iris" / "state.json").exists()
    assert Store(home).floors() == {"iris": 10}  # the floor did not move
    # with room again the same bundle installs
    assert device(home, "install", str(new)).returncode == 0
    assert answer(home, iris["rows"])["version"] == "1.1.0"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of FS_SIZE bytes mounted for the test (needs root, or CAP_SYS_ADMIN)."""
    with tmpfs(tmp_path / "fs", FS_SIZE) as mount_point:
        yield mount_point


def test_disk_fills_at_every_point_of_an_install(small_fs, keys, bundles, iris):
    home = small_fs / "home"
    initialized(home, keys, bundles["1.0.0"])
    old = answer(home, iris["rows"])
    filler = small_fs / "filler"
    failures = []
    free = 0
    while free < FS_SIZE:
        with Store(home).lock():
            pass  # clear the last attempt's leftovers before measuring the room left
        leave_free(small_fs, filler, free)
        done = device(home, "install", str(bundles["1.1.0"]))
        if done.returncode == 0:
            break
        failures.append(
            assert_refused_cleanly(home, done, "No space left on device", iris["rows"], old)
        )
        free += STEP
    else:
        pytest.fail(f"the install never fitted in {FS_SIZE} bytes")
    print(f"\ninstall fitted with {free} bytes free; refused cleanly with less:")
    print("\n".join(f"  {line}" for line in failures))
    assert answer(home, iris["rows"])["version"] == "1.1.0"
    assert device(home, "check").returncode == 0
    # the disk filled at several points, extraction among them
    assert len(failures) >= 3, failures
    assert any("/payload/" in line for line in failures), failures
    assert len(set(failures)) >= 2, failures
