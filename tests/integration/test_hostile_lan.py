"""The box against a hostile device on its home network (`firmware-sim hostile`).

A real gateway process, a real secured Mosquitto (a login per device), real TVs, a speaker, a
smoke detector and a plug on the private LAN, and a rogue device performing each attack in
turn. After every attack: the daemon is alive, the plug still relays through the contract,
the daemon's memory did not grow by the attack's size, and what the gateway refused is counted
on its admin health view. An impostor of the TV never receives the alert meant for it, and its
transcripts command nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from firmware_sim import hostile
from firmware_sim.coap import CoapDevice
from firmware_sim.tasmota import TasmotaPlug
from firmware_sim.terminal import SpeakerSimulator, TvSimulator
from gateway.broker import PrivateBroker
from gateway.logins import dynsec_config, write_private
from gateway.mqtt import MqttClient
from gateway.procs import Child
from tests.helpers import Topics, Watcher, gateway_child

pytestmark = pytest.mark.netns

GW = "hl1"
TV_TXT_ID = "tv-5c0a1b2c3d4e"
TV = f"bfy-{TV_TXT_ID}"
SPEAKER = "bfy-speaker-8e2f41a0b7c3"
SMOKE = "coap-bfy-smk-000901"
PLUG_MAC, ROGUE_MAC = "A4CF12B3C4D5", "02BADC0FFEE1"
PLUG = "tasmota-a4cf12b3c4d5"
#: Memory a 150 MB attack may leave behind at most (it would leave 150 MB if it were kept).
RSS_GROWTH_MB = 60


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@dataclass
class Home:
    broker: PrivateBroker
    gateway: Child
    api: httpx.AsyncClient  # with the admin token
    topics: Topics
    ha: MqttClient  # Home Assistant's login: it sends the contract's commands
    tv: TvSimulator
    speaker: SpeakerSimulator
    smoke: CoapDevice
    plug: TasmotaPlug
    logins: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_dir: Path = Path()
    mqtt_env: dict[str, str] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return str(self.api.base_url).rstrip("/")

    def mqtt_url(self, login: str) -> str:
        creds = self.logins[login]
        return f"mqtt://{creds['username']}:{creds['password']}@{self.broker.host}:{self.broker.port}"

    def state(self, device: str) -> dict[str, Any]:
        raw = self.topics.retained.get(f"home/{GW}/device/{device}/state")
        return dict(json.loads(raw)) if raw else {}

    def online(self, device: str) -> bool:
        return self.topics.retained.get(f"home/{GW}/device/{device}/availability") == b"online"

    async def drops(self) -> dict[str, dict[str, int]]:
        r = await self.api.get("/api/v1/health/detail")
        assert r.status_code == 200, r.text
        return dict(r.json()["drops"])

    async def still_fine(self, what: str, *, rss_before: float) -> None:
        """The daemon is alive, the plug relays through the contract, memory did not balloon."""
        assert self.gateway.pid is not None and self.gateway.running, f"the daemon died after {what}"
        assert (await self.api.get("/api/v1/health")).status_code == 200
        want = not self.plug.power_on
        self.ha.publish(f"home/{GW}/device/{PLUG}/set", json.dumps({"on": want}).encode(), qos=1)
        await self.topics.wait(
            lambda: self.plug.power_on is want and self.state(PLUG).get("on") is want,
            what=f"the plug relayed after {what}",
        )
        grown = rss_mb(self.gateway.pid) - rss_before
        assert grown < RSS_GROWTH_MB, f"{what}: the daemon grew by {grown:.0f} MB"


async def approve_all(api: httpx.AsyncClient, wanted: set[str], topics: Topics) -> None:
    """The installer on site: approves the household's own terminals and detectors."""

    async def waiting() -> set[str]:
        r = await api.get("/api/v1/devices", params={"pending": "true"})
        return {d["info"]["id"] for d in r.json()}

    async with asyncio.timeout(30):
        while not wanted <= await waiting():
            await asyncio.sleep(0.2)
    for dev in wanted:
        assert (await api.post(f"/api/v1/devices/{dev}/approve", json={})).status_code == 200


