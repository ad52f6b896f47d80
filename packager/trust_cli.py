"""``edgeship trust``: write and sign trust policy updates (docs/keys.md), thin over
:mod:`packager.trust_doc`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from runtime.cli import emit, json_option, threshold_option, trust_option


@click.group("trust")
def trust() -> None:
    """Rotate or revoke signing keys: write a new trust policy, then sign it with the devices'
    current keys and the new keys ('edgeship-device trust update' applies it)."""


@trust.command("new")
@trust_option
@threshold_option
@click.option("--revoke", multiple=True, metavar="KEYID", help="Key id to revoke; repeatable.")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=2),
    default=None,
    help="The new policy's version: exactly one more than the devices' (default: --previous's "
    "plus one, else 2).",
)
@click.option(
    "--min-sequence",
    type=click.IntRange(min=0),
    default=None,
    help="Refuse bundles with a lower sequence (default: --previous's, else 0).",
)
@click.option(
    "--previous",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The policy devices hold now (trust.toml or an update file): its revocations carry over.",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="NEW.toml"
)
@json_option
def new(
    trust: tuple[Path, ...],
    threshold: int,
    revoke: tuple[str, ...],
    version: Optional[int],
    min_sequence: Optional[int],
    previous: Optional[Path],
    out: Path,
    as_json: bool,
) -> None:
    """Write the next trust policy (keys, threshold, revoked key ids) to --out."""
    from packager.trust_doc import new_policy, write_policy

    policy = new_policy(
        trust, threshold, revoke, version=version, min_sequence=min_sequence, previous=previous
    )
    write_policy(policy, out)
    emit(
        {"out": str(out), **policy.to_dict()},
        as_json,
        lambda d: click.echo(
            f"wrote {d['out']}: version {d['version']}, {len(d['keys'])} key(s), threshold "
            f"{d['threshold']}, {len(d['revoked'])} revoked; now sign it with 'edgeship trust sign'"
        ),
    )


@trust.command("sign")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "keys",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key (.key) to sign with; repeatable.",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Update file."
)
@json_option
def sign(source: Path, keys: tuple[Path, ...], out: Path, as_json: bool) -> None:
    """Sign SOURCE (a policy from 'trust new', or an update to add signatures to) into --out."""
    from packager.trust_doc import sign_file

    result = sign_file(source, keys, out)

    def human(d: dict[str, Any]) -> None:
        click.echo(
            f"wrote {d['out']}: version {d['version']}, {len(d['signers'])} signature(s); "
            f"{d['new_keys_signed']} of the new keys signed, {d['threshold']} required"
        )
        click.echo("devices also require a threshold of their current keys")

    emit(result.to_dict(), as_json, human)
