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


# --- ARM parity: the loss measured on an emulated ARM device ---------------------------------


def on_arm(candidate, arm_loss=None, arm_detail=""):
    return Candidate(
        candidate.mode,
        size=candidate.size,
        latency_ms=candidate.latency_ms,
        loss=candidate.loss,
        arm_loss=arm_loss,
        arm_detail=arm_detail,
    )


A72 = "emulated Cortex-A72 (qemu)"


@pytest.mark.parametrize(
    ("rows", "chosen", "verdicts"),
    [
        (  # the smallest variant breaks the budget on ARM only: the next smallest ships
            [
                on_arm(F32, 0.0),
                on_arm(cand("static", 250, 0.8), arm_loss=0.03),
                on_arm(cand("dynamic", 260, 0.9), arm_loss=0.0),
            ],
            "dynamic",
            {"static": "rejected: ARM parity", "none": "rejected: larger"},
        ),
        (  # every variant breaks it on ARM: float32 ships
            [
                on_arm(F32, 0.0),
                on_arm(cand("static", 250, 0.8), arm_loss=0.5),
                on_arm(cand("dynamic", 260, 0.9), arm_detail="SIGILL"),
            ],
            "none",
            {"static": "rejected: ARM parity", "dynamic": "rejected: ARM parity"},
        ),
        (  # the host's own loss is judged first
            [on_arm(F32, 0.0), on_arm(cand("static", 250, 0.8, loss=0.2), arm_loss=0.2)],
            "none",
            {"static": "rejected: accuracy"},
        ),
        (  # within the budget on ARM too: the ARM rule changes nothing
            [on_arm(F32, 0.0), on_arm(cand("static", 250, 0.8, loss=0.004), arm_loss=0.01)],
            "static",
            {"none": "rejected: larger"},
        ),
        (  # not measured on ARM (an x86 profile, or --emulate off): host numbers alone
            [F32, cand("static", 250, 0.8)],
            "static",
            {"none": "rejected: larger"},
        ),
    ],
)
def test_auto_never_ships_a_variant_that_breaks_the_budget_on_arm(rows, chosen, verdicts):
    decision = choose(rows, Policy(max_loss=0.01, arm_device=A72))
    assert decision.chosen == chosen, decision.reason
    assert decision.verdicts[chosen] == "chosen"
    for mode, verdict in verdicts.items():
        assert decision.verdicts[mode] == verdict


def test_the_reason_names_the_loss_on_arm():
    rows = [on_arm(F32, 0.0), on_arm(cand("static", 250, 0.8, loss=0.002), arm_loss=0.004)]
    decision = choose(rows, Policy(arm_device=A72))
    assert decision.chosen == "static"
    assert f"(on {A72}: 0.004)" in decision.reason


@pytest.mark.parametrize(
    ("arm", "message"),
    [
        (
            {"arm_loss": 0.03},
            f"--quantize static: static has accuracy drop 0.03 on {A72}, over the limit 0.01 "
            "(0 on this host)",
        ),
        (
            {"arm_detail": "onnxruntime: qemu: uncaught target signal 4"},
            f"--quantize static: static does not run on {A72}: onnxruntime: qemu: uncaught "
            "target signal 4",
        ),
    ],
)
def test_an_explicit_mode_that_breaks_the_budget_on_arm_fails(arm, message):
    rows = [on_arm(F32, 0.0), on_arm(cand("static", 250, 0.8), **arm)]
    decision = choose(rows, Policy(requested="static", arm_device=A72))
    assert decision.chosen is None
    assert decision.reason == message
    assert decision.verdicts["static"] == "rejected: ARM parity"


def test_float32_breaking_the_budget_on_arm_leaves_nothing_to_ship():
    rows = [on_arm(F32, 0.2), on_arm(cand("static", 250, 0.8), arm_loss=0.3)]
    decision = choose(rows, Policy(arm_device=A72))
    assert decision.chosen is None
    assert decision.verdicts == {"none": "rejected: ARM parity", "static": "rejected: ARM parity"}
    assert decision.reason.startswith(
        f"no candidate passes the gate: float32 has accuracy drop 0.2 on {A72}"
    )
