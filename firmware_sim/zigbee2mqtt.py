"""A Zigbee2MQTT (1.40 / 2.x) bridge with simulated Zigbee devices behind it.

What a Zigbee2MQTT-aware client sees is what the real bridge publishes under its base topic:
`bridge/state` (`{"state":"online"}`, the will says offline), `bridge/info`, `bridge/devices`
(the device list with each definition's `exposes` in Zigbee2MQTT's own format),
`bridge/groups`, `bridge/extensions`, `<friendly_name>` (state JSON),
`<friendly_name>/availability`; it answers `<friendly_name>/set`, `<friendly_name>/set/<attr>`,
`<friendly_name>/get` and `bridge/request/health_check`. Friendly names may contain slashes
(`客厅/灯`), so the bridge subscribes to `<base>/#` and matches names itself, as the real one does.

The exposes are written as zigbee-herdsman-converters defines them for each model (same
names, access bits, units, ranges, labels and descriptions); the simulated bulb exposes a
subset of the real LED1545G12 definition (no `level_config`, `color_options`, `identify`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from firmware_sim._mqtt import Inbound, LastWill, Link, LinkDown, MqttFirmware

__all__ = [
    "DEFAULT_BASE_TOPIC",
    "DEFAULT_REPORT_INTERVAL_S",
    "BridgeDevice",
    "DeviceDefinition",
    "DeviceKind",
    "Expose",
    "Preset",
    "Zigbee2MqttBridge",
    "ZigbeeDevice",
    "default_devices",
]

_log = logging.getLogger(__name__)

Z2M_VERSION = "2.1.3"
Z2M_COMMIT = "8f5c8b1"
DEFAULT_BASE_TOPIC = "zigbee2mqtt"
DEFAULT_REPORT_INTERVAL_S = 10.0
MQTT_KEEPALIVE_S = 60  # mqtt.keepalive default
COORDINATOR_IEEE = "0x00124b0024c1a5e7"  # a CC2652 (Texas Instruments OUI 00:12:4b)
ZIGBEE_CHANNEL = 15
PAN_ID = 6754  # 0x1a62, the default pan_id
EXTENDED_PAN_ID = "0xdddddddddddddddd"  # the default ext_pan_id

# Access bits of an expose (zigbee-herdsman-converters `access`): published in the state,
# settable with /set, readable with /get.
ACCESS_STATE = 0b001
ACCESS_SET = 0b010
ACCESS_GET = 0b100
ACCESS_ALL = ACCESS_STATE | ACCESS_SET | ACCESS_GET

BRIGHTNESS_RANGE = (0, 254)
LED1545G12_COLOR_TEMP_RANGE = (250, 454)  # mired, 4000 K .. 2200 K
COLOR_TEMP_STARTUP_PREVIOUS = 65535
# Occupancy clears after this many report intervals (the real occupancy_timeout is 90 s).
OCCUPANCY_REPORT_INTERVALS = 3

_IEEE_RE = re.compile(r"^0x[0-9a-f]{16}$")
_JSON_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


# --- wire models: bridge/devices -----------------------------------------------------------


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    value: int | float | str
    description: str


class Expose(BaseModel):
    """One entry of `definition.exposes` (a feature or a composite of features)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str | None = None
    label: str | None = None
    property: str | None = None
    access: int | None = None
    unit: str | None = None
    value_min: int | float | None = None
    value_max: int | float | None = None
    value_step: int | float | None = None
    value_on: bool | str | None = None
    value_off: bool | str | None = None
    value_toggle: str | None = None
    values: list[str] | None = None
    presets: list[Preset] | None = None
    features: list[Expose] | None = None
    item_type: Expose | None = None
    endpoint: str | None = None
    description: str | None = None
    category: str | None = None


class DeviceDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    vendor: str
    description: str
    exposes: list[Expose]
    options: list[Expose]
    supports_ota: bool
    source: str | None = None
    icon: str | None = None


