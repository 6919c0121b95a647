"""The hub: every device the gateway knows, its live state, and the one command path.

Adapters report to the hub (it is their DeviceSink); the hub keeps the registry current,
emits events on the bus, and routes commands to the adapter that owns a device. The hub is
synchronous on the hot path (a state update is a dict merge and an event); persistence runs
behind it in `run()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.bus import Bus, Event
from gateway.config import LanSettings
from gateway.devices.base import Adapter, Found
from gateway.devices.guard import Drops
from gateway.errors import CommandRejected, DeviceError, RegistryError
from gateway.model import CAPABILITIES, DeviceInfo, Kind, clean_state, iso_now, validate_command
from gateway.registry import DeviceRow, Registry
from gateway.rooms import suggest_room

__all__ = ["Device", "Hub"]

log = logging.getLogger(__name__)

_COMMAND_TIMEOUT_S = 10.0
_MAX_CONCURRENT_COMMANDS = 32
#: The same impostor (device, address) is reported again at most this often.
_SECURITY_REPORT_INTERVAL_S = 600.0


def impostor_id(device_id: str, address: str) -> str:
    """The id a second announcer of `device_id` at `address` gets: stable for that address,
    never equal to the real device's id."""
    digest = hashlib.sha256(f"{device_id}|{address}".encode()).hexdigest()[:10]
    return f"{device_id[: 64 - 13]}-x{digest}"


@dataclass(slots=True)
class Device:
    """A device as the hub holds it: the stored row plus live values."""

    row: DeviceRow
    state: dict[str, Any] = field(default_factory=dict)
    state_ts: str | None = None
    online: bool = False
    info: DeviceInfo = field(init=False)

    def __post_init__(self) -> None:
        self.refresh_info()

    def refresh_info(self) -> None:
        r = self.row
        self.info = DeviceInfo(
            id=r.id,
            name=r.display_name,
            kind=Kind(r.kind) if r.kind in Kind._value2member_map_ else Kind.OTHER,
            room=r.room,
            protocol=r.protocol,
            model=r.model,
            manufacturer=r.manufacturer,
            address=r.address,
            capabilities=tuple(r.capabilities),
            settable=tuple(r.settable),
            controllable=r.controllable,
            ranges={k: (float(v[0]), float(v[1])) for k, v in r.ranges.items()},
        )

    def state_payload(self) -> dict[str, Any]:
        return {**self.state, "ts": self.state_ts or iso_now()}


