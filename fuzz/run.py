"""Run the fuzz targets for a bounded time each and report executions and findings.

``python -m fuzz.run [--seconds 60] [--runs N] [--target NAME …] [--work build/fuzz] [--json]``

Seeds are generated (``fuzz.make_seeds``) into ``WORK/seeds`` unless ``--seeds`` names a folder
that has them; each target grows its own corpus in ``WORK/corpus/TARGET``. A finding (an
exception outside the contract, a crash, a hang past ``--hang-seconds``, memory past
``--rss-mb``) is written to ``WORK/findings/TARGET/`` by libFuzzer; reproduce one with
``python -m fuzz.fuzz_TARGET FILE``. Exit status 1 when any target has a finding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from fuzz.harness import SCRATCH_ENV
from fuzz.make_seeds import TARGETS

ROOT = Path(__file__).resolve().parents[1]
FINDING_PREFIXES = ("crash-", "timeout-", "oom-", "leak-")
DICTIONARIES = {
    "manifest": ("json",),
    "bundle": ("tar", "json"),
    "telemetry": ("topic", "json"),
    "trust_update": ("json",),
}
"""The libFuzzer dictionaries (fuzz/dicts/NAME.dict) each target mutates with."""


@dataclass(frozen=True)
class TargetResult:
    target: str
    seconds: float
    executions: int
    exec_per_sec: int
    corpus: int
    findings: list[str]
    exit_code: int
    tail: str

    @property
    def ok(self) -> bool:
        return not self.findings and self.exit_code == 0 and self.executions > 0


def _stat(output: str, name: str) -> int:
    found = re.findall(rf"stat::{name}:\s+(\d+)", output)
    return int(found[-1]) if found else 0


def run_target(
    target: str,
    seeds: Path,
    work: Path,
    seconds: int,
    runs: Optional[int] = None,
    hang_seconds: int = 10,
    rss_mb: int = 2048,
    module: Optional[str] = None,
) -> TargetResult:
    """Fuzz one target in a subprocess for ``seconds`` (or ``runs`` inputs, whichever ends
    first); a target that outlives its budget by a minute is killed and counted as a hang.

    ``module`` runs another target module on ``target``'s seeds and dictionaries.
    """
    corpus = work / "corpus" / target
    findings_dir = work / "findings" / target
    corpus.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(findings_dir, ignore_errors=True)  # a finding counts for the run that made it
    findings_dir.mkdir(parents=True)
    for seed in (seeds / target).iterdir():
        shutil.copyfile(seed, corpus / seed.name)
    shm = Path("/dev/shm")  # noqa: S108 - a private folder made by mkdtemp, on tmpfs for speed
    scratch = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-", dir=shm if shm.is_dir() else None))
    command = [
        sys.executable, "-m", module or f"fuzz.fuzz_{target}", str(corpus),
        f"-max_total_time={seconds}", f"-timeout={hang_seconds}", f"-rss_limit_mb={rss_mb}",
        f"-artifact_prefix={findings_dir}/", "-print_final_stats=1",
    ]  # fmt: skip
    if runs is not None:
        command.append(f"-runs={runs}")
    dictionary = work / "dicts" / f"{target}.dict"
    dictionary.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        (ROOT / "fuzz" / "dicts" / f"{name}.dict").read_text() for name in DICTIONARIES[target]
    ]
    dictionary.write_text("\n".join(parts))
    command.append(f"-dict={dictionary}")
    env = {**os.environ, SCRATCH_ENV: str(scratch)}
    try:
        done = subprocess.run(
            command,
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(
            errors="replace"
        )
        code = -9
        (findings_dir / "timeout-runner").write_text("the target outlived its time budget\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found = sorted(str(p) for p in findings_dir.iterdir() if p.name.startswith(FINDING_PREFIXES))
    executions = _stat(output, "number_of_executed_units")
    elapsed = max(re_float(output, r"Done \d+ runs in (\d+) second"), 1.0)
    return TargetResult(
        target=target,
        seconds=elapsed,
        executions=executions,
        exec_per_sec=_stat(output, "average_exec_per_sec"),
        corpus=len(list(corpus.iterdir())),
        findings=found,
        exit_code=code,
        tail=output[-4000:],
    )


def re_float(text: str, pattern: str) -> float:
    found = re.findall(pattern, text)
    return float(found[-1]) if found else 0.0


def ensure_seeds(seeds: Path) -> None:
    """Generate seeds into ``seeds`` unless every target already has some there."""
    if all((seeds / t).is_dir() and any((seeds / t).iterdir()) for t in TARGETS):
        return
    from fuzz.make_seeds import write_corpora

    write_corpora(seeds)


def table(results: list[TargetResult]) -> str:
    lines = [f"{'target':<14}{'executions':>12}{'exec/s':>9}{'corpus':>8}  findings"]
    for r in results:
        verdict = "none" if r.ok else (", ".join(r.findings) or f"exit code {r.exit_code}")
        lines.append(f"{r.target:<14}{r.executions:>12}{r.exec_per_sec:>9}{r.corpus:>8}  {verdict}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run edgeship's fuzz targets for a bounded time.")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")))
    parser.add_argument("--runs", type=int, default=None, help="stop a target after N inputs")
    parser.add_argument("--target", action="append", choices=TARGETS, help="repeatable")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "fuzz")
    parser.add_argument("--seeds", type=Path, default=None, help="default: WORK/seeds")
    parser.add_argument("--hang-seconds", type=int, default=10)
    parser.add_argument("--rss-mb", type=int, default=2048)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    seeds = args.seeds or args.work / "seeds"
    ensure_seeds(seeds)
    results = []
    for target in args.target or TARGETS:
        if not args.json:
            print(f"fuzzing {target} for up to {args.seconds} s …", flush=True)
        result = run_target(
            target, seeds, args.work, args.seconds, args.runs, args.hang_seconds, args.rss_mb
        )
        results.append(result)
        if not result.ok and not args.json:
            print(result.tail, file=sys.stderr)
    if args.json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in results], indent=2))
    else:
        print(table(results))
        total = sum(len(r.findings) for r in results)
        print(f"{sum(r.executions for r in results)} executions, {total} finding(s)")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
