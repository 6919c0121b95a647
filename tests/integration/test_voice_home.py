"""Voice end to end: a real gateway and the simulated household. A person speaks to a speaker
(the simulator's `POST /api/v1/hear`) or a LAN client publishes a transcript on
`home/<gw>/voice/in`; the gateway understands it, acts through its command path and answers.

Every flow asserts on the simulators' own state (the Zigbee bridge's bulb, the CoAP light, the
climate sensors) and on what the speaker says (its own event stream and `state["said"]`).
Besides the household, one more speaker stands in the study, a room without a light: there
"打开灯" is ambiguous, while in the living room the speaker's own room settles it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import httpx
import pytest

from firmware_sim.coap import CoapDevice
from firmware_sim.household import Simulator, household_simulators
from firmware_sim.terminal import SpeakerSimulator
from firmware_sim.zigbee2mqtt import Zigbee2MqttBridge
from gateway.broker import PrivateBroker
from gateway.bus import Event
from gateway.config import load_settings
from gateway.daemon import Gateway
from gateway.hub import Hub
from tests.helpers import INSTALLER_APPROVED, Topics, Watcher, mosquitto_pub

pytestmark = pytest.mark.netns

GW = "voice1"
LIVING_SPEAKER = "bfy-speaker-8e2f41a0b7c3"
BEDROOM_SPEAKER = "bfy-speaker-8e2f41a0b7c4"
STUDY_SPEAKER = "bfy-speaker-5d1c0a9e7b21"  # not in the household: the extra one in the study
LIVING_TV = "bfy-tv-5c0a1b2c3d4e"
LIVING_BULB = "zigbee-000b57fffe8c4d21"  # 客厅灯, behind the Zigbee2MQTT bridge
BEDROOM_LIGHT = "coap-bfy-lgt-000001"  # 卧室灯, CoAP
#: The living room's two climate sensors (both named 客厅温湿度): Zigbee and CoAP.
LIVING_CLIMATE_ZIGBEE = "zigbee-00158d0004a1b2c1"
LIVING_CLIMATE_COAP = "coap-bfy-clm-000002"
#: Every approved device: the household's 16 and the study speaker.
DEVICES = 17
BULB_TOPIC = "zigbee2mqtt/客厅灯"
#: `{"on": false, "brightness": 100}` as the gateway sends it to the bulb (brightness 0..254).
BULB_MARKER = {"state": "OFF", "brightness": 254}


class Ear:
    """A speaker simulator's own event stream (`GET /api/v1/events`): what it says, as it says it."""

    def __init__(self, speaker: SpeakerSimulator) -> None:
        self.speaker = speaker
        self.said: list[dict[str, Any]] = []
        self.connected = asyncio.Event()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        # The speaker sends a keep-alive comment every 15 s; a read waits at most twice that.
        timeout = httpx.Timeout(5.0, read=30.0)
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream("GET", f"{self.speaker.base_url}/events") as response,
        ):
            response.raise_for_status()
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event == "state":
                    self.said = json.loads(line.removeprefix("data:"))["said"]
                    self.connected.set()
                    self._changed.set()
                elif not line:
                    event = ""

    async def ask(self, text: str, timeout: float = 10.0) -> dict[str, Any]:
        """Say `text` to the speaker; return what it says back (from its own state)."""
        before = len(self.said)
        async with httpx.AsyncClient(timeout=5.0) as client:
            r = await client.post(f"{self.speaker.base_url}/hear", json={"text": text})
            assert r.status_code == 200, r.text
        try:
            async with asyncio.timeout(timeout):
                while len(self.said) <= before:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.speaker.name} said nothing within {timeout:g} s to {text!r}"
            ) from None
        assert len(self.said) == before + 1, f"more than one answer to {text!r}: {self.said[before:]}"
        reply = self.said[before]
        assert self.speaker.state["said"][-1] == reply  # the simulator's state, not only its stream
        return reply


