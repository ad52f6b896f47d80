"""The alert hook: JSON on stdin, no shell, failures and time-outs logged, never blocking."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import pytest

from packager.fleet.hooks import HookRunner
from runtime.errors import UsageError


def test_the_document_arrives_on_stdin_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    # '$HOME' and ';' reach the program as they are: no shell expands them
    script = (
        "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read()); print(sys.argv[2])"
    )
    runner = HookRunner([sys.executable, "-c", script, str(out), "$HOME;rm"])
    assert runner.submit({"rule": "r", "value": 1.5})
    runner.close()
    assert json.loads(out.read_text()) == {"rule": "r", "value": 1.5}
    assert (runner.runs, runner.failures) == (1, 0)


def test_failures_and_time_outs_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    failing = HookRunner([sys.executable, "-c", "import sys; sys.exit('boom')"])
    failing.submit({})
    failing.close()
    slow = HookRunner([sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=0.5)
    slow.submit({})
    slow.close()
    missing = HookRunner(["/nonexistent/hook"])
    missing.submit({})
    missing.close()
    assert (failing.failures, slow.failures, missing.failures) == (1, 1, 1)
    text = caplog.text
    assert "exit status 1 boom" in text and "killed after 0.5 s" in text and "cannot run" in text


def test_a_full_queue_drops_instead_of_waiting() -> None:
    runner = HookRunner(
        [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=2, queue_max=1
    )
    results = [runner.submit({"n": n}) for n in range(5)]
    assert results[-1] is False and runner.dropped >= 3
    runner.close(wait_s=0.1)


def test_commands_are_split_like_a_shell_without_expansion() -> None:
    runner = HookRunner.from_command(shlex.join(["echo", "a b", "$X"]))
    assert runner.argv == ("echo", "a b", "$X")
    runner.close()
    with pytest.raises(UsageError):
        HookRunner.from_command("echo 'unclosed")
    with pytest.raises(UsageError):
        HookRunner.from_command("")
