"""The `set` validator and the device model (Contract 1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import CommandRejected
from gateway.model import CAPABILITIES, DeviceInfo, Kind, is_device_id, validate_command

LAMP = DeviceInfo(
    id="zigbee-00158d0001a2b3c4",
    name="客厅灯",
    kind=Kind.LIGHT,
    room="客厅",
    protocol="zigbee2mqtt",
    capabilities=("on", "brightness", "color_temp", "power"),
    settable=("on", "brightness", "color_temp"),
    controllable=True,
    ranges={"color_temp": (2200.0, 6500.0)},
)


def reason(payload: Any, info: DeviceInfo | None = LAMP) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(CommandRejected) as err:
        validate_command(info, raw)
    return err.value.reason


def test_valid_commands_are_normalized() -> None:
    assert validate_command(LAMP, b'{"on": true}') == {"on": True}
    assert validate_command(LAMP, b'{"brightness": 40.0, "on": false}') == {
        "brightness": 40,
        "on": False,
    }
    assert validate_command(LAMP, '{"color_temp": 2700}') == {"color_temp": 2700}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ([1, 2], "not_an_object"),
        ({}, "empty_command"),
        ({"colour": 1}, "unknown_capability"),
        ({"power": 10}, "read_only"),
        ({"volume": 10}, "unsupported_capability"),
        ({"on": 1}, "wrong_type"),
        ({"on": "true"}, "wrong_type"),
        ({"brightness": True}, "wrong_type"),
        ({"brightness": 50.5}, "wrong_type"),
        ({"brightness": 101}, "out_of_range"),
        ({"brightness": -1}, "out_of_range"),
        (
            {"color_temp": 2000},
            "out_of_range",
        ),  # the bulb's own range, narrower than the contract's
        ({"on": None}, "wrong_type"),
        (b"x" * 20000, "too_large"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(payload: Any, expected: str) -> None:
    assert reason(payload) == expected


def test_unknown_and_uncontrollable_devices() -> None:
    assert reason({"on": True}, None) == "unknown_device"
    cast = LAMP.model_copy(update={"controllable": False})
    assert reason({"on": True}, cast) == "not_controllable"


def test_non_standard_json_numbers_are_refused() -> None:
    # NaN and Infinity are not JSON (RFC 8259 §6); a command carrying them is refused.
    assert reason(b'{"brightness": NaN}') == "invalid_json"
    assert reason(b'{"color_temp": Infinity}') == "invalid_json"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_command_rejected(payload: bytes) -> None:
    try:
        values = validate_command(LAMP, payload)
    except CommandRejected as exc:
        reason = exc.reason
    else:
        assert set(values) <= set(LAMP.settable)
        return
    assert reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from([*CAPABILITIES, "x", ""]), json_values, max_size=4))
def test_accepted_values_always_satisfy_the_capability(command: dict[str, Any]) -> None:
    everything = DeviceInfo(
        id="x", name="x", kind=Kind.OTHER, protocol="t",
        capabilities=tuple(CAPABILITIES), settable=tuple(CAPABILITIES), controllable=True,
    )  # fmt: skip
    try:
        values = validate_command(everything, json.dumps(command, allow_nan=True))
    except CommandRejected:
        return
    for name, value in values.items():
        spec = CAPABILITIES[name]
        if value is None:
            assert spec.nullable
        elif isinstance(value, bool):
            assert bool in spec.types
        elif isinstance(value, int | float):
            assert spec.minimum is None or value >= spec.minimum
            assert spec.maximum is None or value <= spec.maximum
            if spec.integer:
                assert isinstance(value, int)


@given(st.builds(
    DeviceInfo,
    id=st.from_regex(r"\A[a-z0-9_-]{1,64}\Z"),
    name=st.text(max_size=40),
    kind=st.sampled_from(Kind),
    room=st.text(max_size=20),
    protocol=st.text(min_size=1, max_size=10),
    capabilities=st.lists(st.sampled_from(list(CAPABILITIES)), max_size=5).map(tuple),
))  # fmt: skip
def test_device_info_round_trips_through_json(info: DeviceInfo) -> None:
    assert DeviceInfo.model_validate_json(info.model_dump_json()) == info


def test_device_ids() -> None:
    assert is_device_id("tasmota-a4cf12b3c4d5")
    assert not is_device_id("Tasmota")
    assert not is_device_id("a/b")
    assert not is_device_id("")