@dataclass
class Home:
    broker: PrivateBroker
    gateway: Gateway
    hub: Hub
    sims: dict[str, Simulator]
    bridge: Zigbee2MqttBridge
    topics: Topics
    ears: dict[str, Ear]

    def lan(self, name: str) -> Any:
        return self.sims[name].sim  # type: ignore[attr-defined]

    @property
    def bedroom_light(self) -> CoapDevice:
        light: CoapDevice = self.lan("卧室灯")
        return light

    def bulb(self) -> dict[str, Any]:
        """The Zigbee bulb as the bridge itself holds it."""
        return self.bridge.device_state("客厅灯")

    def lights(self) -> dict[str, dict[str, Any]]:
        """Every light of the home, from the simulators' own state."""
        bulb = self.bulb()
        return {
            LIVING_BULB: {k: bulb[k] for k in ("state", "brightness", "color_temp")},
            BEDROOM_LIGHT: {k: self.bedroom_light.state[k] for k in ("on", "brightness")},
        }

    async def bulb_reports(self, state: str) -> None:
        """Until the bridge publishes the bulb with `state` (ON/OFF) on its own topic."""

        def reported() -> bool:
            raw = self.topics.retained.get(BULB_TOPIC)
            return raw is not None and json.loads(raw).get("state") == state

        await self.topics.wait(reported, what=f"the bridge reports the bulb {state}")

    def bulb_commands(self, since: int) -> list[dict[str, Any]]:
        """What the gateway sent to the bulb (`zigbee2mqtt/客厅灯/set`) after message `since`."""
        return [json.loads(m.payload) for m in self.topics.messages[since:] if m.topic == f"{BULB_TOPIC}/set"]

    async def bulb_marker(self) -> None:
        """Send the bulb a command that changes nothing (off, full brightness, as it is) through
        the gateway, and wait until the gateway has passed it on to the bridge."""
        mark = len(self.topics.messages)
        mosquitto_pub(self.broker, f"home/{GW}/device/{LIVING_BULB}/set", '{"on": false, "brightness": 100}')
        await self.topics.wait(
            lambda: BULB_MARKER in self.bulb_commands(mark), what="the marker command at the bridge"
        )

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        """Wait on the gateway's bus (no sleeping) until `predicate` holds."""
        async with self.hub.bus.subscribe() as events:
            try:
                async with asyncio.timeout(timeout):
                    while not predicate():
                        await events.get()
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None

    def state(self, device_id: str) -> dict[str, Any]:
        dev = self.hub.get(device_id)
        return dev.state if dev else {}


@pytest.fixture
async def home(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[Home]:
    settings = load_settings(
        overrides={
            "id": GW,
            "state_dir": str(tmp_path / "state"),
            "mqtt.url": broker.url,
            "http.listen": "127.0.0.1:0",
            "discovery.interfaces": ["lo"],
            "discovery.auto_approve": INSTALLER_APPROVED,
            "discovery.coap": True,
            "discovery.terminal_event_timeout_s": 20.0,  # the terminals send a keep-alive every 15 s
            "registry.flush_interval_s": 0.5,
        },
        environ={},
    )
    gateway = Gateway(settings)
    sims = {s.name: s for s in household_simulators(seed=7, tele_period_s=1, lan=True)}
    bridge = next(s for s in sims.values() if isinstance(s, Zigbee2MqttBridge))
    study = SpeakerSimulator(address="127.0.0.35", device_id="speaker-5d1c0a9e7b21", name="书房音箱")
    async with Watcher(broker, f"home/{GW}/#", "zigbee2mqtt/#") as topics, asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(s.run(broker.url), name=f"sim-{s.name}") for s in sims.values()]
        tasks.append(tg.create_task(study.run(), name="sim-study-speaker"))
        run = tg.create_task(gateway.run(), name="gateway")
        async with asyncio.timeout(10):
            await gateway.ready.wait()
        assert gateway.hub is not None
        hub = gateway.hub
        speakers = {
            LIVING_SPEAKER: sims["客厅音箱"].sim,  # type: ignore[attr-defined]
            BEDROOM_SPEAKER: sims["卧室音箱"].sim,  # type: ignore[attr-defined]
            STUDY_SPEAKER: study,
        }
        ears = {device_id: Ear(speaker) for device_id, speaker in speakers.items()}
        await study.wait_ready()
        for device_id, ear in ears.items():
            tasks.append(tg.create_task(ear.run(), name=f"ear-{device_id}"))
        h = Home(broker, gateway, hub, sims, bridge, topics, ears)

        def all_up() -> bool:
            devices = hub.devices(approved=True)
            return len(devices) >= DEVICES and all(d.online and d.state for d in devices)

        await h.until(all_up, "every device approved and online", timeout=30)
        async with asyncio.timeout(10):
            for ear in ears.values():
                await ear.connected.wait()
        # The rooms the voice service goes by (named after the devices: 客厅音箱 → 客厅).
        rooms = {d.info.id: d.info.room for d in hub.devices(approved=True)}
        assert [rooms[s] for s in (LIVING_SPEAKER, BEDROOM_SPEAKER, STUDY_SPEAKER)] == [
            "客厅",
            "卧室",
            "书房",
        ]
        assert {d.info.id for d in hub.devices(approved=True) if d.info.kind == "light"} == {
            LIVING_BULB,
            BEDROOM_LIGHT,
        }
        assert h.bulb()["state"] == "OFF"
        assert h.bedroom_light.state["on"] is False
        yield h
        gateway.stop()
        await run
        for task in tasks:
            task.cancel()


