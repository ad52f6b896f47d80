"""What the fleet knows about one device, merged from its messages in any order.

With shared subscriptions one device's messages reach different monitor processes, which store
them in whatever order their batches commit. :func:`apply` is therefore written so that the state
after a set of messages does not depend on the order they were applied in ("newest seq wins",
docs/adr/0008-monitor-ingest.md):

- the status document shown is the one of the birth with the highest seq;
- last seq, last seen and first seen only ever move one way (maxima and minima);
- a model's version is the one named by the newer of the newest birth (listing it, or no longer
  listing it: removed) and the model's newest telemetry window (:meth:`DeviceState.versions`);
- the device is offline when its newest ``offline`` status is newer than its newest birth (a
  clean shutdown, or a session whose birth was never sent), or is the Last Will of the session
  that birth opened. A device registers its will with the seq taken just before the birth's, so
  that will is ``birth seq - 1``; a birth may name it explicitly as ``will_seq``.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from runtime.telemetry.messages import Message

NO_SEQ = -1


@dataclass
class DeviceState:
    """The merged state of one device (mutable while a batch is applied, then stored)."""

    fleet: str
    device: str
    birth_seq: int = NO_SEQ
    will_seq: int = NO_SEQ
    offline_seq: int = NO_SEQ
    offline_since: Optional[float] = None
    """Monitor time (epoch seconds) at which the newest ``offline`` status arrived."""
    status: dict[str, Any] = field(default_factory=dict)
    """The newest birth: runtime_version, profile, models (the envelope fields removed)."""
    last_seq: int = NO_SEQ
    last_ts: Optional[float] = None
    """Device time (epoch seconds) of the message with the highest seq."""
    first_seen: Optional[float] = None
    last_seen: Optional[float] = None
    """Monitor time of the newest message received from the device (any kind)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.fleet, self.device)

    @property
    def online(self) -> Optional[bool]:
        """True or False from the status messages seen; None when none was seen."""
        if self.birth_seq == NO_SEQ and self.offline_seq == NO_SEQ:
            return None
        if self.offline_seq == NO_SEQ:
            return True
        return not (self.offline_seq > self.birth_seq or self.offline_seq == self.will_seq)

    def versions(self, windows: Optional[Mapping[str, tuple[str, int]]] = None) -> dict[str, str]:
        """Installed models and their versions, given the ``(version, seq)`` of each model's
        newest telemetry window: a window newer than the newest birth wins, and a model the
        birth no longer lists, with no newer window, is gone."""
        found = {m["name"]: m["version"] for m in self.status.get("models", ())}
        for name, (version, seq) in (windows or {}).items():
            if seq > self.birth_seq:
                found[name] = version
        return dict(sorted(found.items()))

    def to_row(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "device": self.device,
            "birth_seq": self.birth_seq,
            "will_seq": self.will_seq,
            "offline_seq": self.offline_seq,
            "offline_since": self.offline_since,
            "status": self.status,
            "last_seq": self.last_seq,
            "last_ts": self.last_ts,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DeviceState:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


_ENVELOPE = ("schema", "fleet", "device", "seq", "ts")


def apply(state: DeviceState, message: Message, received: float) -> None:
    """Merge one message into ``state``; the result is the same for any order of messages."""
    apply_seen(state, message.seq, message.ts.timestamp(), received)
    if message.kind == "status":
        apply_status(state, message, received)


def apply_seen(state: DeviceState, seq: int, ts: float, received: float) -> None:
    """The part of a merge every message makes: last seq (and its time), first and last seen."""
    state.first_seen = received if state.first_seen is None else min(state.first_seen, received)
    state.last_seen = received if state.last_seen is None else max(state.last_seen, received)
    if seq > state.last_seq:
        state.last_seq = seq
        state.last_ts = ts


def apply_status(state: DeviceState, message: Message, received: float) -> None:
    """The part of a merge only status messages make: birth, will, offline."""
    seq, doc = message.seq, message.doc
    if doc["state"] == "offline":
        if seq > state.offline_seq:
            state.offline_seq = seq
            state.offline_since = received
        return
    if seq <= state.birth_seq:
        return
    state.birth_seq = seq
    will = doc.get("will_seq")
    state.will_seq = will if isinstance(will, int) and not isinstance(will, bool) else seq - 1
    state.status = {k: v for k, v in doc.items() if k not in _ENVELOPE}
