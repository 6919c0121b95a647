"""Emergency alerts in a simulated home: every TV and speaker, lifecycle, restarts, local alarms."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.cap import Alert, Reference, parse_cap_xml
from firmware_sim.coap import CoapDevice
from firmware_sim.terminal import SpeakerSimulator, TvSimulator
from gateway.broker import PrivateBroker
from gateway.config import load_settings
from gateway.daemon import Gateway
from tests.helpers import INSTALLER_APPROVED, Topics, Watcher, mosquitto_pub

pytestmark = pytest.mark.netns

GW = "home1"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"
TVS = ("bfy-tv-a1", "bfy-tv-a2")
SPEAKERS = ("bfy-speaker-a1", "bfy-speaker-a2")


def fresh(alert: Alert, *, minutes: int = 60, sent_offset_s: int = 0) -> Alert:
    """The same alert, sent now and expiring in `minutes` (CAP times with a zone)."""
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=sent_offset_s)
    sent = now.isoformat()
    infos = [
        i.model_copy(
            update={
                "effective": sent,
                "onset": sent,
                "expires": (now + timedelta(minutes=minutes)).isoformat(),
            }
        )
        for i in alert.infos
    ]
    return alert.model_copy(update={"sent": sent, "infos": infos})


def cap(name: str) -> Alert:
    return parse_cap_xml((FIXTURES / name).read_bytes())


def payload(alert: Alert, targets: list[str] | None = None) -> dict[str, Any]:
    return {
        "alert": alert.model_dump(mode="json"),
        "alert_id": alert.alert_id,
        "targets": targets or ["2101"],
    }


@dataclass
class Home:
    gateway: Gateway
    topics: Topics
    broker: PrivateBroker
    tvs: list[TvSimulator]
    speakers: list[SpeakerSimulator]
    smoke: CoapDevice
    tmp: Path
    run: asyncio.Task[None] | None = None

    @property
    def alerts(self) -> Any:
        assert self.gateway.alerts is not None
        return self.gateway.alerts

    async def until(self, predicate: Any, what: str, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)


def settings(tmp: Path, broker: PrivateBroker) -> Any:
    return load_settings(
        overrides={
            "id": GW,
            "state_dir": str(tmp / "state"),
            "mqtt.url": broker.url,
            "http.listen": "127.0.0.1:0",
            "discovery.interfaces": ["lo"],
            "discovery.auto_approve": INSTALLER_APPROVED,
            "discovery.coap_interval_s": 1.0,
            "discovery.coap_window_s": 0.4,
            "alerts.repeat_interval_s": 5,
            "alerts.repeat_count": 3,
        },
        environ={},
    )


@pytest.fixture
async def home(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[Home]:
    tvs = [
        TvSimulator(address="127.0.0.71", device_id="tv-a1", name="客厅电视", keepalive_s=1.0),
        TvSimulator(
            address="127.0.0.72", device_id="tv-a2", name="卧室电视", keepalive_s=1.0, power_on=False
        ),
    ]
    speakers = [
        SpeakerSimulator(address="127.0.0.73", device_id="speaker-a1", name="客厅音箱", keepalive_s=1.0),
        SpeakerSimulator(address="127.0.0.74", device_id="speaker-a2", name="卧室音箱", keepalive_s=1.0),
    ]
    smoke = CoapDevice(
        kind="smoke", address="127.0.0.75", serial="BFY-SMK-777", name="厨房烟感", report_interval_s=0.5
    )
    async with Watcher(broker, f"home/{GW}/#") as topics, asyncio.TaskGroup() as tg:
        sims = [tg.create_task(s.run()) for s in (*tvs, *speakers, smoke)]
        for s in (*tvs, *speakers, smoke):
            await s.wait_ready()
        h = Home(Gateway(settings(tmp_path, broker)), topics, broker, tvs, speakers, smoke, tmp_path)
        run = h.run = tg.create_task(h.gateway.run())
        async with asyncio.timeout(10):
            await h.gateway.ready.wait()
        hub = h.gateway.hub
        assert hub is not None
        await h.until(
            lambda: all(hub.get(d) and hub.get(d).online for d in (*TVS, *SPEAKERS, "coap-bfy-smk-777")),  # type: ignore[union-attr]
            "every TV, speaker and the smoke detector online",
            timeout=20,
        )
        yield h
        h.gateway.stop()
        await run
        for t in sims:
            t.cancel()


async def test_an_orange_alert_reaches_every_screen_and_speaker_then_a_cancel_clears_it(home: Home) -> None:
    alert = fresh(cap("cn_rainstorm_orange_zh.xml"))
    assert await home.alerts.on_cloud_alert(payload(alert)) == "presented"
    for tv in home.tvs:
        overlay = tv.state["overlay"] if tv.state["on"] else tv.pending_overlay
        assert overlay is not None and overlay["kind"] == "alert"
        assert overlay["level"] == 2 and overlay["style"] == "banner" and overlay["color"] == "orange"
        assert "暴雨橙色预警" in overlay["headline"]
    assert home.tvs[1].state["on"] is False  # below level 1 a TV in standby is not woken
    for speaker in home.speakers:
        said = speaker.state["said"]
        assert said and said[-1]["priority"] == "alert" and "橙色预警" in said[-1]["text"]
    topic = f"home/{GW}/alert/{alert.alert_id}"
    await home.topics.wait(lambda: bool(home.topics.retained.get(topic)), what="retained alert")
    assert json.loads(home.topics.retained[topic])["level"] == 2
    # The same alert again presents nothing new.
    said_before = len(home.speakers[0].state["said"])
    assert await home.alerts.on_cloud_alert(payload(alert)) == "duplicate"
    assert len(home.speakers[0].state["said"]) == said_before
    # A Cancel naming it removes it everywhere.
    cancel = cap("nws_fire_weather_watch_cancel.xml")
    cancel = fresh(cancel.model_copy(update={"references": [
        Reference(sender=alert.sender, identifier=alert.identifier, sent=alert.sent)
    ]}), minutes=30)  # fmt: skip
    await home.alerts.on_cloud_alert(payload(cancel))
    assert home.tvs[0].state["overlay"] is None
    await home.topics.wait(lambda: home.topics.retained.get(topic) == b"", what="retained alert cleared")


async def test_level_1_wakes_the_tvs_raises_volume_and_repeats_until_acknowledged(home: Home) -> None:
    orange = cap("cn_rainstorm_orange_zh.xml")
    infos = [
        i.model_copy(update={"severity": "Extreme", "parameters": [], "headline": "红色预警：特大暴雨"})
        for i in orange.infos
    ]
    red = fresh(orange.model_copy(update={"identifier": "red-1", "infos": infos}))
    assert await home.alerts.on_cloud_alert(payload(red)) == "presented"
    for tv in home.tvs:
        assert tv.state["on"] is True
        assert tv.state["overlay"]["style"] == "fullscreen"
        assert tv.state["volume"] >= 60 and tv.state["muted"] is False
    await home.until(lambda: len(home.speakers[0].state["said"]) >= 2, "repeated announcement", timeout=15)
    assert await home.alerts.acknowledge(red.alert_id, "test")
    count = len(home.speakers[0].state["said"])
    # Acknowledged: no more announcements, but a level-1 alert stays on screen until it ends.
    assert home.tvs[0].state["overlay"]["acknowledged"] is True
    assert len(home.speakers[0].state["said"]) == count


async def test_a_cancel_before_its_alert_suppresses_it(home: Home) -> None:
    alert = fresh(cap("cn_rainstorm_orange_zh.xml"), sent_offset_s=-5)
    cancel = fresh(cap("nws_fire_weather_watch_cancel.xml")).model_copy(
        update={"references": [Reference(sender=alert.sender, identifier=alert.identifier, sent=alert.sent)]}
    )
    await home.alerts.on_cloud_alert(payload(cancel))
    assert await home.alerts.on_cloud_alert(payload(alert)) == "suppressed"
    assert home.tvs[0].state["overlay"] is None


async def test_expired_far_future_and_out_of_region_alerts_are_not_presented(home: Home) -> None:
    base = cap("cn_rainstorm_orange_zh.xml")
    expired = fresh(base, minutes=-1)
    future = fresh(base.model_copy(update={"identifier": "future"}), sent_offset_s=3600)
    assert await home.alerts.on_cloud_alert(payload(expired)) == "rejected"
    assert await home.alerts.on_cloud_alert(payload(future)) == "rejected"
    home.alerts.set_links(region="210102", receipt=None, security=None)
    elsewhere = fresh(base.model_copy(update={"identifier": "elsewhere"}))
    assert await home.alerts.on_cloud_alert(payload(elsewhere, ["2102"])) == "suppressed"
    assert home.tvs[0].state["overlay"] is None


async def test_nobody_else_may_use_the_alert_presentation(home: Home) -> None:
    mosquitto_pub(
        home.broker, f"home/{GW}/device/{TVS[0]}/set", '{"overlay": {"kind": "alert", "headline": "假警报"}}'
    )
    msg = await home.topics.wait_message(lambda m: m.topic.endswith("/event/error"), what="refused")
    assert json.loads(msg.payload)["reason"] == "reserved"
    assert home.tvs[0].state["overlay"] is None


async def test_a_smoke_detector_raises_a_household_alarm_with_no_cloud(home: Home) -> None:
    home.smoke.set_input(True)
    await home.until(lambda: home.tvs[0].state["overlay"] is not None, "alarm on the TV", timeout=15)
    overlay = home.tvs[0].state["overlay"]
    assert overlay["level"] == 1 and "厨房烟感" in overlay["headline"] and "烟雾" in overlay["headline"]
    assert home.tvs[1].state["on"] is True
    await home.until(lambda: any("烟雾" in s["text"] for s in home.speakers[1].state["said"]), "alarm spoken")
    home.smoke.set_input(False)
    await home.until(
        lambda: home.tvs[0].state["overlay"] is None, "alarm over when the smoke clears", timeout=15
    )


async def test_an_active_alert_is_presented_again_after_a_restart(home: Home) -> None:
    alert = fresh(cap("cn_rainstorm_orange_zh.xml"))
    await home.alerts.on_cloud_alert(payload(alert))
    home.gateway.stop()
    assert home.run is not None
    await home.run
    said = len(home.speakers[0].state["said"])
    gateway = Gateway(settings(home.tmp, home.broker))
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(gateway.run())
        async with asyncio.timeout(10):
            await gateway.ready.wait()
        assert gateway.alerts is not None and [a["id"] for a in gateway.alerts.active()] == [alert.alert_id]
        # Announced again when the speaker is back on the network.
        await home.until(lambda: len(home.speakers[0].state["said"]) > said, "announced again", timeout=20)
        assert home.tvs[0].state["overlay"]["alert_id"] == alert.alert_id
        gateway.stop()
        await run


def leveled(base: Alert, identifier: str, level: int, *, sent_offset_s: int = 0) -> Alert:
    """The fixture as a new alert of the given level (its colour word decides)."""
    colour = {1: "红色", 2: "橙色", 3: "黄色", 4: "蓝色"}[level]
    infos = [
        i.model_copy(update={"parameters": [], "headline": f"{colour}预警：{identifier}"}) for i in base.infos
    ]
    return fresh(
        base.model_copy(update={"identifier": identifier, "infos": infos}), sent_offset_s=sent_offset_s
    )


def said_last(speaker: SpeakerSimulator) -> str:
    alerts = [s for s in speaker.state["said"] if s.get("priority") == "alert"]
    return str(alerts[-1]["text"]) if alerts else ""


async def test_the_most_important_alert_stays_on_screen_and_is_the_one_repeated(home: Home) -> None:
    base = cap("cn_rainstorm_orange_zh.xml")
    red, blue = leveled(base, "red-1", 1), leveled(base, "blue-1", 4, sent_offset_s=1)
    assert await home.alerts.on_cloud_alert(payload(red)) == "presented"
    # A newer but lower notice does not hide the red warning: it waits, in force, listed.
    assert await home.alerts.on_cloud_alert(payload(blue)) == "in force"
    for tv in home.tvs:
        assert tv.state["overlay"]["alert_id"] == red.alert_id and tv.state["overlay"]["more"] == 1
    assert all("red-1" in said_last(s) for s in home.speakers)
    assert [a["id"] for a in home.alerts.active()] == [red.alert_id, blue.alert_id]

    def repeated() -> bool:
        return all(len([x for x in s.state["said"] if "red-1" in x["text"]]) >= 2 for s in home.speakers)

    await home.until(repeated, "the red warning repeated", timeout=15)
    assert not any("blue-1" in x["text"] for s in home.speakers for x in s.state["said"])
    # Acknowledging the blue one leaves the red one on every screen.
    assert await home.alerts.acknowledge(blue.alert_id, "test")
    assert all(tv.state["overlay"]["alert_id"] == red.alert_id for tv in home.tvs)
    # An orange one, then the red one is cancelled: the orange one comes to every screen and speaker.
    orange = leveled(base, "orange-1", 2, sent_offset_s=2)
    assert await home.alerts.on_cloud_alert(payload(orange)) == "in force"
    cancel = fresh(cap("nws_fire_weather_watch_cancel.xml")).model_copy(
        update={"references": [Reference(sender=red.sender, identifier=red.identifier, sent=red.sent)]}
    )
    await home.alerts.on_cloud_alert(payload(cancel))
    for tv in home.tvs:
        assert tv.state["overlay"]["alert_id"] == orange.alert_id and tv.state["overlay"]["more"] == 0
    assert all("orange-1" in said_last(s) for s in home.speakers)


async def test_an_update_takes_its_originals_place_and_ties_go_to_the_newest(home: Home) -> None:
    base = cap("cn_rainstorm_orange_zh.xml")
    first, second = leveled(base, "y-1", 3), leveled(base, "y-2", 3, sent_offset_s=1)
    await home.alerts.on_cloud_alert(payload(first))
    assert await home.alerts.on_cloud_alert(payload(second)) == "presented"  # same level: the newest
    watching = [tv for tv in home.tvs if tv.state["on"]]  # below level 1 a TV in standby stays dark
    assert watching and all(tv.state["overlay"]["alert_id"] == second.alert_id for tv in watching)
    update = leveled(base, "y-1-upd", 2, sent_offset_s=2).model_copy(
        update={
            "msg_type": "Update",
            "references": [Reference(sender=first.sender, identifier=first.identifier, sent=first.sent)],
        }
    )
    assert await home.alerts.on_cloud_alert(payload(update)) == "presented"
    assert all(tv.state["overlay"]["alert_id"] == update.alert_id for tv in watching)
    assert {a["id"] for a in home.alerts.active()} == {update.alert_id, second.alert_id}


async def test_drills_are_labelled_as_documented(home: Home) -> None:
    drill = fresh(cap("cn_rainstorm_orange_zh.xml")).model_copy(
        update={"status": "Exercise", "identifier": "d-1"}
    )
    assert await home.alerts.on_cloud_alert(payload(drill)) == "presented"
    assert all("演练" in tv.state["overlay"]["title"] for tv in home.tvs if tv.state["on"])
    assert all(said_last(s).startswith("演练") for s in home.speakers)
