"""``edgeship fleet status|alerts|monitor`` through click: tables, --json, exit codes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from packager.cli import main
from packager.fleet.alerts import Alert
from packager.fleet.store import Received, open_store
from runtime.telemetry.messages import encode, parse_message
from tests.packager.fleet.helpers import status, telemetry, topic_of


def rec(doc: dict[str, Any]) -> Received:
    return Received(parse_message(topic_of(doc), encode(doc)), time.time() - 30)


def filled(store_url: str) -> None:
    with open_store(store_url) as store:
        store.ingest(
            [
                rec(status("lab", "dev-1", 1)),
                rec(
                    telemetry(
                        "lab",
                        "dev-1",
                        2,
                        p95=12.5,
                        requests=200,
                        errors=4,
                        drift={"age": {"psi": 0.31, "js": 0.05}, "bmi": {"psi": 0.02}},
                    )
                ),
                rec(status("lab", "dev-2", 1, models=(("digits", "1.1.0"), ("extra", "0.1.0")))),
                rec(status("lab", "dev-2", 0, state="offline")),
                rec(status("prod", "dev-9", 1, models=())),
            ]
        )
        alert = Alert(
            rule="p95-slow",
            kind="latency",
            severity="critical",
            fleet="lab",
            device="dev-1",
            model="digits",
            value=80.0,
            threshold=50.0,
            message="slow",
            opened=1_800_000_000.0,
        )
        first = store.open_alert(alert)
        assert first is not None
        store.clear_alert(first.key, 1_800_000_100.0)
        store.open_alert(alert)


def test_status_json_and_table(store_url: str) -> None:
    filled(store_url)
    runner = CliRunner()
    result = runner.invoke(main, ["fleet", "status", "--db", store_url, "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["device"]: r for r in json.loads(result.output)}
    dev1 = rows["dev-1"]
    assert (dev1["online"], dev1["open_alerts"], dev1["runtime_version"]) == (True, 1, "0.1.0")
    [model] = dev1["models"]
    assert (model["name"], model["version"], model["p95_ms"], model["error_rate"]) == (
        "digits",
        "1.0.0",
        12.5,
        0.02,
    )
    assert model["worst_drift"] == {"feature": "age", "metric": "psi", "score": 0.31}
    assert 25 <= dev1["last_seen_s_ago"] < 3600
    assert rows["dev-2"]["online"] is False
    assert [m["name"] for m in rows["dev-2"]["models"]] == ["digits", "extra"]
    assert rows["dev-2"]["models"][0]["p95_ms"] is None

    only = runner.invoke(main, ["fleet", "status", "--db", store_url, "--fleet", "prod", "--json"])
    assert [r["device"] for r in json.loads(only.output)] == ["dev-9"]

    table = runner.invoke(main, ["fleet", "status", "--db", store_url]).output.splitlines()
    assert table[0].split()[:4] == ["FLEET", "DEVICE", "ONLINE", "LAST"]
    line = next(x for x in table if "dev-1" in x)
    for part in ("yes", "digits", "1.0.0", "12.5", "2.0%", "0.310 psi age", "s ago"):
        assert part in line
    assert sum("dev-2" in x for x in table) == 2  # one line per model
    assert any("dev-9" in x and " - " in x for x in table)


def test_alerts_open_and_all(store_url: str) -> None:
    filled(store_url)
    runner = CliRunner()
    open_ = json.loads(runner.invoke(main, ["fleet", "alerts", "--db", store_url, "--json"]).output)
    assert [(a["rule"], a["state"]) for a in open_] == [("p95-slow", "open")]
    assert open_[0]["schema"] == "edgeship.alert/v1" and open_[0]["severity"] == "critical"
    every = runner.invoke(main, ["fleet", "alerts", "--db", store_url, "--all", "--json"])
    assert [a["state"] for a in json.loads(every.output)] == ["open", "cleared"]
    table = runner.invoke(main, ["fleet", "alerts", "--db", store_url, "--all"]).output
    assert "p95-slow" in table and "cleared" in table and "2027-01-15T08:00:00" in table


def test_empty_store_and_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'empty.db'}"
    assert (
        runner.invoke(main, ["fleet", "status", "--db", db]).output.strip() == "no devices seen yet"
    )
    assert runner.invoke(main, ["fleet", "alerts", "--db", db, "--json"]).output.strip() == "[]"
    bad_db = runner.invoke(main, ["fleet", "status", "--db", "mysql://x"])
    assert bad_db.exit_code == 2 and "unsupported database URL" in bad_db.output
    no_folder = runner.invoke(main, ["fleet", "status", "--db", f"sqlite:///{tmp_path}/x/y.db"])
    assert no_folder.exit_code == 8 and "does not exist" in no_folder.output
    rules = tmp_path / "rules.toml"
    rules.write_text("[[rule]]\nname = 'x'\nkind = 'latency'\nabove_ms = 'fast'\n")
    bad_rules = runner.invoke(
        main,
        ["fleet", "monitor", "--broker", "mqtt://127.0.0.1:1", "--db", db, "--rules", str(rules)],
    )
    assert bad_rules.exit_code == 2 and f"{rules}:1: rule 'x': above_ms" in bad_rules.output
    bad_url = runner.invoke(main, ["fleet", "monitor", "--broker", "http://x", "--db", db])
    assert bad_url.exit_code == 2 and "expected mqtt://HOST" in bad_url.output
    unreachable = runner.invoke(
        main, ["fleet", "monitor", "--broker", "mqtt://127.0.0.1:1", "--db", db]
    )
    assert unreachable.exit_code == 7 and "cannot connect" in unreachable.output
    bad_share = runner.invoke(main, ["fleet", "monitor", "--broker", "mqtt://h", "--share", "a/b"])
    assert bad_share.exit_code == 2
