"""The candidates table of a build, as text for people (the CLI prints it to standard error).

``validate`` hands the CLI one report per target profile (the ``Table`` callback); this module
only formats it: one line saying where latency (and ARM parity) were measured, then one row per
candidate with its size, latency, primary metric, loss and verdict.
"""

from __future__ import annotations

from typing import Any

from packager import choice

_PRIMARY = ("accuracy", "r2", "label_agreement", "output_r2")


def lines_for(profile: str, report: dict[str, Any]) -> list[str]:
    """A Table report as text lines for people (the CLI prints them to stderr)."""
    rows = report["candidates"]
    metric = next((k for k in _PRIMARY if any(r["metrics"].get(k) is not None for r in rows)), "")
    lines = [f"{profile}: loss = {report['measure']}; latency on {report['latency_measured_on']}"]
    arm = report.get("arm_parity")
    if arm is not None:
        lines.append(
            f"{profile}: ARM parity on {arm['device']}, {arm['rows']} rows"
            if arm["measured"]
            else f"{profile}: {arm['note']}"
        )
    columns = "  {:<8} {:>10} {:>6} {:>8} {:>8} {:>6} {:>9} {:>8}"
    columns += " {:>8} {:>10}" if arm and arm["measured"] else ""
    header = ("mode", "bytes", "x size", "p50 ms", "p95 ms", "x time", metric or "-", "loss")
    lines.append(columns.format(*header, "arm loss", "|arm-host|") + "  verdict")
    for r in rows:
        t, on_arm = r.get("latency_ms") or {}, r.get("arm") or {}
        cells = (
            r["mode"],
            _fmt(r["size"], "d"),
            _fmt(r["size_ratio"], ".2f"),
            _fmt(t.get("p50"), ".3f"),
            _fmt(t.get("p95"), ".3f"),
            _fmt(r.get("latency_ratio"), ".2f"),
            _fmt(r["metrics"].get(metric), ".4f"),
            _fmt(r["loss"], ".4f"),
            _fmt(on_arm.get("loss"), ".4f"),
            _fmt(on_arm.get("max_abs_diff"), ".3g"),
        )
        shown = "not quantizable", choice.ARM_PARITY
        detail = (r["detail"] if r["verdict"] != choice.ARM_PARITY else on_arm.get("detail")) or ""
        verdict = r["verdict"] + (f" ({detail})" if r["verdict"] in shown and detail else "")
        lines.append(columns.format(*cells) + "  " + verdict)
    return lines


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
