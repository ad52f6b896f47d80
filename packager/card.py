"""The model card: a Markdown page generated into every bundle (``payload/card.md``).

It is rendered from the manifest document alone, so it never says more than the bundle signs:
purpose, signature, data profile, metrics, quantization and why, target, signers, provenance.
"""

from __future__ import annotations

from typing import Any, Iterable

CARD_FILE = "card.md"
MAX_FEATURES_SHOWN = 40


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _signature(model: dict[str, Any]) -> list[str]:
    rows = [
        (kind, spec["name"], spec["dtype"], _shape(spec["shape"]))
        for kind in ("inputs", "outputs")
        for spec in model[kind]
    ]
    lines = _table(("", "name", "type", "shape"), ((k[:-1], *r) for k, *r in rows))
    if model.get("labels"):
        lines += ["", "Classes: " + ", ".join(f"`{c}`" for c in model["labels"])]
    return lines


def _shape(shape: list[Any]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _data(profile: dict[str, Any]) -> list[str]:
    features = profile.get("features", {})
    if not features:
        return ["No tabular reference profile (non-tabular inputs)."]
    lines = [f"Profiled from {profile.get('rows', 0)} sample rows, {len(features)} features."]
    rows = []
    for name, f in list(features.items())[:MAX_FEATURES_SHOWN]:
        if f.get("kind") == "categorical":
            spread = f"{len(f['frequencies'])} categories"
        else:
            spread = f"mean {_cell(f.get('mean'))}, std {_cell(f.get('std'))}"
        rows.append((name, f.get("kind", "-"), f.get("min"), f.get("max"), spread, f["missing"]))
    lines += ["", *_table(("feature", "kind", "min", "max", "spread", "missing"), rows)]
    if len(features) > MAX_FEATURES_SHOWN:
        lines.append(f"\n…and {len(features) - MAX_FEATURES_SHOWN} more (see the manifest).")
    return lines


def _metrics(validation: dict[str, Any]) -> list[str]:
    lines = []
    parity = validation.get("parity")
    if parity:
        agreement = parity.get("label_agreement")
        lines.append(
            f"Parity with the original model on {parity['rows']} sample rows: max |difference| "
            f"{_cell(parity['max_abs_diff'])}"
            + (f", label agreement {agreement:.2%}." if agreement is not None else ".")
        )
    candidates = validation.get("candidates") or []
    if candidates:
        keys = sorted({k for c in candidates for k in c.get("metrics", {})})
        header = ["variant", "size (bytes)", "latency p50 (ms)", *keys, "verdict"]
        rows = [
            (
                c.get("mode"),
                c.get("size"),
                c.get("latency_ms", {}).get("p50")
                if isinstance(c.get("latency_ms"), dict)
                else None,
                *(c.get("metrics", {}).get(k) for k in keys),
                c.get("verdict"),
            )
            for c in candidates
        ]
        lines += ["", *_table(header, rows)]
    return lines or ["No validation data was given."]


def render_card(manifest: dict[str, Any], signers: Iterable[str]) -> str:
    """The card for ``manifest`` (a manifest document) signed by key ids ``signers``."""
    target = manifest["target"]
    quant = manifest.get("quantization", {})
    provenance = manifest.get("provenance", {})
    converter = ", ".join(f"{k} {v}" for k, v in sorted(provenance.get("converter", {}).items()))
    lines = [
        f"# {manifest['name']} {manifest['version']}",
        "",
        manifest.get("description")
        or "_No description was given (`edgeship build --description`)._",
        "",
        f"- Task: {manifest['model']['task']}",
        f"- Target profile: `{target['profile']}` ({target['arch']}, {target['backend']}, "
        f"{target.get('threads', 1)} threads)",
        f"- Sequence {manifest['sequence']}, built {manifest['created']}, "
        f"expires {manifest.get('expires') or 'never'}",
        "",
        "## Inputs and outputs",
        "",
        *_signature(manifest["model"]),
        "",
        "## Reference data",
        "",
        *_data(manifest.get("reference_profile", {})),
        "",
        "## Metrics",
        "",
        *_metrics(manifest.get("validation", {})),
        "",
        "## Quantization",
        "",
        f"Mode: `{quant.get('mode', 'none')}`. {quant.get('reason', '')}".rstrip(),
        "",
        "## Signatures and provenance",
        "",
        *[f"- Signed by key `{k}`" for k in signers],
        f"- Source: `{provenance.get('source_file', '?')}` "
        f"({provenance.get('source_format', '?')}), "
        f"SHA-256 `{provenance.get('source_sha256', '?')}`",
        f"- Built with {provenance.get('tool', 'edgeship')}"
        + (f"; {converter}" if converter else ""),
        "",
    ]
    return "\n".join(lines)
