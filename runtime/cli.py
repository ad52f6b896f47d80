"""``edgeship-device``: the device's command line, thin over the runtime library.

Also home of the small click helpers both CLIs share (error → exit code mapping, JSON output).
Each command imports what it needs when it runs: a device process pays only for its own command
(``edgeship-device predict`` starts without the signature or install machinery).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import click
import numpy as np

from runtime import __version__
from runtime.errors import EXIT_CODES, BundleError, EdgeshipError, StoreError
from runtime.store import Store, default_home

EPILOG = "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items())


class EdgeshipGroup(click.Group):
    """A click group that turns any EdgeshipError into one line on stderr and its exit code.

    Commands named in ``lazy_commands`` (name -> ``module:attribute``) are imported only when
    they run or help lists them, so they cost nothing at start-up.
    """

    lazy_commands: dict[str, str] = {}  # noqa: RUF012 - read-only, overridden per group

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        target = self.lazy_commands.get(cmd_name)
        if target is not None and cmd_name not in self.commands:
            import importlib

            module, attribute = target.split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader went away (e.g. piped into head): not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except EdgeshipError as e:
            step = f"{e.step}: " if isinstance(e, BundleError) else ""
            click.echo(f"{ctx.info_name}: error: {step}{e}", err=True)
            ctx.exit(e.exit_code)


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON (stdout, one document) or through ``human``."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_json_default))
    else:
        human(data)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Device store (default: $EDGESHIP_HOME, /var/lib/edgeship as root, else "
    "~/.local/share/edgeship).",
)


trust_option = click.option(
    "--trust",
    "trust",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public key (.pub) to trust; repeat for several.",
)
threshold_option = click.option(
    "--threshold",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many trusted keys must sign a bundle.",
)


def _progress(quiet: bool) -> Optional[Callable[[int, int], None]]:
    """A progress line on stderr while a bundle is read, when stderr is a terminal."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        click.echo(f"\rverifying {done / 2**20:8.1f} / {total / 2**20:.1f} MiB", err=True, nl=False)
        click.echo(end, err=True, nl=False)

    return show


def _store(home: Optional[Path]) -> Store:
    return Store(home or default_home())


class _DeviceGroup(EdgeshipGroup):
    lazy_commands = {  # noqa: RUF012
        "agent": "runtime.agent_cli:agent",
        "feedback": "runtime.agent_cli:feedback",
    }


@click.group(cls=_DeviceGroup, epilog=EPILOG)
@click.version_option(__version__, prog_name="edgeship-device")
def main() -> None:
    """Verify, install and run signed edgeship bundles on this device."""


@main.command()
@trust_option
@threshold_option
@click.option(
    "--min-sequence",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Refuse bundles with a lower sequence.",
)
@click.option("--revoke", multiple=True, metavar="KEYID", help="Key id to refuse; repeatable.")
@click.option("--force", is_flag=True, help="Replace an existing trust policy.")
@home_option
@json_option
def init(
    trust: tuple[Path, ...],
    threshold: int,
    min_sequence: int,
    revoke: tuple[str, ...],
    force: bool,
    home: Optional[Path],
    as_json: bool,
) -> None:
    """Create the device store and its trust policy."""
    from runtime.signing import load_public_key
    from runtime.trust import TrustPolicy

    store = _store(home)
    if store.initialized() and not force:
        raise StoreError(f"{store.trust_path} exists; use --force to replace it")
    keys = [(load_public_key(p.read_bytes(), str(p)), p.stem) for p in trust]
    policy = TrustPolicy.create(keys, threshold).with_changes(
        revoked=frozenset(revoke), min_sequence=min_sequence
    )
    store.save_policy(policy)
    emit(
        {"home": str(store.home), **policy.to_dict()},
        as_json,
        lambda d: click.echo(
            f"initialized {d['home']}: {len(d['keys'])} trusted key(s), threshold {d['threshold']}"
        ),
    )


@main.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--allow-any-target", is_flag=True, help="Skip the architecture check (for testing only)."
)
@home_option
@json_option
def install(bundle: Path, allow_any_target: bool, home: Optional[Path], as_json: bool) -> None:
    """Verify BUNDLE, self-test it, and make it the active version of its model."""
    from runtime.install import install_bundle

    result = install_bundle(
        _store(home), bundle, allow_any_target=allow_any_target, progress=_progress(as_json)
    )

    def human(d: dict[str, Any]) -> None:
        if d["unchanged"]:
            click.echo(f"{d['name']} {d['version']} is already active (slot {d['slot']})")
            return
        st = d["selftest"]
        click.echo(
            f"installed {d['name']} {d['version']} (sequence {d['sequence']}) in slot "
            f"{d['slot']}; self-test passed: {st['rows']} rows, max diff "
            f"{st['max_abs_diff']:.2g}, {st['latency_ms']:.2f} ms"
        )

    emit(result.to_dict(), as_json, human)