class BridgeDevice(BaseModel):
    """One entry of `bridge/devices`. Serialize with `exclude_unset=True`: what was not
    given is absent (as `undefined` is in Zigbee2MQTT), what was given as None is null."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ieee_address: str
    type: str
    network_address: int
    supported: bool
    disabled: bool
    friendly_name: str
    description: str | None = None
    definition: DeviceDefinition | None = None
    power_source: str | None = None
    software_build_id: str | None = None
    date_code: str | None = None
    model_id: str | None = None
    manufacturer: str | None = None
    interview_completed: bool
    interviewing: bool
    interview_state: str | None = None
    endpoints: dict[str, dict[str, Any]] | None = None


def _label(name: str) -> str:
    """zigbee-herdsman-converters' default label: first letter upper, underscores to spaces."""
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def _numeric(
    name: str,
    *,
    access: int = ACCESS_STATE,
    unit: str | None = None,
    value_min: int | None = None,
    value_max: int | None = None,
    description: str,
    category: str | None = None,
    presets: list[Preset] | None = None,
    label: str | None = None,
) -> Expose:
    extra: dict[str, Any] = {}
    for key, value in (
        ("unit", unit),
        ("value_min", value_min),
        ("value_max", value_max),
        ("presets", presets),
        ("category", category),
    ):
        if value is not None:
            extra[key] = value
    return Expose(
        type="numeric",
        name=name,
        label=label or _label(name),
        property=name,
        access=access,
        description=description,
        **extra,
    )


def _binary(name: str, *, value_on: bool | str, value_off: bool | str, description: str) -> Expose:
    return Expose(
        type="binary",
        name=name,
        label=_label(name),
        property=name,
        access=ACCESS_STATE,
        value_on=value_on,
        value_off=value_off,
        description=description,
    )


def _enum(name: str, *, access: int, values: list[str], description: str, **extra: Any) -> Expose:
    return Expose(
        type="enum",
        name=name,
        label=extra.pop("label", _label(name)),
        property=name,
        access=access,
        values=values,
        description=description,
        **extra,
    )


def _battery() -> Expose:
    return _numeric(
        "battery", unit="%", value_min=0, value_max=100, category="diagnostic",
        description="Remaining battery in %, can take up to 24 hours before reported",
    )  # fmt: skip


def _battery_voltage() -> Expose:
    return _numeric(
        "voltage", unit="mV", category="diagnostic",
        description="Voltage of the battery in millivolts",
    )  # fmt: skip


def _device_temperature() -> Expose:
    return _numeric(
        "device_temperature", unit="°C", category="diagnostic",
        description="Temperature of the device",
    )  # fmt: skip


def _power_outage_count() -> Expose:
    return _numeric("power_outage_count", category="diagnostic", description="Number of power outages")


def _linkquality() -> Expose:
    return _numeric(
        "linkquality", unit="lqi", value_min=0, value_max=255, category="diagnostic",
        description="Link quality (signal strength)",
    )  # fmt: skip


def _color_temp_presets(low: int, high: int, *, startup: bool) -> list[Preset]:
    """The presets zigbee-herdsman-converters attaches to color_temp, limited to the range."""
    presets = [Preset(name="coolest", value=low, description="Coolest temperature supported")]
    for name, mired, kelvin in (("cool", 250, 4000), ("neutral", 370, 2700), ("warm", 454, 2200)):
        if low <= mired <= high:
            presets.append(Preset(
                name=name, value=mired,
                description=f"{name.capitalize()} temperature ({mired} mireds / {kelvin} Kelvin)",
            ))  # fmt: skip
    presets.append(Preset(name="warmest", value=high, description="Warmest temperature supported"))
    if startup:
        presets.append(Preset(
            name="previous", value=COLOR_TEMP_STARTUP_PREVIOUS,
            description="Restore previous color_temp on cold power on",
        ))  # fmt: skip
    return presets


def _light(color_temp_range: tuple[int, int]) -> Expose:
    low, high = color_temp_range
    features = [
        Expose(
            type="binary", name="state", label="State", property="state", access=ACCESS_ALL,
            value_on="ON", value_off="OFF", value_toggle="TOGGLE",
            description="On/off state of this light",
        ),
        _numeric(
            "brightness", access=ACCESS_ALL, value_min=BRIGHTNESS_RANGE[0],
            value_max=BRIGHTNESS_RANGE[1], description="Brightness of this light",
        ),
        _numeric(
            "color_temp", access=ACCESS_ALL, unit="mired", value_min=low, value_max=high,
            presets=_color_temp_presets(low, high, startup=False),
            description="Color temperature of this light",
        ),
        _numeric(
            "color_temp_startup", access=ACCESS_ALL, unit="mired", value_min=low,
            value_max=high, presets=_color_temp_presets(low, high, startup=True),
            description="Color temperature after cold power on of this light",
        ),
    ]  # fmt: skip
    return Expose(type="light", features=features)