# -- flows ------------------------------------------------------------------------------------


async def test_the_living_room_speaker_turns_on_the_living_room_light(home: Home) -> None:
    ear = home.ears[LIVING_SPEAKER]
    reply = await ear.ask("打开客厅的灯")
    assert (reply["text"], reply["lang"]) == ("好的，已打开了客厅灯。", "zh-CN")
    await home.bulb_reports("ON")
    assert home.bulb()["state"] == "ON"
    assert home.bedroom_light.state["on"] is False
    # Only the speaker that heard it answers.
    assert home.ears[BEDROOM_SPEAKER].said == home.ears[STUDY_SPEAKER].said == []


class LivingRoomClimate:
    """The living room's two climate sensors, read from the simulators themselves whenever the
    gateway hears from either: every pair of readings the gateway could average."""

    def __init__(self, home: Home) -> None:
        self._home = home
        self.zigbee: list[float] = []
        self.coap: list[float] = []
        self.reports = 0
        self._unlisten: Callable[[], None] | None = None

    def _sensors(self) -> tuple[float, float]:
        """(Zigbee, CoAP): what the two simulators read now."""
        zigbee = self._home.bridge.device_state("客厅温湿度")["temperature"]
        coap = self._home.lan("客厅温湿度").state["temperature"]
        return float(zigbee), float(coap)

    def _read(self) -> None:
        zigbee, coap = self._sensors()
        self.zigbee.append(zigbee)
        self.coap.append(coap)

    def _on(self, event: Event) -> None:
        # A synchronous bus listener runs as the gateway takes the report in, before any answer
        # can use it; the next simulated reading is ≥ 0.8 s away.
        if (
            event.kind == "state"
            and event.device_id in (LIVING_CLIMATE_ZIGBEE, LIVING_CLIMATE_COAP)
            and "temperature" in event.data
        ):
            self.reports += 1
            self._read()

    async def __aenter__(self) -> LivingRoomClimate:
        # Start where the gateway knows what the sensors read.
        def known() -> bool:
            seen = (
                self._home.state(LIVING_CLIMATE_ZIGBEE).get("temperature"),
                self._home.state(LIVING_CLIMATE_COAP).get("temperature"),
            )
            return seen == self._sensors()

        await self._home.until(known, "the gateway knows both living-room temperatures")
        self._read()
        self._unlisten = self._home.hub.bus.listen(self._on)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._unlisten is not None:
            self._unlisten()

    def answers(self) -> set[float]:
        """What the gateway may answer: the mean of any reading of one and any of the other."""
        return {round((z + c) / 2, 1) for z, c in product(self.zigbee, self.coap)}


def degrees(text: str, pattern: str) -> float:
    found = re.fullmatch(pattern, text)
    assert found, f"{text!r} is not like {pattern!r}"
    return float(found.group(1))


