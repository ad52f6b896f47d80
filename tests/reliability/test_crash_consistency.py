"""Crash consistency: SIGKILL an install or a rollback at every file operation, then restart.

One real store lives through the whole test. Each run starts a child process
(``tests/reliability/crash_child.py``) that installs iris 1.1.0 over 1.0.0, or rolls 1.1.0 back
to 1.0.0, whichever the store's state calls for, and kills itself with a real SIGKILL at a chosen
point: the Nth ``write``, ``fsync``, ``replace``, ``rename``, ``symlink``, ``unlink`` or ``mkdir``
call, just before or just after it runs. A first pass of each operation without a kill counts the
calls; the runs then cycle through every (kind, N, before/after) point, spread over the
operation so that a short run samples all of it.

After every run, fresh processes, as a restarted device would:

1. ``edgeship-device check --clear`` removes the leftovers (as the next store operation would)
   and must find the store consistent;
2. ``edgeship-device predict`` must answer with exactly the outputs of the version active before
   the operation ("old") or of the one it was making active ("new"), never anything else;
3. the store holds the same number of files as before the run, and ``tmp/`` is empty: leftovers
   never accumulate.

``EDGESHIP_CRASH_RUNS`` sets the number of runs (default 40; ``make crash`` runs 240). The outcome
table (runs per kind and per protocol step: old / new / failed) is printed and written to
``bench-results/crash.json``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from runtime.install import install_bundle
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.reliability.crash_child import KINDS

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("EDGESHIP_CRASH_RUNS", "40"))
RESULTS = ROOT / "bench-results" / "crash.json"
DEVICE_CLI = Path(sys.executable).parent / "edgeship-device"
OLD, NEW = "1.0.0", "1.1.0"
OTHER = {OLD: NEW, NEW: OLD}
# What each run does, by the store's state: (active version, is the other slot full?). An install
# over a full slot first moves the old bundle out of the way, so it makes more calls.
OPERATION = {
    (OLD, True): "install over a full slot",
    (OLD, False): "install into an empty slot",
    (NEW, True): "rollback",
}


@pytest.fixture(scope="module")
def bundles(build_bundle, tmp_path_factory) -> dict[str, Path]:
    """iris 1.0.0 (the conftest model) and 1.1.0 (a model with different outputs)."""
    folder = tmp_path_factory.mktemp("crash-models")
    x, y = load_iris(return_X_y=True)
    softer = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=500)).fit(x, y)
    sio.dump(softer, folder / "softer.skops")
    return {
        OLD: build_bundle(OLD, 10),
        NEW: build_bundle(NEW, 11, model=folder / "softer.skops"),
    }


def device(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEVICE_CLI), *args, "--home", str(home)], capture_output=True, text=True, timeout=120
    )


def predict(home: Path, rows: Path) -> dict[str, Any]:
    result = device(home, "predict", "iris", "--input", str(rows), "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def store_files(home: Path) -> int:
    """Files and links in the store (folders not counted)."""
    return sum(1 for p in home.rglob("*") if p.is_symlink() or p.is_file())


def child(home: Path, op: str, arg: str, point: tuple[str, int, str], events: str = "") -> int:
    kind, n, when = point
    argv = [sys.executable, "-m", "tests.reliability.crash_child", str(home), op, arg]
    argv += [kind, str(n), when] + ([events] if events else [])
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return done.returncode


def spread(calls: list[tuple[str, int]]) -> list[tuple[str, int, str]]:
    """Every (kind, n, when) point of an operation whose calls were ``calls`` (in order), each
    once, in an order that jumps through the operation by a golden-ratio stride: any number of
    runs, however short, samples its beginning, middle and end alike."""
    points = [(kind, n, when) for kind, n in calls for when in ("before", "after")]
    size = len(points)
    stride = max(1, round(size * 0.618))
    while math.gcd(stride, size) != 1:
        stride += 1
    return [points[i * stride % size] for i in range(size)]


class Table:
    """Outcomes per kill-point kind, per protocol step and per operation."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
        self.failures: list[str] = []
        self.killed = 0
        self.not_reached: list[str] = []
        self.cleared = 0

    def add(self, op: str, kind: str, step: str, outcome: str) -> None:
        for axis, key in (("kind", kind), ("step", step), ("operation", op)):
            self.rows[axis][key][outcome] += 1

    def to_dict(self, runs: int, calls: dict[str, dict[str, int]]) -> dict[str, Any]:
        return {
            "runs": runs,
            "killed": self.killed,
            "leftovers_cleared": self.cleared,
            "failures": self.failures,
            "kill_points_not_reached": self.not_reached,
            "calls_per_operation": calls,
            **{
                f"by_{axis}": {key: dict(c) for key, c in sorted(rows.items())}
                for axis, rows in self.rows.items()
            },
        }

    def render(self) -> str:
        lines = [f"{'':>28} {'runs':>5} {'old':>5} {'new':>5} {'failed':>6}"]
        for axis in ("operation", "kind", "step"):
            lines.append(f"by {axis}:")
            for key, c in sorted(self.rows[axis].items()):
                total = sum(c.values())
                lines.append(f"{key:>28} {total:>5} {c['old']:>5} {c['new']:>5} {c['failed']:>6}")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, keys, bundles, iris) -> dict[str, Any]:
    """What ``predict`` answers with each version active (from a store of its own)."""
    home = tmp_path_factory.mktemp("crash-outputs") / "home"
    store = Store(home)
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    install_bundle(store, bundles[OLD])
    expected = {OLD: predict(home, iris["rows"])}
    install_bundle(store, bundles[NEW])
    expected[NEW] = predict(home, iris["rows"])
    assert expected[OLD]["outputs"] != expected[NEW]["outputs"]
    return expected