# --- the simulated devices ---------------------------------------------------------------


class DeviceKind(enum.StrEnum):
    """What a simulated Zigbee device is; each maps to one real model."""

    CLIMATE = "climate"  # Aqara WSDCGQ11LM temperature, humidity and pressure sensor
    CONTACT = "contact"  # Aqara MCCGQ11LM door and window sensor
    MOTION = "motion"  # Aqara RTCGQ11LM motion sensor
    BULB = "bulb"  # IKEA LED1545G12 white-spectrum bulb


@dataclass(frozen=True, slots=True)
class ZigbeeDevice:
    """A device joined to the simulated network."""

    ieee: str
    friendly_name: str
    kind: DeviceKind
    description: str = ""

    def __post_init__(self) -> None:
        if not _IEEE_RE.match(self.ieee):
            raise ValueError(f"ieee must be 0x + 16 lowercase hex digits, got {self.ieee!r}")
        name = self.friendly_name
        if not name or name.startswith("/") or name.endswith("/") or any(c in name for c in "+#"):
            raise ValueError(f"invalid friendly_name {name!r}")
        if name == "bridge" or name.startswith("bridge/"):
            raise ValueError("friendly_name 'bridge' is reserved")


def default_devices() -> list[ZigbeeDevice]:
    """A small Chinese household's Zigbee network: one of each kind."""
    return [
        ZigbeeDevice("0x00158d0004a1b2c1", "客厅温湿度", DeviceKind.CLIMATE),
        ZigbeeDevice("0x00158d0004a1b2c2", "入户门", DeviceKind.CONTACT),
        ZigbeeDevice("0x00158d0004a1b2c3", "走廊人体传感器", DeviceKind.MOTION),
        ZigbeeDevice("0x000b57fffe8c4d21", "客厅灯", DeviceKind.BULB),
    ]


@dataclass(frozen=True, slots=True)
class _Model:
    model: str
    vendor: str
    description: str
    model_id: str
    manufacturer: str
    device_type: str
    power_source: str
    software_build_id: str
    date_code: str
    supports_ota: bool
    exposes: tuple[Expose, ...]
    input_clusters: tuple[str, ...]
    output_clusters: tuple[str, ...]


_MODELS: dict[DeviceKind, _Model] = {
    DeviceKind.CLIMATE: _Model(
        model="WSDCGQ11LM", vendor="Aqara", description="Temperature and humidity sensor",
        model_id="lumi.weather", manufacturer="LUMI", device_type="EndDevice",
        power_source="Battery", software_build_id="3000-0001", date_code="20191205",
        supports_ota=False,
        exposes=(
            _battery(),
            _numeric("temperature", unit="°C", description="Measured temperature value"),
            _numeric("humidity", unit="%", description="Measured relative humidity"),
            _numeric("pressure", unit="hPa", description="The measured atmospheric pressure"),
            _battery_voltage(),
            _linkquality(),
        ),
        input_clusters=("genBasic", "genIdentify", "msTemperatureMeasurement",
                        "msPressureMeasurement", "msRelativeHumidity"),
        output_clusters=("genBasic", "genGroups"),
    ),
    DeviceKind.CONTACT: _Model(
        model="MCCGQ11LM", vendor="Aqara", description="Door and window sensor",
        model_id="lumi.sensor_magnet.aq2", manufacturer="LUMI", device_type="EndDevice",
        power_source="Battery", software_build_id="3000-0001", date_code="20161128",
        supports_ota=False,
        exposes=(
            _battery(),
            _binary(
                "contact", value_on=False, value_off=True,
                description="Indicates if the contact is closed (= true) or open (= false)",
            ),
            _device_temperature(),
            _battery_voltage(),
            _power_outage_count(),
            _linkquality(),
        ),
        input_clusters=("genBasic", "genIdentify", "genOnOff"),
        output_clusters=("genBasic", "genGroups", "genOnOff"),
    ),
    DeviceKind.MOTION: _Model(
        model="RTCGQ11LM", vendor="Aqara", description="Motion sensor",
        model_id="lumi.sensor_motion.aq2", manufacturer="LUMI", device_type="EndDevice",
        power_source="Battery", software_build_id="3000-0001", date_code="20170627",
        supports_ota=False,
        exposes=(
            _battery(),
            _binary(
                "occupancy", value_on=True, value_off=False,
                description="Indicates whether the device detected occupancy",
            ),
            _device_temperature(),
            _battery_voltage(),
            _numeric("illuminance", unit="lx", description="Measured illuminance"),
            _power_outage_count(),
            _linkquality(),
        ),
        input_clusters=("genBasic", "msOccupancySensing", "msIlluminanceMeasurement"),
        output_clusters=("genBasic", "genOta"),
    ),
    DeviceKind.BULB: _Model(
        model="LED1545G12", vendor="IKEA",
        description="TRADFRI bulb E26/E27, white spectrum, globe, opal, 980 lm",
        model_id="TRADFRI bulb E27 WS opal 980lm", manufacturer="IKEA of Sweden",
        device_type="Router", power_source="Mains (single phase)",
        software_build_id="2.3.095", date_code="20211214", supports_ota=True,
        exposes=(
            _light(LED1545G12_COLOR_TEMP_RANGE),
            _enum(
                "effect", access=ACCESS_SET,
                values=["blink", "breathe", "okay", "channel_change", "finish_effect",
                        "stop_effect"],
                description="Triggers an effect on the light (e.g. make light blink for a "
                            "few seconds)",
            ),
            _enum(
                "power_on_behavior", access=ACCESS_ALL, values=["off", "on", "toggle", "previous"],
                label="Power-on behavior", category="config",
                description="Controls the behavior when the device is powered on after power "
                            "loss",
            ),
            _linkquality(),
        ),
        input_clusters=("genBasic", "genIdentify", "genGroups", "genScenes", "genOnOff",
                        "genLevelCtrl", "lightingColorCtrl", "touchlink"),
        output_clusters=("genScenes", "genOta"),
    ),
}  # fmt: skip


