"""What every device adapter is and what it may call.

An adapter turns one device protocol into normalized devices: it reports what it finds,
state, availability and departures to a `DeviceSink` (the hub), and executes commands.
Values reported are capability values of Contract 1 (gateway.model.CAPABILITIES).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

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

    def device_found(self, found: Found) -> None: ...

    def device_state(self, device_id: str, values: Mapping[str, Any]) -> None: ...

    def device_availability(self, device_id: str, online: bool) -> None: ...

    def device_gone(self, device_id: str) -> None: ...

    def device_event(self, device_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """Something happened at a device (a button, a transcript it heard, ...)."""
        ...

    def device_meta(self, device_id: str) -> Mapping[str, Any] | None:
        """Adapter data stored with a known device (None if unknown)."""
        ...


class Adapter(Protocol):
    """One protocol. `run()` is a long-lived task; `command()` applies validated values and
    raises gateway.errors.DeviceError when the device or its bridge cannot take them."""

    protocol: ClassVar[str]

    async def run(self) -> None: ...

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None: ...
