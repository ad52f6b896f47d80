"""Device state merges: order-independent ("newest seq wins"), online/offline from statuses."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from packager.fleet.state import DeviceState, apply
from runtime.telemetry.messages import encode, parse_message
from tests.packager.fleet.helpers import event, status, telemetry, topic_of


def msg(doc: dict[str, Any]):  # type: ignore[no-untyped-def]
    return parse_message(topic_of(doc), encode(doc))


def merged(docs: list[dict[str, Any]]) -> DeviceState:
    state = DeviceState("lab", "dev-1")
    for i, doc in enumerate(docs):
        apply(state, msg(doc), 1000.0 + i)
    return state


def newest(docs: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """Each model's newest window (as the store keeps it): (version, seq)."""
    found: dict[str, tuple[str, int]] = {}
    for doc in docs:
        for name, model in doc.get("models", {}).items() if "window_s" in doc else ():
            if name not in found or doc["seq"] > found[name][1]:
                found[name] = (model["version"], doc["seq"])
    return found


def summary(state: DeviceState, docs: list[dict[str, Any]]) -> tuple[Any, ...]:
    versions = state.versions(newest(docs))
    return (state.online, versions, state.status, state.last_seq, state.last_ts, state.birth_seq)


# three sessions: will 0, birth 1, telemetry, clean shutdown 5; will 6, birth 7, telemetry 8
# (version 2 after an install); will 10, birth 11 (without the model 'extra'), and will 10 fired
HISTORY = [
    status("lab", "dev-1", 1),
    telemetry("lab", "dev-1", 2),
    telemetry("lab", "dev-1", 3, model="extra", version="0.1.0"),
    event("lab", "dev-1", 4),
    status("lab", "dev-1", 5, state="offline", reason="shutdown"),
    status("lab", "dev-1", 7, models=(("digits", "2.0.0"), ("extra", "0.1.0"))),
    telemetry("lab", "dev-1", 8, version="2.0.0"),
    status("lab", "dev-1", 11, models=(("digits", "2.0.0"),)),
    telemetry("lab", "dev-1", 9, model="extra", version="0.1.0"),
    status("lab", "dev-1", 10, state="offline", reason="connection-lost"),
]


@settings(max_examples=200, deadline=None)
@given(st.permutations(HISTORY))
def test_any_order_gives_the_same_state(order: list[dict[str, Any]]) -> None:
    assert summary(merged(order), order) == summary(merged(HISTORY), HISTORY)


def test_the_newest_birth_and_versions_win() -> None:
    state = merged(HISTORY)
    # will 10 belongs to the session of birth 11 (taken just before it): the device is offline
    assert state.online is False
    # birth 11 no longer lists 'extra', and its newest window (9) is older
    assert state.versions(newest(HISTORY)) == {"digits": "2.0.0"}
    assert state.status["models"][0]["version"] == "2.0.0"
    assert state.last_seq == 11


def offline(seq: int, reason: str = "connection-lost") -> dict[str, Any]:
    return status("lab", "dev-1", seq, state="offline", reason=reason)


def test_only_the_will_of_the_newest_session_marks_the_device_offline() -> None:
    births = [status("lab", "dev-1", 1), status("lab", "dev-1", 6)]
    assert merged([*births, offline(0)]).online is True  # the first session's will
    assert merged([*births, offline(4)]).online is False  # registered after birth 1: this one's
    assert merged([*births, offline(9)]).online is False  # a session whose birth never came
    # a clean shutdown of the first session lies between the births too: it is no will
    assert merged([*births, offline(3, reason="shutdown")]).online is True


def test_with_one_birth_known_the_will_must_be_close_to_it() -> None:
    birth = status("lab", "dev-1", 100)
    assert merged([birth, offline(95)]).online is False
    assert merged([birth, offline(40)]).online is True  # a whole session lies between


def test_a_clean_shutdown_marks_offline_and_a_new_birth_online_again() -> None:
    stopped = [status("lab", "dev-1", 1), offline(9, reason="shutdown")]
    assert merged(stopped).online is False
    assert merged(stopped).offline_since == 1001.0
    assert merged([*stopped, status("lab", "dev-1", 11)]).online is True


def test_a_birth_may_name_its_will_seq() -> None:
    birth = status("lab", "dev-1", 20)
    birth["will_seq"] = 12
    assert merged([birth, offline(12)]).online is False
    assert merged([birth, offline(19)]).online is True


def test_state_unknown_without_status_and_telemetry_alone_gives_versions() -> None:
    docs = [telemetry("lab", "dev-1", 4, version="1.1.0")]
    state = merged(docs)
    assert state.online is None
    assert state.versions(newest(docs)) == {"digits": "1.1.0"}
    assert state.versions() == {}


def test_row_round_trip() -> None:
    state = merged(HISTORY)
    assert DeviceState.from_row(state.to_row()) == state
