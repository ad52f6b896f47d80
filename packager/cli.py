"""``edgeship``: the workstation's command line, thin over the packager library."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

import devices
from packager.fleet.cli import fleet
from packager.trust_cli import trust as trust_commands
from runtime import __version__
from runtime.cli import EPILOG, EdgeshipGroup, emit, json_option, threshold_option, trust_option
from runtime.errors import UsageError
from runtime.manifest import format_time


def _stderr(message: str) -> None:
    click.echo(message, err=True)


@click.group(cls=EdgeshipGroup, epilog=EPILOG)
@click.version_option(__version__, prog_name="edgeship")
def main() -> None:
    """Build signed model bundles for CPU and ARM devices, and check them."""


main.add_command(trust_commands)
main.add_command(fleet)


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for NAME.key and NAME.pub.",
)
@click.option("--name", default="release", show_default=True, help="Key file base name.")
@json_option
def keygen(out: Path, name: str, as_json: bool) -> None:
    """Create an Ed25519 signing key pair (encrypted when EDGESHIP_KEY_PASSPHRASE is set)."""
    from packager.keys import generate

    pair = generate(out, name)
    doc = {
        "private_key": str(pair.private_path),
        "public_key": str(pair.public_path),
        "keyid": pair.keyid,
        "encrypted": pair.encrypted,
    }
    emit(
        doc,
        as_json,
        lambda d: click.echo(
            f"wrote {d['private_key']} ({'encrypted' if d['encrypted'] else 'not encrypted'}) and "
            f"{d['public_key']}\nkey id {d['keyid']}"
        ),
    )


def _parse_input_shapes(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    parsed = []
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise click.BadParameter(f"{value!r}: expected NAME=D0,D1,… with positive sizes")
        parsed.append((name, shape))
    return tuple(parsed)


profile_file_option = click.option(
    "--profile-file",
    "profile_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An extra device profile (TOML); repeatable.",
)


@main.command()
@profile_file_option
@json_option
def profiles(profile_files: tuple[Path, ...], as_json: bool) -> None:
    """List the device profiles bundles can be built for."""
    found = devices.list_profiles(profile_files)
    rows = [p.to_dict() for p in found.values()]

    def human(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            click.echo(f"{r['name']:<18} {r['arch']:<8} {r['backend']:<12} {r['description']}")

    emit(rows, as_json, human)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--target",
    "targets",
    multiple=True,
    required=True,
    metavar="PROFILE",
    help="Device profile to build for; repeat for several (see 'edgeship profiles').",
)
@click.option(
    "--key",
    "keys",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private signing key (.key); repeat to add signatures.",
)
@click.option("--name", required=True, help="Model name on devices (lowercase, digits, . _ -).")
@click.option("--version", "version", required=True, help="Semantic version, e.g. 1.2.0.")
@click.option(
    "--sequence",
    type=click.IntRange(min=0),
    default=None,
    help="Anti-rollback sequence. Default: the build time in seconds since 1970 "
    "(SOURCE_DATE_EPOCH when set), so a later build is newer.",
)
@click.option(
    "--sample",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Sample input rows (.npy, .npz, .csv): fixes the input signature, gives "
    "the golden vectors and the parity check.",
)
@click.option(
    "--expires",
    "expires_days",
    type=click.IntRange(min=0),
    default=365,
    show_default=True,
    help="Days until devices refuse the bundle; 0 = never.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1e-3,
    show_default=True,
    help="Largest absolute output difference from the original model.",
)
@click.option(
    "--min-label-agreement",
    type=click.FloatRange(0, 1),
    default=0.99,
    show_default=True,
    help="Smallest share of sample rows with the original's label.",
)
@click.option(
    "--quantize",
    type=click.Choice(["auto", "none", "dynamic", "static", "fp16"]),
    default="auto",
    show_default=True,
    help="auto: measure every mode the target profile allows and ship the smallest variant "
    "that is no slower than float32 and within --max-accuracy-drop. A mode: exactly that "
    "variant, or fail (exit 1).",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Rows (.npy, .npz, .csv) whose value ranges static int8 quantization measures. "
    "Default: the sample.",
)
@click.option(
    "--validation",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Rows (.npy, .npz, .csv) every candidate is scored on. Default: the sample.",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="True labels or values of the --validation rows (.npy, .npz, .csv): the gate then "
    "compares accuracy (classifiers) or R² (regressors) with the original model's.",
)
@click.option(
    "--max-accuracy-drop",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Most the shipped variant may lose against the original model, absolute: accuracy "
    "or R² with --labels, else the share of changed labels (1 - output R² for models "
    "without labels).",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=D0,D1,…",
    callback=_parse_input_shapes,
    help="Fix an ONNX input's dynamic dimensions, e.g. image=1,3,224,224; repeatable. Without "
    "it, dynamic dims other than the batch are fixed from the sample.",
)
@click.option(
    "--reject-out-of-range",
    is_flag=True,
    help="Devices refuse requests with values outside the reference profile's ranges (those of "
    "the sample and --validation rows; exit 5) instead of counting and reporting them.",
)
@click.option(
    "--emulate",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="ARM targets: also run every candidate on an emulated ARM device on the profile's core "
    "(docs/arm64.md) and reject a variant whose loss there breaks --max-accuracy-drop; latency "
    "stays the host's. auto: when this host can (root, the emulated device prepared), else the "
    "report says why not; on: prepare the device if needed, or fail (exit 2); off: never.",
)
@click.option("--description", default="", help="What the model is for (goes into the card).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Folder for the bundles.",
)
@profile_file_option
@json_option
def build(
    model: Path,
    targets: tuple[str, ...],
    keys: tuple[Path, ...],
    name: str,
    version: str,
    sequence: Optional[int],
    sample: Path,
    expires_days: int,
    tolerance: float,
    min_label_agreement: float,
    quantize: str,
    calibration: Optional[Path],
    validation: Optional[Path],
    labels: Optional[Path],
    max_accuracy_drop: float,
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...],
    reject_out_of_range: bool,
    emulate: str,
    description: str,
    out: Path,
    profile_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Convert MODEL, check it against the original, quantize and validate it for each target,
    sign it, and write one bundle per target.

    The table of candidates (mode, size, latency, metrics, verdict) goes to standard error for
    every target, also when the gate fails; with --json it is each result's "candidates".
    """
    from packager.build import BuildOptions
    from packager.build import build as run_build
    from packager.candidates_table import lines_for

    opts = BuildOptions(
        model=model,
        targets=targets,
        keys=keys,
        name=name,
        version=version,
        sample=sample,
        out=out,
        sequence=sequence,
        expires_days=expires_days,
        tolerance=tolerance,
        min_label_agreement=min_label_agreement,
        description=description,
        profile_files=profile_files,
        quantize=quantize,
        calibration=calibration,
        validation=validation,
        labels=labels,
        max_accuracy_drop=max_accuracy_drop,
        input_shapes=input_shapes,
        reject_out_of_range=reject_out_of_range,
        emulate=emulate,
    )
    progress = (lambda _: None) if as_json else (lambda m: _stderr(f"… {m}"))
    tables: list[str] = []

    def table(profile: str, report: dict[str, Any]) -> None:
        text = "\n".join(lines_for(profile, report))
        if as_json:  # the table is each result's "candidates"; stderr gets it only on failure
            tables.append(text)
        else:
            _stderr(text)

    try:
        results = run_build(
            opts, progress=progress, warn=lambda m: _stderr(f"warning: {m}"), table=table
        )
    except Exception:
        for text in tables:
            _stderr(text)
        raise

    def human(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            click.echo(f"wrote {r['path']} ({r['size']} bytes, sequence {r['sequence']})")
            click.echo(
                f"  parity: max diff {r['parity']['max_abs_diff']:.3g}, label agreement "
                f"{r['parity']['label_agreement']}"
            )
            q = r["quantization"]
            click.echo(f"  quantization: {q['mode']} ({q['reason']})")

    emit([r.to_dict() for r in results], as_json, human)


@main.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@trust_option
@threshold_option
@json_option
def verify(bundle: Path, trust: tuple[Path, ...], threshold: int, as_json: bool) -> None:
    """Check BUNDLE's signatures against trusted keys, its expiry and every payload digest."""
    from packager.inspect import verify_with_keys

    result = verify_with_keys(bundle, trust, threshold)
    m = result.verified.manifest
    doc = {
        "bundle": str(bundle),
        "valid": True,
        "name": m.name,
        "version": m.version,
        "sequence": m.sequence,
        "profile": m.target.profile,
        "expires": format_time(m.expires) if m.expires else None,
        "signers": sorted(result.verified.signers),
    }
    emit(
        doc,
        as_json,
        lambda d: click.echo(
            f"OK {d['name']} {d['version']} for {d['profile']}, signed by "
            f"{', '.join(k[:16] for k in d['signers'])}"
        ),
    )


@main.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--card", is_flag=True, help="Print the bundle's model card (Markdown).")
@json_option
def inspect(bundle: Path, card: bool, as_json: bool) -> None:
    """Show what BUNDLE contains (no trust decision is made)."""
    from packager.inspect import inspect_bundle

    doc = inspect_bundle(bundle)
    if card:
        if doc["card"] is None:
            raise UsageError(f"{bundle} has no intact model card")
        click.echo(doc["card"], nl=False)
        return

    def human(d: dict[str, Any]) -> None:
        m = d["manifest"]
        t = m["target"]
        click.echo(
            f"{m['name']} {m['version']}  sequence {m['sequence']}  "
            f"profile {t['profile']} ({t['arch']}, {t['backend']})"
        )
        click.echo(f"created {m['created']}  expires {m['expires'] or 'never'}")
        click.echo(f"task {m['model']['task']}  labels {m['model']['labels']}")
        for kind in ("inputs", "outputs"):
            for spec in m["model"][kind]:
                click.echo(f"  {kind[:-1]:<6} {spec['name']}: {spec['dtype']} {spec['shape']}")
        for entry in m["files"]:
            click.echo(f"  file   {entry['path']}  {entry['size']} bytes  {entry['sha256'][:16]}")
        for keyid in d["claimed_signers"]:
            click.echo(f"  signature claims key {keyid} (not verified: use 'edgeship verify')")
        parity = m["validation"].get("parity")
        if parity:
            click.echo(
                f"parity with the original: max diff {parity['max_abs_diff']:.3g}, "
                f"label agreement {parity['label_agreement']}"
            )
        click.echo(
            "payload: "
            + ("matches the manifest" if d["payload_ok"] else f"DAMAGED: {d['payload_error']}")
        )

    emit(doc, as_json, human)


@main.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--to",
    "to",
    required=True,
    metavar="ssh://[USER@]HOST[:PORT]/PATH|DIR",
    help="A device over SSH (copy into PATH, then install there) or a folder (an SD card or "
    "USB inbox). /~/PATH is PATH under the remote home.",
)
@click.option(
    "--identity",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="SSH private key (ssh -i).",
)
@click.option(
    "--ssh-option",
    "ssh_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra ssh option (ssh -o); repeatable; wins over edgeship's defaults.",
)
@click.option(
    "--remote-command",
    default="edgeship-device",
    show_default=True,
    help="The device command to install with (may be e.g. 'sudo -n edgeship-device').",
)
@click.option(
    "--remote-home", default=None, metavar="DIR", help="--home for the install on the device."
)
@click.option(
    "--no-install",
    is_flag=True,
    help="Only copy (e.g. into the inbox of a device running 'edgeship-device agent --inbox').",
)
@click.option(
    "--connect-timeout",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Seconds to wait for the SSH connection.",
)
@json_option
def push(
    bundle: Path,
    to: str,
    identity: Optional[Path],
    ssh_options: tuple[str, ...],
    remote_command: str,
    remote_home: Optional[str],
    no_install: bool,
    connect_timeout: int,
    as_json: bool,
) -> None:
    """Copy BUNDLE to a device and install it there, or into a folder a device reads.

    Over SSH the file lands complete or not at all, then 'edgeship-device install' runs on the
    device and its result (version, slot, self-test) is reported; a refusal there exits with the
    device's code and reason (1 for a refused bundle). A folder gets DIR/.NAME.part, renamed to
    DIR/NAME once complete and synced.
    """
    import sys

    from packager.push import push as run_push
    from packager.ssh import SshSettings

    settings = SshSettings(
        identity=identity,
        options=ssh_options,
        remote_command=remote_command,
        remote_home=remote_home,
        install=not no_install,
        connect_timeout_s=connect_timeout,
    )

    def progress(done: int, total: int) -> None:
        click.echo(f"\rsending {done / 2**20:8.1f} / {total / 2**20:.1f} MiB", err=True, nl=False)
        if done >= total:
            click.echo("", err=True)

    show = not as_json and sys.stderr.isatty()
    result = run_push(bundle, to, settings, progress if show else None)

    def human(d: dict[str, Any]) -> None:
        click.echo(f"copied {d['name']} {d['version']} ({d['bytes']} bytes) to {d['path']}")
        r = d["remote"]
        if r is None:
            return
        if r.get("unchanged"):
            click.echo(f"{d['destination']}: {r['version']} is already active (slot {r['slot']})")
            return
        st = r.get("selftest") or {}
        click.echo(
            f"{d['destination']}: installed {r['name']} {r['version']} (sequence "
            f"{r['sequence']}) in slot {r['slot']}; self-test passed: {st.get('rows')} rows, "
            f"{st.get('latency_ms', 0):.2f} ms"
        )

    emit(result.to_dict(), as_json, human)


@main.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to work (default: a new temporary folder).",
)
@json_option
def demo(workdir: Optional[Path], as_json: bool) -> None:
    """Run the whole story on this machine: train, sign, build, install, predict, roll back,
    then serve through the agent with telemetry to a private broker and the fleet monitor."""
    import tempfile

    from packager.demo import run_demo

    folder = workdir or Path(tempfile.mkdtemp(prefix="edgeship-demo-"))
    result = run_demo(folder, (lambda _: None) if as_json else click.echo)
    emit(result, as_json, lambda d: click.echo(f"demo finished; everything is in {d['workdir']}"))


if __name__ == "__main__":  # pragma: no cover
    main()
