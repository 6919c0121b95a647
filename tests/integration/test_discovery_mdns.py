"""mDNS on a private LAN: operator terminals found and controlled, third-party devices
recognized (and left alone), departures and returns, a hostile neighbour, the gateway's own
announcement."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from firmware_sim.terminal import HostileTerminal, SpeakerSimulator, TvSimulator
from gateway.broker import PrivateBroker
from gateway.config import load_settings
from gateway.daemon import Gateway
from tests.helpers import INSTALLER_APPROVED, Topics, Watcher, mosquitto_pub, wait_hub

pytestmark = pytest.mark.netns

GW = "lan2"
TV = "bfy-tv-5c0a1b2c3d4e"
SPEAKER = "bfy-speaker-8e2f41a0b7c3"


@dataclass
class Lan:
    broker: PrivateBroker
    gateway: Gateway
    topics: Topics
    tv: TvSimulator
    speaker: SpeakerSimulator
    tasks: dict[str, asyncio.Task[None]]
    tg: asyncio.TaskGroup

    def t(self, device: str, leaf: str) -> str:
        return f"home/{GW}/device/{device}/{leaf}"

    def online(self, device: str) -> bool:
        return self.topics.retained.get(self.t(device, "availability")) == b"online"

    def info(self, device: str) -> dict[str, object]:
        raw = self.topics.retained.get(self.t(device, "info"))
        return json.loads(raw) if raw else {}


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
            "discovery.coap": False,
            "discovery.terminal_event_timeout_s": 3.0,
        },
        environ={},
    )
    gateway = Gateway(settings)
    tv = TvSimulator(
        address="127.0.0.31",
        device_id="tv-5c0a1b2c3d4e",
        name="客厅电视",
        keepalive_s=1.0,
        host_ttl_s=6,
        other_ttl_s=6,
    )
    speaker = SpeakerSimulator(
        address="127.0.0.33", device_id="speaker-8e2f41a0b7c3", name="客厅音箱", keepalive_s=1.0
    )
    hostile = HostileTerminal(address="127.0.0.39")
    async with Watcher(broker, f"home/{GW}/#") as topics, asyncio.TaskGroup() as tg:
        tasks = {
            name: tg.create_task(sim.run(), name=name)
            for name, sim in (("tv", tv), ("speaker", speaker), ("hostile", hostile))
        }
        lan = Lan(broker, gateway, topics, tv, speaker, tasks, tg)
        for sim in (tv, speaker, hostile):
            await sim.wait_ready()
        run = tg.create_task(gateway.run(), name="gateway")
        async with asyncio.timeout(10):
            await gateway.ready.wait()
        await topics.wait(
            lambda: lan.online(TV) and lan.online(SPEAKER), timeout=20, what="TV and speaker online"
        )
        yield lan
        gateway.stop()
        await run
        for task in tasks.values():
            task.cancel()


async def test_terminals_are_found_with_what_they_can_do(lan: Lan) -> None:
    tv = lan.info(TV)
    assert tv["kind"] == "tv"
    assert tv["protocol"] == "terminal"
    assert tv["name"] == "客厅电视"
    assert tv["controllable"] is True
    assert {"on", "volume", "muted", "channel", "input", "overlay"} <= set(tv["capabilities"])  # type: ignore[arg-type]
    assert str(tv["address"]).startswith("127.0.0.31:")
    assert "say" in lan.info(SPEAKER)["settable"]  # type: ignore[operator]
    state = json.loads(lan.topics.retained[lan.t(TV, "state")])
    assert state["volume"] == lan.tv.state["volume"]


async def test_volume_set_over_mqtt_reaches_the_tv(lan: Lan) -> None:
    mosquitto_pub(lan.broker, lan.t(TV, "set"), '{"volume": 20}')
    async with httpx.AsyncClient() as client:
        async with asyncio.timeout(10):
            while (await client.get(f"{lan.tv.base_url}/state")).json()["volume"] != 20:
                await asyncio.sleep(0.05)
    await lan.topics.wait(lambda: json.loads(lan.topics.retained[lan.t(TV, "state")])["volume"] == 20)
    # What the TV refuses comes back as an error event, not a crash.
    mosquitto_pub(lan.broker, lan.t(SPEAKER, "set"), '{"say": {"text": "晚饭好了", "lang": "zh-CN"}}')
    await lan.topics.wait(
        lambda: any(e["text"] == "晚饭好了" for e in lan.speaker.state["said"]), what="spoken"
    )


async def test_what_a_speaker_hears_becomes_a_voice_event(lan: Lan) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{lan.speaker.base_url}/hear", json={"text": "打开客厅的灯"})
        assert r.status_code == 200
    msg = await lan.topics.wait_message(lambda m: m.topic == f"home/{GW}/event/voice", what="voice event")
    event = json.loads(msg.payload)
    assert event == {**event, "text": "打开客厅的灯", "lang": "zh-CN", "source": SPEAKER}


async def test_a_terminal_at_a_new_address_waits_for_the_installer_to_move_it(lan: Lan) -> None:
    """A terminal has no credentials: whoever answers at a new address with an approved TV's id
    may be an impostor. It becomes a device of its own, waiting, and a security event; the
    installer's `approve --replaces` moves the TV there, keeping its id."""
    lan.tv.crash()
    await lan.tasks["tv"]
    await lan.topics.wait(lambda: not lan.online(TV), timeout=15, what="TV offline after a crash")
    lan.tv.move_to("127.0.0.41")
    lan.tasks["tv"] = lan.tg.create_task(lan.tv.run(), name="tv-again")
    await lan.tv.wait_ready()
    msg = await lan.topics.wait_message(
        lambda m: m.topic == f"home/{GW}/event/security", timeout=20, what="a security event"
    )
    event = json.loads(msg.payload)
    assert event["reason"] == "impostor" and event["device"] == TV
    assert event["address"].startswith("127.0.0.41:")
    hub = lan.gateway.hub
    assert hub is not None

    def waiting_at_new_address() -> list[Any]:
        return [
            d
            for d in hub.devices(approved=False)
            if d.info.protocol == "terminal" and d.info.address.startswith("127.0.0.41:")
        ]

    await wait_hub(hub, lambda: bool(waiting_at_new_address()), what="a waiting device at 127.0.0.41")
    waiting = waiting_at_new_address()
    assert len(waiting) == 1 and waiting[0].info.id != TV
    assert not lan.online(TV) and str(lan.info(TV)["address"]).startswith("127.0.0.31:")
    state = lan.gateway.settings.state_dir
    url = (state / "http.url").read_text().strip()
    admin = {"Authorization": f"Bearer {(state / 'admin.token').read_text().strip()}"}
    async with httpx.AsyncClient(base_url=url, headers=admin) as client:
        r = await client.post(f"/api/v1/devices/{waiting[0].info.id}/approve", json={"replaces": TV})
        assert r.status_code == 200, r.text
        assert r.json()["info"]["id"] == TV
    await lan.topics.wait(
        lambda: lan.online(TV) and str(lan.info(TV)["address"]).startswith("127.0.0.41:"),
        timeout=20,
        what="TV online again at 127.0.0.41, under its own id",
    )
    assert hub.get(waiting[0].info.id) is None


