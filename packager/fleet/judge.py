"""Judging alert rules: pure functions from rules and data to verdicts (no store, no clock).

A :class:`Finding` says, for one rule and one key, whether the condition holds now ("firing")
or not ("clear"). When the data cannot decide (too few requests or feedback labels, the metric
was not reported, the device's state is unknown) there is no finding at all, and an open alert
stays as it is.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from packager.fleet.rules import WINDOW_KINDS, Rule
from packager.fleet.series import Window
from packager.fleet.state import DeviceState


@dataclass(frozen=True)
class Finding:
    """A rule's verdict for (fleet, device, model); ``value`` is what was compared."""

    rule: Rule
    fleet: str
    device: str
    model: str
    firing: bool
    value: float
    message: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.rule.name, self.fleet, self.device, self.model)


def _verdict(rule: Rule, window: Window, value: float, what: str) -> Finding:
    firing = value < rule.threshold if rule.below else value > rule.threshold
    relation = "below" if rule.below else "above"
    verb = "is" if firing else "is no longer"
    message = (
        f"{window.model} {window.version} on {window.fleet}/{window.device}: {what} "
        f"{verb} {relation} {rule.threshold:g} ({value:.4g})"
    )
    return Finding(rule, window.fleet, window.device, window.model, firing, value, message)


def judge_window(rule: Rule, window: Window) -> Optional[Finding]:
    """The verdict of a window rule on one model's newest window, or None (cannot decide)."""
    if rule.kind not in WINDOW_KINDS or not rule.applies(window.fleet, window.model):
        return None
    if rule.kind in ("accuracy", "mae"):
        count, value = window.feedback(rule.kind)
        if value is None or count < max(rule.min_count, 1):
            return None
        return _verdict(rule, window, value, f"{rule.kind} from {count} feedback labels")
    if window.requests < rule.min_count:
        return None
    if rule.kind == "latency":
        latency = window.latency_ms.get(rule.percentile)
        if latency is None:
            return None
        return _verdict(rule, window, latency, f"latency {rule.percentile} (ms)")
    if rule.kind in ("error_rate", "rejected_rate"):
        rate = window.error_rate if rule.kind == "error_rate" else window.rejected_rate
        if rate is None:
            return None
        return _verdict(rule, window, rate, rule.kind.replace("_", " "))
    worst = window.worst_drift(rule.metric)
    if worst is None:
        return None
    feature, metric, score = worst
    return _verdict(rule, window, score, f"drift {metric} of feature {feature!r}")


def judge_windows(rules: Iterable[Rule], windows: Iterable[Window]) -> list[Finding]:
    rules = tuple(rules)
    found = []
    for window in windows:
        for rule in rules:
            finding = judge_window(rule, window)
            if finding is not None:
                found.append(finding)
    return found


def judge_offline(
    rules: Iterable[Rule], devices: Iterable[DeviceState], now: float
) -> list[Finding]:
    """Offline rules: firing while a device has been offline for longer than ``after_s``."""
    rules = tuple(r for r in rules if r.kind == "offline")
    found = []
    for device in devices if rules else ():
        online = device.online
        if online is None:
            continue
        away = 0.0 if online or device.offline_since is None else now - device.offline_since
        for rule in rules:
            if not rule.applies(device.fleet):
                continue
            firing = not online and away > rule.threshold
            message = (
                f"{device.fleet}/{device.device} has been offline for {away:.0f} s "
                f"(more than {rule.threshold:g} s)"
                if firing
                else f"{device.fleet}/{device.device} is {'online' if online else 'offline'}"
            )
            found.append(Finding(rule, device.fleet, device.device, "", firing, away, message))
    return found


def judge_skew(
    rules: Iterable[Rule],
    devices: Iterable[DeviceState],
    windows: Mapping[tuple[str, str], Mapping[str, tuple[str, int]]],
) -> list[Finding]:
    """Version skew: firing while the online devices of a fleet run several versions of a model
    (:meth:`DeviceState.versions`, given ``windows`` from :meth:`FleetStore.model_versions`).

    Every (fleet, model) that an online device runs gets a finding; an open alert for a pair
    with no finding (nobody runs the model any more) is for the caller to clear.
    """
    rules = tuple(r for r in rules if r.kind == "version_skew")
    if not rules:
        return []
    runs: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for device in devices:
        if device.online:
            for model, version in device.versions(windows.get(device.key)).items():
                runs[(device.fleet, model)][version] += 1
    found = []
    for (fleet, model), versions in sorted(runs.items()):
        spread = ", ".join(f"{v} on {n}" for v, n in sorted(versions.items()))
        for rule in rules:
            if rule.applies(fleet, model):
                firing = len(versions) > 1
                message = f"{model} in fleet {fleet} runs {len(versions)} version(s): {spread}"
                found.append(Finding(rule, fleet, "", model, firing, len(versions), message))
    return found
