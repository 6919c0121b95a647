"""A simulated household: every simulated device of one home, run side by side.

Each simulator is an object with `name`, `run(broker_url)` (runs until cancelled) and
`wait_ready()` (returns once it is on the network); `household_simulators()` lists them, so
adding a device family (TVs, speakers, CoAP sensors) is one more entry in that list.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Protocol

from firmware_sim._mqtt import parse_mqtt_url
from firmware_sim.tasmota import DEFAULT_TELE_PERIOD_S, TasmotaPlug
from firmware_sim.zigbee2mqtt import Zigbee2MqttBridge, default_devices

__all__ = ["LIVING_ROOM_PLUG_MAC", "Simulator", "household_simulators", "run_household"]

_log = logging.getLogger(__name__)

LIVING_ROOM_PLUG_MAC = "A4CF12B3C4D5"


class Simulator(Protocol):
    """What the household needs from a simulated device."""

    @property
    def name(self) -> str: ...

    async def run(self, broker_url: str) -> None: ...

    async def wait_ready(self) -> None: ...


def household_simulators(
    *, seed: int | None = None, tele_period_s: float = DEFAULT_TELE_PERIOD_S
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
    ]


async def run_household(
    *, mqtt_url: str, seed: int | None = None, tele_period_s: float = DEFAULT_TELE_PERIOD_S
) -> None:
    """Run the whole household until cancelled; MQTT devices connect to `mqtt_url`."""
    parse_mqtt_url(mqtt_url)  # a bad URL fails here, not in every simulator
    simulators = household_simulators(seed=seed, tele_period_s=tele_period_s)
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
