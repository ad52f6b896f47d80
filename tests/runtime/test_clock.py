"""Clock trouble (runtime/clock.py): a device clock far behind or far ahead, bundles made in the
future or expired, and an anti-rollback floor that no clock can lower. Real bundles, real store."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runtime.clock import DEFAULT_CLOCK_LIMITS, ClockLimits, check_validity, trusted_time
from runtime.errors import ExpiredError, NotYetValidError, RollbackError
from runtime.install import device_time, install_bundle, rollback
from runtime.manifest import Manifest
from runtime.store import Store
from runtime.verify import MANIFEST_MEMBER, parse_manifest
from tests.runtime import hostile as h

SKEW = DEFAULT_CLOCK_LIMITS.max_skew
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # a device without a battery-backed clock
FAR_AHEAD = datetime.now(timezone.utc) + timedelta(days=3650)


def manifest_of(bundle: Path) -> Manifest:
    return parse_manifest(h.get(h.unpack(bundle), MANIFEST_MEMBER).data)


def built_at(build_bundle, moment: datetime, **options) -> Path:
    """A bundle whose build clock (``created``) is ``moment``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", str(int(moment.timestamp())))
        return build_bundle(**options)


@pytest.fixture(scope="module")
def bundles(build_bundle) -> dict[str, Path]:
    now = datetime.now(timezone.utc)
    return {
        "v1": build_bundle("1.0.0", 10),
        "v2": build_bundle("1.1.0", 11),
        # made two days from now: on a correct clock, a bundle "from the future"
        "future": built_at(build_bundle, now + timedelta(days=2), version="1.2.0", sequence=12),
        # another model, made 30 days ago and valid for one day: long expired
        "stale": built_at(
            build_bundle,
            now - timedelta(days=30),
            name="other",
            version="1.0.0",
            sequence=5,
            expires_days=1,
        ),
    }


def floors_and_state(store: Store) -> tuple[dict[str, int], bytes]:
    return store.floors(), (store.model_dir("iris") / "state.json").read_bytes()


# --- the rules on their own ----------------------------------------------------------------------


def test_created_within_the_allowance_is_accepted_beyond_it_refused(bundles):
    m = manifest_of(bundles["v1"])
    check_validity(m, m.created - SKEW)  # device clock behind by exactly the allowance
    with pytest.raises(NotYetValidError, match="device clock may be behind"):
        check_validity(m, m.created - SKEW - timedelta(seconds=1))


def test_expiry_allows_a_clock_slightly_ahead_and_no_more(bundles):
    m = manifest_of(bundles["v1"])
    assert m.expires is not None
    check_validity(m, m.expires)  # at expiry by the device clock: within the allowance
    check_validity(m, m.expires + SKEW - timedelta(seconds=1))
    with pytest.raises(ExpiredError, match=r"expired at .*if its clock is ahead"):
        check_validity(m, m.expires + SKEW)


def test_a_bundle_that_never_expires_is_valid_far_ahead(bundles):
    m = dataclasses.replace(manifest_of(bundles["v1"]), expires=None)
    check_validity(m, FAR_AHEAD)


def test_the_allowance_is_configurable_and_zero_means_exact(bundles):
    m = manifest_of(bundles["v1"])
    assert m.expires is not None
    exact = ClockLimits(max_skew_s=0)
    check_validity(m, m.created, exact)
    with pytest.raises(NotYetValidError):
        check_validity(m, m.created - timedelta(seconds=1), exact)
    with pytest.raises(ExpiredError):
        check_validity(m, m.expires, exact)
    with pytest.raises(ValueError):
        ClockLimits(max_skew_s=-1)


def test_trusted_time_is_never_before_what_the_device_holds():
    held = [EPOCH + timedelta(days=20000), EPOCH + timedelta(days=20500)]
    assert trusted_time(EPOCH, held) == held[1]
    assert trusted_time(FAR_AHEAD, held) == FAR_AHEAD
    assert trusted_time(EPOCH, []) == EPOCH


