"""The fleet at a glance (``edgeship fleet status`` and ``fleet alerts``): rows and text tables.

Read-only views over the store: per device its online state, last contact and models, and per
model the numbers of its newest telemetry window (p95 latency, error rate, worst drift).
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from packager.fleet.alerts import Alert
from packager.fleet.series import Window
from packager.fleet.store import FleetStore
from runtime.telemetry.messages import format_ts


def fleet_status(
    store: FleetStore, fleet: Optional[str] = None, now: Optional[float] = None
) -> list[dict[str, Any]]:
    """One document per device (see docs/fleet.md for the fields); raise FleetStoreError."""
    now = time.time() if now is None else now
    devices = store.devices(fleet)
    windows: dict[tuple[str, str], dict[str, Window]] = {}
    for newest in store.latest_windows(fleet=fleet):
        windows.setdefault(newest.key[:2], {})[newest.model] = newest
    alerts = Counter((a.fleet, a.device) for a in store.open_alerts())
    rows = []
    for device in devices:
        models = []
        own = windows.get(device.key, {})
        for name, version in device.versions(
            {m: (w.version, w.seq) for m, w in own.items()}
        ).items():
            window = own.get(name)
            worst = window.worst_drift() if window else None
            models.append({
                "name": name,
                "version": version,
                "p95_ms": window.latency_ms.get("p95") if window else None,
                "error_rate": window.error_rate if window else None,
                "requests": window.requests if window else None,
                "worst_drift": {"feature": worst[0], "metric": worst[1], "score": worst[2]}
                if worst else None,
                "window_at": _iso(window.ts) if window else None,
            })  # fmt: skip
        rows.append({
            "fleet": device.fleet,
            "device": device.device,
            "online": device.online,
            "last_seen": _iso(device.last_seen),
            "last_seen_s_ago": None if device.last_seen is None
            else round(max(0.0, now - device.last_seen), 1),
            "runtime_version": device.status.get("runtime_version"),
            "profile": device.status.get("profile"),
            "models": models,
            "open_alerts": alerts.get(device.key, 0),
        })  # fmt: skip
    return rows


def _iso(epoch: Optional[float]) -> Optional[str]:
    return None if epoch is None else format_ts(datetime.fromtimestamp(epoch, timezone.utc))


def _ago(seconds: Optional[float]) -> str:
    if seconds is None:
        return "never"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _table(header: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in [list(header), *rows]]  # fmt: skip
    return "\n".join(lines)


def status_table(rows: list[dict[str, Any]]) -> str:
    """The devices as a text table, one line per installed model."""
    if not rows:
        return "no devices seen yet"
    lines = []
    for row in rows:
        online = {True: "yes", False: "no", None: "?"}[row["online"]]
        common = [row["fleet"], row["device"], online, _ago(row["last_seen_s_ago"])]
        for model in row["models"] or [None]:
            if model is None:
                lines.append([*common, "-", "-", "-", "-", "-", str(row["open_alerts"])])
                continue
            drift = model["worst_drift"]
            lines.append([
                *common,
                model["name"],
                model["version"],
                "-" if model["p95_ms"] is None else f"{model['p95_ms']:.1f}",
                "-" if model["error_rate"] is None else f"{100 * model['error_rate']:.1f}%",
                "-" if drift is None
                else f"{drift['score']:.3f} {drift['metric']} {drift['feature']}",
                str(row["open_alerts"]),
            ])  # fmt: skip
    header = ("FLEET", "DEVICE", "ONLINE", "LAST SEEN", "MODEL", "VERSION", "P95 MS", "ERRORS",
              "WORST DRIFT", "ALERTS")  # fmt: skip
    return _table(header, lines)


def alert_rows(alerts: Sequence[Alert]) -> list[dict[str, Any]]:
    return [a.to_dict() for a in alerts]


def alerts_table(alerts: Sequence[Alert]) -> str:
    if not alerts:
        return "no alerts"
    header = ("ID", "STATE", "SEVERITY", "RULE", "FLEET", "DEVICE", "MODEL", "VALUE", "OPENED",
              "MESSAGE")  # fmt: skip
    rows = [[str(a.id), a.state, a.severity, a.rule, a.fleet, a.device or "-", a.model or "-",
             f"{a.value:.4g}", _iso(a.opened) or "", a.message] for a in alerts]  # fmt: skip
    return _table(header, rows)
