from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ids import device_id, normalize_mac
from gateway.model import is_device_id


def test_macs_in_every_common_spelling_are_one_identity() -> None:
    spellings = ["A4:CF:12:B3:C4:D5", "a4-cf-12-b3-c4-d5", "a4cf.12b3.c4d5", "A4CF12B3C4D5"]
    assert {normalize_mac(m) for m in spellings} == {"a4cf12b3c4d5"}


@pytest.mark.parametrize("bad", ["", "A4CF12B3C4", "A4:CF:12:B3:C4:D5:00", "zz:cf:12:b3:c4:d5"])
def test_not_a_mac(bad: str) -> None:
    with pytest.raises(ValueError, match="MAC"):
        normalize_mac(bad)


def test_readable_identities_stay_readable() -> None:
    assert device_id("tasmota", "a4cf12b3c4d5") == "tasmota-a4cf12b3c4d5"
    assert device_id("tasmota", "a4cf12b3c4d5", suffix="2") == "tasmota-a4cf12b3c4d5-2"
    assert device_id("zigbee", "00158D0001A2B3C4") == "zigbee-00158d0001a2b3c4"


@given(st.text(min_size=1, max_size=200), st.sampled_from(["bfy", "coap", "mdns", "Weird NS!"]))
def test_any_identity_gives_a_valid_stable_id(identity: str, namespace: str) -> None:
    first = device_id(namespace, identity)
    assert is_device_id(first), first
    assert device_id(namespace, identity) == first


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_different_identities_do_not_collide(a: str, b: str) -> None:
    if a.strip().lower() != b.strip().lower():
        assert device_id("x", a) != device_id("x", b)


def test_rooms_are_suggested_from_device_names() -> None:
    from gateway.rooms import suggest_room

    assert suggest_room("客厅灯") == "客厅"
    assert suggest_room("主卧空调") == "主卧"
    assert suggest_room("入户门磁") == "玄关"
    assert suggest_room("Living room lamp") == "Living Room"
    assert suggest_room("落地灯") == ""