def _network_address(ieee: str) -> int:
    """A stable 16-bit short address for an IEEE address (never 0, the coordinator's)."""
    return 1 + int(ieee[-4:], 16) * 40503 % 0xFFF6


def _bridge_device(device: ZigbeeDevice) -> BridgeDevice:
    spec = _MODELS[device.kind]
    return BridgeDevice(
        ieee_address=device.ieee,
        type=spec.device_type,
        network_address=_network_address(device.ieee),
        supported=True,
        disabled=False,
        friendly_name=device.friendly_name,
        description=device.description,
        definition=DeviceDefinition(
            model=spec.model,
            vendor=spec.vendor,
            description=spec.description,
            exposes=list(spec.exposes),
            options=[],
            supports_ota=spec.supports_ota,
            source="native",
        ),
        power_source=spec.power_source,
        software_build_id=spec.software_build_id,
        date_code=spec.date_code,
        model_id=spec.model_id,
        manufacturer=spec.manufacturer,
        interview_completed=True,
        interviewing=False,
        interview_state="SUCCESSFUL",
        endpoints={"1": {
            "bindings": [],
            "clusters": {"input": list(spec.input_clusters), "output": list(spec.output_clusters)},
            "configured_reportings": [], "scenes": [],
        }},
    )  # fmt: skip


def _coordinator() -> BridgeDevice:
    return BridgeDevice(
        ieee_address=COORDINATOR_IEEE,
        type="Coordinator",
        network_address=0,
        supported=True,
        disabled=False,
        friendly_name="Coordinator",
        definition=None,
        interview_completed=True,
        interviewing=False,
        interview_state="SUCCESSFUL",
        endpoints={"1": {
            "bindings": [],
            "clusters": {"input": [], "output": []},
            "configured_reportings": [], "scenes": [],
        }},
    )  # fmt: skip


# --- simulated device behaviour ----------------------------------------------------------


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def _battery_percent(voltage_mv: float) -> int:
    """Aqara's voltageToPercentage {min: 2850, max: 3000} (linear, as configured for these)."""
    return round(_clamp((voltage_mv - 2850.0) / 150.0 * 100.0, 0.0, 100.0))


