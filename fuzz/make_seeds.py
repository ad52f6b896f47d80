"""Seed corpora for the fuzz targets, made from a real bundle built here.

``python -m fuzz.make_seeds --out DIR`` trains a small scikit-learn model, builds a real bundle
with the packager (signed by the fuzzing key, fixed clock), and writes small seeds to
``DIR/TARGET/``: the real manifest and variants, the real bundle and a one-file bundle, real
telemetry messages of every kind, and signed trust updates. Nothing here is committed: seeds are
generated again on every ``make fuzz``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fuzz.harness import FUZZ_KEY, SOURCE_DATE_EPOCH

TARGETS = ("manifest", "bundle", "telemetry", "trust_update")


def train_model(folder: Path) -> tuple[Path, Path]:
    """A scaler + logistic regression on iris as ``.skops``, and its sample rows."""
    import numpy as np
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    sio.dump(model, folder / "model.skops")
    np.save(folder / "sample.npy", x[::5].astype(np.float32))
    return folder / "model.skops", folder / "sample.npy"


def build_seed_bundle(folder: Path, model: Path, sample: Path) -> Path:
    """A real bundle, signed by the fuzzing key, built at the seeds' clock, never expiring."""
    from packager.build import BuildOptions, build

    key = folder / "fuzz.key"
    key.write_bytes(
        FUZZ_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    saved = {k: os.environ.pop(k, None) for k in ("EDGESHIP_KEY_PASSPHRASE", "SOURCE_DATE_EPOCH")}
    os.environ["SOURCE_DATE_EPOCH"] = str(SOURCE_DATE_EPOCH)
    try:
        options = BuildOptions(
            model=model,
            targets=("x86_64-generic",),
            keys=(key,),
            name="iris",
            version="1.0.0",
            sample=sample,
            out=folder / "dist",
            sequence=1,
            expires_days=0,
            quantize="none",
        )
        return build(options)[0].path
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def members(bundle: bytes) -> list[tuple[str, bytes]]:
    import io

    from runtime.tarfmt import TarReader

    reader = TarReader(io.BytesIO(bundle))
    out = []
    while (member := reader.next()) is not None:
        out.append((member.name, reader.read_all()))
    return out


def pack(parts: list[tuple[str, bytes]]) -> bytes:
    from runtime.tarfmt import END_OF_ARCHIVE, header, padding

    out = b"".join(header(n, len(d), SOURCE_DATE_EPOCH) + d + padding(len(d)) for n, d in parts)
    return out + END_OF_ARCHIVE


def signed_bundle(doc: dict[str, Any], payload: dict[str, bytes]) -> bytes:
    """A bundle whose manifest is ``doc`` with its file list set to ``payload``, signed by the
    fuzzing key."""
    from runtime.canonical import canonical_bytes
    from runtime.signing import Envelope, sign

    doc = {
        **doc,
        "files": [
            {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for p, d in payload.items()
        ],
    }
    manifest = canonical_bytes(doc)
    envelope = Envelope((sign(manifest, FUZZ_KEY),)).to_bytes()
    parts = [("manifest.json", manifest), ("signatures.json", envelope)]
    return pack(parts + [(f"payload/{p}", d) for p, d in payload.items()])


def bundle_seeds(bundle: bytes) -> list[bytes]:
    """The real bundle and a small validly signed one with a single tiny payload file."""
    doc = json.loads(dict(members(bundle))["manifest.json"])
    small = signed_bundle(doc, {doc["model"]["file"]: b"\x08\x07"})
    return [bundle, small]


def manifest_seeds(bundle: bytes) -> list[bytes]:
    from runtime.canonical import canonical_bytes

    real = dict(members(bundle))["manifest.json"]
    doc = json.loads(real)
    variants = [
        {**doc, "expires": "2027-01-01T00:00:00Z", "x-extra": {"kept": [1, 2.5, None]}},
        {**doc, "files": doc["files"][:1]},
    ]
    return [real, *(canonical_bytes(v) for v in variants)]


def telemetry_seeds() -> list[bytes]:
    """Real messages of every device topic kind, as ``TOPIC\\nPAYLOAD``, each one valid."""
    from runtime.telemetry import messages as m

    ts = datetime.fromtimestamp(SOURCE_DATE_EPOCH, timezone.utc)
    model = {"name": "iris", "version": "1.0.0", "sequence": 1, "digest": "ab" * 32}
    window = {
        "version": "1.0.0", "requests": 120, "errors": 0, "rejected": 1,
        "latency_ms": {"p50": 0.4, "p95": 0.9, "p99": 1.3, "max": 2.0},
        "predictions": {"0": 40, "1": 80}, "drift": {"petal_width": {"psi": 0.03}},
        "feedback": {"labelled": 3, "accuracy": 1.0},
    }  # fmt: skip
    system = {"rss_mb": 61.2, "cpu_percent": 3.1}
    bodies = [
        ("status", {"state": "online", "runtime_version": "0.1.0", "models": [model]}),
        ("status", {"state": "offline"}),
        ("telemetry", {"window_s": 10.0, "models": {"iris": window}, "system": system}),
        ("events", {"event": "install", "model": "iris", "detail": {"slot": "a"}}),
    ]
    seeds = []
    for seq, (kind, body) in enumerate(bodies):
        topic = m.device_topic(m.DEFAULT_PREFIX, "lab", "dev-7", kind)
        payload = m.encode({**m.envelope(kind, "lab", "dev-7", seq, ts), **body})
        m.parse_message(topic, payload)
        seeds.append(topic.encode("utf-8") + b"\n" + payload)
    return seeds


def trust_update_seeds() -> list[bytes]:
    """Updates for a device at version 1 trusting the fuzzing key: one it accepts, one adding a
    second key with threshold 2 and a revocation, one that skips a version."""
    from runtime.rotation import TrustUpdate, check_update
    from runtime.trust import TrustPolicy

    other = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"edgeship other").digest())
    current = TrustPolicy.create([(FUZZ_KEY.public_key(), "fuzz")])
    two = TrustPolicy.create([(FUZZ_KEY.public_key(), "fuzz"), (other.public_key(), "other")], 2)
    policies = [
        current.with_changes(version=2, min_sequence=7),
        two.with_changes(version=2, revoked=frozenset({"0" * 64})),
        current.with_changes(version=3),
    ]
    seeds = [TrustUpdate.unsigned(p).signed_by([FUZZ_KEY, other]) for p in policies]
    check_update(current, seeds[0])
    return [s.to_bytes() for s in seeds]


def write_corpora(
    out: Path, model: Optional[Path] = None, sample: Optional[Path] = None
) -> dict[str, int]:
    """Write every target's seeds under ``out/TARGET/``; return how many each got.

    Without ``model`` and ``sample`` a small iris model is trained first.
    """
    with tempfile.TemporaryDirectory(prefix="edgeship-seeds-") as tmp:
        work = Path(tmp)
        if model is None or sample is None:
            model, sample = train_model(work)
        bundle = build_seed_bundle(work, model, sample).read_bytes()
    corpora = {
        "manifest": manifest_seeds(bundle),
        "bundle": bundle_seeds(bundle),
        "telemetry": telemetry_seeds(),
        "trust_update": trust_update_seeds(),
    }
    for target, seeds in corpora.items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (folder / f"seed-{hashlib.sha256(seed).hexdigest()[:16]}").write_bytes(seed)
    return {t: len(s) for t, s in corpora.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for TARGET/ seed folders")
    counts = write_corpora(parser.parse_args().out)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
