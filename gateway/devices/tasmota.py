"""Tasmota devices over MQTT (native discovery, as Tasmota 9.x and later publish it).

Discovery: `tasmota/discovery/<MAC>/config` (retained) describes the device, its topic and its
relays (`rl`: 1 relay, 2 light); `tasmota/discovery/<MAC>/sensors` lists its sensors. State
arrives on `stat/<topic>/RESULT`, `stat/<topic>/POWER<n>`, `tele/<topic>/STATE` and
`tele/<topic>/SENSOR` (ENERGY and climate sensors); availability on `tele/<topic>/LWT`.
Commands go to `cmnd/<topic>/POWER<n>`, `Dimmer`, `CT`.

Each relay or light channel is one device: the first is `tasmota-<mac>`, the others
`tasmota-<mac>-<n>`. A device with an ENERGY sensor is a plug.

A plug's identity is its broker login. With per-device logins (`gateway logins add tasmota`)
the broker lets each plug write only its own discovery, `stat` and `tele` topics, and the
adapter accepts a config only for a MAC that has a login and only with that login's topic; in
any case a config may not take a topic another plug already has (that would steer commands to
the other plug), and every topic built from what a plug says is checked first. An empty
retained config marks the plug offline; only the installer forgets a device.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config import LanSettings
from gateway.devices.base import DeviceSink, Found
from gateway.devices.guard import Drops, json_or_drop, topic_level_ok
from gateway.errors import BrokerError, DeviceError
from gateway.ids import device_id, normalize_mac
from gateway.model import DeviceInfo, Kind
from gateway.mqtt import Message, MqttClient

__all__ = ["TasmotaAdapter", "TasmotaConfig", "parse_sensor_payload"]

log = logging.getLogger(__name__)

PROTOCOL = "tasmota"
RL_RELAY = 1
RL_LIGHT = 2
_MAX_PAYLOAD = 64 * 1024
_MIRED_MIN, _MIRED_MAX = 153, 500  # Tasmota's CT range (SetOption82 narrows it)
#: Tasmota's own limit (MAX_RELAYS on ESP32); a config with more is not real firmware.
MAX_RELAYS = 32
#: Answers who may speak for a MAC: the topic of its broker login, "" for any topic (no
#: per-device logins on this broker), None for no login at all.
TopicOfLogin = Callable[[str], str | None]


class TasmotaConfig(BaseModel):
    """`tasmota/discovery/<MAC>/config`. Unknown keys are kept out; missing optional ones
    default as older firmware omits them."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    mac: str
    t: str = Field(min_length=1, max_length=128)
    ft: str = "%prefix%/%topic%/"
    tp: tuple[str, str, str] = ("cmnd", "stat", "tele")
    dn: str = ""
    fn: tuple[str | None, ...] = ()
    hn: str = ""
    md: str = ""
    sw: str = ""
    ip: str = ""
    ofln: str = "Offline"
    onln: str = "Online"
    state: tuple[str, ...] = ("OFF", "ON", "TOGGLE", "HOLD")
    rl: tuple[int, ...] = ()
    lt_st: int = 0
    so: dict[str, int] = Field(default_factory=dict)
    ver: int = 1

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        return normalize_mac(value)

    @model_validator(mode="after")
    def _topics_are_safe(self) -> TasmotaConfig:
        # Every topic and filter we build comes from these: no wildcards, no `$`, bounded.
        if not topic_level_ok(self.t) or not all(topic_level_ok(p) for p in self.tp):
            raise ValueError("topic or prefix is not a plain MQTT topic level")
        if self.hn and not topic_level_ok(self.hn):
            raise ValueError("host name is not a plain MQTT topic level")
        if not topic_level_ok(self.topic(0).rstrip("/"), allow_slash=True, max_len=256):
            raise ValueError("full topic is not a plain MQTT topic")
        if len(self.rl) > MAX_RELAYS or len(self.fn) > MAX_RELAYS or len(self.state) > 8:
            raise ValueError(f"more than {MAX_RELAYS} relays")
        return self

    def topic(self, prefix_index: int, command: str = "") -> str:
        """Full topic per `ft` (Tasmota's FullTopic), with a trailing command."""
        full = (
            self.ft.replace("%prefix%", self.tp[prefix_index])
            .replace("%topic%", self.t)
            .replace("%hostname%", self.hn)
            .replace("%id%", self.mac[-6:].upper())
        )
        if not full.endswith("/"):
            full += "/"
        return full + command