class Hub:
    """Owns the device set. Use `load()` once at start, then `run()` as a task."""

    def __init__(
        self,
        registry: Registry,
        bus: Bus,
        *,
        auto_approve: Iterable[str] = (),
        flush_interval_s: float = 2.0,
        limits: LanSettings | None = None,
    ) -> None:
        self._registry = registry
        self.bus = bus
        self._auto_approve = frozenset(auto_approve)
        self._flush_interval_s = flush_interval_s
        self._limits = limits or LanSettings()
        #: What the hub refused from adapters: impostors, a full inbox, values out of range.
        self.drops = Drops("hub", log)
        self._reported: dict[tuple[str, str], float] = {}
        self._impostors: set[str] = set()
        self._devices: dict[str, Device] = {}
        self._adapters: dict[str, Adapter] = {}
        self._dirty_state: set[str] = set()
        self._dirty_row: set[str] = set()
        self._removed: set[str] = set()
        self._wake = asyncio.Event()
        self._command_slots = asyncio.Semaphore(_MAX_CONCURRENT_COMMANDS)
        self._device_locks: dict[str, asyncio.Lock] = {}

    # -- set-up -------------------------------------------------------------------------

    def add_adapter(self, adapter: Adapter) -> None:
        self._adapters[adapter.protocol] = adapter

    @property
    def adapters(self) -> list[Adapter]:
        return list(self._adapters.values())

    def drop_counts(self) -> dict[str, dict[str, int]]:
        """Drops, rejects and impostors by adapter and reason (only adapters with any)."""
        out = {a.protocol: a.drops.snapshot() for a in self._adapters.values() if a.drops.total}
        if self.drops.total:
            out["hub"] = self.drops.snapshot()
        return out

    async def load(self) -> None:
        """Load every stored device (availability unknown = offline until its adapter says)."""
        for row in await self._registry.devices():
            dev = Device(row=row, state=dict(row.last_state))
            if row.last_seen is not None:
                dev.state_ts = (
                    row.last_seen.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                )
            self._devices[row.id] = dev
        log.info("registry: %d devices loaded", len(self._devices))

    # -- reading ------------------------------------------------------------------------

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def devices(self, *, approved: bool | None = True) -> list[Device]:
        return [d for d in self._devices.values() if approved is None or d.row.approved == approved]

    # -- DeviceSink (called by adapters) ------------------------------------------------

    def admit(self, device_id: str, protocol: str, address: str) -> str | None:
        dev = self._devices.get(device_id)
        if dev is not None and dev.row.approved and dev.row.address and dev.row.address != address:
            real = device_id
            device_id = impostor_id(real, address)
            self._impostors.add(device_id)  # never approved on arrival, whatever the protocol
            self.security_event(
                "impostor",
                real,
                address,
                f"{protocol} device {real} announced at {address}; it is approved at {dev.row.address}",
            )
            dev = self._devices.get(device_id)
        if dev is None and not self._room_for(protocol, device_id):
            return None
        return device_id

    def _room_for(self, protocol: str, device_id: str) -> bool:
        """Whether a new device of `protocol` fits the registry's bounds (counted drop if not)."""
        limits = self._limits
        same = [d for d in self._devices.values() if d.row.protocol == protocol]
        if len(same) >= limits.max_devices_per_protocol:
            self.drops.drop(protocol, "too_many_devices", f"{device_id}: {protocol} has {len(same)} devices")
            return False
        pending = sum(not d.row.approved for d in same)
        waits = protocol not in self._auto_approve or device_id in self._impostors
        if waits and pending >= limits.max_pending_per_protocol:
            self.drops.drop(
                protocol, "inbox_full", f"{device_id}: {pending} {protocol} devices wait for approval"
            )
            return False
        return True

    def security_event(self, reason: str, device_id: str, address: str, detail: str) -> None:
        """Count, log and report (as a `security` home event, which also goes to the cloud) at
        most once per device and address every ten minutes."""
        self.drops.drop(f"{device_id}@{address}", reason, detail)
        now = time.monotonic()
        key = (device_id, address)
        if now - self._reported.get(key, -1e9) < _SECURITY_REPORT_INTERVAL_S:
            return
        if len(self._reported) > 1000:
            self._reported.clear()
        self._reported[key] = now
        event = {"reason": reason, "device": device_id, "address": address[:256], "detail": detail}
        self.emit_event("security", {**event, "ts": iso_now()})

    def device_found(self, found: Found) -> None:
        info = found.info
        dev = self._devices.get(info.id)
        is_new = dev is None
        adapter = self._adapters.get(info.protocol)
        bound = adapter is not None and adapter.address_bound
        if dev is None:
            if not self._room_for(info.protocol, info.id):
                return
            row = DeviceRow(
                id=info.id,
                protocol=info.protocol,
                native_id=found.native_id,
                kind=info.kind.value,
                native_name=info.name,
                room=info.room or suggest_room(info.name),
                approved=info.protocol in self._auto_approve and info.id not in self._impostors,
            )
            dev = Device(row=row)
            self._devices[info.id] = dev
            self._removed.discard(info.id)
            log.info(
                "new device %s (%s %s) %s",
                info.id,
                info.protocol,
                info.kind.value,
                "approved" if row.approved else "waiting for approval",
            )
        row = dev.row
        if row.protocol != info.protocol or (
            bound and row.approved and row.address and row.address != info.address
        ):
            # Only the installer moves an approved device (`admit` gives anyone else an id of
            # its own); an adapter that reports otherwise is refused rather than believed.
            self.drops.drop(info.id, "identity_conflict", f"{info.protocol} at {info.address!r}")
            return
        before = (
            row.kind, row.native_id, row.native_name, row.model, row.manufacturer, row.address,
            row.capabilities, row.settable, row.ranges, row.controllable, dict(row.meta), row.room,
        )  # fmt: skip
        row.kind = info.kind.value
        row.native_id = found.native_id
        row.native_name = info.name
        row.model = info.model
        row.manufacturer = info.manufacturer
        row.address = info.address
        row.capabilities = list(info.capabilities)
        row.settable = list(info.settable)
        row.ranges = {k: [v[0], v[1]] for k, v in info.ranges.items()}
        row.controllable = info.controllable
        row.meta = dict(found.meta)
        if not row.room and info.room:
            row.room = info.room
        after = (
            row.kind, row.native_id, row.native_name, row.model, row.manufacturer, row.address,
            row.capabilities, row.settable, row.ranges, row.controllable, row.meta, row.room,
        )  # fmt: skip
        if is_new or before != after:
            dev.refresh_info()
            self._mark_row(info.id)
            self.bus.emit(Event("info", info.id))

    def device_state(self, device_id: str, values: Mapping[str, Any]) -> None:
        dev = self._devices.get(device_id)
        if dev is None:
            self.drops.drop(device_id, "unknown_device", level=logging.DEBUG)
            return
        clean, dropped = clean_state(values, CAPABILITIES)
        if dropped:
            # Absurd values (power 1e300, a negative energy meter) never reach the contract.
            self.drops.drop(device_id, "out_of_range", f"{dropped} values refused", count=dropped)
        if not clean:
            return
        dev.state.update(clean)
        dev.state_ts = iso_now()
        self._dirty_state.add(device_id)
        self.bus.emit(Event("state", device_id, clean))

    def device_availability(self, device_id: str, online: bool) -> None:
        dev = self._devices.get(device_id)
        if dev is None:
            self.drops.drop(device_id, "unknown_device", level=logging.DEBUG)
            return
        if dev.online != online:
            dev.online = online
            if online:
                self._dirty_state.add(device_id)
            log.info("device %s is %s", device_id, "online" if online else "offline")
            self.bus.emit(Event("availability", device_id, {"online": online}))

    def device_gone(self, device_id: str) -> None:
        dev = self._devices.get(device_id)
        if dev is None:
            return
        if dev.row.name:
            log.info("device %s left its bridge; kept (offline) because the installer named it", device_id)
            self.device_availability(device_id, False)
            return
        self._forget(device_id)

    def device_event(self, device_id: str, kind: str, data: Mapping[str, Any]) -> None:
        dev = self._devices.get(device_id)
        if dev is None or not dev.row.approved:
            # A device waiting for approval (an impostor among them) is heard by nobody.
            self.drops.drop(device_id, "not_approved", f"{kind} event", level=logging.INFO)
            return
        self.emit_event(kind, {**data, "source": device_id, "ts": iso_now()})

    def device_meta(self, device_id: str) -> Mapping[str, Any] | None:
        dev = self._devices.get(device_id)
        return dev.row.meta if dev else None

    def approved(self, device_id: str) -> bool:
        dev = self._devices.get(device_id)
        return dev is not None and dev.row.approved

    # -- household and installer actions ------------------------------------------------

    async def approve(self, device_id: str, *, name: str | None = None, room: str | None = None) -> Device:
        dev = self._require(device_id)
        was_approved = dev.row.approved
        dev.row.approved = True
        if name is not None:
            dev.row.name = name.strip()
        if room is not None:
            dev.row.room = room.strip()
        dev.refresh_info()
        await self._registry.upsert(dev.row)
        self.bus.emit(Event("info", device_id, {"approved_now": not was_approved}))
        return dev

    async def move(self, waiting_id: str, onto: str) -> Device:
        """The installer's word that waiting device `waiting_id` is approved device `onto` at a
        new address (a TV that got another address): `onto` keeps its id, name, room and
        approval and takes the new address; `waiting_id` is forgotten."""
        new, dev = self._require(waiting_id), self._require(onto)
        if new.row.approved or not dev.row.approved or new.row.protocol != dev.row.protocol:
            raise CommandRejected(
                "not_movable",
                f"{waiting_id} must be a waiting device and {onto} an approved one of the same protocol",
                device_id=waiting_id,
            )
        adapter = self._adapters.get(dev.row.protocol)
        if adapter is None or not adapter.address_bound:
            raise CommandRejected("not_movable", f"{dev.row.protocol} devices are not bound to an address")
        log.warning("installer moved %s from %s to %s", onto, dev.row.address, new.row.address)
        dev.row.address, dev.row.meta = new.row.address, dict(new.row.meta)
        dev.online = False
        dev.refresh_info()
        self._forget(waiting_id)
        await self._registry.upsert(dev.row)
        await self._flush()
        adapter.rebind(waiting_id, onto)
        self.bus.emit(Event("info", onto))
        return dev

    async def forget(self, device_id: str) -> None:
        self._require(device_id)
        self._forget(device_id)
        await self._flush()

    def _forget(self, device_id: str) -> None:
        dev = self._devices.pop(device_id)
        self._dirty_state.discard(device_id)
        self._dirty_row.discard(device_id)
        self._removed.add(device_id)
        self._wake.set()
        log.info("device %s forgotten", device_id)
        self.bus.emit(Event("removed", device_id, {"info": dev.info, "approved": dev.row.approved}))

    def _require(self, device_id: str) -> Device:
        dev = self._devices.get(device_id)
        if dev is None:
            raise CommandRejected("unknown_device", f"no device {device_id!r}", device_id=device_id)
        return dev

    # -- commands -----------------------------------------------------------------------

    def validate(self, device_id: str, payload: bytes | str) -> dict[str, Any]:
        """Check a raw command against the device; CommandRejected on any problem."""
        dev = self._devices.get(device_id)
        if dev is not None and not dev.row.approved:
            dev = None
        try:
            values = validate_command(dev.info if dev else None, payload)
        except CommandRejected as exc:
            exc.device_id = device_id
            raise
        assert dev is not None
        overlay = values.get("overlay")
        if isinstance(overlay, dict) and overlay.get("kind") == "alert":
            raise CommandRejected(
                "reserved", "the alert presentation is reserved for emergency alerts", device_id=device_id
            )
        if dev.info.protocol not in self._adapters:
            raise CommandRejected("no_adapter", f"{dev.info.protocol} is not enabled", device_id=device_id)
        return values

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None:
        """Apply validated values; DeviceError if the device cannot take them.

        Commands to one device run in order; at most a few dozen run at once."""
        dev = self._require(device_id)
        if not dev.online:
            raise DeviceError(device_id, "device_offline", "the device is not reachable")
        adapter = self._adapters[dev.info.protocol]
        lock = self._device_locks.setdefault(device_id, asyncio.Lock())
        async with self._command_slots, lock:
            try:
                async with asyncio.timeout(_COMMAND_TIMEOUT_S):
                    await adapter.command(device_id, values)
            except TimeoutError as exc:
                raise DeviceError(device_id, "timeout", f"no answer within {_COMMAND_TIMEOUT_S:g} s") from exc

    def emit_event(self, kind: str, data: dict[str, Any]) -> None:
        """Publish a home event (`home/<gw>/event/<kind>`)."""
        self.bus.emit(Event("event", kind, data))

    # -- persistence --------------------------------------------------------------------

    def _mark_row(self, device_id: str) -> None:
        self._dirty_row.add(device_id)
        self._wake.set()

    async def run(self) -> None:
        """Write registry changes: identity changes at once, live state every flush interval."""
        loop = asyncio.get_running_loop()
        next_state_flush = loop.time() + self._flush_interval_s
        try:
            while True:
                timeout = max(0.0, next_state_flush - loop.time())
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                flush_state = loop.time() >= next_state_flush
                try:
                    await self._flush(states=flush_state)
                except RegistryError:
                    log.exception("registry write failed; will retry")
                if flush_state:
                    next_state_flush = loop.time() + self._flush_interval_s
        finally:
            # Last chance on shutdown (shielded: we are usually being cancelled here).
            await asyncio.shield(self._flush())

    async def _flush(self, *, states: bool = True) -> None:
        for device_id in list(self._removed):
            await self._registry.remove(device_id)
            self._removed.discard(device_id)
        for device_id in list(self._dirty_row):
            dev = self._devices.get(device_id)
            self._dirty_row.discard(device_id)
            if dev is not None:
                dev.row.last_state = dict(dev.state)
                dev.row.last_seen = dev.row.last_seen or datetime.now(UTC)
                await self._registry.upsert(dev.row)
        if states and self._dirty_state:
            now = datetime.now(UTC)
            batch = {}
            for device_id in self._dirty_state:
                dev = self._devices.get(device_id)
                if dev is not None:
                    dev.row.last_seen = now
                    batch[device_id] = (dict(dev.state), now)
            self._dirty_state.clear()
            await self._registry.save_states(batch)