@dataclass(slots=True)
class _Simulated:
    """One device's live state and the logic that moves it."""

    device: ZigbeeDevice
    rng: random.Random
    state: dict[str, Any] = field(default_factory=dict)
    occupied_ticks: int = 0

    @property
    def spec(self) -> _Model:
        return _MODELS[self.device.kind]

    def start(self) -> None:
        rng = self.rng
        lqi = rng.randint(90, 200)
        kind = self.device.kind
        if kind is DeviceKind.BULB:
            self.state = {
                "brightness": 254, "color_mode": "color_temp", "color_temp": 370,
                "linkquality": lqi, "state": "OFF",
            }  # fmt: skip
            return
        voltage = rng.randint(2960, 3045)
        self.state = {
            "battery": _battery_percent(voltage),
            "linkquality": lqi,
            "power_outage_count": rng.randint(3, 60),
            "voltage": voltage,
        }
        if kind is DeviceKind.CLIMATE:
            self.state |= {
                "temperature": round(rng.uniform(20.0, 25.0), 2),
                "humidity": round(rng.uniform(35.0, 60.0), 2),
                "pressure": round(rng.uniform(1008.0, 1020.0), 1),
            }
        elif kind is DeviceKind.CONTACT:
            self.state |= {"contact": True, "device_temperature": rng.randint(18, 27)}
        elif kind is DeviceKind.MOTION:
            self.state |= {
                "occupancy": False,
                "illuminance": rng.randint(5, 300),
                "device_temperature": rng.randint(18, 27),
            }

    def tick(self) -> None:
        """One report interval passes: values drift, doors and people move now and then."""
        rng, state = self.rng, self.state
        state["linkquality"] = int(_clamp(state["linkquality"] + rng.randint(-8, 8), 20, 255))
        kind = self.device.kind
        if kind is DeviceKind.BULB:
            return
        voltage = _clamp(state["voltage"] + rng.gauss(-0.2, 2.0), 2800, 3100)
        state["voltage"] = round(voltage)
        state["battery"] = _battery_percent(voltage)
        if kind is DeviceKind.CLIMATE:
            temperature = state["temperature"] + rng.gauss(0, 0.08)
            state["temperature"] = round(_clamp(temperature, 5, 35), 2)
            state["humidity"] = round(_clamp(state["humidity"] + rng.gauss(0, 0.3), 15, 95), 2)
            state["pressure"] = round(_clamp(state["pressure"] + rng.gauss(0, 0.1), 990, 1040), 1)
        elif kind is DeviceKind.CONTACT:
            if rng.random() < 0.1:
                state["contact"] = not state["contact"]
            state["device_temperature"] = int(
                _clamp(state["device_temperature"] + rng.choice((-1, 0, 0, 0, 1)), 5, 40)
            )
        elif kind is DeviceKind.MOTION:
            if state["occupancy"]:
                self.occupied_ticks += 1
                if self.occupied_ticks >= OCCUPANCY_REPORT_INTERVALS:
                    state["occupancy"] = False
            elif rng.random() < 0.15:
                state["occupancy"] = True
                self.occupied_ticks = 0
                state["illuminance"] = rng.randint(5, 400)


