"""packager/choice.py: the pure decision, as tables of measured candidate records."""

from __future__ import annotations

import pytest

from packager.choice import Candidate, Policy, choose, memory_budget

F32 = Candidate("none", size=1000, latency_ms=1.0, loss=0.0)


def cand(mode, size, latency, loss=0.0, status="ok", detail=""):
    if status != "ok":
        return Candidate(mode, status, detail)
    return Candidate(mode, size=size, latency_ms=latency, loss=loss)


@pytest.mark.parametrize(
    ("rows", "policy", "chosen", "verdicts"),
    [
        (  # the smallest that is fast enough and accurate enough
            [F32, cand("dynamic", 260, 0.9), cand("static", 250, 0.8), cand("fp16", 500, 0.95)],
            Policy(),
            "static",
            {"none": "rejected: larger", "dynamic": "rejected: larger", "fp16": "rejected: larger"},
        ),
        (  # slower, so rejected, though smaller
            [F32, cand("dynamic", 260, 1.7), cand("static", 250, 1.3), cand("fp16", 500, 1.0)],
            Policy(),
            "fp16",
            {"dynamic": "rejected: slower", "static": "rejected: slower"},
        ),
        (  # within the 5% noise margin counts as no worse; beyond it does not
            [F32, cand("static", 250, 1.04), cand("dynamic", 240, 1.06)],
            Policy(),
            "static",
            {"dynamic": "rejected: slower"},
        ),
        (  # too inaccurate
            [F32, cand("static", 250, 0.5, loss=0.02), cand("dynamic", 260, 0.5, loss=0.01)],
            Policy(max_loss=0.01),
            "dynamic",
            {"static": "rejected: accuracy"},
        ),
        (  # nothing better than float32; not quantizable and failed are reported as such
            [
                F32,
                cand("dynamic", 0, 0, status="not quantizable", detail="TreeEnsembleClassifier"),
                cand("static", 0, 0, status="failed", detail="INVALID_GRAPH"),
                cand("fp16", 1200, 1.0),
            ],
            Policy(),
            "none",
            {
                "dynamic": "not quantizable",
                "static": "failed: INVALID_GRAPH",
                "fp16": "rejected: larger",
            },
        ),
        (  # float32 over the memory budget: a slower, smaller variant ships
            [F32, cand("static", 250, 1.5), cand("dynamic", 260, 2.0, loss=0.5)],
            Policy(memory_budget_bytes=500),
            "static",
            {"dynamic": "rejected: accuracy"},
        ),
        (  # an explicit mode ships even when slower
            [F32, cand("static", 250, 1.5)],
            Policy(requested="static"),
            "static",
            {"none": "baseline"},
        ),
    ],
)
def test_choose(rows, policy, chosen, verdicts):
    decision = choose(rows, policy)
    assert decision.chosen == chosen, decision.reason
    assert decision.verdicts[chosen] == "chosen"
    for mode, verdict in verdicts.items():
        assert decision.verdicts[mode] == verdict


def test_choose_says_why_and_when_memory_forced_a_slower_variant():
    d = choose([F32, cand("static", 250, 1.5)], Policy(memory_budget_bytes=500))
    assert d.forced_by_memory and d.slower
    assert "memory budget" in d.reason and "slower" in d.reason
    d = choose([F32, cand("static", 250, 1.5)], Policy(requested="static"))
    assert d.slower and "slower than float32" in d.reason
    d = choose([F32, cand("static", 250, 0.5)], Policy())
    assert "0.25x" in d.reason and not d.slower


@pytest.mark.parametrize(
    ("rows", "policy", "message"),
    [
        ([F32, cand("static", 0, 0, status="not quantizable")], Policy(requested="static"), "not"),
        ([F32, cand("static", 250, 0.5, loss=0.2)], Policy(requested="static"), "over the limit"),
        ([Candidate("none", size=1, latency_ms=1, loss=0.3)], Policy(), "no candidate passes"),
    ],
)
def test_choose_refuses(rows, policy, message):
    decision = choose(rows, policy)
    assert decision.chosen is None and message in decision.reason


def test_memory_budget_is_a_quarter_of_memory():
    assert memory_budget(1024) == 256 * 1024 * 1024
    assert memory_budget(None) is None
