"""Emergency alerts end to end: operator API → signed region topic → real gateway processes →
every TV and speaker of the home → receipts back to the cloud.

Real parts throughout: the reference cloud (uvicorn, SQLite, Mosquitto with mutual TLS), two
gateways provisioned with `gateway provision` and run with `gateway run` (each on its own local
Mosquitto), TVs and speakers found over mDNS inside this test's network namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.cap import Reference, parse_cap_xml
from cloud_bridge.protocol import new_envelope, topics
from firmware_sim import hostile
from firmware_sim.terminal import SpeakerSimulator, TvSimulator
from gateway.broker import PrivateBroker
from gateway.procs import Child
from tests.helpers import Topics, Watcher, gateway_child, mosquitto_pub
from tests.integration.cloud_harness import CloudHarness, running_cloud

pytestmark = pytest.mark.netns

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"
_CAP_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})([+-]\d{2}:\d{2})")
_FIXTURE_LATEST_SENT = datetime.fromisoformat("2024-08-01T11:30:00+08:00")  # the red update's


def retimed(name: str, *, identifier: str | None = None, at: datetime | None = None) -> bytes:
    """A CAP fixture with every time moved by the same amount, so that the fixtures' latest
    message is sent `at` (default now). Fixtures retimed with the same `at` keep their
    references to each other."""
    shift = (at or datetime.now(UTC)).replace(microsecond=0) - _FIXTURE_LATEST_SENT

    def move(m: re.Match[str]) -> str:
        return (datetime.fromisoformat(m.group(0)) + shift).isoformat()

    text = _CAP_TIME.sub(move, (FIXTURES / name).read_text())
    if identifier is not None:
        text = re.sub(
            r"<identifier>[^<]*</identifier>", f"<identifier>{identifier}</identifier>", text, count=1
        )
    return text.encode()


@dataclass
class Box:
    """One gateway process, its local broker and what was seen on it."""

    gateway_id: str
    region: str
    broker: PrivateBroker
    state_dir: Path
    local: Topics
    env: dict[str, str]
    child: Child | None = None

    def alerts_seen(self) -> set[str]:
        prefix = f"home/{self.gateway_id}/alert/"
        return {m.topic.removeprefix(prefix) for m in self.local.messages if m.topic.startswith(prefix)}

    async def start(self) -> None:
        self.child = gateway_child(self.broker, self.state_dir, gateway_id=self.gateway_id, env=self.env)
        await self.child.start(timeout_s=30)

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()

    async def kill(self) -> None:
        assert self.child is not None
        await self.child.kill()


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


@dataclass
class Stand:
    cloud: CloudHarness
    a: Box  # Shenyang, Heping district (210102): two TVs, two speakers
    b: Box  # Dalian, Zhongshan district (210202): no presenting devices
    tvs: list[TvSimulator]
    speakers: list[SpeakerSimulator]
    boxes: list[Box] = field(default_factory=list)

    async def send(
        self, body: bytes, *, kind: str = "application/cap+xml", region: list[str] | None = None
    ) -> dict[str, Any]:
        params = {"region": region} if region else None
        resp = await self.cloud.api.post(
            "/v1/alerts", content=body, params=params, headers={"Content-Type": kind}
        )
        assert resp.status_code in (200, 201), resp.text
        return dict(resp.json())

    async def status(self, alert_id: str) -> dict[str, Any]:
        return dict(await self.cloud.get(f"/v1/alerts/{alert_id}"))

    async def until(self, check: Callable[[], Any], what: str, timeout: float = 20) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not await _maybe(check()):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            logs = "\n".join(f"--- {b.gateway_id}\n{b.child.log_tail(25)}" for b in self.boxes if b.child)
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs}") from None

    async def gateway_status(self, alert_id: str, gateway_id: str) -> dict[str, Any]:
        st = await self.status(alert_id)
        return next((g for g in st["gateways"] if g["id"] == gateway_id), {})

    def overlays(self) -> list[dict[str, Any] | None]:
        return [tv.state["overlay"] for tv in self.tvs]


async def _maybe(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


def _provision(cloud_url: str, code: str, gateway_id: str, state_dir: Path) -> None:
    """The installer's command, as run on the box."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "provision", "--cloud", cloud_url, "--code", code,
         "--id", gateway_id, "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"provisioned {gateway_id}" in result.stdout


