"""Rule verdicts on windows and devices (pure): firing, clear, or no verdict."""

from __future__ import annotations

from typing import Any

import pytest

from packager.fleet.judge import judge_offline, judge_skew, judge_window
from packager.fleet.rules import parse_rules
from packager.fleet.series import windows
from packager.fleet.state import DeviceState, apply
from runtime.telemetry.messages import encode, parse_message
from tests.packager.fleet.helpers import status, telemetry, topic_of


def window(**fields: Any):  # type: ignore[no-untyped-def]
    doc = telemetry("lab", "dev-1", 5, **fields)
    return windows(parse_message(topic_of(doc), encode(doc)), 1000.0)[0]


def rule(text: str):  # type: ignore[no-untyped-def]
    return parse_rules("[[rule]]\nname = 'r'\n" + text)[0]


CASES = [
    # rule, window fields, expected: True firing, False clear, None no verdict
    ("kind = 'latency'\nabove_ms = 50", {"p95": 80.0}, True),
    ("kind = 'latency'\nabove_ms = 50", {"p95": 20.0}, False),
    ("kind = 'latency'\nabove_ms = 50\npercentile = 'max'", {"p95": 30.0}, True),  # max = 60
    ("kind = 'latency'\nabove_ms = 50\nmin_requests = 500", {"p95": 80.0}, None),
    ("kind = 'latency'\nabove_ms = 50\nmodel = 'other'", {"p95": 80.0}, None),
    ("kind = 'error_rate'\nabove = 0.05", {"errors": 10}, True),
    ("kind = 'error_rate'\nabove = 0.05", {"errors": 5}, False),
    ("kind = 'error_rate'\nabove = 0.05", {"requests": 0}, None),
    ("kind = 'rejected_rate'\nabove = 0.1", {"rejected": 20}, True),
    ("kind = 'drift'\nabove = 0.2", {"drift": {"a": {"psi": 0.1}, "b": {"psi": 0.4}}}, True),
    ("kind = 'drift'\nabove = 0.2", {"drift": {"a": {"psi": 0.1, "js": 0.9}}}, False),
    ("kind = 'drift'\nabove = 0.2\nmetric = 'js'", {"drift": {"a": {"psi": 0.1, "js": 0.9}}}, True),
    ("kind = 'drift'\nabove = 0.2", {"drift": {}}, None),
    ("kind = 'accuracy'\nbelow = 0.8", {"feedback": {"count": 40, "accuracy": 0.7}}, True),
    ("kind = 'accuracy'\nbelow = 0.8", {"feedback": {"count": 40, "accuracy": 0.9}}, False),
    (
        "kind = 'accuracy'\nbelow = 0.8\nmin_feedback = 50",
        {"feedback": {"count": 40, "accuracy": 0.1}},
        None,
    ),
    ("kind = 'accuracy'\nbelow = 0.8", {}, None),
    ("kind = 'mae'\nabove = 2", {"feedback": {"count": 3, "mae": 2.5}}, True),
]


@pytest.mark.parametrize(("text", "fields", "expected"), CASES)
def test_window_rules(text: str, fields: dict[str, Any], expected: Any) -> None:
    finding = judge_window(rule(text), window(**fields))
    assert (None if finding is None else finding.firing) is expected
    if finding is not None:
        assert finding.key == ("r", "lab", "dev-1", "digits")
        assert "digits 1.0.0 on lab/dev-1" in finding.message


def device(*docs: dict[str, Any], received: float = 1000.0) -> DeviceState:
    state = DeviceState(docs[0]["fleet"], docs[0]["device"])
    for doc in docs:
        apply(state, parse_message(topic_of(doc), encode(doc)), received)
    return state


def test_offline_fires_only_after_the_delay_and_clears_online() -> None:
    offline = rule("kind = 'offline'\nafter_s = 60")
    away = device(status("lab", "dev-1", 1), status("lab", "dev-1", 0, state="offline"))
    assert [f.firing for f in judge_offline([offline], [away], now=1030.0)] == [False]
    [late] = judge_offline([offline], [away], now=1100.0)
    assert late.firing and late.value == pytest.approx(100.0) and late.model == ""
    back = device(
        status("lab", "dev-1", 1),
        status("lab", "dev-1", 0, state="offline"),
        status("lab", "dev-1", 3),
    )
    assert [f.firing for f in judge_offline([offline], [back], now=5000.0)] == [False]
    unknown = device(telemetry("lab", "dev-2", 1))
    assert judge_offline([offline], [unknown], now=5000.0) == []


def test_version_skew_counts_online_devices_only() -> None:
    skew = rule("kind = 'version_skew'")
    a = device(status("lab", "a", 1, models=(("digits", "1.0.0"),)))
    b = device(status("lab", "b", 1, models=(("digits", "1.1.0"), ("other", "3.0.0"))))
    c = device(
        status("lab", "c", 1, models=(("digits", "2.0.0"),)), status("lab", "c", 9, state="offline")
    )
    found = {f.key: f for f in judge_skew([skew], [a, b, c], {})}
    assert found[("r", "lab", "", "digits")].firing
    assert found[("r", "lab", "", "digits")].value == 2
    assert "1.0.0 on 1, 1.1.0 on 1" in found[("r", "lab", "", "digits")].message
    assert not found[("r", "lab", "", "other")].firing
    assert not judge_skew([skew], [a, c], {})[0].firing
