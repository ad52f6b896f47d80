"""Which variant ships: a pure decision over measured candidate records (no models, no clocks).

``choose`` takes what was measured for each candidate (size, latency median, loss against the
original) and the policy (requested mode, accuracy budget, latency noise margin, memory budget)
and returns the chosen mode, why, and a verdict for every candidate. The rules (ADR 0005):

- ``auto`` ships the smallest variant whose loss is within the budget and whose latency median is
  no worse than float32's (within ``noise_margin``); float32 (``none``) is always a candidate.
- A variant slower than float32 ships only when float32 itself is over the profile's memory
  budget; the reason then says so.
- An explicit mode ships exactly that mode, or nothing when it is not quantizable, failed, or
  breaks the accuracy budget.
- ARM profiles: a candidate also run on an emulated ARM device (``packager.emulated``) must keep
  the budget there too. Its loss measured on that device over the budget, or a failure to run
  there, is ``rejected: ARM parity``: ``auto`` never ships it, an explicit mode fails. The host's
  own loss is judged first (``rejected: accuracy``); latency is only ever the host's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from packager.quantize import FAILED, MODES, OK

NOISE_MARGIN = 0.05
"""A variant up to 5% slower than float32 counts as "no worse": medians of interleaved runs on a
shared host move by a few percent between runs, and a tie should go to the smaller file."""
MEMORY_FRACTION = 0.25
"""Share of a profile's ``memory_mb`` a model file may take. onnxruntime holds the weights, often a
pre-packed copy of them and an activation arena, beside the OS and the agent: a model file larger
than a quarter of memory does not fit comfortably."""

CHOSEN = "chosen"
SLOWER = "rejected: slower"
ACCURACY = "rejected: accuracy"
ARM_PARITY = "rejected: ARM parity"
LARGER = "rejected: larger"
BASELINE = "baseline"


@dataclass(frozen=True)
class Candidate:
    """What was measured for one candidate. ``status`` is ``ok``, ``not quantizable`` or
    ``failed``; size, latency and loss are None unless it is ``ok``. ``arm_loss`` is the loss
    measured on the emulated ARM device, None when it was not measured there; ``arm_detail`` says
    why it did not run there (empty when it did, or was not tried)."""

    mode: str
    status: str = OK
    detail: str = ""
    size: Optional[int] = None
    latency_ms: Optional[float] = None
    loss: Optional[float] = None
    arm_loss: Optional[float] = None
    arm_detail: str = ""


@dataclass(frozen=True)
class Policy:
    requested: str = "auto"
    max_loss: float = 0.01
    noise_margin: float = NOISE_MARGIN
    memory_budget_bytes: Optional[int] = None
    loss_name: str = "accuracy drop"
    arm_device: str = "the emulated ARM device"
    """Names the device ``arm_loss`` was measured on, in reasons."""


@dataclass(frozen=True)
class Decision:
    """``chosen`` is None when nothing may ship; ``reason`` then says why."""

    chosen: Optional[str]
    reason: str
    verdicts: dict[str, str] = field(default_factory=dict)
    forced_by_memory: bool = False
    slower: bool = False
    """The chosen variant is slower than float32 (explicit mode, or forced by memory)."""


def memory_budget(memory_mb: Optional[int], fraction: float = MEMORY_FRACTION) -> Optional[int]:
    """Bytes a model file may take on a device with ``memory_mb`` (None: no budget)."""
    return None if memory_mb is None else int(memory_mb * 1024 * 1024 * fraction)


def choose(candidates: Sequence[Candidate], policy: Policy) -> Decision:
    """Apply the rules above. Raises ValueError when there is no usable float32 candidate or the
    requested mode was never a candidate (a programming error, not a verdict)."""
    by_mode = {c.mode: c for c in candidates}
    base = by_mode.get("none")
    if base is None or base.status != OK or base.size is None or base.latency_ms is None:
        raise ValueError("the float32 candidate ('none') must be measured")
    if policy.requested != "auto" and policy.requested not in by_mode:
        raise ValueError(f"mode {policy.requested!r} was not a candidate")
    limit = base.latency_ms * (1 + policy.noise_margin)
    forced = policy.memory_budget_bytes is not None and base.size > policy.memory_budget_bytes

    def accurate(c: Candidate) -> bool:
        return c.loss is not None and c.loss <= policy.max_loss

    def slower(c: Candidate) -> bool:
        return c.latency_ms is None or c.latency_ms > limit

    verdicts: dict[str, str] = {}
    for c in candidates:
        if c.status != OK:
            verdicts[c.mode] = f"{FAILED}: {c.detail}" if c.status == FAILED else c.status
        elif not accurate(c):
            verdicts[c.mode] = ACCURACY
        elif not _holds_on_arm(c, policy):
            verdicts[c.mode] = ARM_PARITY
        elif slower(c) and not forced and policy.requested == "auto":
            verdicts[c.mode] = SLOWER
        else:
            verdicts[c.mode] = LARGER if policy.requested == "auto" else BASELINE
    if policy.requested != "auto":
        return _explicit(by_mode[policy.requested], verdicts, policy, slower)
    eligible = [c for c in candidates if verdicts[c.mode] == LARGER]
    if not eligible:
        return Decision(None, _nothing_passes(base, policy), verdicts, forced)
    best = min(eligible, key=lambda c: (c.size, c.latency_ms, MODES.index(c.mode)))
    verdicts[best.mode] = CHOSEN
    return Decision(
        best.mode, _why(best, base, policy, forced, slower(best)), verdicts, forced, slower(best)
    )


def _explicit(
    c: Candidate, verdicts: dict[str, str], policy: Policy, slower: Callable[[Candidate], bool]
) -> Decision:
    mode = c.mode
    if c.status != OK:
        return Decision(None, f"--quantize {mode}: {verdicts[mode]}", verdicts)
    if verdicts[mode] == ACCURACY:
        return Decision(
            None,
            f"--quantize {mode}: {policy.loss_name} {c.loss:.4g} is over the limit "
            f"{policy.max_loss:g}",
            verdicts,
        )
    if verdicts[mode] == ARM_PARITY:
        return Decision(None, f"--quantize {mode}: {mode} {_arm_failure(c, policy)}", verdicts)
    verdicts[mode] = CHOSEN
    is_slower = slower(c)
    reason = f"requested with --quantize {mode}"
    if is_slower and mode != "none":
        reason += " (slower than float32 on the host)"
    return Decision(mode, reason, verdicts, slower=is_slower)


def _holds_on_arm(c: Candidate, policy: Policy) -> bool:
    """Not measured on ARM, or ran there within the budget."""
    if c.arm_detail:
        return False
    return c.arm_loss is None or c.arm_loss <= policy.max_loss


def _arm_failure(c: Candidate, policy: Policy) -> str:
    """What went wrong on ARM, as a predicate of the candidate's name."""
    if c.arm_detail:
        return f"does not run on {policy.arm_device}: {c.arm_detail}"
    return (
        f"has {policy.loss_name} {c.arm_loss:.4g} on {policy.arm_device}, over the limit "
        f"{policy.max_loss:g} ({c.loss:.4g} on this host)"
    )


