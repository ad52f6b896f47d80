"""Alert rules files: the documented example parses; every fault is a clear AlertRulesError."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from packager.fleet.rules import MAX_RULES_BYTES, load_rules, parse_rules
from runtime.errors import AlertRulesError, UsageError

EXAMPLE = """
# latency, errors, drift, quality, offline, skew
[[rule]]
name = "p95-slow"
kind = "latency"
percentile = "p95"
above_ms = 50.0
model = "digits"
min_requests = 20
severity = "critical"

[[rule]]
name = "errors"
kind = "error_rate"
above = 0.05

[[rule]]
name = "rejected"
kind = "rejected_rate"
above = 0.1

[[rule]]
name = "drift"
kind = "drift"
metric = "js"
above = 0.2

[[rule]]
name = "accuracy"
kind = "accuracy"
below = 0.8
min_feedback = 50

[[rule]]
name = "mae"
kind = "mae"
above = 3

[[rule]]
name = "offline"
kind = "offline"
after_s = 300
fleet = "lab"

[[rule]]
name = "skew"
kind = "version_skew"
"""


def test_the_example_parses() -> None:
    rules = {r.name: r for r in parse_rules(EXAMPLE)}
    assert list(rules) == [
        "p95-slow",
        "errors",
        "rejected",
        "drift",
        "accuracy",
        "mae",
        "offline",
        "skew",
    ]
    slow = rules["p95-slow"]
    assert (
        slow.kind,
        slow.percentile,
        slow.threshold,
        slow.model,
        slow.min_count,
        slow.severity,
        slow.line,
    ) == ("latency", "p95", 50.0, "digits", 20, "critical", 3)
    assert rules["accuracy"].below and rules["accuracy"].min_count == 50
    assert rules["drift"].metric == "js"
    assert rules["offline"].threshold == 300.0 and rules["offline"].fleet == "lab"
    assert not rules["errors"].below


def test_the_docs_example_parses() -> None:
    text = (Path(__file__).parents[3] / "docs" / "fleet.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block is not None
    assert len(parse_rules(block.group(1))) >= 7


BAD = [
    ("not toml", "[[rule]\nname = 1", "not valid TOML"),
    ("unknown top-level key", "version = 1\n", "unknown top-level key(s) version"),
    ("rule not a table array", "rule = 3\n", "array of tables"),
    ("no name", "[[rule]]\nkind = 'latency'\nabove_ms = 1\n", ":1: name must be"),
    ("bad name", "[[rule]]\nname = 'a b'\nkind = 'latency'\nabove_ms = 1\n", "name must be"),
    ("unknown kind", "[[rule]]\nname = 'x'\nkind = 'temperature'\n", "kind must be one of"),
    (
        "unknown field",
        "[[rule]]\nname = 'x'\nkind = 'latency'\nabove_ms = 1\nabove = 2\n",
        "unknown field(s) above for kind 'latency'",
    ),
    (
        "missing threshold",
        "[[rule]]\nname = 'x'\nkind = 'error_rate'\n",
        "above is required for kind 'error_rate'",
    ),
    (
        "threshold is a string",
        "[[rule]]\nname = 'x'\nkind = 'latency'\nabove_ms = 'fast'\n",
        "above_ms must be a number, not 'fast'",
    ),
    (
        "threshold is a bool",
        "[[rule]]\nname = 'x'\nkind = 'latency'\nabove_ms = true\n",
        "above_ms must be a number",
    ),
    (
        "rate above 1",
        "[[rule]]\nname = 'x'\nkind = 'error_rate'\nabove = 5\n",
        "above must be at most 1",
    ),
    (
        "negative latency",
        "[[rule]]\nname = 'x'\nkind = 'latency'\nabove_ms = -1\n",
        "above_ms must be above 0",
    ),
    (
        "not a number",
        "[[rule]]\nname = 'x'\nkind = 'latency'\nabove_ms = nan\n",
        "above_ms must be above 0, not nan",
    ),
    (
        "bad percentile",
        "[[rule]]\nname = 'x'\nkind = 'latency'\nabove_ms = 1\npercentile = 'p90'\n",
        "percentile must be one of p50, p95, p99, max",
    ),
    (
        "negative min_requests",
        "[[rule]]\nname = 'x'\nkind = 'latency'\nabove_ms = 1\nmin_requests = -3\n",
        "min_requests must be a non-negative integer",
    ),
    (
        "bad severity",
        "[[rule]]\nname = 'x'\nkind = 'offline'\nafter_s = 1\nseverity = 'panic'\n",
        "severity must be one of",
    ),
    (
        "model filter on offline",
        "[[rule]]\nname = 'x'\nkind = 'offline'\nafter_s = 1\nmodel = 'digits'\n",
        "unknown field(s) model",
    ),
    (
        "duplicate name",
        "[[rule]]\nname = 'x'\nkind = 'offline'\nafter_s = 1\n\n[[rule]]\n"
        "name = 'x'\nkind = 'version_skew'\n",
        ":6: rule name 'x' is used twice",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_rules_are_refused_with_the_field(text: str, expected: str) -> None:
    with pytest.raises(AlertRulesError) as caught:
        parse_rules(text, "rules.toml")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("rules.toml")
    assert isinstance(caught.value, UsageError)  # exit code 2


def test_the_line_of_the_faulty_rule_is_named() -> None:
    text = EXAMPLE + "\n[[rule]]\nname = 'late'\nkind = 'latency'\nabove_ms = 0\n"
    line = max(n for n, s in enumerate(text.splitlines(), 1) if s == "[[rule]]")
    with pytest.raises(AlertRulesError, match=rf"^rules.toml:{line}: rule 'late': above_ms"):
        parse_rules(text, "rules.toml")


def test_files_over_the_limit_are_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "rules.toml"
    big.write_text("# " + "x" * MAX_RULES_BYTES + "\n")
    with pytest.raises(AlertRulesError, match="over 65536 bytes"):
        load_rules(big)
    missing = tmp_path / "nope.toml"
    with pytest.raises(AlertRulesError, match="cannot read"):
        load_rules(missing)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[[rule]]")
    with pytest.raises(AlertRulesError, match="not UTF-8"):
        load_rules(binary)