@pytest.fixture
async def home(tmp_path: Path) -> AsyncIterator[Home]:
    password = secrets.token_urlsafe(16)
    dynsec = tmp_path / "dynsec.json"
    write_private(dynsec, json.dumps(dynsec_config("gateway", password)))
    tv = TvSimulator(address="127.0.0.31", device_id=TV_TXT_ID, name="客厅电视", keepalive_s=1.0)
    speaker = SpeakerSimulator(
        address="127.0.0.33", device_id="speaker-8e2f41a0b7c3", name="客厅音箱", keepalive_s=1.0
    )
    smoke = CoapDevice(kind="smoke", address="127.0.0.23", serial="BFY-SMK-000901", name="厨房烟感")
    plug = TasmotaPlug(mac=PLUG_MAC, power_on=False, tele_period_s=60)
    async with (
        PrivateBroker(workdir=tmp_path / "broker", dynsec_file=dynsec) as broker,
        asyncio.TaskGroup() as tg,
    ):
        sims = [tg.create_task(s.run(), name=f"sim-{s.name}") for s in (tv, speaker, smoke)]
        for s in (tv, speaker, smoke):
            await s.wait_ready()
        env = {
            "GATEWAY_MQTT__USERNAME": "gateway",
            "GATEWAY_MQTT__PASSWORD": password,
            "GATEWAY_MQTT__DEVICE_LOGINS": "true",
            "GATEWAY_DISCOVERY__MDNS": "true",
            "GATEWAY_DISCOVERY__COAP": "true",
            "GATEWAY_DISCOVERY__INTERFACES": "lo",
            "GATEWAY_DISCOVERY__COAP_INTERVAL_S": "2",
            "GATEWAY_DISCOVERY__COAP_WINDOW_S": "0.5",
            "GATEWAY_DISCOVERY__TERMINAL_EVENT_TIMEOUT_S": "5",
            # As shipped: only what has a broker login is approved on arrival.
            "GATEWAY_DISCOVERY__AUTO_APPROVE": "tasmota,zigbee2mqtt",
        }
        gateway = gateway_child(broker, tmp_path / "state", gateway_id=GW, env={**os.environ, **env})
        await gateway.start(timeout_s=30)
        try:
            state = tmp_path / "state"
            url = (state / "http.url").read_text().strip()
            admin = {"Authorization": f"Bearer {(state / 'admin.token').read_text().strip()}"}
            async with httpx.AsyncClient(base_url=url, headers=admin, timeout=30) as api:
                logins = {}
                for name, body in {
                    "ha": {"kind": "homeassistant"},
                    "plug": {"kind": "tasmota", "mac": PLUG_MAC},
                    "rogue": {"kind": "tasmota", "mac": ROGUE_MAC},
                    "z2m": {"kind": "zigbee2mqtt"},
                }.items():
                    r = await api.post("/api/v1/logins", json=body)
                    assert r.status_code == 201, r.text
                    logins[name] = r.json()
                watcher = Watcher(
                    broker, f"home/{GW}/#", username="homeassistant", password=logins["ha"]["password"]
                )
                async with watcher as topics:
                    h = Home(broker, gateway, api, topics, watcher.client, tv, speaker, smoke, plug, logins)
                    h.state_dir = state
                    h.mqtt_env = {k: v for k, v in env.items() if k.startswith("GATEWAY_MQTT__")}
                    sims.append(tg.create_task(plug.run(h.mqtt_url("plug")), name="sim-plug"))
                    await approve_all(api, {TV, SPEAKER, SMOKE}, topics)
                    await topics.wait(
                        lambda: all(h.online(d) for d in (TV, SPEAKER, SMOKE, PLUG)),
                        timeout=30,
                        what="the household online",
                    )
                    yield h
        finally:
            await gateway.stop()
            for task in sims:
                task.cancel()


class Counted:
    """`async with Counted(home, adapter, reasons) as c:` … the block must make the gateway
    count one of `reasons` more than before it (waits for it, up to 30 s, on leaving)."""

    def __init__(self, home: Home, adapter: str, *reasons: str) -> None:
        self._home, self._adapter, self._reasons = home, adapter, reasons
        self._before: dict[str, int] = {}

    def _sum(self, drops: dict[str, dict[str, int]]) -> int:
        counted = drops.get(self._adapter, {})
        return sum(counted.get(r, 0) for r in self._reasons)

    async def __aenter__(self) -> Counted:
        self._before = {self._adapter: (await self._home.drops()).get(self._adapter, {})}
        return self

    async def wait(self) -> None:
        async with asyncio.timeout(30):
            while self._sum(await self._home.drops()) <= self._sum(self._before):
                await asyncio.sleep(0.2)

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            await self.wait()