@main.command()
@click.argument("name")
@home_option
@json_option
def rollback_cmd(name: str, home: Optional[Path], as_json: bool) -> None:
    """Make the previous version of model NAME active again."""
    from runtime.install import rollback

    result = rollback(_store(home), name)
    emit(
        result.to_dict(),
        as_json,
        lambda d: click.echo(
            f"rolled {d['name']} back from {d['from']} to {d['to']} (slot {d['slot']})"
        ),
    )


rollback_cmd.name = "rollback"


def _model_rows(store: Store) -> list[dict[str, Any]]:
    import hashlib

    from runtime.verify import MANIFEST_MEMBER

    rows = []
    floors = store.floors()
    for name in store.names():
        slot = store.active_slot(name)
        if slot is None:
            continue
        manifest = store.slot_manifest(name, slot)
        digest = hashlib.sha256((store.slot_dir(name, slot) / MANIFEST_MEMBER).read_bytes())
        other = store.other_slot(name)
        tests = [
            h
            for h in store.state(name).history
            if h.get("selftest")
            and h.get("slot") == slot
            and h.get("sequence") == manifest.sequence
        ]
        rows.append(
            {
                "name": name,
                "version": manifest.version,
                "sequence": manifest.sequence,
                "profile": manifest.target.profile,
                "backend": manifest.target.backend,
                "slot": slot,
                "digest": digest.hexdigest(),
                "expires": manifest.to_dict()["expires"],
                "previous": store.slot_manifest(name, other).version if other else None,
                "floor": floors[name],
                "last_selftest": {**tests[-1]["selftest"], "at": tests[-1]["at"]}
                if tests
                else None,
            }
        )
    return rows


@main.command("list")
@home_option
@json_option
def list_cmd(home: Optional[Path], as_json: bool) -> None:
    """List installed models and their active versions."""
    rows = _model_rows(_store(home))

    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no models installed")
        for r in rows:
            prev = f" (previous {r['previous']})" if r["previous"] else ""
            click.echo(f"{r['name']:<20} {r['version']:<12} slot {r['slot']}{prev}")

    emit(rows, as_json, human)


@main.command()
@home_option
@json_option
def status(home: Optional[Path], as_json: bool) -> None:
    """Show the store, the trust policy and each model's version, sequence, digest and slot;
    with an agent running, its counters since start."""
    from runtime.agent_cli import agent_summary

    store = _store(home)
    policy = store.policy()
    doc = {
        "home": str(store.home),
        "runtime_version": __version__,
        "trust": {
            "version": policy.version,
            "keys": [k.keyid for k in policy.keys],
            "threshold": policy.threshold,
            "revoked": sorted(policy.revoked),
            "min_sequence": policy.min_sequence,
        },
        "models": _model_rows(store),
        "agent": agent_summary(store.home),
    }

    def human(d: dict[str, Any]) -> None:
        t = d["trust"]
        click.echo(
            f"home {d['home']}  runtime {d['runtime_version']}  trusted keys "
            f"{len(t['keys'])} (threshold {t['threshold']})"
        )
        for r in d["models"]:
            test = r["last_selftest"]
            click.echo(
                f"{r['name']}: {r['version']} seq {r['sequence']} slot {r['slot']} "
                f"digest {r['digest'][:12]} self-test "
                f"{'passed ' + test['at'] if test else 'n/a'}"
            )
        agent = d["agent"]
        if agent is None:
            click.echo("agent: not running")
            return
        serve = ", ".join(agent["serve"]) or "no API"
        click.echo(f"agent: pid {agent['pid']} since {agent['started']} ({serve})")
        for name, c in agent["counters"].items():
            latency = c["mean_latency_ms"]
            click.echo(
                f"  {name} counters since start: {c['requests']} requests, {c['errors']} errors, "
                f"{sum(c['rejected'].values())} rejected, {c['out_of_range']} out of range, "
                f"{c['feedback']} feedback"
                + (f", mean {latency:.2f} ms" if latency is not None else "")
            )

    emit(doc, as_json, human)


@main.command()
@click.option(
    "--clear",
    is_flag=True,
    help="First remove what interrupted operations left behind, as the next install would.",
)
@home_option
@json_option
def check(clear: bool, home: Optional[Path], as_json: bool) -> None:
    """Check the store: links, slot files and digests, signatures, floors (exit 6: damaged)."""
    from runtime.fsck import check_store, clear_leftovers

    store = _store(home)
    cleared = clear_leftovers(store) if clear else ()
    result = check_store(store)
    doc = {**result.to_dict(), "cleared": list(cleared)}

    def human(d: dict[str, Any]) -> None:
        for m in d["models"]:
            click.echo(f"{m['name']}: {m['version']} slot {m['active_slot']} floor {m['floor']}")
        for kind in ("problems", "warnings"):
            for f in d[kind]:
                click.echo(f"{kind[:-1]}: {f['path']}: {f['message']}")
        for path in d["cleared"]:
            click.echo(f"cleared: {path}")
        for path in d["leftovers"]:
            click.echo(f"leftover (cleared by the next store operation): {path}")
        if d["ok"]:
            click.echo(f"store {d['home']} is consistent")

    emit(doc, as_json, human)
    if not result.ok:
        raise StoreError(f"{store.home}: {len(result.problems)} problem(s): the store is damaged")


