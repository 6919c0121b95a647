"""The gateway against the simulated household on a real Mosquitto: Contract 1 end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_sim.household import run_household
from gateway.broker import PrivateBroker
from gateway.config import Settings, load_settings
from gateway.daemon import Gateway
from tests.helpers import Topics, Watcher, mosquitto_pub

GW = "t1"
PLUG = "tasmota-a4cf12b3c4d5"
PLUG_TOPIC = "tasmota_B3C4D5"
CLIMATE = "zigbee-00158d0004a1b2c1"
DOOR = "zigbee-00158d0004a1b2c2"
MOTION = "zigbee-00158d0004a1b2c3"
BULB = "zigbee-000b57fffe8c4d21"
ALL = {PLUG: "plug", CLIMATE: "sensor", DOOR: "sensor", MOTION: "sensor", BULB: "light"}


def settings(tmp: Path, broker: PrivateBroker) -> Settings:
    return load_settings(
        overrides={
            "id": GW,
            "state_dir": str(tmp / "state"),
            "mqtt.url": broker.url,
            "http.listen": "127.0.0.1:0",
            "registry.flush_interval_s": 0.2,
            "discovery.mdns": False,
            "discovery.coap": False,
        },
        environ={},
    )


@dataclass
class Home:
    broker: PrivateBroker
    gateway: Gateway
    topics: Topics  # home/t1/#, homeassistant/#, device-side topics

    def t(self, device: str, leaf: str) -> str:
        return f"home/{GW}/device/{device}/{leaf}"

    async def all_devices_up(self, timeout: float = 10) -> None:
        def up() -> bool:
            return all(
                self.topics.retained.get(self.t(d, "availability")) == b"online"
                and self.topics.retained.get(self.t(d, "state"))
                and self.topics.retained.get(self.t(d, "info"))
                for d in ALL
            )

        await self.topics.wait(up, timeout, "every device's info, state and availability")


@pytest.fixture
async def home(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[Home]:
    gateway = Gateway(settings(tmp_path, broker))
    watcher = Watcher(broker, f"home/{GW}/#", "homeassistant/#", "stat/#", "zigbee2mqtt/#")
    async with watcher as topics, asyncio.TaskGroup() as tg:
        sims = tg.create_task(
            run_household(mqtt_url=broker.url, seed=7, tele_period_s=0.5, lan=False), name="household"
        )
        gw = tg.create_task(gateway.run(), name="gateway")
        async with asyncio.timeout(10):
            await gateway.ready.wait()
        h = Home(broker, gateway, topics)
        await h.all_devices_up()
        yield h
        gateway.stop()
        await gw
        sims.cancel()


async def test_every_device_is_published_with_info_state_and_availability(home: Home) -> None:
    assert home.topics.retained[f"home/{GW}/status"] == b"online"
    for device, kind in ALL.items():
        info = home.topics.json(home.t(device, "info"))
        assert info["id"] == device
        assert info["kind"] == kind
        assert set(info) >= {"id", "name", "kind", "room", "protocol", "model", "manufacturer", "address",
                             "capabilities", "controllable"}  # fmt: skip
        state = home.topics.json(home.t(device, "state"))
        assert state["ts"].endswith("Z")
        assert set(state) - {"ts"} <= set(info["capabilities"])
    climate = home.topics.json(home.t(CLIMATE, "state"))
    assert isinstance(climate["temperature"], float | int) and 0 <= climate["humidity"] <= 100
    assert home.topics.json(home.t(BULB, "info"))["settable"] == ["on", "brightness", "color_temp"]
    plug = home.topics.json(home.t(PLUG, "info"))
    assert plug["name"] == "客厅插座" and {"on", "power", "energy"} <= set(plug["capabilities"])


async def test_plug_switches_off_through_the_gateway_topic(home: Home) -> None:
    mosquitto_pub(home.broker, home.t(PLUG, "set"), '{"on": false}')
    await home.topics.wait(
        lambda: home.topics.retained.get(f"stat/{PLUG_TOPIC}/POWER") == b"OFF", what="plug OFF"
    )
    await home.topics.wait(
        lambda: home.topics.json(home.t(PLUG, "state")).get("on") is False, what="state on=false"
    )
    # Energy readings keep coming and power follows the relay.
    await home.topics.wait(lambda: home.topics.json(home.t(PLUG, "state")).get("power") == 0, what="power 0")
    mosquitto_pub(home.broker, home.t(PLUG, "set"), '{"on": true}')
    await home.topics.wait(lambda: home.topics.json(home.t(PLUG, "state")).get("on") is True, what="on again")


async def test_bulb_brightness_reaches_the_zigbee_bridge(home: Home) -> None:
    mosquitto_pub(home.broker, home.t(BULB, "set"), '{"on": true, "brightness": 30, "color_temp": 2700}')

    def bridge_state() -> dict[str, object]:
        raw = home.topics.retained.get("zigbee2mqtt/客厅灯")
        return json.loads(raw) if raw else {}

    await home.topics.wait(lambda: bridge_state().get("brightness") == 76, what="bridge brightness 76/254")
    assert bridge_state()["state"] == "ON"
    assert bridge_state()["color_temp"] == 370  # 1e6 / 2700 K, in mired
    await home.topics.wait(
        lambda: home.topics.json(home.t(BULB, "state")).get("brightness") == 30, what="30 %"
    )
    assert home.topics.json(home.t(BULB, "state"))["color_temp"] == 2703  # back from 370 mired


@pytest.mark.parametrize(
    ("device", "payload", "reason"),
    [
        (BULB, '{"brightness": 150}', "out_of_range"),
        (BULB, '{"brightness": "high"}', "wrong_type"),
        (BULB, '{"sparkle": true}', "unknown_capability"),
        (CLIMATE, '{"temperature": 20}', "read_only"),
        (PLUG, "{not json", "invalid_json"),
        ("no-such-device", '{"on": true}', "unknown_device"),
    ],
)
async def test_bad_commands_are_refused_on_event_error(
    home: Home, device: str, payload: str, reason: str
) -> None:
    mosquitto_pub(home.broker, home.t(device, "set"), payload)
    msg = await home.topics.wait_message(
        lambda m: m.topic == f"home/{GW}/event/error" and json.loads(m.payload)["reason"] == reason,
        what=reason,
    )
    error = json.loads(msg.payload)
    assert error["device"] == device and error["detail"]
    # Nothing crashed: a good command still works.
    mosquitto_pub(home.broker, home.t(PLUG, "set"), '{"on": false}')
    await home.topics.wait(
        lambda: home.topics.json(home.t(PLUG, "state")).get("on") is False, what="still working"
    )


def plug_state_is(topics: Topics, state_topic: str) -> Callable[[bool], Callable[[], bool]]:
    return lambda on: lambda: topics.json(state_topic).get("on") is on


async def test_a_retained_command_never_runs_again(broker: PrivateBroker, tmp_path: Path) -> None:
    """A client that wrongly retains a `set` gets it run once; it does not replay on reconnect."""
    async with (
        Watcher(broker, f"home/{GW}/#", f"stat/{PLUG_TOPIC}/#") as topics,
        asyncio.TaskGroup() as tg,
    ):
        sims = tg.create_task(run_household(mqtt_url=broker.url, seed=7, tele_period_s=0.5, lan=False))
        for round_ in range(2):
            gateway = Gateway(settings(tmp_path, broker))
            run = tg.create_task(gateway.run())
            async with asyncio.timeout(10):
                await gateway.ready.wait()
            h = Home(broker, gateway, topics)
            await h.all_devices_up()
            plug_is = plug_state_is(topics, h.t(PLUG, "state"))
            if round_ == 0:
                mosquitto_pub(broker, h.t(PLUG, "set"), '{"on": false}', retain=True)
                await topics.wait(plug_is(False), what="ran once")
                mosquitto_pub(broker, h.t(PLUG, "set"), '{"on": true}')
                await topics.wait(plug_is(True), what="on again")
            else:
                await topics.wait_message(
                    lambda m: (
                        m.topic.endswith("event/error")
                        and json.loads(m.payload)["reason"] == "retained_command"
                    ),
                    what="retained command refused after reconnect",
                )
                assert topics.json(h.t(PLUG, "state")).get("on") is True
            gateway.stop()
            await run
        mosquitto_pub(broker, f"home/{GW}/device/{PLUG}/set", "", retain=True)
        sims.cancel()


async def test_home_assistant_sees_a_valid_config_per_device(home: Home) -> None:
    def configs() -> dict[str, dict[str, object]]:
        return {
            t: json.loads(p) for t, p in home.topics.retained.items()
            if t.startswith("homeassistant/") and t.endswith("/config") and p
        }  # fmt: skip

    await home.topics.wait(lambda: all(any(f"_{d}/" in t for t in configs()) for d in ALL), what="HA configs")
    for cfg in configs().values():
        assert cfg["unique_id"] and cfg["device"]
        if "state_topic" in cfg:
            assert str(cfg["state_topic"]).startswith(f"home/{GW}/")
    light = configs()[f"homeassistant/light/{GW}_{BULB}/on/config"]
    assert light["command_topic"] == home.t(BULB, "set")
    # Home Assistant's birth message makes the gateway announce everything again.
    before = len(home.topics.messages)
    mosquitto_pub(home.broker, "homeassistant/status", "online")
    await home.topics.wait(
        lambda: any(
            m.topic == f"homeassistant/light/{GW}_{BULB}/on/config" for m in home.topics.messages[before:]
        ),
        what="republished discovery",
    )


async def test_broker_restart_without_persistence_republishes_within_5_s(home: Home) -> None:
    await home.broker.kill()
    home.topics.retained.clear()
    await home.broker.start()
    # A fresh subscriber sees everything again: status, and each device's info/state/availability.
    async with Watcher(home.broker, f"home/{GW}/#", name="late-subscriber") as fresh:
        async with asyncio.timeout(5):
            await fresh.wait(lambda: fresh.retained.get(f"home/{GW}/status") == b"online")
            await fresh.wait(
                lambda: (
                    all(fresh.retained.get(home.t(d, "info")) for d in ALL)
                    and all(fresh.retained.get(home.t(d, "state")) for d in ALL)
                )
            )


async def test_forgetting_a_device_clears_its_retained_topics(home: Home) -> None:
    assert home.gateway.hub is not None
    await home.gateway.hub.forget(DOOR)
    await home.topics.wait(lambda: home.topics.retained.get(home.t(DOOR, "info")) == b"", what="info cleared")
    assert home.topics.retained.get(home.t(DOOR, "state")) == b""
    assert home.topics.retained.get(f"homeassistant/binary_sensor/{GW}_{DOOR}/contact/config") == b""
    async with Watcher(
        home.broker, f"home/{GW}/device/{DOOR}/#", "test/marker", name="after-forget"
    ) as fresh:
        # Retained messages are sent on SUBSCRIBE, before anything published later: once our
        # marker is back, everything retained for the door would have arrived.
        mosquitto_pub(home.broker, "test/marker", "m")
        await fresh.wait(lambda: "test/marker" in fresh.retained, what="marker")
        assert not any(p for t, p in fresh.retained.items() if t != "test/marker")
