"""A broker login per device: Mosquitto with its dynamic-security plugin, as on the box.

The installer makes a login per plug through the gateway; each plug may write only its own
topics, read only its own commands, cannot take another client's session, and cannot steer
another plug; removing the login disconnects it. Real broker, real gateway, real plug firmware.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from firmware_sim.hostile import client_id_takeover, tasmota_repoint
from firmware_sim.tasmota import TasmotaPlug
from gateway.broker import PrivateBroker
from gateway.config import load_settings
from gateway.daemon import Gateway
from gateway.logins import dynsec_config, write_private
from gateway.mqtt import MqttClient
from tests.helpers import Topics, Watcher

GW = "dl1"
PLUG_A, PLUG_B = "A4CF12B3C4D5", "A4CF12B3C4D6"
ID_A, ID_B = "tasmota-a4cf12b3c4d5", "tasmota-a4cf12b3c4d6"


@dataclass
class Home:
    broker: PrivateBroker
    gateway: Gateway
    api: httpx.AsyncClient
    topics: Topics
    watcher: MqttClient  # Home Assistant's login

    def url(self, creds: dict[str, Any]) -> str:
        return f"mqtt://{creds['username']}:{creds['password']}@{self.broker.host}:{self.broker.port}"

    async def login(self, kind: str, **body: str) -> dict[str, Any]:
        r = await self.api.post("/api/v1/logins", json={"kind": kind, **body})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def state(self, device: str) -> dict[str, Any]:
        raw = self.topics.retained.get(f"home/{GW}/device/{device}/state")
        return dict(json.loads(raw)) if raw else {}

    def online(self, device: str) -> bool:
        return self.topics.retained.get(f"home/{GW}/device/{device}/availability") == b"online"


@pytest.fixture
async def home(tmp_path: Path) -> AsyncIterator[Home]:
    password = secrets.token_urlsafe(16)
    dynsec = tmp_path / "dynsec.json"
    write_private(dynsec, json.dumps(dynsec_config("gateway", password)))
    async with PrivateBroker(workdir=tmp_path / "broker", dynsec_file=dynsec) as broker:
        settings = load_settings(
            overrides={
                "id": GW,
                "state_dir": str(tmp_path / "state"),
                "mqtt.url": broker.url,
                "mqtt.username": "gateway",
                "mqtt.password": password,
                "mqtt.device_logins": True,
                "http.listen": "127.0.0.1:0",
                "discovery.mdns": False,
                "discovery.coap": False,
            },
            environ={},
        )
        gateway = Gateway(settings)
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(gateway.run(), name="gateway")
            async with asyncio.timeout(10):
                await gateway.ready.wait()
            state = settings.state_dir
            admin = {"Authorization": f"Bearer {(state / 'admin.token').read_text().strip()}"}
            url = (state / "http.url").read_text().strip()
            async with httpx.AsyncClient(base_url=url, headers=admin, timeout=10) as api:
                ha = (await api.post("/api/v1/logins", json={"kind": "homeassistant"})).json()
                watcher = Watcher(broker, f"home/{GW}/#", username="homeassistant", password=ha["password"])
                async with watcher as topics:
                    yield Home(broker, gateway, api, topics, watcher.client)
            gateway.stop()
            await run


async def run_plug(tg: asyncio.TaskGroup, plug: TasmotaPlug, url: str) -> asyncio.Task[None]:
    task = tg.create_task(plug.run(url), name=f"plug-{plug.name}")
    async with asyncio.timeout(10):
        await plug.wait_ready()
    return task


def pub(home: Home, topic: str, payload: str, *creds: str) -> int:
    """mosquitto_pub as a LAN client would; its exit status (non-zero when refused)."""
    cmd = ["mosquitto_pub", "-p", str(home.broker.port), "-t", topic, "-m", payload, "-q", "1"]
    if creds:
        cmd += ["-u", creds[0], "-P", creds[1]]
    return subprocess.run(cmd, capture_output=True, timeout=10).returncode


async def test_a_plug_with_its_own_login_relays_and_a_plug_login_can_touch_nothing_else(home: Home) -> None:
    creds = await home.login("tasmota", mac=PLUG_A)
    assert creds["username"] == "tasmota-a4cf12b3c4d5" and creds["topic"] == "tasmota_B3C4D5"
    # Another plug's login, used as a compromised plug would (a login is one connection: using
    # plug A's own would only knock plug A off).
    other = await home.login("tasmota", mac=PLUG_B)
    plug = TasmotaPlug(mac=PLUG_A, power_on=False, tele_period_s=60)
    async with asyncio.TaskGroup() as tg:
        task = await run_plug(tg, plug, home.url(creds))
        await home.topics.wait(lambda: home.online(ID_A), what="the plug online through its own login")
        assert pub(home, f"home/{GW}/device/{ID_A}/set", '{"on": true}') != 0  # anonymous
        assert pub(home, f"home/{GW}/device/{ID_A}/set", '{"on": true}', "homeassistant", "wrong") != 0
        home.watcher.publish(f"home/{GW}/device/{ID_A}/set", b'{"on": true}', qos=1)
        await home.topics.wait(lambda: plug.power_on, what="the command relayed to the plug")
        await home.topics.wait(lambda: home.state(ID_A).get("on") is True, what="the plug's state: on")

        # A plug login is refused everything that is not its own (PUBACK: not authorized).
        report = await tasmota_repoint(home.url(other), mac=PLUG_A, victim_topic="tasmota_B3C4D5")
        assert report["denied"] == 1, report  # not even a config under another plug's MAC
        mine = (other["username"], other["password"])
        assert pub(home, "cmnd/tasmota_B3C4D5/POWER", "OFF", *mine) == 0  # MQTT 3.1.1 acks and drops
        assert pub(home, "stat/tasmota_B3C4D5/POWER", "OFF", *mine) == 0
        assert pub(home, f"home/{GW}/device/{ID_A}/set", '{"on": false}', *mine) == 0
        assert pub(home, f"home/{GW}/alert/x", '{"level": 1}', *mine) == 0
        # A barrier: Home Assistant's bad command is answered on event/error; anything the other
        # login sent before it would have been handled first.
        home.watcher.publish(f"home/{GW}/device/{ID_A}/set", b'{"bogus": 1}', qos=1)
        await home.topics.wait_message(lambda m: m.topic == f"home/{GW}/event/error", what="the barrier")
        errors = [json.loads(m.payload) for m in home.topics.messages if m.topic == f"home/{GW}/event/error"]
        assert [e["reason"] for e in errors] == ["unknown_capability"]
        assert plug.power_on and f"home/{GW}/alert/x" not in home.topics.retained
        assert home.state(ID_A)["on"] is True
        task.cancel()


async def test_no_login_can_take_the_gateways_session(home: Home) -> None:
    creds = await home.login("tasmota", mac=PLUG_A)
    mqtt = home.gateway.mqtt
    assert mqtt is not None
    before = mqtt.stats.disconnects
    report = await client_id_takeover(
        home.url(creds), victim_client_id=f"gateway-{GW}", count=5, interval_s=0.1
    )
    assert report["connacks"].get("Success", 0) >= 1, report
    assert mqtt.connected and mqtt.stats.disconnects == before


async def test_a_plug_cannot_point_its_config_at_another_plugs_topic(home: Home) -> None:
    a, b = await home.login("tasmota", mac=PLUG_A), await home.login("tasmota", mac=PLUG_B)
    plug_a = TasmotaPlug(mac=PLUG_A, power_on=False, tele_period_s=60)
    async with asyncio.TaskGroup() as tg:
        task = await run_plug(tg, plug_a, home.url(a))
        await home.topics.wait(lambda: home.online(ID_A), what="plug A online")
        # Plug B (its own login) announces itself with plug A's topic: commands for B would go to A.
        report = await tasmota_repoint(home.url(b), mac=PLUG_B, victim_topic="tasmota_B3C4D5")
        assert report["accepted"] == 1, report  # its own discovery topic: the broker lets it through
        msg = await home.topics.wait_message(
            lambda m: m.topic == f"home/{GW}/event/security", what="a security event"
        )
        event = json.loads(msg.payload)
        assert event["reason"] == "topic_mismatch" and event["device"] == ID_B
        hub = home.gateway.hub
        assert hub is not None and hub.get(ID_B) is None
        assert hub.get(ID_A) is not None and home.online(ID_A)
        task.cancel()


async def test_removing_a_login_disconnects_the_plug(home: Home) -> None:
    creds = await home.login("tasmota", mac=PLUG_A)
    plug = TasmotaPlug(mac=PLUG_A, tele_period_s=60)
    async with asyncio.TaskGroup() as tg:
        task = await run_plug(tg, plug, home.url(creds))
        await home.topics.wait(lambda: home.online(ID_A), what="plug online")
        assert (await home.api.delete(f"/api/v1/logins/{creds['username']}")).status_code == 204
        # The broker drops the connection and publishes the plug's will (Offline).
        await home.topics.wait(lambda: not home.online(ID_A), what="plug offline after its login went")
        listed = (await home.api.get("/api/v1/logins")).json()
        assert [x["username"] for x in listed] == ["homeassistant"]
        task.cancel()
    # A login's record never holds its password.
    state = home.gateway.settings.state_dir
    assert creds["password"] not in (state / "device_logins.json").read_text()