async def test_goodbye_takes_a_terminal_offline(lan: Lan) -> None:
    lan.tasks["speaker"].cancel()
    await lan.topics.wait(lambda: not lan.online(SPEAKER), timeout=5, what="speaker offline after goodbye")
    assert lan.online(TV)


async def test_third_party_devices_are_recognized_pending_and_read_only(lan: Lan) -> None:
    cast = AsyncServiceInfo(
        "_googlecast._tcp.local.",
        "Chromecast-Ultra-0123456789abcdef0123456789abcdef._googlecast._tcp.local.",
        addresses=[socket.inet_aton("127.0.0.51")],
        port=8009,
        server="0123456789abcdef.local.",
        properties={
            "id": "0123456789abcdef0123456789abcdef",
            "md": "Chromecast Ultra",
            "fn": "书房投屏",
            "ve": "05",
            "ca": "201221",
            "st": "0",
            "rs": "",
        },
    )
    homekit = AsyncServiceInfo(
        "_hap._tcp.local.",
        "Eve Light._hap._tcp.local.",
        addresses=[socket.inet_aton("127.0.0.52")],
        port=51826,
        server="eve-light.local.",
        properties={
            "id": "AA:BB:CC:DD:EE:FF",
            "md": "Eve Light Strip",
            "ci": "5",
            "c#": "3",
            "s#": "1",
            "sf": "0",
            "ff": "0",
            "pv": "1.1",
        },
    )
    azc = AsyncZeroconf(interfaces=["127.0.0.51"], ip_version=IPVersion.V4Only)
    try:
        await azc.async_register_service(cast)
        await azc.async_register_service(homekit)
        assert lan.gateway.hub is not None
        hub = lan.gateway.hub
        async with asyncio.timeout(15):
            while not (
                hub.get("googlecast-0123456789abcdef0123456789abcdef") and hub.get("hap-aabbccddeeff")
            ):
                await asyncio.sleep(0.05)
        chromecast = hub.get("googlecast-0123456789abcdef0123456789abcdef")
        light = hub.get("hap-aabbccddeeff")
        assert chromecast is not None and light is not None
        assert (chromecast.info.kind, chromecast.info.model, chromecast.info.name) == (
            "other",
            "Chromecast Ultra",
            "书房投屏",
        )
        assert (light.info.kind, light.info.controllable) == ("light", False)
        # Third-party devices wait for the installer: nothing on the household's topics.
        assert not chromecast.row.approved
        assert lan.t(chromecast.info.id, "info") not in lan.topics.retained
        # The TV's own cast advertisement is the same box as the terminal: no twin device.
        assert not [
            d for d in hub.devices(approved=None) if d.info.protocol == "mdns" and d.info.name == "客厅电视"
        ]
    finally:
        await azc.async_close()


