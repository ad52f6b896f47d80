"""What the fleet knows about one device, merged from its messages in any order.

With shared subscriptions one device's messages reach different monitor processes, which store
them in whatever order their batches commit. :func:`apply` is therefore written so that the state
after a set of messages does not depend on the order they were applied in ("newest seq wins",
docs/adr/0008-monitor-ingest.md):

- the status document shown is the one of the birth with the highest seq;
- last seq, last seen and first seen only ever move one way (maxima and minima);
- a model's version is the one named by the newer of the newest birth (listing it, or no longer
  listing it: removed) and the model's newest telemetry window (:meth:`DeviceState.versions`);
- the device is offline when a clean ``offline`` status (``"reason": "shutdown"``) or a Last
  Will (any other offline status, ``"reason": "connection-lost"``) is newer than its newest birth
  (a session whose birth never came), or when the Last Will of the session that birth opened has
  arrived. That will is older than its birth: its payload, seq included, is fixed when the device
  connects, before the birth is sent. It is the will named by the birth (``"will_seq": N``), or
  else the newest will that lies between the two newest births (closer than ``WILL_GAP`` to the
  birth when only one birth was ever seen: an older will would be followed by a whole session).

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from runtime.telemetry.messages import Message

NO_SEQ = -1
WILL_GAP = 16
"""Most seqs a device may take between registering its will and sending its birth (windows that
close while it connects), when the monitor knows no earlier birth to bound the will."""


@dataclass
class DeviceState:
    """The merged state of one device (mutable while a batch is applied, then stored)."""

    fleet: str
    device: str
    birth_seq: int = NO_SEQ
    prev_birth_seq: int = NO_SEQ
    """The second highest birth seq: the will of the newest session lies between the two."""
    will_seq: int = NO_SEQ
    """The will the newest birth names (``will_seq``), if it does."""
    lost_seq: int = NO_SEQ
    """The newest Last Will (an offline status not saying ``"reason": "shutdown"``)."""
    lost_since: Optional[float] = None
    shutdown_seq: int = NO_SEQ
    """The newest clean shutdown (``"reason": "shutdown"``)."""
    shutdown_since: Optional[float] = None
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
        return self._offline_since() is None if self._seen_status else None

    @property
    def offline_since(self) -> Optional[float]:
        """Monitor time (epoch seconds) the message that makes the device offline arrived."""
        return self._offline_since()

    @property
    def _seen_status(self) -> bool:
        return max(self.birth_seq, self.lost_seq, self.shutdown_seq) != NO_SEQ

    def _offline_since(self) -> Optional[float]:
        if self.shutdown_seq > self.birth_seq:
            return self.shutdown_since
        if self.lost_seq > self.birth_seq:
            return self.lost_since
        if self.will_seq != NO_SEQ:
            return self.lost_since if self.lost_seq == self.will_seq else None
        bounded = self.prev_birth_seq != NO_SEQ or self.birth_seq - self.lost_seq <= WILL_GAP
        if self.lost_seq > self.prev_birth_seq and bounded:
            return self.lost_since
        return None

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
            "prev_birth_seq": self.prev_birth_seq,
            "will_seq": self.will_seq,
            "lost_seq": self.lost_seq,
            "lost_since": self.lost_since,
            "shutdown_seq": self.shutdown_seq,
            "shutdown_since": self.shutdown_since,
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
        if doc.get("reason") == "shutdown":
            if seq > state.shutdown_seq:
                state.shutdown_seq, state.shutdown_since = seq, received
        elif seq > state.lost_seq:
            state.lost_seq, state.lost_since = seq, received
        return
    if seq < state.birth_seq:
        state.prev_birth_seq = max(state.prev_birth_seq, seq)
        return
    state.prev_birth_seq, state.birth_seq = state.birth_seq, seq
    will = doc.get("will_seq")
    state.will_seq = will if isinstance(will, int) and not isinstance(will, bool) else NO_SEQ
    state.status = {k: v for k, v in doc.items() if k not in _ENVELOPE}