@pytest.fixture
async def stand(tmp_path: Path) -> AsyncIterator[Stand]:
    tvs = [
        TvSimulator(address="127.0.0.81", device_id="tv-c1", name="客厅电视", keepalive_s=1.0),
        TvSimulator(address="127.0.0.82", device_id="tv-c2", name="卧室电视", keepalive_s=1.0),
    ]
    speakers = [
        SpeakerSimulator(address="127.0.0.83", device_id="speaker-c1", name="客厅音箱", keepalive_s=1.0),
        SpeakerSimulator(address="127.0.0.84", device_id="speaker-c2", name="卧室音箱", keepalive_s=1.0),
    ]
    mdns_on = {"GATEWAY_DISCOVERY__MDNS": "true", "GATEWAY_DISCOVERY__INTERFACES": "lo"}
    base_env = {**os.environ, "GATEWAY_DISCOVERY__COAP": "false", "GATEWAY_CLOUD__TELEMETRY_INTERVAL_S": "1"}
    async with (
        running_cloud(tmp_path / "cloud", f"sqlite://{tmp_path / 'cloud.sqlite3'}") as cloud,
        PrivateBroker(workdir=tmp_path / "broker-a") as broker_a,
        PrivateBroker(workdir=tmp_path / "broker-b") as broker_b,
        Watcher(broker_a, "home/gw-a/#", name="watch-a") as seen_a,
        Watcher(broker_b, "home/gw-b/#", name="watch-b") as seen_b,
        asyncio.TaskGroup() as tg,
    ):
        sims = [tg.create_task(s.run()) for s in (*tvs, *speakers)]
        for s in (*tvs, *speakers):
            await s.wait_ready()
        a = Box("gw-a", "210102", broker_a, tmp_path / "a" / "state", seen_a,
                {**base_env, **mdns_on})  # fmt: skip
        b = Box("gw-b", "210202", broker_b, tmp_path / "b" / "state", seen_b,
                {**base_env, "GATEWAY_DISCOVERY__MDNS": "false"})  # fmt: skip
        st = Stand(cloud, a, b, tvs, speakers, [a, b])
        for box, household in ((a, "H-SY-1"), (b, "H-DL-1")):
            order = await cloud.workorder(household, box.region)
            await asyncio.to_thread(
                _provision, cloud.cloud.api_url, order["code"], box.gateway_id, box.state_dir
            )
            await box.start()
        try:

            async def ready() -> bool:
                gws = {g["id"]: g for g in await cloud.get("/v1/gateways")}
                devices = await cloud.get("/v1/gateways/gw-a/devices") if "gw-a" in gws else []
                online = sum(1 for d in devices if d.get("online"))
                return all(gws.get(g, {}).get("online") for g in ("gw-a", "gw-b")) and online >= 4

            await st.until(
                ready, "both gateways online and gw-a's 4 terminals shadowed in the cloud", timeout=40
            )
            yield st
        finally:
            for box in (a, b):
                await box.stop()
            for t in sims:
                t.cancel()