def _why(best: Candidate, base: Candidate, policy: Policy, forced: bool, is_slower: bool) -> str:
    budget = f"{policy.loss_name} {best.loss:.4g} within {policy.max_loss:g}"
    if best.arm_loss is not None:
        budget += f" (on {policy.arm_device}: {best.arm_loss:.4g})"
    if forced:
        head = (
            f"float32 ({base.size} bytes) is over the memory budget "
            f"({policy.memory_budget_bytes} bytes, {MEMORY_FRACTION:.0%} of the profile's memory)"
        )
        if best.mode == "none":
            return f"{head}, but no smaller variant is within the accuracy budget"
        tail = "although it is slower than float32" if is_slower else "and no slower than float32"
        return f"{head}: {best.mode} is the smallest variant with {budget}, {tail}"
    if best.mode == "none":
        return (
            "no quantized variant is smaller, no slower than float32 and within the accuracy budget"
        )
    ratio = best.size / base.size if best.size and base.size else 1.0
    return (
        f"smallest variant ({ratio:.2f}x float32's size) with {budget} and no slower than float32 "
        "on the host"
    )


def _nothing_passes(base: Candidate, policy: Policy) -> str:
    if base.loss is not None and base.loss <= policy.max_loss and not _holds_on_arm(base, policy):
        return (
            f"no candidate passes the gate: float32 {_arm_failure(base, policy)}, and no "
            "variant does better"
        )
    loss = f"{base.loss:.4g}" if base.loss is not None else "unknown"
    return (
        f"no candidate passes the gate: float32's {policy.loss_name} is {loss} "
        f"(limit {policy.max_loss:g}) and no variant does better"
    )