async def test_rogue_terminals_and_coap_devices_crash_nothing_and_steer_nothing(home: Home) -> None:
    assert home.gateway.pid is not None
    rss = rss_mb(home.gateway.pid)

    # One deeply nested JSON event, and an /info nested as deep (100,000 levels are 600 kB: over
    # the size bound before any parsing).
    for depth, info_nested, address in (
        (100_000, False, "127.0.0.60"),
        (100_000, True, "127.0.0.61"),
        (40, False, "127.0.0.62"),
    ):
        rogue = hostile.NestedJsonTerminal(
            address=address, device_id=f"rogue-{address[-2:]}", depth=depth, info_nested=info_nested
        )
        async with Counted(home, "terminal", "too_deep", "too_large") as counted, rogue:
            await counted.wait()
    await home.still_fine("nested JSON", rss_before=rss)

    # 150 MB /info and a 150 MB event line, made as they are read.
    for attack in (
        hostile.HugeInfoTerminal(address="127.0.0.63", device_id="rogue-huge-info"),
        hostile.HugeEventTerminal(address="127.0.0.64", device_id="rogue-huge-event"),
    ):
        async with Counted(home, "terminal", "too_large") as counted, attack:
            await counted.wait()
        await home.still_fine(type(attack).__name__, rss_before=rss)

    # A CoAP device whose device object holds a number too large for a float.
    async with (
        Counted(home, "coap", "probe_failed") as counted,
        hostile.BigIntCoapDevice(address="127.0.0.65"),
    ):
        await counted.wait()
    await home.still_fine("a CoAP bignum", rss_before=rss)

    # 230 fake terminals: the real TV keeps its session and takes commands.
    async with (
        Counted(home, "hub", "inbox_full") as counted,
        hostile.TerminalFlood(address="127.0.0.66", count=230),
    ):
        await counted.wait()
        home.ha.publish(f"home/{GW}/device/{TV}/set", b'{"volume": 17}', qos=1)
        await home.topics.wait(lambda: home.tv.state["volume"] == 17, timeout=20, what="the TV obeys")
    await home.still_fine("230 fake terminals", rss_before=rss)
    waiting = (await home.api.get("/api/v1/devices", params={"pending": "true"})).json()
    assert len(waiting) <= 32


async def test_an_impostor_of_the_tv_gets_no_alert_and_commands_nothing(home: Home) -> None:
    assert home.gateway.pid is not None
    rss = rss_mb(home.gateway.pid)
    light_before = home.state(PLUG)
    async with hostile.ImpostorTerminal(
        address="127.0.0.67",
        target_id=TV_TXT_ID,
        say=["关闭客厅的插座", "turn off the plug"],
        heard_interval_s=0.5,
    ) as impostor:
        msg = await home.topics.wait_message(
            lambda m: m.topic == f"home/{GW}/event/security", timeout=20, what="the impostor reported"
        )
        event = json.loads(msg.payload)
        assert (event["reason"], event["device"]) == ("impostor", TV)
        assert event["address"].startswith("127.0.0.67:")
        async with asyncio.timeout(20):
            while impostor.heard_sent < 3:
                await asyncio.sleep(0.1)
        # An emergency: the kitchen smoke detector.
        home.smoke.set_input(True)
        await home.topics.wait(
            lambda: (home.tv.state.get("overlay") or {}).get("kind") == "alert",
            timeout=20,
            what="the real TV shows it",
        )
        assert impostor.commands == []
        info = json.loads(home.topics.retained[f"home/{GW}/device/{TV}/info"])
        assert info["address"].startswith("127.0.0.31:")
        voice = [m for m in home.topics.messages if m.topic == f"home/{GW}/event/voice"]
        assert voice == []  # what the impostor "heard" ran nothing
        assert home.state(PLUG).get("on") == light_before.get("on")
    home.smoke.set_input(False)
    drops = await home.drops()
    assert drops["hub"]["impostor"] >= 1 and drops["hub"].get("not_approved", 0) >= 3
    await home.still_fine("an impostor", rss_before=rss)
    # The installer sees it on the box: gateway doctor's lan line warns (and does not fail).
    doctor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "doctor", "--mqtt", home.broker.url, "--id", GW,
        "--state-dir", str(home.state_dir),
        env={**os.environ, "GATEWAY_CLOUD__ENABLED": "false", "COLUMNS": "300", **home.mqtt_env},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out = (await doctor.communicate())[0].decode()
    assert doctor.returncode == 0, out
    assert re.search(r"⚠ WARN lan .*impostor \d+.*gateway devices --pending", out, re.S), out
    assert re.search(r"✔ OK\s+broker .*anonymous clients refused", out), out