# --- on a device ---------------------------------------------------------------------------------


def test_device_clock_far_behind_refuses_a_fresh_bundle(device, bundles):
    with pytest.raises(NotYetValidError, match=r"1970-01-01T00:00:00Z.*clock may be behind"):
        install_bundle(device, bundles["v1"], now=EPOCH)
    assert device.names() == []
    assert not list(device.tmp_dir.glob("*/payload"))  # nothing was extracted


def test_device_clock_far_behind_uses_the_newest_bundle_it_holds(device, bundles):
    """A clock reset to 1970 still knows the time is at least when v1 was made: v2, made moments
    later, installs; the floor is the sequences', not the clock's."""
    install_bundle(device, bundles["v1"])
    assert device_time(device, EPOCH) == manifest_of(bundles["v1"]).created
    install_bundle(device, bundles["v2"], now=EPOCH)
    assert device.floors() == {"iris": 11}


def test_a_clock_set_back_cannot_revive_an_expired_bundle(device, bundles, tmp_path):
    stale = manifest_of(bundles["stale"])
    back_then = stale.created + timedelta(hours=1)  # when the stale bundle was still valid
    # On a store that holds nothing, the clock is all the device knows: it accepts.
    empty = Store(tmp_path / "empty")
    empty.save_policy(device.policy())
    assert install_bundle(empty, bundles["stale"], now=back_then).manifest.name == "other"
    # A device that holds a bundle made today knows better, whatever its clock says.
    install_bundle(device, bundles["v1"])
    with pytest.raises(ExpiredError, match="expired at"):
        install_bundle(device, bundles["stale"], now=back_then)
    assert device.names() == ["iris"]


def test_device_clock_far_ahead_refuses_as_expired_and_changes_nothing(device, bundles):
    install_bundle(device, bundles["v1"])
    before = floors_and_state(device)
    with pytest.raises(ExpiredError, match="if its clock is ahead"):
        install_bundle(device, bundles["v2"], now=FAR_AHEAD)
    assert floors_and_state(device) == before
    assert device.active_slot("iris") == "a"


def test_a_bundle_made_in_the_future_is_refused_on_a_correct_clock(device, bundles):
    install_bundle(device, bundles["v1"])
    before = floors_and_state(device)
    with pytest.raises(NotYetValidError, match="clock may be behind"):
        install_bundle(device, bundles["future"])
    assert floors_and_state(device) == before
    # once the device clock reaches its creation time (within the allowance), it installs
    created = manifest_of(bundles["future"]).created
    assert install_bundle(device, bundles["future"], now=created - SKEW).manifest.sequence == 12


@pytest.mark.parametrize(
    "clock", [EPOCH, None, FAR_AHEAD], ids=["far-behind", "correct", "far-ahead"]
)
def test_no_clock_lowers_the_floor(device, bundles, clock):
    install_bundle(device, bundles["v1"])
    install_bundle(device, bundles["v2"])
    assert device.floors() == {"iris": 11}
    # an older sequence is refused whatever the clock says (far ahead: refused as expired
    # first, which is earlier in the order; either way nothing is installed)
    with pytest.raises((RollbackError, ExpiredError)):
        install_bundle(device, bundles["v1"], now=clock)
    assert device.floors() == {"iris": 11}
    # rolling back is an explicit act on the device and keeps the floor; only a far-ahead clock
    # refuses it (the previous version looks expired)
    if clock is FAR_AHEAD:
        with pytest.raises(ExpiredError):
            rollback(device, "iris", now=clock)
    else:
        assert rollback(device, "iris", now=clock).to_version == "1.0.0"
    assert device.floors() == {"iris": 11}
    assert device.state("iris").highest_sequence == 11
    with pytest.raises((RollbackError, ExpiredError)):
        install_bundle(device, bundles["v1"], now=clock)