class Zigbee2MqttBridge(MqttFirmware):
    """A Zigbee2MQTT bridge serving `devices` (by default `default_devices()`).

    Device state messages are published retained: Zigbee2MQTT retains them only when a
    device's `retain` option is set, which installations commonly do for battery sensors so
    that a (re)started consumer sees the last reading at once; the gateway must cope with it.
    """

    def __init__(
        self,
        devices: Sequence[ZigbeeDevice] | None = None,
        *,
        base_topic: str = DEFAULT_BASE_TOPIC,
        report_interval_s: float = DEFAULT_REPORT_INTERVAL_S,
        seed: int | None = None,
    ) -> None:
        devices = list(default_devices() if devices is None else devices)
        if not base_topic or any(c in base_topic for c in "+#") or base_topic.endswith("/"):
            raise ValueError(f"invalid base topic {base_topic!r}")
        if report_interval_s <= 0:
            raise ValueError("report_interval_s must be positive")
        names = [d.friendly_name for d in devices]
        if len(set(names)) != len(names) or len({d.ieee for d in devices}) != len(devices):
            raise ValueError("friendly names and IEEE addresses must be unique")
        rng = random.Random(seed)  # simulated readings, not security
        super().__init__(
            name=base_topic,
            client_id=f"mqttjs_{rng.getrandbits(32):08x}",
            keepalive_s=MQTT_KEEPALIVE_S,
            rng=rng,
            logger=_log,
        )
        self._base = base_topic
        self._report_interval_s = report_interval_s
        self._sims = {d.friendly_name: _Simulated(d, random.Random(rng.getrandbits(64))) for d in devices}
        for sim in self._sims.values():
            sim.start()
        # Longest first, so that "客厅/灯/set" finds "客厅/灯" and not a device called "客厅".
        self._names = sorted(self._sims, key=len, reverse=True)
        self._link: Link | None = None

    @property
    def base_topic(self) -> str:
        return self._base

    @property
    def devices(self) -> tuple[ZigbeeDevice, ...]:
        return tuple(sim.device for sim in self._sims.values())

    def device_state(self, friendly_name: str) -> dict[str, Any]:
        """A copy of a device's current state (KeyError for an unknown name)."""
        return dict(self._sims[friendly_name].state)

    async def device_reports(self, friendly_name: str, values: Mapping[str, Any]) -> None:
        """Make a device report `values` (a door opened, someone walked by), as if over the
        air: the state is merged and published if the bridge is connected."""
        sim = self._sims[friendly_name]
        sim.state |= dict(values)
        if self._link is not None:
            try:
                await self._publish_state(self._link, sim)
            except LinkDown:
                self._log.debug("%s: report of %s not sent, link down", self.name, friendly_name)

    def bridge_devices(self) -> list[BridgeDevice]:
        """What the bridge publishes on `bridge/devices`."""
        return [_coordinator()] + [_bridge_device(sim.device) for sim in self._sims.values()]

    # --- MqttFirmware ---------------------------------------------------------------

    def will(self) -> LastWill:
        return LastWill(self._topic("bridge/state"), '{"state":"offline"}', retain=True, qos=1)

    async def announce(self, link: Link) -> None:
        await link.subscribe(f"{self._base}/#")
        await link.publish(self._topic("bridge/state"), '{"state":"online"}', retain=True)
        await link.publish(self._topic("bridge/info"), _dumps(self._bridge_info()), retain=True)
        devices = _DEVICE_LIST.dump_json(self.bridge_devices(), exclude_unset=True)
        await link.publish(self._topic("bridge/devices"), devices.decode(), retain=True)
        await link.publish(self._topic("bridge/groups"), "[]", retain=True)
        await link.publish(self._topic("bridge/extensions"), "[]", retain=True)
        for name, sim in self._sims.items():
            await link.publish(self._topic(f"{name}/availability"), '{"state":"online"}', retain=True)
            # cache_state_send_on_startup: the last known state goes out at start.
            await self._publish_state(link, sim)
        self._link = link

    async def report(self, link: Link) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for name, sim in self._sims.items():
                    if sim.device.kind is not DeviceKind.BULB:
                        tg.create_task(self._report_device(link, sim), name=f"z2m-report-{name}")
        finally:
            self._link = None

    async def farewell(self, link: Link) -> None:
        self._link = None
        await link.publish(self._topic("bridge/state"), '{"state":"offline"}', retain=True, qos=1)

    async def handle(self, link: Link, message: Inbound) -> None:
        topic = message.topic
        if not topic.startswith(self._base + "/"):
            return
        rest = topic[len(self._base) + 1 :]
        if rest.startswith("bridge/request/"):
            await self._bridge_request(link, rest.removeprefix("bridge/request/"), message)
            return
        if rest.startswith("bridge/"):
            return  # our own bridge topics (and responses) come back to us
        target = self._match_command(rest)
        if target is None:
            return  # state and availability topics, ours or another bridge's
        sim, verb, attribute = target
        try:
            text = message.text()
        except UnicodeDecodeError:
            self.complaints.report("utf8", "ignoring non-UTF-8 payload on %s", topic)
            return
        values = self._parse_command(text, attribute)
        if verb == "set":
            await self._set(link, sim, values)
        else:
            await self._get(link, sim, values)

    # --- commands ---------------------------------------------------------------------

    def _match_command(self, rest: str) -> tuple[_Simulated, str, str | None] | None:
        for name in self._names:
            for verb in ("set", "get"):
                head = f"{name}/{verb}"
                if rest == head:
                    return self._sims[name], verb, None
                if verb == "set" and rest.startswith(head + "/") and len(rest) > len(head) + 1:
                    return self._sims[name], verb, rest[len(head) + 1 :]
        unknown = re.match(r"^(.+)/(set|get)(?:/[^/]+)?$", rest)
        if unknown:
            self.complaints.report("entity", "Entity '%s' is unknown", unknown.group(1))
        return None

    def _parse_command(self, text: str, attribute: str | None) -> dict[str, Any]:
        """Zigbee2MQTT's reading of a command: `/set/<attr>` takes the payload as the value;
        otherwise a JSON object, or anything else as `{"state": <payload>}`."""
        if attribute is not None:
            return {attribute: text}
        try:
            return _JSON_OBJECT.validate_json(text)
        except ValidationError:
            return {"state": text}

    async def _set(self, link: Link, sim: _Simulated, values: dict[str, Any]) -> None:
        if sim.device.kind is not DeviceKind.BULB:
            for key, value in values.items():
                await self._converter_missing(link, key, value)
            return
        changed = await self._set_power(link, sim, values)
        for key, value in values.items():
            if key not in ("state", "brightness", "transition"):  # transition: accepted, no-op
                changed = await self._set_attribute(link, sim, key, value) or changed
        if changed:
            self._log.info(
                "%s: %s is now %s",
                self.name,
                sim.device.friendly_name,
                _dumps(sim.state, sort_keys=True),
            )
            await self._publish_state(link, sim)

    async def _set_power(self, link: Link, sim: _Simulated, values: dict[str, Any]) -> bool:
        """`state` and `brightness` together, as light_onoff_brightness reads them."""
        name, state = sim.device.friendly_name, sim.state
        wanted: str | None = None
        if "state" in values:
            raw = values["state"]
            wanted = raw.upper() if isinstance(raw, str) else None
            if wanted not in ("ON", "OFF", "TOGGLE"):
                await self._failed(link, name, "state", f"State value '{raw}' is not valid")
                wanted = None
        level: int | None = None
        if "brightness" in values:
            number = _number(values["brightness"])
            if number is None:
                await self._failed(link, name, "brightness", f"Value '{values['brightness']}' is no number")
            else:
                level = round(_clamp(number, *BRIGHTNESS_RANGE))
        if wanted == "OFF":
            state["state"] = "OFF"  # an explicit OFF wins over a brightness in the same message
        elif level == 0:
            state["state"] = "OFF"
        elif level is not None:
            state["state"], state["brightness"] = "ON", level  # moveToLevelWithOnOff
        elif wanted == "ON":
            state["state"] = "ON"
        elif wanted == "TOGGLE":
            state["state"] = "OFF" if state["state"] == "ON" else "ON"
        else:
            return False
        return True

    async def _set_attribute(self, link: Link, sim: _Simulated, key: str, value: Any) -> bool:
        name, state = sim.device.friendly_name, sim.state
        if key in ("color_temp", "color_temp_startup"):
            mired = _mired(value, startup=key == "color_temp_startup")
            if mired is None:
                await self._failed(link, name, key, f"Value '{value}' is not a color temp")
                return False
            state[key] = mired
            if key == "color_temp":
                state["color_mode"] = "color_temp"
            return True
        if key in ("effect", "power_on_behavior"):
            allowed = _enum_values(sim, key)
            if not isinstance(value, str) or value not in allowed:
                await self._failed(
                    link, name, key,
                    f"Value '{value}' is not allowed, expected one of {', '.join(allowed)}",
                )  # fmt: skip
                return False
            if key == "effect":
                self._log.info("%s: %s shows effect %s", self.name, name, value)
                return False
            state[key] = value
            return True
        await self._converter_missing(link, key, value)
        return False

    async def _get(self, link: Link, sim: _Simulated, values: dict[str, Any]) -> None:
        readable = _readable(sim)
        wanted = False
        for key, value in values.items():
            if key in readable:
                wanted = True
            else:
                await self._converter_missing(link, key, value, verb="get")
        if wanted:
            await self._publish_state(link, sim)

    async def _bridge_request(self, link: Link, request: str, message: Inbound) -> None:
        if request != "health_check":
            self._log.debug("%s: bridge request %r not simulated, ignored", self.name, request)
            return
        response: dict[str, Any] = {"data": {"healthy": True}, "status": "ok"}
        try:
            body = _JSON_OBJECT.validate_json(message.payload) if message.payload else {}
        except ValidationError:
            body = {}
        if "transaction" in body:
            response["transaction"] = body["transaction"]
        await link.publish(self._topic("bridge/response/health_check"), _dumps(response))

    async def _converter_missing(self, link: Link, key: str, value: Any, *, verb: str = "set") -> None:
        shown = f"'{verb}' '{key}'" if verb == "get" else f"'{key}'"
        await self._bridge_error(
            link, f"No converter available for {shown} ({_dumps(value)})", kind=f"conv-{key}"
        )

    async def _failed(self, link: Link, name: str, key: str, reason: str) -> None:
        await self._bridge_error(
            link, f"Publish 'set' '{key}' to '{name}' failed: 'Error: {reason}'", kind=f"bad-{key}"
        )

    async def _bridge_error(self, link: Link, text: str, *, kind: str) -> None:
        """Log a rejected command once and publish it on bridge/logging, as Zigbee2MQTT does."""
        self.complaints.report(kind, "%s", text)
        await link.publish(
            self._topic("bridge/logging"),
            _dumps({"level": "error", "message": text, "namespace": "z2m"}),
        )

    # --- publishing -------------------------------------------------------------------

    async def _report_device(self, link: Link, sim: _Simulated) -> None:
        while True:
            await asyncio.sleep(self._report_interval_s * sim.rng.uniform(0.8, 1.2))
            sim.tick()
            await self._publish_state(link, sim)

    async def _publish_state(self, link: Link, sim: _Simulated) -> None:
        await link.publish(
            self._topic(sim.device.friendly_name), _dumps(sim.state, sort_keys=True), retain=True
        )

    def _bridge_info(self) -> dict[str, Any]:
        return {
            "version": Z2M_VERSION,
            "commit": Z2M_COMMIT,
            "coordinator": {
                "ieee_address": COORDINATOR_IEEE,
                "type": "zStack3x0",
                "meta": {
                    "maintrel": 1, "majorrel": 2, "minorrel": 7, "product": 1,
                    "revision": 20230507, "transportrev": 2,
                },
            },
            "network": {
                "channel": ZIGBEE_CHANNEL, "pan_id": PAN_ID, "extended_pan_id": EXTENDED_PAN_ID,
            },
            "log_level": "info",
            "permit_join": False,
            "restart_required": False,
            "config": {
                "advanced": {
                    "cache_state": True, "cache_state_persistent": True,
                    "cache_state_send_on_startup": True, "channel": ZIGBEE_CHANNEL,
                    "elapsed": False, "last_seen": "disable", "log_level": "info",
                    "output": "json", "pan_id": PAN_ID,
                },
                "availability": {"enabled": True},
                "homeassistant": {"enabled": False},
                "mqtt": {"base_topic": self._base, "force_disable_retain": False,
                         "include_device_information": False},
                "device_options": {"retain": True},
                "devices": {
                    sim.device.ieee: {"friendly_name": name, "retain": True}
                    for name, sim in self._sims.items()
                },
                "groups": {},
            },
        }  # fmt: skip

    def _topic(self, rest: str) -> str:
        return f"{self._base}/{rest}"


