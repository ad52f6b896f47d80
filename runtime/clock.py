"""Time in verification: how far a device clock may be wrong, and what that may change.

Verification is pure (``runtime.verify``): it is handed the time. This module decides which time
to hand it and what a bundle's ``created`` and ``expires`` mean against it
(docs/adr/0006-clock-skew.md):

- The device time is never earlier than the newest ``created`` of a bundle the device holds
  (:func:`trusted_time`): a device that holds a bundle signed on day D knows it is at least D,
  whatever its clock says. A clock set back cannot make an expired bundle valid again.
- A bundle whose ``created`` is more than the allowance after the device time is refused
  (:class:`~runtime.errors.NotYetValidError`): the device clock is behind, and a clock that is
  behind would accept bundles that expired long ago.
- A bundle is expired once the device time reaches ``expires`` plus the allowance
  (:class:`~runtime.errors.ExpiredError`), so a clock slightly ahead does not refuse a bundle that
  is still valid.
- Time never moves the anti-rollback floor: floors are sequences (``runtime.verify``), and nothing
  here reads or writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from runtime.errors import ExpiredError, NotYetValidError
from runtime.manifest import Manifest, format_time


@dataclass(frozen=True)
class ClockLimits:
    """How far the device clock may disagree with the clock of the host that signed a bundle."""

    max_skew_s: int = 3600
    """Allowance in seconds, in both directions: ``created`` may be this far after the device
    time, and a bundle is accepted until this long after ``expires``. Large enough for clocks
    kept by NTP, small next to a bundle's lifetime (365 days by default)."""

    def __post_init__(self) -> None:
        if self.max_skew_s < 0:
            raise ValueError("max_skew_s must not be negative")

    @property
    def max_skew(self) -> timedelta:
        return timedelta(seconds=self.max_skew_s)


DEFAULT_CLOCK_LIMITS = ClockLimits()


def trusted_time(device_clock: datetime, known: Iterable[datetime]) -> datetime:
    """The later of ``device_clock`` and every time in ``known`` (the ``created`` times of the
    bundles the device holds, each checked against a trusted signature when it was installed)."""
    return max([device_clock, *known])


def check_validity(
    manifest: Manifest, now: datetime, limits: ClockLimits = DEFAULT_CLOCK_LIMITS
) -> None:
    """Check ``manifest``'s validity period against the device time ``now``.

    Raises NotYetValidError when ``created`` is more than the allowance after ``now`` (the device
    clock is behind), ExpiredError when ``now`` is at or past ``expires`` plus the allowance.
    """
    skew = limits.max_skew
    if manifest.created > now + skew:
        raise NotYetValidError(
            f"{manifest.name} {manifest.version} was made at {format_time(manifest.created)}, "
            f"later than this device's time {format_time(now)} allows (by more than "
            f"{limits.max_skew_s} s): the device clock may be behind; set it (NTP) and retry"
        )
    if manifest.expires is not None and now >= manifest.expires + skew:
        raise ExpiredError(
            f"{manifest.name} {manifest.version} expired at {format_time(manifest.expires)} "
            f"(this device's time is {format_time(now)}; if its clock is ahead, set it and retry)"
        )
