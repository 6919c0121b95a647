"""The hub's side of identity and bounds (real registry file, adapters stood in by stubs)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway.bus import Bus, Event
from gateway.config import LanSettings
from gateway.devices.base import Found
from gateway.devices.guard import Drops
from gateway.hub import Hub, impostor_id
from gateway.model import DeviceInfo, Kind
from gateway.registry import Registry


class Terminals:
    """A stand-in for an address-bound adapter."""

    protocol: ClassVar[str] = "terminal"
    address_bound: ClassVar[bool] = True

    def __init__(self) -> None:
        self.drops = Drops("terminal")
        self.rebound: list[tuple[str, str]] = []

    async def run(self) -> None:
        pass

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None:
        pass

    def rebind(self, old_id: str, new_id: str) -> None:
        self.rebound.append((old_id, new_id))


def tv(dev_id: str, address: str, name: str = "客厅电视") -> Found:
    info = DeviceInfo(
        id=dev_id, name=name, kind=Kind.TV, protocol="terminal", address=address,
        capabilities=("on", "power"), settable=("on",), controllable=True,
    )  # fmt: skip
    return Found(info=info, native_id=dev_id)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[Hub, Terminals, list[Event]]]:
    async with Registry(tmp_path) as registry:
        bus = Bus()
        events: list[Event] = []
        bus.listen(events.append)
        h = Hub(
            registry,
            bus,
            auto_approve=("terminal",),
            limits=LanSettings(max_devices_per_protocol=6, max_pending_per_protocol=2),
        )
        adapter = Terminals()
        h.add_adapter(adapter)
        yield h, adapter, events


async def test_an_approved_device_stays_at_its_address_and_an_impostor_waits(
    hub: tuple[Hub, Terminals, list[Event]],
) -> None:
    h, adapter, events = hub
    assert h.admit("bfy-tv", "terminal", "10.0.0.31:8080") == "bfy-tv"
    h.device_found(tv("bfy-tv", "10.0.0.31:8080"))
    assert h.approved("bfy-tv")  # terminals are auto-approved in this hub
    other = h.admit("bfy-tv", "terminal", "10.0.0.66:8080")
    assert other == impostor_id("bfy-tv", "10.0.0.66:8080") != "bfy-tv"
    h.device_found(tv(other, "10.0.0.66:8080", "假电视"))
    dev = h.get(other)
    assert dev is not None and not dev.row.approved  # never approved on arrival
    security = [e.data for e in events if e.kind == "event" and e.device_id == "security"]
    assert [(s["reason"], s["device"]) for s in security] == [("impostor", "bfy-tv")]
    assert security[0]["address"] == "10.0.0.66:8080" and security[0]["ts"].endswith("Z")
    # Reported once per address and ten minutes, counted every time.
    h.admit("bfy-tv", "terminal", "10.0.0.66:8080")
    assert len([e for e in events if e.device_id == "security"]) == 1 and h.drops.counts["impostor"] == 2
    # An adapter that reports the real id from elsewhere is refused, not believed.
    h.device_found(tv("bfy-tv", "10.0.0.66:8080"))
    real = h.get("bfy-tv")
    assert real is not None and real.info.address == "10.0.0.31:8080"
    # What the impostor "hears" reaches nobody; the real TV's does.
    h.device_event(other, "voice", {"text": "关灯"})
    h.device_event("bfy-tv", "voice", {"text": "开灯"})
    voice = [e.data["text"] for e in events if e.device_id == "voice"]
    assert voice == ["开灯"] and h.drops.counts["not_approved"] == 1
    # The installer's word moves the TV.
    await h.move(other, "bfy-tv")
    assert real.info.address == "10.0.0.66:8080" and h.get(other) is None
    assert adapter.rebound == [(other, "bfy-tv")]


async def test_the_inbox_and_each_protocol_are_bounded(hub: tuple[Hub, Terminals, list[Event]]) -> None:
    h, _, _ = hub
    for n in range(10):
        h.device_found(tv(f"t{n}", f"10.0.0.{n}:8080"))
    assert len(h.devices(approved=None)) == 6 and h.drops.counts["too_many_devices"] == 4
    for n in range(6):  # the registry is full: not even an impostor gets in
        assert h.admit(f"t{n}", "terminal", f"10.0.1.{n}:8080") is None


async def test_waiting_devices_are_bounded_per_protocol(tmp_path: Path) -> None:
    async with Registry(tmp_path) as registry:
        h = Hub(registry, Bus(), limits=LanSettings(max_pending_per_protocol=2))
        h.add_adapter(Terminals())
        for n in range(5):
            admitted = h.admit(f"t{n}", "terminal", f"10.0.0.{n}:8080")
            if admitted is not None:
                h.device_found(tv(admitted, f"10.0.0.{n}:8080"))
        assert len(h.devices(approved=False)) == 2 and h.drops.counts["inbox_full"] == 3


async def test_absurd_values_never_reach_the_state(hub: tuple[Hub, Terminals, list[Event]]) -> None:
    h = hub[0]
    h.device_found(tv("bfy-tv", "10.0.0.31:8080"))
    h.device_state("bfy-tv", {"power": 1e300, "on": True, "energy": -5})
    dev = h.get("bfy-tv")
    assert dev is not None and dev.state == {"on": True}
    assert h.drops.counts["out_of_range"] == 2


async def test_a_named_device_that_leaves_its_bridge_is_kept(hub: tuple[Hub, Terminals, list[Event]]) -> None:
    h, _, _ = hub
    h.device_found(tv("named", "10.0.0.1:8080"))
    h.device_found(tv("unnamed", "10.0.0.2:8080"))
    await h.approve("named", name="爷爷的电视")
    h.device_availability("named", True)
    h.device_gone("named")
    h.device_gone("unnamed")
    named = h.get("named")
    assert named is not None and not named.online
    assert h.get("unnamed") is None