async def test_a_compromised_plug_and_bridge_cannot_crash_flood_or_steer(home: Home) -> None:
    assert home.gateway.pid is not None
    rss = rss_mb(home.gateway.pid)
    rogue, z2m = home.mqtt_url("rogue"), home.mqtt_url("z2m")

    async with Counted(home, "tasmota", "invalid_config", "too_many_channels"):
        report = await hostile.tasmota_relays(rogue, mac=ROGUE_MAC)
        assert report["accepted"] == 1  # its own topic: only the gateway can refuse it
    await home.still_fine("20,000 relays", rss_before=rss)

    report = await hostile.tasmota_sensors(rogue, count=1500)
    assert report["denied"] >= 1499  # other MACs: the broker refuses them
    await home.still_fine("1,500 unknown MACs", rss_before=rss)

    async with Counted(home, "tasmota", "invalid_config"):
        await hostile.tasmota_plus_topic(rogue, mac=ROGUE_MAC)
    await home.still_fine("a topic with +", rss_before=rss)

    async with Counted(home, "hub", "topic_mismatch"):  # a security event, counted by the hub
        await hostile.tasmota_repoint(rogue, mac=ROGUE_MAC, victim_topic=f"tasmota_{PLUG_MAC[-6:]}")
    await home.still_fine("a re-pointed topic", rss_before=rss)

    # The rogue plug announces itself properly (its own topic), then reports absurd readings.
    own = f"tasmota_{ROGUE_MAC[-6:]}"
    await hostile.tasmota_repoint(rogue, mac=ROGUE_MAC, victim_topic=own)
    rogue_id = f"tasmota-{ROGUE_MAC.lower()}"
    await home.topics.wait(
        lambda: home.online(rogue_id) or rogue_id in str(home.topics.retained), what="rogue plug known"
    )
    async with Counted(home, "hub", "out_of_range"):
        report = await hostile.tasmota_absurd(rogue, topic=own, count=3)
        assert report["accepted"] >= 1
    state = home.state(rogue_id)
    assert abs(state.get("power", 0)) < 1e6 and state.get("energy", 0) >= 0
    await home.still_fine("absurd values", rss_before=rss)

    for attack in (hostile.z2m_devices(z2m, count=10_000), hostile.z2m_inf(z2m), hostile.z2m_empty(z2m)):
        report = await attack
        assert report.get("accepted", 0) >= 1, report
        await home.still_fine(report["attack"], rss_before=rss)
    zigbee = [
        d for d in (await home.api.get("/api/v1/devices")).json() if d["info"]["protocol"] == "zigbee2mqtt"
    ]
    assert len(zigbee) <= 128
    assert not any(d["online"] for d in zigbee)  # the empty list took them offline, kept them

    mqtt_before = (await home.api.get("/api/v1/health/detail")).json()["details"]["local_mqtt"]["disconnects"]
    report = await hostile.client_id_takeover(
        rogue, victim_client_id=f"gateway-{GW}", count=5, interval_s=0.2
    )
    health = (await home.api.get("/api/v1/health/detail")).json()
    assert health["details"]["local_mqtt"]["disconnects"] == mqtt_before and health["mqtt_connected"]
    await home.still_fine("a client-id takeover", rss_before=rss)


async def test_lan_http_attacks_lock_nobody_out(home: Home) -> None:
    assert home.gateway.pid is not None
    rss = rss_mb(home.gateway.pid)
    # The gateway listens on 127.0.0.1 here; LAN clients come from other addresses.
    url = home.http_url
    pin = await hostile.http_pin(url)
    assert pin["status"] == 200  # the test's own address is 127.0.0.1, the box's screen...
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.70")) as lan:
        r = await lan.get(f"{url}/api/v1/pairing/pin")
        assert r.status_code == 403  # ...while a LAN client is refused
    rebind = await hostile.http_rebind(url)
    assert (rebind["pair"], rebind["devices"]) == (421, 421), rebind
    streams = await hostile.http_streams(url, count=20, duration_s=2.0, source_address="127.0.0.70")
    assert streams["accepted"] == 4, streams  # one client gets a few; the TVs and the box keep theirs
    sources = [f"127.0.0.{n}" for n in range(71, 77)]
    guesses = await hostile.http_pair_guess(url, count=30, source_addresses=sources)
    assert guesses["statuses"].get("200", 0) == 0, guesses
    # The family's phone still pairs with the PIN the TV shows.
    shown = (await home.api.get("/api/v1/pairing")).json()["pin"]
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.80")) as phone:
        r = await phone.post(f"{url}/api/v1/pair", json={"pin": shown, "name": "手机"})
        assert r.status_code == 200
    big = await hostile.http_big_body(url, size_mb=150)
    assert big["status"] in (413, "closed"), big
    await home.still_fine("LAN HTTP attacks", rss_before=rss)
    drops = await home.drops()
    http = drops["http"]
    assert http["wrong_host"] >= 1 and http["too_large"] >= 1 and http["too_many_streams"] >= 16
    assert http["pin_not_a_screen"] >= 1 and http.get("wrong_pin", 0) + http.get("pairing_throttled", 0) >= 30
