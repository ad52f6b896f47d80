"""Alert rules: the TOML file the monitor reads (``--rules``), parsed strictly.

The file is a list of ``[[rule]]`` tables (docs/fleet.md has the reference)::

    [[rule]]
    name = "p95-slow"          # letters, digits, '.', '_', '-'; unique
    kind = "latency"           # see KINDS
    percentile = "p95"         # p50 | p95 | p99 | max
    above_ms = 50.0
    model = "digits"           # optional: only this model
    fleet = "lab"              # optional: only this fleet
    min_requests = 20          # optional: windows with fewer requests give no verdict
    severity = "critical"      # optional: info | warning (default) | critical

Every fault (too large, not TOML, unknown kind or field, wrong type, out of range, duplicate
name) is an :class:`AlertRulesError` naming the file, the line of the rule's ``[[rule]]`` header
and the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from packager.fleet.alerts import SEVERITIES
from runtime import tomlio
from runtime.errors import AlertRulesError
from runtime.telemetry.messages import ID_RE

MAX_RULES_BYTES = 64 * 1024
"""Largest rules file accepted (bytes)."""
MAX_RULES = 256
"""Most rules in one file."""

WINDOW_KINDS = ("latency", "error_rate", "rejected_rate", "drift", "accuracy", "mae")
"""Rules judged on each model's newest telemetry window."""
KINDS = (*WINDOW_KINDS, "offline", "version_skew")
PERCENTILES = ("p50", "p95", "p99", "max")

_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")


@dataclass(frozen=True)
class Rule:
    """One alert rule. ``threshold`` is in the unit of the kind's field (see :data:`FIELDS`)."""

    name: str
    kind: str
    threshold: float
    severity: str = "warning"
    model: Optional[str] = None
    fleet: Optional[str] = None
    min_count: int = 1
    """Window rules: fewest requests (feedback labels for accuracy/mae) for a verdict."""
    percentile: str = "p95"
    metric: str = "psi"
    line: int = 0

    @property
    def below(self) -> bool:
        """True when the condition is "value below threshold" (accuracy), else "above"."""
        return self.kind == "accuracy"

    def applies(self, fleet: str, model: str = "") -> bool:
        return (self.fleet is None or self.fleet == fleet) and (
            self.model is None or not model or self.model == model
        )


def _number(low: float, high: Optional[float] = None, low_open: bool = False) -> Callable[..., Any]:
    def check(value: Any) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError("must be a number")
        number = float(value)
        if math.isnan(number) or (number <= low if low_open else number < low):
            raise ValueError(f"must be {'above' if low_open else 'at least'} {low:g}")
        if high is not None and number > high:
            raise ValueError(f"must be at most {high:g}")
        return number

    return check


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("must be a non-negative integer")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return str(value)

    return check


def _ident(value: Any) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ValueError("must be letters, digits, '.', '_', '-' (at most 64)")
    return value


def _metric(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValueError("must be a drift metric name such as 'psi' or 'js'")
    return value


FIELDS: dict[str, dict[str, tuple[str, Callable[[Any], Any]]]] = {
    # kind → TOML field → (Rule attribute, check)
    "latency": {"above_ms": ("threshold", _number(0, low_open=True)),
                "percentile": ("percentile", _choice(PERCENTILES)),
                "min_requests": ("min_count", _count)},
    "error_rate": {"above": ("threshold", _number(0, 1)), "min_requests": ("min_count", _count)},
    "rejected_rate": {"above": ("threshold", _number(0, 1)),
                      "min_requests": ("min_count", _count)},
    "drift": {"above": ("threshold", _number(0, low_open=True)), "metric": ("metric", _metric),
              "min_requests": ("min_count", _count)},
    "accuracy": {"below": ("threshold", _number(0, 1, low_open=True)),
                 "min_feedback": ("min_count", _count)},
    "mae": {"above": ("threshold", _number(0)), "min_feedback": ("min_count", _count)},
    "offline": {"after_s": ("threshold", _number(0, low_open=True))},
    "version_skew": {},
}  # fmt: skip
"""Each kind's own fields; the threshold field is required, the others optional."""
COMMON: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "severity": ("severity", _choice(SEVERITIES)),
    "model": ("model", _ident),
    "fleet": ("fleet", _ident),
}


def load_rules(path: Path) -> tuple[Rule, ...]:
    """Read and check a rules file; raise AlertRulesError for any fault."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RULES_BYTES + 1)
    except OSError as e:
        raise AlertRulesError(f"cannot read rules file {path}: {e.strerror or e}") from e
    if len(data) > MAX_RULES_BYTES:
        raise AlertRulesError(f"{path}: rules file is over {MAX_RULES_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AlertRulesError(f"{path}: rules file is not UTF-8: {e}") from e
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "rules") -> tuple[Rule, ...]:
    """Check the text of a rules file; raise AlertRulesError for any fault."""
    try:
        doc = tomlio.loads(text)
    except tomlio.TOMLDecodeError as e:
        raise AlertRulesError(f"{source}: not valid TOML: {e}") from e
    unknown = sorted(set(doc) - {"rule"})
    if unknown:
        raise AlertRulesError(f"{source}: unknown top-level key(s) {', '.join(unknown)}; "
                              "rules go in [[rule]] tables")  # fmt: skip
    tables = doc.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise AlertRulesError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    if len(tables) > MAX_RULES:
        raise AlertRulesError(f"{source}: {len(tables)} rules, more than {MAX_RULES}")
    lines = [n for n, line in enumerate(text.splitlines(), 1) if _HEADER.match(line)]
    rules: list[Rule] = []
    for index, table in enumerate(tables):
        line = lines[index] if index < len(lines) and len(lines) == len(tables) else 0
        where = f"{source}:{line}" if line else f"{source}: rule {index + 1}"
        rule = _rule(table, line, where)
        if any(r.name == rule.name for r in rules):
            raise AlertRulesError(f"{where}: rule name {rule.name!r} is used twice")
        rules.append(rule)
    return tuple(rules)


def _rule(table: dict[str, Any], line: int, where: str) -> Rule:
    try:
        name = _ident(table.get("name"))
    except ValueError as e:
        raise AlertRulesError(f"{where}: name {e}") from e
    where = f"{where}: rule {name!r}"
    kind = table.get("kind")
    if kind not in FIELDS:
        raise AlertRulesError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    own = FIELDS[kind]
    allowed = {"name", "kind", *COMMON, *own}
    if kind == "offline":
        allowed.discard("model")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise AlertRulesError(
            f"{where}: unknown field(s) {', '.join(unknown)} for kind {kind!r} "
            f"(allowed: {', '.join(sorted(allowed - {'name', 'kind'}))})"
        )
    values: dict[str, Any] = {"name": name, "kind": kind, "line": line, "threshold": 1.0}
    required = next(iter(own), None)
    if required is not None and required not in table:
        raise AlertRulesError(f"{where}: {required} is required for kind {kind!r}")
    for field, (attribute, check) in {**COMMON, **own}.items():
        if field in table:
            try:
                values[attribute] = check(table[field])
            except ValueError as e:
                raise AlertRulesError(f"{where}: {field} {e}, not {table[field]!r}") from e
    return Rule(**values)