async def test_an_operator_alert_reaches_every_screen_and_speaker_of_its_region_only(stand: Stand) -> None:
    now = datetime.now(UTC)  # every fixture of this story is retimed to the same moment
    orange_cap = retimed("cn_rainstorm_orange_zh.xml", at=now)
    orange = await stand.send(orange_cap)
    assert orange["msg_type"] == "Alert" and orange["priority"] == 2
    assert orange["targets"] == ["210102", "210103"]  # the CAP geocodes, 210103000000 trimmed
    assert orange["gateways_expected"] == 1
    alert_id = orange["id"]

    await stand.until(lambda: all(o and o["kind"] == "alert" for o in stand.overlays()), "both TVs show it")
    for overlay in stand.overlays():
        assert overlay is not None and overlay["color"] == "orange" and "暴雨橙色预警" in overlay["headline"]
    for speaker in stand.speakers:
        said = speaker.state["said"]
        assert said and "橙色预警" in said[-1]["text"]

    async def covered() -> bool:
        cov = (await stand.status(alert_id))["coverage"]
        return bool(cov["devices_presented"] == 4)

    await stand.until(covered, "receipts for both TVs and both speakers")
    st = await stand.status(alert_id)
    assert st["coverage"] == {
        "gateways_expected": 1, "gateways_received": 1, "gateway_share": 1.0,
        "devices_known": 4, "devices_presented": 4, "device_share": 1.0,
    }  # fmt: skip
    (gw,) = st["gateways"]
    assert gw["id"] == "gw-a" and gw["result"] == "verified"
    assert sorted(d["device"] for d in gw["displayed"]) == ["bfy-tv-c1", "bfy-tv-c2"]
    assert sorted(d["device"] for d in gw["spoken"]) == ["bfy-speaker-c1", "bfy-speaker-c2"]
    # Every stage is timestamped: accepted by the cloud, verified, persisted and dispatched by
    # the gateway, presented by each device — in that order (one machine, one clock).
    line = gw["timeline"]
    for shown in gw["displayed"] + gw["spoken"]:
        stamps = [st["accepted_at"], line["verified"], line["persisted"], shown["dispatched"], shown["ts"]]
        assert [datetime.fromisoformat(t) for t in stamps] == sorted(
            datetime.fromisoformat(t) for t in stamps
        )

    # The installer's view on the box, and OK pressed from it: the cloud hears of it.
    common = ("--state-dir", str(stand.a.state_dir), "--id", "gw-a")
    shown = await asyncio.to_thread(gateway_cli, "alerts", *common, "--json")
    assert [a["id"] for a in json.loads(shown.stdout)["active"]] == [alert_id], shown.stderr
    table = await asyncio.to_thread(gateway_cli, "alerts", *common)
    assert "橙色 orange" in table.stdout and "暴雨橙色预警" in table.stdout
    acked = await asyncio.to_thread(gateway_cli, "alerts", *common, "--ack", alert_id)
    assert acked.returncode == 0, acked.stderr

    async def acknowledged() -> bool:
        (gw,) = (await stand.status(alert_id))["gateways"]
        return bool(gw["acknowledged"])

    await stand.until(acknowledged, "the acknowledgement receipt at the cloud")

    # Sent twice (an operator retrying after a timeout): accepted once, not resent.
    again = await stand.send(orange_cap)
    assert again["id"] == alert_id and again["duplicate"] is True

    # A Dalian alert reaches gw-b; gw-b never saw the Shenyang one, gw-a never sees Dalian's.
    dalian = await stand.send(
        retimed("cn_rainstorm_orange_zh.xml", identifier="DL-1", at=now), region=["2102"]
    )
    assert dalian["targets"] == ["2102"] and dalian["gateways_expected"] == 1
    await stand.b.local.wait(
        lambda: dalian["id"] in stand.b.alerts_seen(), what="gw-b shows the Dalian alert"
    )
    assert alert_id not in stand.b.alerts_seen()
    assert dalian["id"] not in stand.a.alerts_seen() and alert_id in stand.a.alerts_seen()

    # The update (red, level 1) replaces the orange one: full screen on every TV.
    red = await stand.send(retimed("cn_rainstorm_red_update_zh.xml", at=now))
    assert red["msg_type"] == "Update" and red["priority"] == 1
    await stand.until(
        lambda: all(o and o["style"] == "fullscreen" and o["color"] == "red" for o in stand.overlays()),
        "the red update full screen on both TVs",
    )
    assert (await stand.status(alert_id))["state"] == "updated"

    # A Cancel without regions goes where the alert it names went, and clears every screen.
    cancel = parse_cap_xml(retimed("cn_rainstorm_red_update_zh.xml", at=now)).model_copy(
        update={"identifier": "cancel-1", "msg_type": "Cancel"}
    )
    red_model = parse_cap_xml(retimed("cn_rainstorm_red_update_zh.xml", at=now))
    cancel = cancel.model_copy(
        update={
            "references": [
                Reference(sender=red_model.sender, identifier=red_model.identifier, sent=red_model.sent)
            ]
        }
    )
    sent = await stand.send(cancel.model_dump_json().encode(), kind="application/json")
    assert sent["msg_type"] == "Cancel" and sent["targets"] == ["210102"]
    await stand.until(lambda: all(o is None for o in stand.overlays()), "every TV cleared")
    assert (await stand.status(red["id"]))["state"] == "cancelled"