class Device:
    """The one store every run works on, and what the test knows about it."""

    def __init__(self, home: Path, bundles: dict[str, Path]) -> None:
        self.home = home
        self.store = Store(home)
        self.args = {op: str(bundles[NEW]) for op in OPERATION.values()}
        self.args["rollback"] = "iris"

    def state(self) -> tuple[str, bool]:
        active = self.store.active_slot("iris")
        assert active is not None
        other = self.store.other_slot("iris") is not None
        return self.store.slot_manifest("iris", active).version, other

    def operation(self) -> str:
        state = self.state()
        assert state in OPERATION, f"no operation for the state {state}"
        return OPERATION[state]

    def run(self, point: tuple[str, int, str], events: str = "") -> int:
        op = self.operation()
        return child(self.home, OP_NAME[op], self.args[op], point, events)


OP_NAME = {op: op.split()[0] for op in OPERATION.values()}


def count_calls(dev: Device, tmp_path: Path) -> tuple[dict[str, Counter[str]], dict[str, Any]]:
    """Run each operation once without a kill: the calls of each kind, and the protocol step of
    every call. Leaves the store with 1.0.0 active and 1.1.0 in the other slot."""
    calls: dict[str, Counter[str]] = {}
    steps: dict[str, dict[tuple[str, int], str]] = {}
    plan = ["install over a full slot", "rollback", "empty", "install into an empty slot"]
    for op in [*plan, "rollback"]:
        if op == "empty":  # a device that holds one version only
            shutil.rmtree(dev.store.slot_dir("iris", "b"))
            continue
        assert dev.operation() == op
        with dev.store.lock():
            pass  # start as every run starts: right after a store operation cleared leftovers
        events = tmp_path / "events.json"
        assert dev.run(("none", 0, "before"), str(events)) == 0
        seen = json.loads(events.read_text())
        calls[op] = Counter(kind for kind, _ in seen)
        numbering: Counter[str] = Counter()
        steps[op] = {}
        for kind, step in seen:
            numbering[kind] += 1
            steps[op][(kind, numbering[kind])] = step
    return calls, steps


def test_sigkill_at_every_point_leaves_a_complete_old_or_new_model(
    tmp_path, keys, bundles, iris, outputs
):
    home = tmp_path / "home"
    Store(home).save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    for version in (OLD, NEW):
        assert device(home, "install", str(bundles[version])).returncode == 0
    assert device(home, "rollback", "iris").returncode == 0
    dev = Device(home, bundles)
    calls, steps = count_calls(dev, tmp_path)
    most_files = store_files(home)
    points = {op: itertools.cycle(spread(list(s))) for op, s in steps.items()}

    table = Table()
    for run in range(RUNS):
        before = dev.state()[0]
        op = dev.operation()
        kind, n, when = next(points[op])
        step = steps[op][(kind, n)]
        rc = dev.run((kind, n, when))
        if rc == -signal.SIGKILL:
            table.killed += 1
        else:
            table.not_reached.append(f"{op}: {when} {kind} #{n} ({step})")
        problem, cleared = recover(home, iris["rows"], outputs, before, most_files)
        if problem:
            table.failures.append(f"run {run}: {op}, killed {when} {kind} #{n} ({step}): {problem}")
            table.add(op, kind, step, "failed")
            break  # the store is no longer in a known state
        table.cleared += cleared
        table.add(op, kind, step, "old" if dev.state()[0] == before else "new")

    report = table.to_dict(RUNS, {op: {k: c[k] for k in KINDS} for op, c in calls.items()})
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"\ncrash consistency: {RUNS} runs, {table.killed} killed by SIGKILL, "
        f"{table.cleared} leftovers cleared; written to {RESULTS}"
    )
    print(table.render())
    assert table.failures == []
    assert table.not_reached == []  # every chosen point was reached: the counts are exact
    if RUNS >= 20:
        assert {k for c in table.rows["kind"].values() for k, v in c.items() if v} == {"old", "new"}


def recover(
    home: Path, rows: Path, outputs: dict[str, Any], before: str, most_files: int
) -> tuple[str, int]:
    """Restart after a run: clear leftovers and check, then predict. Returns (what is wrong, or
    "", and how many leftovers were cleared)."""
    checked = device(home, "check", "--clear", "--json")
    if checked.returncode != 0:
        return f"check exited {checked.returncode}: {checked.stderr.strip()}", 0
    doc = json.loads(checked.stdout)
    if doc["leftovers"] or not doc["ok"]:
        return f"check after clearing: {doc}", 0
    answered = device(home, "predict", "iris", "--input", str(rows), "--json")
    if answered.returncode != 0:
        return f"predict exited {answered.returncode}: {answered.stderr.strip()}", 0
    got = json.loads(answered.stdout)
    version = got.get("version")
    if version not in (before, OTHER[before]) or got["outputs"] != outputs[version]["outputs"]:
        return f"predict answered {version} with outputs of no installed version", 0
    files, tmp = store_files(home), home / "tmp"
    if files > most_files or (tmp.exists() and any(tmp.iterdir())):
        return f"{files} files in the store after recovery, at most {most_files} expected", 0
    return "", len(doc["cleared"])
