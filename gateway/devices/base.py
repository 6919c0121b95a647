"""What every device adapter is and what it may call.

An adapter turns one device protocol into normalized devices: it reports what it finds,
state, availability and departures to a `DeviceSink` (the hub), and executes commands.
Values reported are capability values of Contract 1 (gateway.model.CAPABILITIES).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from gateway.devices.guard import Drops
from gateway.model import DeviceInfo

__all__ = ["Adapter", "DeviceSink", "Found"]


@dataclass(frozen=True, slots=True)
class Found:
    """A device as its protocol describes it. `info.name` is the device's own name and
    `info.room` a suggestion; the household's choices in the registry win."""

    info: DeviceInfo
    native_id: str
    meta: Mapping[str, Any] = field(default_factory=dict)


class DeviceSink(Protocol):
    """Implemented by the hub. Calls are synchronous and cheap; they never raise for bad
    device data (the adapter validates at its edge)."""

    def admit(self, device_id: str, protocol: str, address: str) -> str | None:
        """The id under which a device that announced itself at `address` may report, or None
        when the registry has no room for another device of `protocol`.

        An approved device stays at its approved address: another announcer of the same id is
        admitted under an id of its own, as a new device waiting for the installer, and
        reported as an impostor. Address-bound adapters call this before reporting."""
        ...

    def device_found(self, found: Found) -> None: ...

    def device_state(self, device_id: str, values: Mapping[str, Any]) -> None: ...

    def device_availability(self, device_id: str, online: bool) -> None: ...

    def device_gone(self, device_id: str) -> None:
        """The device left its protocol (removed from its bridge). Forgotten, unless the
        installer named it: such a device stays, offline, until the installer forgets it."""
        ...

    def device_event(self, device_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """Something happened at a device (a button, a transcript it heard, ...)."""
        ...

    def device_meta(self, device_id: str) -> Mapping[str, Any] | None:
        """Adapter data stored with a known device (None if unknown)."""
        ...

    def security_event(self, reason: str, device_id: str, peer: str, detail: str) -> None:
        """A peer tried to be or steer a device that is not its own: counted, logged and
        reported (home event `security`, which also goes to the cloud)."""
        ...

    def approved(self, device_id: str) -> bool:
        """Whether the installer (or auto-approval) accepted the device."""
        ...


class Adapter(Protocol):
    """One protocol. `run()` is a long-lived task; `command()` applies validated values and
    raises gateway.errors.DeviceError when the device or its bridge cannot take them.

    `address_bound`: the protocol has no credentials, so a device is who answers at its
    address (operator terminals, CoAP, mDNS); such adapters `admit` every announcement.
    Otherwise the broker login a device publishes under is its identity (Tasmota,
    Zigbee2MQTT). `drops` counts what the adapter refused from its peers, by reason."""

    protocol: ClassVar[str]
    address_bound: ClassVar[bool]
    drops: Drops

    async def run(self) -> None: ...

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None: ...

    def rebind(self, old_id: str, new_id: str) -> None:
        """The installer moved approved device `new_id` to where `old_id` (an impostor id, now
        forgotten) answers: report that peer as `new_id` from now on."""
        ...