async def test_a_tampered_alert_is_shown_nowhere_and_reported_to_the_cloud(stand: Stand) -> None:
    service = stand.cloud.cloud.service
    assert service is not None
    genuine = parse_cap_xml(retimed("cn_rainstorm_orange_zh.xml", identifier="tampered"))
    payload = {"alert": genuine.model_dump(mode="json"), "alert_id": genuine.alert_id, "targets": ["2101"]}
    raw = bytearray(service.keys.current.signer.sign(new_envelope("alert", payload)).to_bytes())
    at = raw.index("暴雨".encode())
    raw[at + 1] ^= 0x01  # one bit of the event name
    assert service._mqtt.publish(topics.region("2101", "alert"), bytes(raw), qos=1)

    # Then a genuine alert, published after it on the same link: once it is on screen, the
    # tampered one has been through the gateway's verifier.
    ok = await stand.send(retimed("cn_rainstorm_orange_zh.xml"))
    await stand.until(lambda: all(o and o["kind"] == "alert" for o in stand.overlays()), "the genuine alert")
    assert genuine.alert_id not in stand.a.alerts_seen()
    assert ok["id"] in stand.a.alerts_seen()

    async def reported() -> list[dict[str, Any]]:
        events = await stand.cloud.get("/v1/security-events", gateway_id="gw-a")
        return [e for e in events if e["reason"] == "bad_signature"]

    await stand.until(reported, "gw-a reports the bad signature")
    (event,) = await reported()
    assert json.loads(event["detail"])["type"] == "alert"


async def test_a_gateway_offline_gets_the_alert_on_return_and_kill_9_loses_nothing(stand: Stand) -> None:
    await stand.a.stop()

    async def offline() -> bool:
        return not (await stand.cloud.get("/v1/gateways/gw-a"))["online"]

    await stand.until(offline, "the cloud sees gw-a offline")
    sent = await stand.send(retimed("cn_rainstorm_orange_zh.xml"))
    alert_id = sent["id"]
    assert (await stand.gateway_status(alert_id, "gw-a"))["received"] is None
    assert all(o is None for o in stand.overlays())

    await stand.a.start()
    await stand.until(lambda: all(o and o["kind"] == "alert" for o in stand.overlays()), "shown after return")

    async def received() -> bool:
        return bool((await stand.gateway_status(alert_id, "gw-a"))["received"])

    await stand.until(received, "gw-a's receipt")

    # kill -9, and the screens lose the overlay meanwhile (TVs power-cycled): when the gateway
    # is back, it presents the alert it kept again, with no help from the cloud.
    await stand.a.kill()
    for tv in stand.tvs:
        tv.command(b'{"overlay": null}')
    await stand.a.start()
    await stand.until(
        lambda: all(o and o["kind"] == "alert" for o in stand.overlays()), "shown after kill -9"
    )
    st = await stand.gateway_status(alert_id, "gw-a")
    assert st["result"] == "verified"


async def test_the_operators_diagnostics_show_what_the_boxs_lan_refused(stand: Stand) -> None:
    """`cloud command GW diagnostics` against the real daemon: a JSON reply with the link's
    counters and what the home network sent that the box refused."""
    r = await stand.cloud.api.post(
        "/v1/gateways/gw-a/commands", json={"name": "diagnostics", "timeout_s": 15}
    )
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["status"] == "ok", reply
    result = reply["result"]
    assert result["devices"] >= 4 and result["link"]["connects"] >= 1
    assert isinstance(result["lan_drops"], dict) and isinstance(result["http_refused"], dict)
    assert {"messages", "waiting"} <= set(result["outbox"])


async def test_transcripts_stay_home_and_an_impostor_is_reported_to_the_operator(stand: Stand) -> None:
    """What people say, and the answers, never go up; a device impersonating the living-room TV
    does, as a security event (after the transcripts, so the order shows they were held back)."""
    mosquitto_pub(stand.a.broker, "home/gw-a/voice/in", json.dumps({"text": "打开客厅的灯", "lang": "zh-CN"}))
    await stand.a.local.wait_message(lambda m: m.topic == "home/gw-a/event/voice_reply", what="the answer")
    async with hostile.ImpostorTerminal(address="127.0.0.88", target_id="tv-c1", heard_interval_s=0.5):

        async def reported() -> bool:
            ups = await stand.cloud.get("/v1/uplinks", gateway_id="gw-a", type="event", limit=1000)
            return any(u["payload"].get("kind") == "security" for u in ups)

        await stand.until(reported, "the impostor reported to the operator")
    events = await stand.cloud.get("/v1/uplinks", gateway_id="gw-a", type="event", limit=1000)
    kinds = [u["payload"].get("kind") for u in events]
    assert "voice" not in kinds and "voice_reply" not in kinds, kinds
    security = next(u["payload"] for u in events if u["payload"].get("kind") == "security")
    assert (security["reason"], security["device"]) == ("impostor", "bfy-tv-c1")
    assert not any("打开客厅的灯" in json.dumps(u["payload"], ensure_ascii=False) for u in events)