async def test_the_temperature_is_the_living_room_sensors_reading_in_chinese_and_english(
    home: Home,
) -> None:
    ear = home.ears[LIVING_SPEAKER]
    # The readings move every second; ask both until neither sensor reported in between, so
    # that the two answers must give one number (each answer is checked every time).
    for _ in range(10):
        async with LivingRoomClimate(home) as climate:
            zh = await ear.ask("客厅现在多少度")
            en = await ear.ask("what's the temperature in the living room")
        assert zh["lang"] == "zh-CN" and en["lang"] == "en"
        zh_c = degrees(zh["text"], r"客厅现在(-?\d+(?:\.\d)?)度。")
        en_c = degrees(en["text"], r"It's (-?\d+(?:\.\d)?) degrees in the living room\.")
        assert zh_c in climate.answers(), (zh_c, climate.zigbee, climate.coap)
        assert en_c in climate.answers(), (en_c, climate.zigbee, climate.coap)
        if climate.reports == 0:
            assert zh_c == en_c == round((climate.zigbee[0] + climate.coap[0]) / 2, 1)
            return
    pytest.fail("the sensors reported between the questions in each of 10 tries")


async def test_an_ambiguous_request_is_asked_back_and_the_answer_completes_it(home: Home) -> None:
    study = home.ears[STUDY_SPEAKER]
    lights = home.lights()
    mark = len(home.topics.messages)
    question = await study.ask("打开灯")  # two lights, none in the study
    assert (question["text"], question["lang"]) == ("哪个房间的灯？", "zh-CN")
    await home.bulb_marker()
    assert home.bulb_commands(mark) == [BULB_MARKER]
    assert home.lights() == lights

    reply = await study.ask("客厅")
    assert reply["text"] == "好的，已打开了客厅灯。"
    await home.bulb_reports("ON")
    assert home.bulb()["state"] == "ON"
    assert home.bedroom_light.state["on"] is False

    # In the bedroom the speaker's own room settles it: no question.
    reply = await home.ears[BEDROOM_SPEAKER].ask("打开灯")
    assert reply["text"] == "好的，已打开了卧室灯。"
    assert home.bedroom_light.state["on"] is True  # CoAP: the gateway answers after the light's ack
    assert home.bulb()["state"] == "ON"


async def test_a_song_request_plays_it_and_leaves_the_lights_alone(home: Home) -> None:
    ear = home.ears[LIVING_SPEAKER]
    speaker: SpeakerSimulator = ear.speaker
    lights = home.lights()
    mark = len(home.topics.messages)
    reply = await ear.ask("播放周深的大鱼")
    assert (reply["text"], reply["lang"]) == ("好的，为您播放周深的大鱼。", "zh-CN")
    assert speaker.state["playing"] is True
    # Whatever the gateway sent the bulb for the request went out before the answer; a marker
    # command sent after it arrives after it (one connection, one topic): only the marker came.
    await home.bulb_marker()
    assert home.bulb_commands(mark) == [BULB_MARKER]
    assert home.lights() == lights


async def test_a_transcript_on_mqtt_is_executed_and_answered_with_an_event(home: Home) -> None:
    # The TV's voice remote: the TV cannot speak, so the answer comes as an event.
    heard = {"text": "打开客厅的灯", "lang": "zh-CN", "source": LIVING_TV}
    mosquitto_pub(home.broker, f"home/{GW}/voice/in", json.dumps(heard, ensure_ascii=False))
    msg = await home.topics.wait_message(
        lambda m: m.topic == f"home/{GW}/event/voice_reply", what="the voice reply event"
    )
    assert json.loads(msg.payload) == {
        "text": "好的，已打开了客厅灯。",
        "lang": "zh-CN",
        "to": LIVING_TV,
        "heard": "打开客厅的灯",
    }
    await home.bulb_reports("ON")
    assert home.bulb()["state"] == "ON"
    assert all(ear.said == [] for ear in home.ears.values())

    # What is not a transcript is refused on event/error.
    mosquitto_pub(home.broker, f"home/{GW}/voice/in", '{"lang": "zh-CN"}')
    msg = await home.topics.wait_message(
        lambda m: m.topic == f"home/{GW}/event/error", what="the refusal of a payload without text"
    )
    assert json.loads(msg.payload)["reason"] == "invalid_voice"


async def test_a_new_command_after_a_question_is_a_new_command(home: Home) -> None:
    study = home.ears[STUDY_SPEAKER]
    question = await study.ask("打开灯")
    assert question["text"] == "哪个房间的灯？"
    mark = len(home.topics.messages)
    reply = await study.ask("关闭客厅的灯")
    assert reply["text"] == "好的，已关闭了客厅灯。"
    await home.bulb_marker()
    assert home.bulb_commands(mark) == [{"state": "OFF"}, BULB_MARKER]
