"""The alert engine: turns rule verdicts into stored alert changes (open, clear).

Window rules are judged after each stored batch, on the newest window of every (device, model)
the batch brought telemetry for; offline and version-skew rules on a timer over the whole fleet
(a device coming back online also clears its offline alert at once). Whether an alert opens or
clears is decided by the store's unique key on open alerts, so several monitors sharing a
database open and clear each alert once; only the monitor whose write changed the alert gets it
back, to publish and to pass to the hook.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from packager.fleet.alerts import Alert
from packager.fleet.judge import Finding, judge_offline, judge_skew, judge_windows
from packager.fleet.rules import WINDOW_KINDS, Rule
from packager.fleet.store import FleetStore, IngestResult


class AlertEngine:
    """Keeps the store's open alerts in line with ``rules``."""

    def __init__(self, rules: Sequence[Rule], store: FleetStore) -> None:
        self.rules = tuple(rules)
        self.store = store
        self._window_rules = tuple(r for r in self.rules if r.kind in WINDOW_KINDS)
        self._timer_rules = tuple(r for r in self.rules if r.kind not in WINDOW_KINDS)

    def after_batch(self, result: IngestResult, now: float) -> list[Alert]:
        """Judge what a stored batch changed; return the alerts opened or cleared."""
        findings: list[Finding] = []
        if self._window_rules and result.window_keys:
            latest = self.store.latest_windows(result.window_keys)
            findings += judge_windows(self._window_rules, latest)
        if any(r.kind == "offline" for r in self._timer_rules) and result.devices:
            # only clears here: an offline alert opens after the device stayed away, on the timer
            findings += [f for f in judge_offline(self.rules, result.devices, now) if not f.firing]
        return self._reconcile(findings, now) if findings else []

    def on_timer(self, now: float) -> list[Alert]:
        """Judge offline and version-skew rules over every device; clear the open alerts of
        rules no longer in the rules file and of skew pairs nobody runs any more."""
        findings: list[Finding] = []
        if self._timer_rules:
            devices = self.store.devices()
            findings = judge_offline(self.rules, devices, now)
            if any(r.kind == "version_skew" for r in self._timer_rules):
                versions = self.store.model_versions()
                findings += judge_skew(self.rules, devices, versions)
        swept = {r.name for r in self.rules if r.kind == "version_skew"}
        return self._reconcile(findings, now, sweep=swept)

    def _reconcile(
        self, findings: Iterable[Finding], now: float, sweep: Optional[set[str]] = None
    ) -> list[Alert]:
        open_alerts = {a.key: a for a in self.store.open_alerts()}
        changes: list[Alert] = []
        judged = set()
        for finding in findings:
            judged.add(finding.key)
            if finding.firing and finding.key not in open_alerts:
                opened = self.store.open_alert(_alert(finding, now))
                if opened is not None:
                    changes.append(opened)
                    open_alerts[opened.key] = opened
            elif not finding.firing and finding.key in open_alerts:
                self._clear(finding.key, now, changes)
                open_alerts.pop(finding.key)
        if sweep is not None:
            names = {r.name for r in self.rules}
            for key, alert in open_alerts.items():
                stale = alert.rule not in names or (alert.rule in sweep and key not in judged)
                if stale:
                    self._clear(key, now, changes)
        return changes

    def _clear(self, key: tuple[str, str, str, str], now: float, changes: list[Alert]) -> None:
        cleared = self.store.clear_alert(key, now)
        if cleared is not None:
            changes.append(cleared)


def _alert(finding: Finding, now: float) -> Alert:
    rule = finding.rule
    return Alert(
        rule=rule.name,
        kind=rule.kind,
        severity=rule.severity,
        fleet=finding.fleet,
        device=finding.device,
        model=finding.model,
        value=float(finding.value),
        threshold=rule.threshold,
        message=finding.message,
        opened=now,
    )