class TasmotaSensors(BaseModel):
    """`tasmota/discovery/<MAC>/sensors`: a sample SENSOR payload under `sn`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sn: dict[str, Any] = Field(default_factory=dict)


_ENERGY_FIELDS = {"Power": "power", "Total": "energy", "Voltage": "voltage", "Current": "current"}
_CLIMATE_FIELDS = {
    "Temperature": "temperature",
    "Humidity": "humidity",
    "Illuminance": "illuminance",
}


def _number(value: Any, index: int) -> float | None:
    if isinstance(value, list):  # multi-channel meters report one value per channel
        value = value[index] if index < len(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_sensor_payload(payload: Mapping[str, Any], channel: int = 0) -> dict[str, float]:
    """SENSOR (or StatusSNS) JSON → capability values. Unknown sensors are ignored."""
    values: dict[str, float] = {}
    fahrenheit = payload.get("TempUnit") == "F"
    for key, block in payload.items():
        if not isinstance(block, dict):
            continue
        if key == "ENERGY":
            for field_name, cap in _ENERGY_FIELDS.items():
                number = _number(block.get(field_name), channel)
                if number is not None:
                    values[cap] = number
            continue
        for field_name, cap in _CLIMATE_FIELDS.items():
            number = _number(block.get(field_name), 0)
            if number is None or cap in values:
                continue
            if cap == "temperature" and fahrenheit:
                number = round((number - 32) * 5 / 9, 2)
            values[cap] = number
    return values


def _power_value(text: Any, states: tuple[str, ...]) -> bool | None:
    if not isinstance(text, str):
        return None
    upper = text.strip().upper()
    if upper in ("ON", states[1].upper() if len(states) > 1 else "ON", "1"):
        return True
    if upper in ("OFF", states[0].upper() if states else "OFF", "0"):
        return False
    return None


@dataclass(slots=True)
class _Channel:
    device_id: str
    relay_index: int  # 1-based POWER index
    light: bool


@dataclass(slots=True)
class _Node:
    config: TasmotaConfig
    channels: list[_Channel]
    sensors: dict[str, Any] = field(default_factory=dict)
    unsubscribe: list[Callable[[], None]] = field(default_factory=list)
    online: bool = False


class TasmotaAdapter:
    protocol: ClassVar[str] = PROTOCOL
    address_bound: ClassVar[bool] = False

    def __init__(
        self,
        mqtt: MqttClient,
        sink: DeviceSink,
        *,
        discovery_prefix: str = "tasmota/discovery",
        limits: LanSettings | None = None,
        topic_of_login: TopicOfLogin = lambda mac: "",
    ) -> None:
        self._mqtt = mqtt
        self._sink = sink
        self._prefix = discovery_prefix.rstrip("/")
        self._limits = limits or LanSettings()
        self._topic_of_login = topic_of_login
        self._nodes: dict[str, _Node] = {}  # by MAC
        self._by_device: dict[str, tuple[_Node, _Channel]] = {}
        self._early_sensors: dict[str, dict[str, Any]] = {}
        self.drops = Drops(PROTOCOL, log)

    async def run(self) -> None:
        undo = [
            self._mqtt.subscribe(f"{self._prefix}/+/config", self._on_config),
            self._mqtt.subscribe(f"{self._prefix}/+/sensors", self._on_sensors),
        ]
        try:
            await asyncio.Future()  # everything happens in callbacks
        finally:
            for u in undo:
                u()
            for node in self._nodes.values():
                for u in node.unsubscribe:
                    u()

    # -- discovery ----------------------------------------------------------------------

    def _on_config(self, msg: Message) -> None:
        topic_mac = msg.topic.split("/")[-2]
        try:
            mac = normalize_mac(topic_mac)
        except ValueError:
            self.drops.drop(msg.topic, "no_mac", "topic does not carry a MAC")
            return
        if not msg.payload:
            # A plug that turned discovery off, or someone clearing it: offline, not forgotten.
            self._offline(mac)
            return
        if len(msg.payload) > _MAX_PAYLOAD:
            self.drops.drop(msg.topic, "too_large", f"{len(msg.payload)} bytes")
            return
        try:
            config = TasmotaConfig.model_validate_json(msg.payload)
        except ValidationError as exc:
            self.drops.drop(
                msg.topic, "invalid_config", f"{exc.error_count()} errors: {exc.errors()[0]['msg']}"
            )
            return
        if mac != config.mac:
            self.drops.drop(msg.topic, "mac_mismatch", "MAC in topic and payload differ")
            return
        if not self._may_use(config, msg.topic):
            return
        old = self._nodes.get(config.mac)
        if old is not None and old.config == config:
            self._announce(old)
            return
        channels = self._channels(config)
        if len(channels) > self._limits.max_channels_per_device:
            self.drops.drop(msg.topic, "too_many_channels", f"{len(channels)} relays")
            return
        if old is not None:
            for u in old.unsubscribe:
                u()
        node = _Node(config=config, channels=channels)
        node.sensors = self._early_sensors.pop(config.mac, old.sensors if old else {})
        self._nodes[config.mac] = node
        for ch in node.channels:
            self._by_device[ch.device_id] = (node, ch)
        stat, tele = config.topic(1), config.topic(2)
        try:
            node.unsubscribe = [
                self._mqtt.subscribe(f"{stat}+", functools.partial(self._on_stat, node)),
                self._mqtt.subscribe(f"{tele}+", functools.partial(self._on_tele, node)),
            ]
            self._announce(node)
            # Ask for the current power state and sensors instead of waiting a TelePeriod.
            self._mqtt.publish(config.topic(0, "STATE"), b"")
            self._mqtt.publish(config.topic(0, "STATUS"), b"10")
        except BrokerError as exc:  # the validators should make this impossible
            self.drops.drop(msg.topic, "bad_topic", str(exc))

    def _may_use(self, config: TasmotaConfig, source: str) -> bool:
        """A config may only use its own login's topic, and never another plug's (either would
        steer commands to another plug: refused and reported)."""
        allowed = self._topic_of_login(config.mac)
        if allowed is None:
            self.drops.drop(source, "no_login", f"{config.mac} has no broker login")
            return False
        mine = config.topic(0)
        if allowed and mine != f"cmnd/{allowed}/":
            detail = f"config names topic {config.t!r}; its login is for {allowed!r}"
            self._sink.security_event("topic_mismatch", device_id(PROTOCOL, config.mac), source, detail)
            return False
        taken = next(
            (mac for mac, node in self._nodes.items() if mac != config.mac and node.config.topic(0) == mine),
            None,
        )
        if taken is not None:
            detail = f"config names topic {config.t!r}, which is {taken}'s"
            self._sink.security_event("topic_taken", device_id(PROTOCOL, config.mac), source, detail)
            return False
        return True

    def _on_sensors(self, msg: Message) -> None:
        mac_text = msg.topic.split("/")[-2]
        try:
            mac = normalize_mac(mac_text)
        except ValueError:
            self.drops.drop(msg.topic, "no_mac", "topic does not carry a MAC")
            return
        sensors: dict[str, Any] = {}
        if msg.payload:
            data = self._json(msg)
            if data is None:
                return
            try:
                sensors = TasmotaSensors.model_validate(data).sn
            except ValidationError:
                self.drops.drop(msg.topic, "invalid_sensors")
                return
        node = self._nodes.get(mac)
        if node is None:
            # Retained sensors may arrive before the config; keep a few until it comes.
            if mac not in self._early_sensors and len(self._early_sensors) >= self._limits.max_early_sensors:
                self.drops.drop(msg.topic, "too_many_unknown", "sensors of a plug we do not know")
                return
            if self._topic_of_login(mac) is None:
                self.drops.drop(msg.topic, "no_login", f"{mac} has no broker login")
                return
            self._early_sensors[mac] = sensors
            return
        node.sensors = sensors
        self._announce(node)
        self._apply_sensor(node, sensors)

    @staticmethod
    def _channels(config: TasmotaConfig) -> list[_Channel]:
        indices = [i for i, kind in enumerate(config.rl) if kind in (RL_RELAY, RL_LIGHT)]
        force_light = config.so.get("30") == 1
        channels = []
        for n, i in enumerate(indices):
            suffix = "" if n == 0 else str(i + 1)
            channels.append(
                _Channel(
                    device_id=device_id(PROTOCOL, config.mac, suffix=suffix),
                    relay_index=i + 1,
                    light=config.rl[i] == RL_LIGHT or force_light,
                )
            )
        if not channels:  # a sensor-only Tasmota
            channels.append(_Channel(device_id(PROTOCOL, config.mac), 0, False))
        return channels

    def _announce(self, node: _Node) -> None:
        cfg = node.config
        sensor_caps = sorted(parse_sensor_payload(node.sensors).keys())
        for n, ch in enumerate(node.channels):
            caps: list[str] = []
            settable: list[str] = []
            ranges: dict[str, tuple[float, float]] = {}
            if ch.relay_index:
                caps.append("on")
                settable.append("on")
            if ch.light and cfg.lt_st >= 1:
                caps.append("brightness")
                settable.append("brightness")
            if ch.light and cfg.lt_st in (2, 5):  # cold/warm white and RGBCW
                caps.append("color_temp")
                settable.append("color_temp")
                ranges["color_temp"] = (round(1e6 / _MIRED_MAX), round(1e6 / _MIRED_MIN))
            if n == 0:  # sensors belong to the first channel
                caps.extend(c for c in sensor_caps if c not in caps)
            if ch.light:
                kind = Kind.LIGHT
            elif not ch.relay_index:
                kind = Kind.SENSOR
            elif (n == 0 and "power" in sensor_caps) or "plug" in cfg.md.lower():
                kind = Kind.PLUG
            else:
                kind = Kind.SWITCH
            names = [f for f in cfg.fn if f]
            name = names[n] if n < len(names) else (cfg.dn or cfg.t)
            if n and n >= len(names):
                name = f"{name} {ch.relay_index}"
            info = DeviceInfo(
                id=ch.device_id,
                name=name[:128],
                kind=kind,
                protocol=PROTOCOL,
                model=cfg.md[:128],
                manufacturer="Tasmota",
                address=cfg.ip,
                capabilities=tuple(caps),
                settable=tuple(settable),
                controllable=bool(settable),
                ranges=ranges,
            )
            self._sink.device_found(
                Found(
                    info=info,
                    native_id=cfg.mac,
                    meta={"topic": cfg.t, "relay": ch.relay_index, "sw": cfg.sw},
                )
            )
            if node.online:
                self._sink.device_availability(ch.device_id, True)

    def offline(self, mac: str) -> None:
        """The plug is gone from the broker (its login was removed): offline, not forgotten."""
        self._offline(mac)

    def _offline(self, mac: str) -> None:
        node = self._nodes.get(mac)
        if node is None:
            self._early_sensors.pop(mac, None)
            return
        node.online = False
        for ch in node.channels:
            self._sink.device_availability(ch.device_id, False)

    def rebind(self, old_id: str, new_id: str) -> None:
        raise DeviceError(new_id, "not_movable", "a Tasmota device is its broker login, not an address")

    # -- state --------------------------------------------------------------------------

    def _on_stat(self, node: _Node, msg: Message) -> None:
        leaf = msg.topic.rsplit("/", 1)[-1]
        if leaf.startswith("POWER"):
            index = leaf[5:]
            value = _power_value(msg.payload.decode("utf-8", "replace"), node.config.state)
            if value is None:
                data = self._json(msg)
                if data is not None:
                    self._apply_result(node, data)
                return
            self._apply_power(node, int(index) if index.isdigit() and len(index) <= 2 else 1, value)
            return
        if leaf == "RESULT" or leaf.startswith("STATUS"):
            data = self._json(msg)
            if data is None:
                return
            if isinstance(data.get("StatusSNS"), dict):
                self._apply_sensor(node, data["StatusSNS"])
            self._apply_result(node, data)

    def _on_tele(self, node: _Node, msg: Message) -> None:
        leaf = msg.topic.rsplit("/", 1)[-1]
        if leaf == "LWT":
            text = msg.payload.decode("utf-8", "replace").strip()
            if text not in (node.config.onln, node.config.ofln):
                self.drops.drop(msg.topic, "invalid_lwt", "unknown LWT payload")
                return
            node.online = text == node.config.onln
            for ch in node.channels:
                self._sink.device_availability(ch.device_id, node.online)
            return
        if leaf in ("STATE", "SENSOR"):
            data = self._json(msg)
            if data is None:
                return
            self._mark_alive(node)
            if leaf == "STATE":
                self._apply_result(node, data)
            else:
                self._apply_sensor(node, data)

    def _mark_alive(self, node: _Node) -> None:
        # A device that talks is online even if we missed its LWT (e.g. it was not retained).
        if not node.online:
            node.online = True
            for ch in node.channels:
                self._sink.device_availability(ch.device_id, True)

    def _json(self, msg: Message) -> dict[str, Any] | None:
        limits = self._limits
        data: dict[str, Any] | None = json_or_drop(
            self.drops,
            msg.topic,
            msg.payload,
            max_bytes=min(_MAX_PAYLOAD, limits.max_json_bytes),
            max_depth=limits.max_json_depth,
        )
        return data

    def _apply_power(self, node: _Node, index: int, on: bool) -> None:
        for ch in node.channels:
            if ch.relay_index == index:
                self._sink.device_state(ch.device_id, {"on": on})

    def _apply_result(self, node: _Node, data: Mapping[str, Any]) -> None:
        states = node.config.state
        single = len(node.channels) == 1
        for ch in node.channels:
            values: dict[str, Any] = {}
            keys = [f"POWER{ch.relay_index}"] + (["POWER"] if single or ch.relay_index == 1 else [])
            for key in keys:
                on = _power_value(data.get(key), states)
                if on is not None:
                    values["on"] = on
                    break
            if ch.light:
                dimmer = data.get("Dimmer")
                if isinstance(dimmer, int | float) and not isinstance(dimmer, bool) and 0 <= dimmer <= 100:
                    values["brightness"] = int(dimmer)
                ct = data.get("CT")
                if isinstance(ct, int | float) and not isinstance(ct, bool) and ct > 0:
                    values["color_temp"] = round(1e6 / ct)
            if values:
                self._sink.device_state(ch.device_id, values)

    def _apply_sensor(self, node: _Node, data: Mapping[str, Any]) -> None:
        values = parse_sensor_payload(data)
        if values and node.channels:
            self._sink.device_state(node.channels[0].device_id, values)

    # -- commands -----------------------------------------------------------------------

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None:
        entry = self._by_device.get(device_id)
        if entry is None:
            raise DeviceError(device_id, "unknown_device", "Tasmota has not announced this device")
        node, ch = entry
        cfg = node.config
        for cap, value in values.items():
            if cap == "on":
                command = f"POWER{ch.relay_index}" if len(node.channels) > 1 else "POWER"
                self._mqtt.publish(cfg.topic(0, command), b"ON" if value else b"OFF", qos=1)
            elif cap == "brightness":
                self._mqtt.publish(cfg.topic(0, "Dimmer"), str(int(value)).encode(), qos=1)
            elif cap == "color_temp":
                mired = min(_MIRED_MAX, max(_MIRED_MIN, round(1e6 / value)))
                self._mqtt.publish(cfg.topic(0, "CT"), str(mired).encode(), qos=1)
            else:
                raise DeviceError(device_id, "unsupported_capability", cap)
