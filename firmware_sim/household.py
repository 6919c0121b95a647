"""A simulated household: every simulated device of one home, run side by side.

Each simulator is an object with `name`, `run(broker_url)` (runs until cancelled) and
`wait_ready()` (returns once it is on the network); `household_simulators()` lists them.
The MQTT devices (a Tasmota plug, a Zigbee2MQTT bridge with four Zigbee devices) connect to
the broker; the LAN devices (2 TVs, 2 speakers, 7 CoAP devices) take their own addresses in
127.0.0.0/8 and announce themselves by multicast, so they run only inside a private network
namespace (`python -m gateway.netns -- firmware-sim household ...`), never on a host interface.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Sequence
from typing import Protocol

from firmware_sim._mqtt import parse_mqtt_url
from firmware_sim.coap import CoapDevice
from firmware_sim.tasmota import DEFAULT_TELE_PERIOD_S, TasmotaPlug
from firmware_sim.terminal import SpeakerSimulator, TvSimulator
from firmware_sim.zigbee2mqtt import Zigbee2MqttBridge, default_devices

__all__ = [
    "LIVING_ROOM_PLUG_MAC",
    "Simulator",
    "household_simulators",
    "lan_simulators",
    "on_private_lan",
    "run_household",
]

_log = logging.getLogger(__name__)

LIVING_ROOM_PLUG_MAC = "A4CF12B3C4D5"


class Simulator(Protocol):
    """What the household needs from a simulated device."""

    @property
    def name(self) -> str: ...

    async def run(self, broker_url: str) -> None: ...

    async def wait_ready(self) -> None: ...


def on_private_lan() -> bool:
    """True inside a private network namespace (only `lo`): multicast stays on this machine."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


class _LanDevice:
    """A LAN simulator (it has no broker) in the household's list."""

    def __init__(self, sim: TvSimulator | SpeakerSimulator | CoapDevice) -> None:
        self.sim = sim

    @property
    def name(self) -> str:
        return self.sim.name

    async def run(self, broker_url: str) -> None:
        await self.sim.run()

    async def wait_ready(self) -> None:
        await self.sim.wait_ready()


def lan_simulators(*, seed: int | None = None, report_interval_s: float = 5.0) -> list[Simulator]:
    """The home's LAN devices: operator TVs and speakers, CoAP sensors, a light and a plug."""
    rng = random.Random(seed)  # simulated readings, not security

    def child_seed() -> int | None:
        return None if seed is None else rng.getrandbits(64)

    sims: list[TvSimulator | SpeakerSimulator | CoapDevice] = [
        TvSimulator(address="127.0.0.31", device_id="tv-5c0a1b2c3d4e", name="客厅电视", seed=child_seed()),
        TvSimulator(
            address="127.0.0.32",
            device_id="tv-5c0a1b2c3d4f",
            name="卧室电视",
            model="BFY-TV55",
            seed=child_seed(),
        ),
        SpeakerSimulator(
            address="127.0.0.33", device_id="speaker-8e2f41a0b7c3", name="客厅音箱", seed=child_seed()
        ),
        SpeakerSimulator(
            address="127.0.0.34", device_id="speaker-8e2f41a0b7c4", name="卧室音箱", seed=child_seed()
        ),
    ]
    coap = [
        ("climate", "127.0.0.21", "BFY-CLM-000001", "卧室温湿度"),
        ("climate", "127.0.0.22", "BFY-CLM-000002", "客厅温湿度"),
        ("smoke", "127.0.0.23", "BFY-SMK-000001", "厨房烟感"),
        ("door", "127.0.0.24", "BFY-DOR-000001", "入户门磁"),
        ("motion", "127.0.0.25", "BFY-MOT-000001", "走廊人体感应"),
        ("light", "127.0.0.26", "BFY-LGT-000001", "卧室灯"),
        ("plug", "127.0.0.27", "BFY-PLG-000001", "卧室插座"),
    ]
    for kind, address, serial, name in coap:
        sims.append(
            CoapDevice(
                kind=kind,  # type: ignore[arg-type]
                address=address,
                serial=serial,
                name=name,
                report_interval_s=report_interval_s,
                seed=child_seed(),
            )
        )
    return [_LanDevice(sim) for sim in sims]


def household_simulators(
    *, seed: int | None = None, tele_period_s: float = DEFAULT_TELE_PERIOD_S, lan: bool = False
) -> list[Simulator]:
    """The household's devices. `tele_period_s` is its one reporting period: the plug's
    TelePeriod and the Zigbee sensors' report interval. A seed makes the run repeatable."""
    rng = random.Random(seed)  # simulated readings, not security

    def child_seed() -> int | None:
        return None if seed is None else rng.getrandbits(64)

    return [
        TasmotaPlug(
            mac=LIVING_ROOM_PLUG_MAC,
            device_name="客厅插座",
            friendly_name="客厅插座",
            model="Sonoff S31",
            tele_period_s=tele_period_s,
            seed=child_seed(),
        ),
        Zigbee2MqttBridge(default_devices(), report_interval_s=tele_period_s, seed=child_seed()),
        *(lan_simulators(seed=child_seed(), report_interval_s=tele_period_s) if lan else []),
    ]


async def run_household(
    *,
    mqtt_url: str,
    seed: int | None = None,
    tele_period_s: float = DEFAULT_TELE_PERIOD_S,
    lan: bool | None = None,
) -> None:
    """Run the whole household until cancelled; MQTT devices connect to `mqtt_url`.

    `lan=None` runs the LAN devices when inside a private network namespace and says so
    when not; `lan=True` outside one is refused."""
    parse_mqtt_url(mqtt_url)  # a bad URL fails here, not in every simulator
    if lan is None:
        lan = on_private_lan()
        if not lan:
            _log.warning(
                "not in a private network namespace: running the MQTT devices only "
                "(for TVs, speakers and CoAP devices: python -m gateway.netns -- firmware-sim household ...)"
            )
    elif lan and not on_private_lan():
        raise ValueError("LAN devices multicast; run them inside a private network namespace (gateway.netns)")
    simulators = household_simulators(seed=seed, tele_period_s=tele_period_s, lan=lan)
    async with asyncio.TaskGroup() as tg:
        for simulator in simulators:
            tg.create_task(simulator.run(mqtt_url), name=f"household-{simulator.name}")
        tg.create_task(_log_when_ready(simulators, mqtt_url), name="household-ready")


async def _log_when_ready(simulators: Sequence[Simulator], mqtt_url: str) -> None:
    for simulator in simulators:
        await simulator.wait_ready()
    _log.info(
        "household ready: %d simulators on %s: %s",
        len(simulators),
        parse_mqtt_url(mqtt_url),
        ", ".join(s.name for s in simulators),
    )
