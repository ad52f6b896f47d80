"""Signing keys: Ed25519, private keys as PKCS#8 PEM (encrypted when ``EDGESHIP_KEY_PASSPHRASE``
is set), public keys as SubjectPublicKeyInfo PEM. A key is named by its key id
(:func:`runtime.signing.key_id`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.errors import KeyError_, UsageError
from runtime.fsutil import atomic_write
from runtime.signing import key_id, public_key_pem

PASSPHRASE_ENV = "EDGESHIP_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
MAX_KEY_BYTES = 16 * 1024


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    keyid: str
    encrypted: bool


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def generate(out_dir: Path, name: str) -> KeyPair:
    """Write ``NAME.key`` (mode 0600) and ``NAME.pub`` in ``out_dir``; refuses to overwrite."""
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(f"{path} exists; choose another --name or --out")
    key = Ed25519PrivateKey.generate()
    passphrase = _passphrase()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(private_path, pem, mode=0o600)
    atomic_write(public_path, public_key_pem(key.public_key()))
    return KeyPair(private_path, public_path, key_id(key.public_key()), passphrase is not None)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PKCS#8 PEM Ed25519 private key, decrypting with ``EDGESHIP_KEY_PASSPHRASE``."""
    try:
        data = path.read_bytes()[: MAX_KEY_BYTES + 1]
    except OSError as e:
        raise UsageError(f"cannot read key {path}: {e.strerror}") from e
    if len(data) > MAX_KEY_BYTES:
        raise KeyError_(f"{path}: too large to be a key")
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase())
    except TypeError as e:
        raise KeyError_(
            f"{path} is encrypted: set {PASSPHRASE_ENV}"
            if b"ENCRYPTED" in data
            else f"{path} is not encrypted: unset {PASSPHRASE_ENV}"
        ) from e
    except ValueError as e:
        raise KeyError_(f"{path}: not a PEM private key, or wrong passphrase") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{path}: not an Ed25519 key")
    return key
