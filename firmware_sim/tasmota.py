"""A Tasmota-compatible smart plug with energy monitoring (Tasmota 14, default FullTopic).

Topics follow FullTopic `%prefix%/%topic%/` with prefixes `cmnd`/`stat`/`tele`, SetOption4 0
(command results on `stat/<topic>/RESULT`, relay state also as plain text on
`stat/<topic>/POWER`) and Tasmota's own discovery (`tasmota/discovery/<MAC>/config` and
`.../sensors`, retained), which is what Home Assistant's Tasmota integration reads. Telemetry
(`tele/<topic>/STATE`, `tele/<topic>/SENSOR`) and command results are not retained; the LWT
and the discovery topics are, as on the real firmware with default settings.

Numbers are printed the way Tasmota prints them (fixed decimals: `"Total":1.234`,
`"Factor":0.97`, `"Current":0.270`), so byte-level consumers see what they would see from a
real plug. Energy counters integrate the simulated load over real elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from firmware_sim._mqtt import Inbound, LastWill, Link, LinkDown, MqttFirmware

__all__ = [
    "DEFAULT_POWER_W",
    "DEFAULT_TELE_PERIOD_S",
    "TASMOTA_VERSION",
    "TasmotaDiscoveryConfig",
    "TasmotaEnergy",
    "TasmotaPlug",
    "TasmotaSensor",
]

_log = logging.getLogger(__name__)

TASMOTA_VERSION = "14.2.0"
DEFAULT_TELE_PERIOD_S = 10.0  # the firmware's own default is 300 s (FIRMWARE_TELE_PERIOD_S)
FIRMWARE_TELE_PERIOD_S = 300
TELE_PERIOD_MIN_S = 10  # TelePeriod 2..9 is raised to 10, >3600 is refused
TELE_PERIOD_MAX_S = 3600
DEFAULT_POWER_W = 60.0
DEFAULT_MODEL = "Sonoff S31"
MQTT_KEEPALIVE_S = 30  # MqttKeepAlive default
GROUP_TOPIC = "tasmotas"  # GroupTopic1 default
LWT_ONLINE = "Online"
LWT_OFFLINE = "Offline"
FULL_TOPIC = "%prefix%/%topic%/"
DISCOVERY_PREFIX = "tasmota/discovery"
MAX_FRIENDLY_NAMES = 8  # MAX_FRIENDLYNAMES, MAX_RELAYS, MAX_SWITCHES and MAX_KEYS are all 8

_MAC_RE = re.compile(r"^[0-9A-F]{12}$")
_COMMAND_RE = re.compile(r"^([A-Za-z_]+?)(\d*)$")
_STATE_TEXT = ("OFF", "ON", "TOGGLE", "HOLD")  # StateText1..4 defaults
# The SetOptions discovery reports (all off by default): 4 results on RESULT, 11 button swap,
# 13 single press, 17 decimal colours, 20 dimmer without power, 30 as light, 68 multi PWM,
# 73 button discovery, 82 Alexa CT range, 114 switch discovery, 117 fixed fade duration.
_DISCOVERY_SETOPTIONS = ("4", "11", "13", "17", "20", "30", "68", "73", "82", "114", "117")
_MAINS_V = (220.0, 230.0)  # China mains, 220 V nominal, measured a little high in the evening


class TasmotaDiscoveryConfig(BaseModel):
    """`tasmota/discovery/<MAC>/config`, key for key (xdrv_12_discovery.ino, ver 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    ip: str
    dn: str
    fn: list[str | None]
    hn: str
    mac: str
    md: str
    ty: int
    if_: int = Field(alias="if")
    ofln: str
    onln: str
    state: list[str]
    sw: str
    t: str
    ft: str
    tp: list[str]
    rl: list[int]
    swc: list[int]
    swn: list[str | None]
    btn: list[int]
    so: dict[str, int]
    lk: int
    lt_st: int
    bat: int
    dslp: int
    sho: list[int]
    sht: list[Any]
    ver: int


class TasmotaEnergy(BaseModel):
    """The `ENERGY` object of `tele/<topic>/SENSOR` for a single-phase plug."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    TotalStartTime: str
    Total: float
    Yesterday: float
    Today: float
    Period: float | None = None  # in telemetry, absent from STATUS 10 on older releases
    Power: float
    ApparentPower: float
    ReactivePower: float
    Factor: float
    Voltage: float
    Current: float


class TasmotaSensor(BaseModel):
    """`tele/<topic>/SENSOR` of an energy-monitoring plug."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    Time: str
    ENERGY: TasmotaEnergy


@dataclass(frozen=True, slots=True)
class _Reading:
    power_w: float
    apparent_va: float
    reactive_var: float
    factor: float
    voltage_v: float
    current_a: float
    total_kwh: float
    yesterday_kwh: float
    today_kwh: float
    period_wh: float


class _EnergyMeter:
    """A CSE7766-like meter: instantaneous values that wander, counters that integrate the
    load over elapsed (monotonic) time, and a day roll-over at local midnight."""

    def __init__(self, rng: random.Random, nominal_w: float, now_s: float) -> None:
        self._rng = rng
        self._nominal_w = max(0.0, nominal_w)
        self._voltage_v = rng.uniform(223.0, 228.0)
        self._factor = rng.uniform(0.95, 0.99) if nominal_w > 0 else 0.0
        self._power_w = 0.0
        self._total_kwh = round(rng.uniform(5.0, 60.0), 3)
        self._yesterday_kwh = round(rng.uniform(0.2, 1.5), 3)
        self._today_kwh = round(rng.uniform(0.0, 0.3), 3)
        self._period_wh = 0.0
        self._last_s = now_s
        self._day = date.today()

    @property
    def total_kwh(self) -> float:
        return self._total_kwh

    def advance(self, *, on: bool, now_s: float) -> None:
        """Integrate the load held since the last call, then take a new instantaneous sample."""
        elapsed_s = max(0.0, now_s - self._last_s)
        self._last_s = now_s
        used_kwh = self._power_w * elapsed_s / 3_600_000.0
        today = date.today()
        if today != self._day:
            self._day = today
            self._yesterday_kwh, self._today_kwh = self._today_kwh, 0.0
        self._total_kwh += used_kwh
        self._today_kwh += used_kwh
        self._period_wh += used_kwh * 1000.0
        rng = self._rng
        low, high = _MAINS_V
        self._voltage_v = min(high, max(low, self._voltage_v + rng.gauss(0.0, 0.4)))
        if on and self._nominal_w > 0:
            self._power_w = max(0.0, self._nominal_w * (1.0 + rng.gauss(0.0, 0.015)))
            self._factor = min(0.99, max(0.90, self._factor + rng.gauss(0.0, 0.004)))
        else:
            self._power_w = 0.0

    def reading(self, *, on: bool) -> _Reading:
        loaded = on and self._power_w > 0
        power = self._power_w if loaded else 0.0
        factor = self._factor if loaded else 0.0
        apparent = power / factor if loaded else 0.0
        return _Reading(
            power_w=power,
            apparent_va=apparent,
            reactive_var=math.sqrt(max(0.0, apparent**2 - power**2)),
            factor=factor,
            voltage_v=self._voltage_v,
            current_a=apparent / self._voltage_v if loaded else 0.0,
            total_kwh=self._total_kwh,
            yesterday_kwh=self._yesterday_kwh,
            today_kwh=self._today_kwh,
            period_wh=self._period_wh,
        )

    def end_period(self) -> None:
        self._period_wh = 0.0


class TasmotaPlug(MqttFirmware):
    """A single-relay Tasmota plug with an energy monitor, e.g. a Sonoff S31.

    `run(broker_url)` keeps it on the broker until cancelled. Observe it over MQTT like any
    other client would; `power_on` and `energy_total_kwh` are there for assertions.
    """

    def __init__(
        self,
        *,
        mac: str,
        topic: str | None = None,
        device_name: str = "Tasmota",
        friendly_name: str = "Tasmota",
        model: str = DEFAULT_MODEL,
        ip: str | None = None,
        tele_period_s: float = DEFAULT_TELE_PERIOD_S,
        power_w: float = DEFAULT_POWER_W,
        power_on: bool = True,
        seed: int | None = None,
    ) -> None:
        mac = mac.replace(":", "").replace("-", "").upper()
        if not _MAC_RE.match(mac):
            raise ValueError(f"mac must be 12 hex digits, got {mac!r}")
        if tele_period_s <= 0:
            raise ValueError("tele_period_s must be positive (TelePeriod 0 is a command)")
        chip = mac[-6:]
        self._mac = mac
        self._topic = topic or f"tasmota_{chip}"
        if not self._topic or any(c in self._topic for c in "/+#"):
            raise ValueError(f"invalid Tasmota topic {self._topic!r}")
        rng = random.Random(seed)  # simulated readings, not security
        super().__init__(
            name=self._topic,
            client_id=f"DVES_{chip}",
            keepalive_s=MQTT_KEEPALIVE_S,
            rng=rng,
            logger=_log,
        )
        self._fallback_topic = f"DVES_{chip}_fb"
        self._device_name = device_name
        self._friendly_name = friendly_name
        self._model = model
        # Tasmota's default hostname is "%s-%04d": the topic (underscores made dashes)
        # and the chip id's low 13 bits.
        self._hostname = f"{self._topic.replace('_', '-')}-{int(mac[-4:], 16) & 0x1FFF:04d}"
        self._ip = ip or f"192.168.1.{100 + int(mac[-2:], 16) % 150}"
        self._tele_period_s = tele_period_s
        self._power_on = power_on
        self._boot_at: float | None = None
        self._meter: _EnergyMeter | None = None
        self._nominal_w = power_w
        self._total_start = datetime(date.today().year, 1, 1).isoformat(timespec="seconds")
        self._boot_count = rng.randint(3, 40)
        self._heap_kb = rng.randint(24, 27)
        self._bssid = ":".join(f"{rng.randrange(256):02X}" for _ in range(6))
        self._wifi_channel = rng.choice((1, 6, 11))
        self._signal_dbm = rng.uniform(-68.0, -52.0)
        self._tele_wakeup = asyncio.Event()
        self._link: Link | None = None

    # --- what tests and the household see ----------------------------------------------

    @property
    def mac(self) -> str:
        return self._mac

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def power_on(self) -> bool:
        return self._power_on

    @property
    def tele_period_s(self) -> float:
        return self._tele_period_s

    @property
    def energy_total_kwh(self) -> float:
        return self._energy().total_kwh

    async def press_button(self) -> None:
        """The physical button: toggle the relay and report it like the firmware does (if
        offline, the next telemetry after reconnecting carries the new state)."""
        self._switch(not self._power_on)
        self._log.info("%s: button pressed, relay %s", self.name, self._power_text())
        if self._link is not None:
            with contextlib.suppress(LinkDown):
                await self._publish_power_state(self._link)

    # --- MqttFirmware ---------------------------------------------------------------

    def will(self) -> LastWill:
        return LastWill(self._tele("LWT"), LWT_OFFLINE, retain=True, qos=1)

    async def announce(self, link: Link) -> None:
        if self._boot_at is None:
            self._boot_at = self._loop_time()  # "boots" when it first reaches the broker
            self._energy()
        # Subscribing before "Online" means a client that waits for Online can command at once.
        await link.subscribe(
            f"cmnd/{self._topic}/#", f"cmnd/{GROUP_TOPIC}/#", f"cmnd/{self._fallback_topic}/#"
        )
        await link.publish(self._tele("LWT"), LWT_ONLINE, retain=True)
        if self.connections == 0:
            await self._publish_info(link)
        await link.publish(
            f"{DISCOVERY_PREFIX}/{self._mac}/config",
            self.discovery_config().model_dump_json(by_alias=True),
            retain=True,
        )
        await link.publish(
            f"{DISCOVERY_PREFIX}/{self._mac}/sensors",
            f'{{"sn":{self._sensor_json()},"ver":1}}',
            retain=True,
        )
        await self._publish_telemetry(link)
        self._link = link

    async def report(self, link: Link) -> None:
        try:
            while True:
                try:
                    # TelePeriod 0 turns telemetry off: then only a new TelePeriod wakes us.
                    async with asyncio.timeout(self._tele_period_s or None):
                        await self._tele_wakeup.wait()
                except TimeoutError:
                    pass
                self._tele_wakeup.clear()
                await self._publish_telemetry(link)
        finally:
            self._link = None

    async def farewell(self, link: Link) -> None:
        self._link = None
        await link.publish(self._tele("LWT"), LWT_OFFLINE, retain=True, qos=1)

    async def handle(self, link: Link, message: Inbound) -> None:
        command = self._command_part(message.topic)
        if command is None:
            return
        try:
            payload = message.text()
        except UnicodeDecodeError:
            self.complaints.report("utf8", "ignoring non-UTF-8 payload on %s", message.topic)
            return
        if not command:
            # `cmnd/<topic>` (no command level) carries "Command payload" in the payload.
            command, _, payload = payload.strip().partition(" ")
        await self._execute(link, command, payload.strip())

    # --- commands ---------------------------------------------------------------------

    def _command_part(self, topic: str) -> str | None:
        for target in (self._topic, GROUP_TOPIC, self._fallback_topic):
            prefix = f"cmnd/{target}"
            if topic == prefix or topic == prefix + "/":
                return ""
            if topic.startswith(prefix + "/"):
                rest = topic[len(prefix) + 1 :]
                return None if "/" in rest else rest
        return None

    async def _execute(self, link: Link, command: str, payload: str) -> None:
        match = _COMMAND_RE.match(command)
        name = match.group(1).upper() if match else ""
        index = int(match.group(2)) if match and match.group(2) else None
        if name == "BACKLOG" and index in (None, 0):
            for part in payload.split(";"):
                sub, _, arg = part.strip().partition(" ")
                if sub:
                    await self._execute(link, sub, arg.strip())
            return
        if name == "POWER" and index in (None, 0, 1):
            await self._cmnd_power(link, payload)
        elif name == "STATUS" and index is None:
            await self._cmnd_status(link, payload)
        elif name == "TELEPERIOD" and index is None:
            await self._cmnd_teleperiod(link, payload)
        elif name == "STATE" and index is None:
            await link.publish(self._stat("RESULT"), self._state_json())
        else:
            self._log.debug("%s: unknown command %r", self.name, command)
            await link.publish(self._stat("RESULT"), '{"Command":"Unknown"}')

    async def _cmnd_power(self, link: Link, payload: str) -> None:
        wanted = payload.lower()
        before = self._power_on
        if wanted in ("1", "on", "true"):
            self._switch(True)
        elif wanted in ("0", "off", "false"):
            self._switch(False)
        elif wanted in ("2", "toggle"):
            self._switch(not self._power_on)
        elif wanted:
            # Tasmota treats a payload it cannot read as a query.
            self.complaints.report("power", "POWER payload %r is not ON/OFF/TOGGLE", payload)
        self._log.log(
            logging.INFO if self._power_on != before else logging.DEBUG,
            "%s: relay %s",
            self.name,
            self._power_text(),
        )
        await self._publish_power_state(link)

    async def _cmnd_status(self, link: Link, payload: str) -> None:
        if payload == "10":
            await link.publish(self._stat("STATUS10"), f'{{"StatusSNS":{self._sensor_json()}}}')
        elif payload == "11":
            await link.publish(self._stat("STATUS11"), f'{{"StatusSTS":{self._state_json()}}}')
        else:
            # Status, Status 0 and the other indexes all answer with the basic Status block
            # here; the real firmware has one more topic per index for Status 0.
            await link.publish(self._stat("STATUS"), self._status_json())

    async def _cmnd_teleperiod(self, link: Link, payload: str) -> None:
        if payload:
            try:
                value = int(payload)
            except ValueError:
                self.complaints.report("teleperiod", "TelePeriod payload %r is no number", payload)
                value = -1
            if 0 <= value <= TELE_PERIOD_MAX_S:
                if value == 1:
                    value = FIRMWARE_TELE_PERIOD_S
                elif 0 < value < TELE_PERIOD_MIN_S:
                    value = TELE_PERIOD_MIN_S
                self._tele_period_s = float(value)
                self._tele_wakeup.set()  # the firmware reports right after a change
                self._log.info("%s: TelePeriod %d", self.name, value)
        period = self._tele_period_s
        # Only the constructor can set sub-second periods (test speed-up); show those as is.
        shown = int(period) if period == int(period) else period
        await link.publish(self._stat("RESULT"), _dumps({"TelePeriod": shown}))

    # --- payloads ---------------------------------------------------------------------

    def discovery_config(self) -> TasmotaDiscoveryConfig:
        """What this plug publishes on `tasmota/discovery/<MAC>/config`."""
        names: list[str | None] = [self._friendly_name] + [None] * (MAX_FRIENDLY_NAMES - 1)
        return TasmotaDiscoveryConfig(
            ip=self._ip,
            dn=self._device_name,
            fn=names,
            hn=self._hostname,
            mac=self._mac,
            md=self._model,
            ty=0,
            if_=0,
            ofln=LWT_OFFLINE,
            onln=LWT_ONLINE,
            state=list(_STATE_TEXT),
            sw=TASMOTA_VERSION,
            t=self._topic,
            ft=FULL_TOPIC,
            tp=["cmnd", "stat", "tele"],
            rl=[1] + [0] * 7,
            swc=[-1] * 8,
            swn=[None] * 8,
            btn=[0] * 8,
            so=dict.fromkeys(_DISCOVERY_SETOPTIONS, 0),
            lk=0,
            lt_st=0,
            bat=0,
            dslp=0,
            sho=[],
            sht=[],
            ver=1,
        )

    async def _publish_info(self, link: Link) -> None:
        """INFO1..3, which the firmware sends once after boot (not after reconnects)."""
        info = (
            {"Info1": {
                "Module": self._model,
                "Version": f"{TASMOTA_VERSION}(release-tasmota)",
                "FallbackTopic": f"cmnd/{self._fallback_topic}/",
                "GroupTopic": f"cmnd/{GROUP_TOPIC}/",
            }},
            {"Info2": {
                "WebServerMode": "Admin", "Hostname": self._hostname, "IPAddress": self._ip,
            }},
            {"Info3": {"RestartReason": "Software/System restart", "BootCount": self._boot_count}},
        )  # fmt: skip
        for n, body in enumerate(info, start=1):
            await link.publish(self._tele(f"INFO{n}"), _dumps(body))

    async def _publish_telemetry(self, link: Link) -> None:
        await link.publish(self._tele("STATE"), self._state_json())
        await link.publish(self._tele("SENSOR"), self._sensor_json())
        self._energy().end_period()

    async def _publish_power_state(self, link: Link) -> None:
        state = self._power_text()
        await link.publish(self._stat("RESULT"), _dumps({"POWER": state}))
        await link.publish(self._stat("POWER"), state)

    def _state_json(self) -> str:
        uptime_s = int(self._loop_time() - (self._boot_at or self._loop_time()))
        rng = self._rng
        self._signal_dbm = min(-40.0, max(-85.0, self._signal_dbm + rng.gauss(0.0, 1.0)))
        dbm = round(self._signal_dbm)
        return _dumps({
            "Time": _now(),
            "Uptime": _uptime(uptime_s),
            "UptimeSec": uptime_s,
            "Heap": self._heap_kb + rng.randint(-1, 1),
            "SleepMode": "Dynamic",
            "Sleep": 50,
            "LoadAvg": rng.randint(17, 22),
            "MqttCount": max(1, self.connections + (0 if self.connected else 1)),
            "POWER": self._power_text(),
            "Wifi": {
                "AP": 1,
                "SSId": "home",
                "BSSId": self._bssid,
                "Channel": self._wifi_channel,
                "Mode": "11n",
                "RSSI": min(100, max(0, 2 * (dbm + 100))),  # WifiGetRssiAsQuality
                "Signal": dbm,
                "LinkCount": 1,
                "Downtime": "0T00:00:03",
            },
        })  # fmt: skip

    def _sensor_json(self) -> str:
        meter = self._energy()
        meter.advance(on=self._power_on, now_s=self._loop_time())
        r = meter.reading(on=self._power_on)
        energy = (
            f'{{"TotalStartTime":"{self._total_start}",'
            f'"Total":{r.total_kwh:.3f},"Yesterday":{r.yesterday_kwh:.3f},'
            f'"Today":{r.today_kwh:.3f},"Period":{r.period_wh:.0f},'
            f'"Power":{r.power_w:.0f},"ApparentPower":{r.apparent_va:.0f},'
            f'"ReactivePower":{r.reactive_var:.0f},"Factor":{r.factor:.2f},'
            f'"Voltage":{r.voltage_v:.0f},"Current":{r.current_a:.3f}}}'
        )
        return f'{{"Time":"{_now()}","ENERGY":{energy}}}'

    def _status_json(self) -> str:
        return _dumps({"Status": {
            "Module": 41 if self._model == DEFAULT_MODEL else 0,
            "DeviceName": self._device_name,
            "FriendlyName": [self._friendly_name],
            "Topic": self._topic,
            "ButtonTopic": "0",
            "Power": "1" if self._power_on else "0",
            "PowerLock": "0",
            "PowerOnState": 3,
            "LedState": 1,
            "LedMask": "FFFF",
            "SaveData": 1,
            "SaveState": 1,
            "SwitchTopic": "0",
            "SwitchMode": [0] * 8,
            "ButtonRetain": 0,
            "SwitchRetain": 0,
            "SensorRetain": 0,
            "PowerRetain": 0,
            "InfoRetain": 0,
            "StateRetain": 0,
            "StatusRetain": 0,
        }})  # fmt: skip

    # --- helpers ----------------------------------------------------------------------

    def _switch(self, on: bool) -> None:
        meter = self._energy()
        meter.advance(on=self._power_on, now_s=self._loop_time())  # bill the old load first
        self._power_on = on
        meter.advance(on=on, now_s=self._loop_time())

    def _energy(self) -> _EnergyMeter:
        if self._meter is None:
            self._meter = _EnergyMeter(self._rng, self._nominal_w, self._loop_time())
        return self._meter

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _power_text(self) -> str:
        return _STATE_TEXT[1] if self._power_on else _STATE_TEXT[0]

    def _tele(self, what: str) -> str:
        return f"tele/{self._topic}/{what}"

    def _stat(self, what: str) -> str:
        return f"stat/{self._topic}/{what}"


def _dumps(value: Any) -> str:
    """Compact UTF-8 JSON, as the firmware writes it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _now() -> str:
    """Tasmota's `Time`: local time, seconds, no zone."""
    return datetime.now().isoformat(timespec="seconds")


def _uptime(seconds: int) -> str:
    days, rest = divmod(max(0, seconds), 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    return f"{days}T{hours:02d}:{minutes:02d}:{secs:02d}"
