"""CoAP devices found by multicast, observed, controlled and tracked, on a private LAN."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_sim.coap import CoapDevice, HostileCoapDevice
from gateway.broker import PrivateBroker
from gateway.config import load_settings
from gateway.daemon import Gateway
from tests.helpers import INSTALLER_APPROVED, Topics, Watcher, mosquitto_pub, wait_hub

pytestmark = pytest.mark.netns

GW = "lan1"


def dev_id(serial: str) -> str:
    return f"coap-{serial.lower()}"


@dataclass
class Lan:
    broker: PrivateBroker
    gateway: Gateway
    topics: Topics
    devices: dict[str, CoapDevice]
    tasks: dict[str, asyncio.Task[None]]
    tg: asyncio.TaskGroup

    def t(self, serial: str, leaf: str) -> str:
        return f"home/{GW}/device/{dev_id(serial)}/{leaf}"

    def state(self, serial: str) -> dict[str, object]:
        raw = self.topics.retained.get(self.t(serial, "state"))
        return json.loads(raw) if raw else {}

    def start(self, device: CoapDevice) -> None:
        self.devices[device.serial] = device
        self.tasks[device.serial] = self.tg.create_task(device.run(), name=f"sim-{device.serial}")


@pytest.fixture
async def lan(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[Lan]:
    settings = load_settings(
        overrides={
            "id": GW,
            "state_dir": str(tmp_path / "state"),
            "mqtt.url": broker.url,
            "http.listen": "127.0.0.1:0",
            "discovery.interfaces": ["lo"],
            "discovery.auto_approve": INSTALLER_APPROVED,
            "discovery.mdns": False,
            "discovery.coap_interval_s": 1.0,
            "discovery.coap_window_s": 0.4,
            "discovery.coap_observe_timeout_s": 2.0,
        },
        environ={},
    )
    gateway = Gateway(settings)
    async with Watcher(broker, f"home/{GW}/#") as topics, asyncio.TaskGroup() as tg:
        lan = Lan(broker, gateway, topics, {}, {}, tg)
        for device in (
            CoapDevice(
                kind="climate",
                address="127.0.0.21",
                serial="BFY-CLM-000001",
                name="卧室温湿度",
                report_interval_s=0.5,
            ),
            CoapDevice(
                kind="light",
                address="127.0.0.22",
                serial="BFY-LGT-000001",
                name="客厅灯",
                report_interval_s=0.5,
            ),
            CoapDevice(
                kind="smoke",
                address="127.0.0.23",
                serial="BFY-SMK-000001",
                name="厨房烟感",
                report_interval_s=0.5,
            ),
            HostileCoapDevice(address="127.0.0.29", serial="BFY-EVIL-000001"),
        ):
            lan.start(device)
        for device in lan.devices.values():
            await device.wait_ready()
        run = tg.create_task(gateway.run(), name="gateway")
        async with asyncio.timeout(10):
            await gateway.ready.wait()
        await topics.wait(
            lambda: all(
                topics.retained.get(lan.t(s, "availability")) == b"online" and lan.state(s)
                for s in ("BFY-CLM-000001", "BFY-LGT-000001", "BFY-SMK-000001")
            ),
            timeout=20,
            what="the three CoAP devices online with state",
        )
        yield lan
        gateway.stop()
        await run
        for task in lan.tasks.values():
            task.cancel()


async def test_coap_devices_are_discovered_with_their_serial_names_and_values(lan: Lan) -> None:
    info = lan.topics.json(lan.t("BFY-CLM-000001", "info"))
    assert info["protocol"] == "coap"
    assert info["name"] == "卧室温湿度"
    assert info["kind"] == "sensor"
    assert info["address"] == "127.0.0.21"
    assert {"temperature", "humidity"} <= set(info["capabilities"])
    state = lan.state("BFY-CLM-000001")
    assert 0 < float(state["temperature"]) < 50  # type: ignore[arg-type]
    light = lan.topics.json(lan.t("BFY-LGT-000001", "info"))
    assert light["kind"] == "light"
    assert set(light["settable"]) == {"on", "brightness"}


async def test_light_is_switched_through_its_set_topic(lan: Lan) -> None:
    light = lan.devices["BFY-LGT-000001"]
    for payload, expected in (('{"on": true, "brightness": 35}', True), ('{"on": false}', False)):
        mosquitto_pub(lan.broker, lan.t("BFY-LGT-000001", "set"), payload)
        await lan.topics.wait(
            lambda e=expected: lan.state("BFY-LGT-000001").get("on") is e, what=f"on={expected}"
        )
        assert light.state["on"] is expected
    assert light.state["brightness"] == 35


async def test_observed_changes_arrive_without_polling(lan: Lan) -> None:
    lan.devices["BFY-SMK-000001"].set_input(True)
    await lan.topics.wait(lambda: lan.state("BFY-SMK-000001").get("smoke") is True, what="smoke observed")
    lan.devices["BFY-SMK-000001"].set_input(False)
    await lan.topics.wait(lambda: lan.state("BFY-SMK-000001").get("smoke") is False, what="smoke cleared")


async def test_a_device_back_at_a_new_address_waits_until_the_installer_moves_it(lan: Lan) -> None:
    serial = "BFY-LGT-000001"
    lan.tasks[serial].cancel()
    await lan.topics.wait(
        lambda: lan.topics.retained.get(lan.t(serial, "availability")) == b"offline",
        timeout=20,
        what="offline",
    )
    lan.start(
        CoapDevice(kind="light", address="127.0.0.42", serial=serial, name="客厅灯", report_interval_s=0.5)
    )
    # No credentials on CoAP: the same serial at another address may be anyone.
    msg = await lan.topics.wait_message(
        lambda m: m.topic == f"home/{GW}/event/security", timeout=20, what="a security event"
    )
    assert json.loads(msg.payload)["device"] == dev_id(serial)
    hub = lan.gateway.hub
    assert hub is not None
    await wait_hub(
        hub, lambda: any(d.info.address == "127.0.0.42" for d in hub.devices(approved=False)), what="waiting"
    )
    assert lan.topics.json(lan.t(serial, "info"))["address"] == "127.0.0.22"
    waiting = next(d for d in hub.devices(approved=False) if d.info.address == "127.0.0.42")
    await hub.move(waiting.info.id, dev_id(serial))
    await lan.topics.wait(
        lambda: (
            lan.topics.retained.get(lan.t(serial, "availability")) == b"online"
            and lan.topics.json(lan.t(serial, "info"))["address"] == "127.0.0.42"
        ),
        timeout=20,
        what="back online at the new address",
    )


async def test_a_hostile_device_disturbs_nobody(lan: Lan) -> None:
    hostile = lan.devices["BFY-EVIL-000001"]
    assert isinstance(hostile, HostileCoapDevice)
    # The others keep reporting while the hostile one floods and serves junk.
    before = len(lan.topics.messages)
    await lan.topics.wait(
        lambda: sum(m.topic == lan.t("BFY-CLM-000001", "state") for m in lan.topics.messages[before:]) >= 3,
        what="fresh climate values",
    )
    assert lan.gateway.hub is not None
    # Its junk was counted, not trusted: whatever it got published carries only valid values.
    evil = lan.gateway.hub.get(dev_id("BFY-EVIL-000001"))
    if evil is not None:
        assert all(k in evil.info.capabilities for k in evil.state)


@pytest.mark.skipif(shutil.which("coap-client-notls") is None, reason="libcoap3-bin is not installed")
async def test_libcoap_client_reads_a_simulated_sensor(lan: Lan) -> None:
    out = await asyncio.to_thread(
        subprocess.run,
        ["coap-client-notls", "-m", "get", "-B", "5", "coap://127.0.0.21/.well-known/core"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "</3303/0>" in out.stdout
    out = await asyncio.to_thread(
        subprocess.run,
        ["coap-client-notls", "-m", "get", "-B", "5", "coap://127.0.0.21/3303/0/5700"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "5700" in out.stdout
