"""Zigbee devices through a Zigbee2MQTT bridge.

`<base>/bridge/devices` (retained) lists the paired devices with `definition.exposes`; each
expose maps to a capability. Device state arrives on `<base>/<friendly_name>`, availability on
`<base>/<friendly_name>/availability`, the bridge's own state on `<base>/bridge/state`.
Commands go to `<base>/<friendly_name>/set`. Ids come from the IEEE address, so renaming a
device in Zigbee2MQTT keeps its id. See https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html

The bridge's broker login is its identity. Its device list is bounded (size, nesting, number
of devices) and each entry is taken or dropped on its own: one malformed device never costs the
others. A friendly name that cannot be part of a topic is refused. An empty list marks every
device offline; a device that leaves a non-empty list is forgotten unless the installer named it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gateway.config import LanSettings
from gateway.devices.base import DeviceSink, Found
from gateway.devices.guard import Drops, json_or_drop, topic_level_ok
from gateway.errors import BrokerError, DeviceError
from gateway.ids import device_id
from gateway.model import DeviceInfo, Kind
from gateway.mqtt import Message, MqttClient

__all__ = ["Expose", "Z2mDevice", "Zigbee2MqttAdapter", "map_exposes"]

log = logging.getLogger(__name__)

PROTOCOL = "zigbee2mqtt"
_MAX_STATE_PAYLOAD = 64 * 1024
ACCESS_STATE, ACCESS_SET = 1, 2
Finite = Annotated[float, Field(allow_inf_nan=False)]


class Expose(BaseModel):
    """One entry of `definition.exposes` (generic or specific with `features`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str
    name: str | None = None
    property: str | None = None
    access: int = 0
    unit: str | None = None
    value_on: Any = None
    value_off: Any = None
    value_min: Finite | None = None
    value_max: Finite | None = None
    endpoint: str | None = None
    features: tuple[Expose, ...] = Field(default=(), max_length=64)


class Definition(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = ""
    vendor: str = ""
    description: str = ""
    exposes: tuple[Expose, ...] = Field(default=(), max_length=256)


class Z2mDevice(BaseModel):
    """One element of `bridge/devices`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ieee_address: str = Field(pattern=r"^0x[0-9a-fA-F]{16}$")
    friendly_name: str = Field(min_length=1, max_length=256)
    type: str = ""
    definition: Definition | None = None
    disabled: bool = False
    supported: bool = True
    interview_completed: bool = True
    power_source: str | None = None
    description: str | None = None


# A malformed entry must not lose the whole list: entries that are not devices stay dicts.
_DEVICES = TypeAdapter(list[Annotated[Z2mDevice | dict[str, Any], Field(union_mode="left_to_right")]])


@dataclass(frozen=True, slots=True)
class _Binding:
    """How one Zigbee2MQTT property maps to a capability."""

    prop: str
    capability: str
    settable: bool
    kind: Literal["binary", "number", "brightness", "mired"]
    value_on: Any = True
    value_off: Any = False
    #: Zigbee2MQTT's own range (brightness 0..254, colour temperature in mired).
    low: float = 0.0
    high: float = 254.0


# numeric property → (capability, accepted units)
_NUMERIC: dict[str, tuple[str, tuple[str | None, ...]]] = {
    "temperature": ("temperature", ("°C", None)),
    "humidity": ("humidity", ("%", None)),
    "battery": ("battery", ("%", None)),
    "power": ("power", ("W", None)),
    "energy": ("energy", ("kWh", None)),
    "voltage": ("voltage", ("V",)),  # battery voltage in mV is not mains voltage
    "current": ("current", ("A",)),
    "illuminance": ("illuminance", ("lx",)),
    "illuminance_lux": ("illuminance", ("lx",)),
    "co": ("co", ("ppm",)),
}
_BINARY = {"contact": "contact", "occupancy": "motion", "smoke": "smoke", "presence": "motion"}


def map_exposes(exposes: tuple[Expose, ...]) -> tuple[Kind, list[_Binding]]:
    """Exposes → (kind, bindings). Endpoint-specific features (multi-gang) are skipped."""
    bindings: dict[str, _Binding] = {}
    kind = Kind.SENSOR

    def generic(e: Expose) -> None:
        if e.endpoint or not e.property:
            return
        settable = bool(e.access & ACCESS_SET)
        if e.type == "binary":
            if e.property == "state":
                bindings.setdefault(
                    "on", _Binding("state", "on", settable, "binary", e.value_on, e.value_off)
                )
            elif e.property in _BINARY:
                cap = _BINARY[e.property]
                bindings.setdefault(cap, _Binding(e.property, cap, False, "binary", e.value_on, e.value_off))
        elif e.type == "numeric":
            if e.property == "brightness":
                bindings.setdefault(
                    "brightness",
                    _Binding(
                        "brightness",
                        "brightness",
                        settable,
                        "brightness",
                        high=e.value_max or 254.0,
                    ),
                )
            elif e.property == "color_temp" and (e.unit in (None, "mired")):
                bindings.setdefault(
                    "color_temp",
                    _Binding(
                        "color_temp", "color_temp", settable, "mired",
                        low=e.value_min or 153, high=e.value_max or 500,
                    ),
                )  # fmt: skip
            elif e.property in _NUMERIC:
                cap, units = _NUMERIC[e.property]
                if e.unit in units:
                    bindings.setdefault(cap, _Binding(e.property, cap, False, "number"))

    for expose in exposes:
        if expose.type in ("light", "switch", "lock", "fan", "cover", "climate"):
            if expose.endpoint:
                continue
            if expose.type == "light":
                kind = Kind.LIGHT
            elif expose.type == "switch" and kind is not Kind.LIGHT:
                kind = Kind.SWITCH
            elif expose.type == "lock":
                kind = Kind.LOCK
            for feature in expose.features:
                generic(feature)
        else:
            generic(expose)
    if kind is Kind.SWITCH and "power" in bindings:
        kind = Kind.PLUG
    if kind is Kind.SENSOR and not any(b.capability != "battery" for b in bindings.values()):
        kind = Kind.OTHER
    return kind, list(bindings.values())


@dataclass(slots=True)
class _Tracked:
    device_id: str
    friendly_name: str
    bindings: dict[str, _Binding]  # by Zigbee2MQTT property
    by_capability: dict[str, _Binding]
    explicit_availability: bool = False
    available: bool = True


@dataclass(slots=True)
class _Bridge:
    online: bool = False
    devices: dict[str, _Tracked] = field(default_factory=dict)  # by friendly name


class Zigbee2MqttAdapter:
    protocol: ClassVar[str] = PROTOCOL
    address_bound: ClassVar[bool] = False

    def __init__(
        self,
        mqtt: MqttClient,
        sink: DeviceSink,
        *,
        base_topic: str = "zigbee2mqtt",
        limits: LanSettings | None = None,
    ) -> None:
        self._mqtt = mqtt
        self._sink = sink
        self._base = base_topic.rstrip("/")
        self._limits = limits or LanSettings()
        self._bridge = _Bridge()
        self._by_id: dict[str, _Tracked] = {}
        self.drops = Drops(PROTOCOL, log)

    async def run(self) -> None:
        undo: list[Callable[[], None]] = [self._mqtt.subscribe(f"{self._base}/#", self._on_message)]
        try:
            await asyncio.Future()
        finally:
            for u in undo:
                u()

    def _json(self, msg: Message, max_bytes: int, *, object_only: bool = True) -> Any:
        return json_or_drop(
            self.drops,
            msg.topic,
            msg.payload,
            max_bytes=max_bytes,
            max_depth=self._limits.max_json_depth,
            object_only=object_only,
        )

    def rebind(self, old_id: str, new_id: str) -> None:
        raise DeviceError(new_id, "not_movable", "a Zigbee device is its bridge's, not an address")

    def _on_message(self, msg: Message) -> None:
        rest = msg.topic[len(self._base) + 1 :]
        if rest.startswith("bridge/"):
            if rest == "bridge/devices":
                self._on_devices(msg)
            elif rest == "bridge/state":
                self._on_bridge_state(msg)
            return
        name, _, leaf = rest.rpartition("/")
        if leaf in ("set", "get") or rest.endswith(("/set/", "/get/")):
            return  # commands, ours or another controller's
        if leaf == "availability":
            self._on_availability(name, msg)
            return
        tracked = self._bridge.devices.get(rest)
        if tracked is None:
            return  # a device we do not track (unsupported, disabled) or a group
        data = self._json(msg, min(_MAX_STATE_PAYLOAD, self._limits.max_json_bytes))
        if data is None:
            return
        values = self._convert(tracked, data)
        if not tracked.explicit_availability and self._bridge.online and not tracked.available:
            tracked.available = True
            self._sink.device_availability(tracked.device_id, True)
        if values:
            self._sink.device_state(tracked.device_id, values)

    @staticmethod
    def _convert(tracked: _Tracked, data: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for prop, raw in data.items():
            b = tracked.bindings.get(prop)
            if b is None or raw is None:
                continue
            if b.kind == "binary":
                if raw == b.value_on:
                    values[b.capability] = True
                elif raw == b.value_off:
                    values[b.capability] = False
            elif isinstance(raw, bool) or not isinstance(raw, int | float):
                continue
            elif b.kind == "number":
                values[b.capability] = raw
            elif b.kind == "brightness":
                values[b.capability] = max(0, min(100, round(raw * 100 / b.high)))
            elif b.kind == "mired" and raw > 0:
                values[b.capability] = round(1e6 / raw)
        return values

    def _on_bridge_state(self, msg: Message) -> None:
        state = self._state_text(msg)
        if state is None:
            return
        online = state == "online"
        if online == self._bridge.online:
            return
        self._bridge.online = online
        log.info("zigbee2mqtt bridge is %s", state or "gone")
        for tracked in self._bridge.devices.values():
            self._set_available(tracked)

    def _state_text(self, msg: Message) -> str | None:
        """`online` / `offline`, plain or as `{"state": ...}` (Zigbee2MQTT 1.x and 2.x)."""
        if not msg.payload.lstrip().startswith(b"{"):
            return msg.payload[:64].decode("utf-8", "replace").strip()
        data = self._json(msg, 1024)
        return None if data is None else str(data.get("state", ""))[:32]

    def _set_available(self, tracked: _Tracked) -> None:
        self._sink.device_availability(tracked.device_id, self._bridge.online and tracked.available)

    def _on_availability(self, name: str, msg: Message) -> None:
        tracked = self._bridge.devices.get(name)
        if tracked is None:
            return
        text = self._state_text(msg)
        if text is None:
            return
        if text not in ("online", "offline"):
            self.drops.drop(msg.topic, "invalid_availability", text[:32])
            return
        tracked.explicit_availability = True
        tracked.available = text == "online"
        self._set_available(tracked)

    def _on_devices(self, msg: Message) -> None:
        if len(msg.payload) > self._limits.max_device_list_bytes:
            self.drops.drop(msg.topic, "too_large", f"device list of {len(msg.payload)} bytes")
            return
        try:
            # pydantic's own parser: it reads NaN and Infinity, which some JavaScript tools
            # write, so such an entry fails alone instead of the whole list.
            entries = _DEVICES.validate_json(msg.payload)
        except ValidationError as exc:
            self.drops.drop(msg.topic, "invalid_device_list", f"{exc.error_count()} errors")
            return
        if not entries:
            # An empty list (a bridge reset, or someone clearing the retained topic): every
            # device is offline until the bridge lists it again; nothing is forgotten.
            for tracked in self._bridge.devices.values():
                tracked.available = False
                self._set_available(tracked)
            return
        most = self._limits.max_devices_per_protocol
        if len(entries) > most:
            self.drops.drop(
                msg.topic,
                "too_many_devices",
                f"{len(entries)} listed, {most} taken",
                count=len(entries) - most,
            )
            del entries[most:]
        seen: set[str] = set()
        devices: dict[str, _Tracked] = {}
        for entry in entries:
            if not isinstance(entry, Z2mDevice):
                self.drops.drop(msg.topic, "invalid_device", "skipped a malformed device entry")
                continue
            if entry.type == "Coordinator" or entry.definition is None or entry.disabled:
                continue
            if not entry.interview_completed:
                continue
            if not topic_level_ok(entry.friendly_name, allow_slash=True, max_len=256):
                self.drops.drop(msg.topic, "bad_name", f"{entry.friendly_name[:64]!r} cannot be a topic")
                continue
            try:
                dev = self._track(entry)
            except Exception as exc:  # noqa: BLE001 - one device's trouble never costs the others
                self.drops.drop(
                    entry.ieee_address, "internal_error", repr(exc), level=logging.ERROR, exc_info=True
                )
                continue
            if dev is None:
                continue
            devices[entry.friendly_name] = dev
            seen.add(dev.device_id)
        for gone in set(self._by_id) - seen:
            del self._by_id[gone]
            self._sink.device_gone(gone)
        self._bridge.devices = devices

    def _track(self, entry: Z2mDevice) -> _Tracked | None:
        assert entry.definition is not None
        kind, bindings = map_exposes(entry.definition.exposes)
        dev_id = device_id("zigbee", entry.ieee_address.lower().removeprefix("0x"))
        old = self._by_id.get(dev_id)
        tracked = _Tracked(
            device_id=dev_id,
            friendly_name=entry.friendly_name,
            bindings={b.prop: b for b in bindings},
            by_capability={b.capability: b for b in bindings},
            explicit_availability=old.explicit_availability if old else False,
            available=old.available if old else True,
        )
        self._by_id[dev_id] = tracked
        settable = [b.capability for b in bindings if b.settable]
        ranges: dict[str, tuple[float, float]] = {}
        ct = tracked.by_capability.get("color_temp")
        if ct is not None:
            ranges["color_temp"] = (round(1e6 / ct.high), round(1e6 / ct.low))
        room, _, short = entry.friendly_name.rpartition("/")
        info = DeviceInfo(
            id=dev_id,
            name=(short or entry.friendly_name)[:128],
            kind=kind,
            room=room[:64],
            protocol=PROTOCOL,
            model=entry.definition.model[:128],
            manufacturer=entry.definition.vendor[:128],
            address=entry.ieee_address.lower(),
            capabilities=tuple(b.capability for b in bindings),
            settable=tuple(settable),
            controllable=bool(settable),
            ranges=ranges,
        )
        self._sink.device_found(
            Found(
                info=info,
                native_id=entry.ieee_address.lower(),
                meta={"friendly_name": entry.friendly_name},
            )
        )
        self._set_available(tracked)
        return tracked

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None:
        tracked = self._by_id.get(device_id)
        if tracked is None:
            raise DeviceError(device_id, "unknown_device", "not in the bridge's device list")
        payload: dict[str, Any] = {}
        for cap, value in values.items():
            b = tracked.by_capability.get(cap)
            if b is None or not b.settable:
                raise DeviceError(device_id, "unsupported_capability", cap)
            if b.kind == "binary":
                payload[b.prop] = b.value_on if value else b.value_off
            elif b.kind == "brightness":
                payload[b.prop] = round(value * b.high / 100)
            elif b.kind == "mired":
                payload[b.prop] = int(min(b.high, max(b.low, round(1e6 / value))))
            else:
                payload[b.prop] = value
        try:
            self._mqtt.publish(f"{self._base}/{tracked.friendly_name}/set", orjson.dumps(payload), qos=1)
        except BrokerError as exc:
            raise DeviceError(device_id, "bridge_unreachable", str(exc)) from exc