@main.group("trust")
def trust_group() -> None:
    """Show the trust policy, or replace it with signed updates (docs/keys.md)."""


def _show_policy(d: dict[str, Any]) -> None:
    revoked = set(d["revoked"])
    click.echo(
        f"trust policy version {d['version']} in {d['home']}: threshold {d['threshold']}, "
        f"min_sequence {d['min_sequence']}"
    )
    for k in d["keys"]:
        note = "  REVOKED" if k["id"] in revoked else ""
        click.echo(f"  key {k['id'][:16]}  {k['name']}{note}")
    for keyid in sorted(revoked - {k["id"] for k in d["keys"]}):
        click.echo(f"  revoked {keyid[:16]}")


@trust_group.command("show")
@home_option
@json_option
def trust_show(home: Optional[Path], as_json: bool) -> None:
    """Show the trust policy: version, threshold, keys, revoked key ids, minimum sequence."""
    store = _store(home)
    emit({"home": str(store.home), **store.policy().to_dict()}, as_json, _show_policy)


@trust_group.command("update")
@click.argument("updates", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@home_option
@json_option
def trust_update(updates: tuple[Path, ...], home: Optional[Path], as_json: bool) -> None:
    """Verify signed trust policy UPDATES, applied in the order given, and replace the policy.

    Each must be the next version and be signed by a threshold of the keys before it and of
    its own keys. If any is refused (exit 1), the policy stays as it was.
    """
    from runtime.rotation import apply_updates

    result = apply_updates(_store(home), updates)
    emit(
        result.to_dict(),
        as_json,
        lambda d: click.echo(
            f"trust policy updated from version {d['previous_version']} to {d['version']}: "
            f"{len(d['keys'])} key(s), threshold {d['threshold']}, {len(d['revoked'])} revoked"
        ),
    )


@main.command()
@click.argument("name")
@click.option(
    "--input",
    "input_path",
    required=True,
    metavar="FILE|-",
    help="Request: .json, .csv (header row), .npy, or .npz keyed by input name; "
    "'-' reads JSON from standard input.",
)
@click.option(
    "--explain",
    "with_explanations",
    is_flag=True,
    help="Add per-feature attributions for each row (tabular models; see docs/explain.md).",
)
@home_option
@json_option
def predict(
    name: str, input_path: str, with_explanations: bool, home: Optional[Path], as_json: bool
) -> None:
    """Run the active version of model NAME on the rows in FILE.

    Values outside the bundle's reference ranges are reported (a warning on standard error, or
    "out_of_range" in the JSON), or refused with exit code 5 when the bundle says so.
    """
    from runtime.inputs import read_request, read_request_bytes
    from runtime.model import LoadedModel

    store = _store(home)
    model = LoadedModel.open(store.active_dir(name))
    specs = model.manifest.model.inputs
    if input_path == "-":
        limit = model.checker.limits.max_request_bytes
        feeds = read_request_bytes(sys.stdin.buffer.read(limit + 1), ".json", specs)
    else:
        feeds = read_request(Path(input_path), specs)
    prediction = model.predict(feeds)
    doc = {"model": name, "version": model.manifest.version, **prediction.to_dict()}
    explanation = None
    if with_explanations:
        from runtime.explain import explain

        explanation = explain(model, feeds)
    if explanation is not None:
        doc["explanations"] = explanation.to_dict()
    if prediction.ranges and not as_json:
        click.echo(f"warning: out of the reference range: {prediction.ranges.summary()}", err=True)

    def human(d: dict[str, Any]) -> None:
        click.echo(f"{d['model']} {d['version']}")
        if d.get("classes") is not None:
            click.echo(f"classes: {d['classes']}")
        for key, value in d["outputs"].items():
            click.echo(f"{key}: {json.dumps(value, default=_json_default)}")
        if explanation is None:
            return
        for i, row in enumerate(explanation.rows):
            what = f"p({row.label})" if row.class_index is not None else explanation.output
            top = ", ".join(f"{k} {v:+.4g}" for k, v in row.top(3))
            click.echo(f"row {i}: {what} = {row.value:.4g} (baseline {row.base_value:.4g}): {top}")

    emit(doc, as_json, human)


if __name__ == "__main__":  # pragma: no cover
    main()