async def test_a_hostile_neighbour_is_dropped_and_counted(lan: Lan) -> None:
    assert lan.gateway.hub is not None
    assert not [d for d in lan.gateway.hub.devices(approved=None) if d.info.address.startswith("127.0.0.39")]
    mosquitto_pub(lan.broker, lan.t(TV, "set"), '{"muted": true}')
    await lan.topics.wait(lambda: json.loads(lan.topics.retained[lan.t(TV, "state")])["muted"] is True)


async def test_the_gateway_announces_itself(lan: Lan) -> None:
    azc = AsyncZeroconf(interfaces=["127.0.0.61"], ip_version=IPVersion.V4Only)
    found: list[str] = []
    seen = asyncio.Event()

    def on_change(zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            found.append(name)
            seen.set()

    browser = AsyncServiceBrowser(azc.zeroconf, "_bfy-gateway._tcp.local.", handlers=[on_change])
    try:
        async with asyncio.timeout(10):
            await seen.wait()
        info = AsyncServiceInfo("_bfy-gateway._tcp.local.", found[0])
        assert await info.async_request(azc.zeroconf, 3000)
        txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        assert txt["id"] == GW
        assert txt["api"] == "/api/v1"
        assert txt["version"]
    finally:
        await browser.async_cancel()
        await azc.async_close()
    if shutil.which("dig"):
        out = await asyncio.to_thread(
            subprocess.run,
            ["dig", "-p", "5353", "@127.0.0.1", "+time=2", "+tries=2", "_services._dns-sd._udp.local", "PTR"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "_bfy-gateway._tcp.local" in out.stdout, out.stdout


async def test_a_third_party_device_that_vanishes_goes_offline_when_its_records_expire(lan: Lan) -> None:
    ttl = 4
    speaker = AsyncServiceInfo(
        "_spotify-connect._tcp.local.",
        "厨房小音箱._spotify-connect._tcp.local.",
        addresses=[socket.inet_aton("127.0.0.53")],
        port=4070,
        server="kitchen-speaker.local.",
        properties={"CPath": "/zc", "VERSION": "1.0"},
        host_ttl=ttl,
        other_ttl=ttl,
    )
    azc = AsyncZeroconf(interfaces=["127.0.0.53"], ip_version=IPVersion.V4Only)
    assert lan.gateway.hub is not None
    hub = lan.gateway.hub
    dev_id = ""
    try:
        await azc.async_register_service(speaker)
        async with asyncio.timeout(15):
            while not dev_id:
                dev_id = next(
                    (d.info.id for d in hub.devices(approved=None) if d.info.name == "厨房小音箱"), ""
                )
                await asyncio.sleep(0.05)
        dev = hub.get(dev_id)
        assert dev is not None and dev.online
        # Power loss: the records stay in caches, no goodbye is sent.
        azc.zeroconf.registry.async_remove(azc.zeroconf.registry.async_get_service_infos())
    finally:
        await azc.async_close()
    loop = asyncio.get_running_loop()
    gone_at = loop.time()
    async with asyncio.timeout(2 * ttl + 2):
        while dev.online:
            await asyncio.sleep(0.05)
    assert loop.time() - gone_at <= 2 * ttl