_DEVICE_LIST: TypeAdapter[list[BridgeDevice]] = TypeAdapter(list[BridgeDevice])


def _readable(sim: _Simulated) -> set[str]:
    names: set[str] = set()
    for expose in sim.spec.exposes:
        for feature in [expose, *(expose.features or [])]:
            if feature.property and feature.access and feature.access & ACCESS_GET:
                names.add(feature.property)
    return names


def _enum_values(sim: _Simulated, key: str) -> list[str]:
    for expose in sim.spec.exposes:
        if expose.name == key and expose.values:
            return expose.values
    return []


def _number(value: Any) -> float | None:
    """Zigbee2MQTT takes numbers and numeric strings alike."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _mired(value: Any, *, startup: bool) -> int | None:
    low, high = LED1545G12_COLOR_TEMP_RANGE
    if isinstance(value, str):
        for preset in _color_temp_presets(low, high, startup=startup):
            if preset.name == value.lower():
                return int(preset.value)
    number = _number(value)
    if number is None:
        return None
    if startup and int(number) == COLOR_TEMP_STARTUP_PREVIOUS:
        return COLOR_TEMP_STARTUP_PREVIOUS
    return int(_clamp(round(number), low, high))


def _dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact UTF-8 JSON, as JSON.stringify writes it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
