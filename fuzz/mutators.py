"""Structure-aware mutators: byte flips rarely turn a JSON document into another valid one, and
never get a changed manifest past its signature. These mutators change a parsed document (replace
a value with a hostile one, delete, rename or splice keys) and, for bundles, sign the changed
manifest again with the fuzzing key, so the checks behind the signature step see fuzzed input.

Each mutator has libFuzzer's custom-mutator signature ``(data, max_size, seed) -> bytes`` and falls
back to atheris' byte-level ``Mutate`` half the time, or when the input does not parse. Runtime
modules are imported inside the functions: a target imports them first, under instrumentation.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import random
from typing import Any, Callable, Optional

from fuzz.harness import FUZZ_KEY

Mutator = Callable[[bytes, int, int], bytes]

HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**31, 2**63, 10**400, -(10**400), 1e308, -0.0, 0.5, "",
    "x" * 300, "../x", "/abs", "a/b", "\u0000", "\ud7ff\uffff", "2026-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1.0.0", "x86_64", "float32", [], {}, [[]],
    {"": {}}, [1, "a", None], [-1], [0, 0, 0, 0, 0],
)  # fmt: skip
MAX_NODES = 4000


def _byte_mutate(data: bytes, max_size: int) -> bytes:
    import atheris

    return bytes(atheris.Mutate(data, max_size))


def _nodes(doc: Any) -> list[tuple[Any, Any]]:
    """(container, key or index) for every value inside ``doc``, breadth first, bounded."""
    out: list[tuple[Any, Any]] = []
    queue = [doc]
    while queue and len(out) < MAX_NODES:
        node = queue.pop(0)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            out.append((node, key))
            if isinstance(value, (dict, list)):
                queue.append(value)
    return out


def _inner_json(value: Any) -> Optional[Any]:
    """A base64 string holding JSON (a trust update's payload), decoded; else None."""
    if not isinstance(value, str) or len(value) < 8:
        return None
    try:
        return json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return None


def mutate_document(doc: Any, rng: random.Random) -> Any:
    """A changed deep copy of a JSON document (one to three structural changes)."""
    doc = copy.deepcopy(doc)
    if not isinstance(doc, (dict, list)):
        return rng.choice(HOSTILE_VALUES)
    for _ in range(rng.randint(1, 3)):
        nodes = _nodes(doc)
        if not nodes:
            return doc
        container, key = rng.choice(nodes)
        value = container[key]
        op = rng.randrange(7)
        inner = _inner_json(value)
        if inner is not None and op < 3:
            body = json.dumps(mutate_document(inner, rng), sort_keys=True, separators=(",", ":"))
            container[key] = base64.b64encode(body.encode("utf-8")).decode("ascii")
        elif op <= 2:
            container[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        elif op == 3:
            other, other_key = rng.choice(nodes)
            container[key] = copy.deepcopy(other[other_key])
        elif op == 4 and isinstance(container, dict):
            del container[key]
        elif op == 4:
            container.insert(key, copy.deepcopy(value))
        elif op == 5 and isinstance(value, int) and not isinstance(value, bool):
            container[key] = value + rng.choice((-1, 1, -(2**32), 2**64))
        elif op == 5 and isinstance(container, dict):
            container[rng.choice(("x-extra", key + "\u0000", key.upper(), ""))] = value
        else:
            container[key] = [value] if rng.random() < 0.5 else {"": value}
    return doc


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", errors="surrogatepass"
    )


def json_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """For a target whose whole input is one JSON document."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        try:
            out = _dump(mutate_document(json.loads(data), rng))
        except (ValueError, RecursionError):
            out = b""
        if 0 < len(out) <= max_size:
            return out
    return _byte_mutate(data, max_size)


def topic_json_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """For ``TOPIC\\nJSON`` inputs: the payload as a document, sometimes the topic as bytes."""
    rng = random.Random(seed)
    topic, sep, payload = data.partition(b"\n")
    if sep and rng.random() < 0.1:
        return _byte_mutate(topic, max(1, max_size - len(payload) - 1)) + b"\n" + payload
    if sep and rng.random() < 0.6:
        out = topic + b"\n" + json_mutator(payload, max(1, max_size - len(topic) - 1), seed)
        if len(out) <= max_size:
            return out
    return _byte_mutate(data, max_size)


def bundle_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """For bundles: change the manifest as a document and sign it again (sometimes also listing
    the payload members as they are), or mutate bytes."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        out = _resigned_bundle(data, rng)
        if out is not None and len(out) <= max_size:
            return out
    return _byte_mutate(data, max_size)


def _resigned_bundle(data: bytes, rng: random.Random) -> Optional[bytes]:
    import hashlib

    from runtime.errors import EdgeshipError
    from runtime.signing import Envelope, sign
    from runtime.tarfmt import END_OF_ARCHIVE, TarReader, header, padding

    try:
        reader = TarReader(io.BytesIO(data))
        members = []
        while (member := reader.next()) is not None:
            members.append((member.name, reader.read_all()))
        manifest = json.loads(members[0][1])
    except (EdgeshipError, ValueError, RecursionError, IndexError):
        return None
    if rng.random() < 0.2 and isinstance(manifest, dict):
        manifest["files"] = [
            {"path": name.removeprefix("payload/"), "sha256": hashlib.sha256(d).hexdigest(),
             "size": len(d)}
            for name, d in members[2:]
        ]  # fmt: skip
    else:
        manifest = mutate_document(manifest, rng)
    body = _dump(manifest)
    envelope = Envelope((sign(body, FUZZ_KEY),)).to_bytes()
    parts = [("manifest.json", body), ("signatures.json", envelope), *members[2:]]
    try:
        tar = b"".join(header(n, len(d), 0) + d + padding(len(d)) for n, d in parts)
    except ValueError:  # a member name the writer cannot hold
        return None
    return tar + END_OF_ARCHIVE
