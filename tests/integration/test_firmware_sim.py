"""The simulated firmware against a real private Mosquitto, seen by an independent client.

Each test starts simulators on the `broker` fixture and checks what a Home Assistant- or
Zigbee2MQTT-aware client would see: topics, payload shapes (compared with the recorded real
payloads under tests/fixtures), retained flags, answers to commands, behaviour across a broker
restart and on a clean stop. Waiting is always on received messages, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from firmware_sim import (
    BrokerUrlError,
    DeviceKind,
    TasmotaPlug,
    Zigbee2MqttBridge,
    ZigbeeDevice,
    default_devices,
    parse_mqtt_url,
    run_household,
)
from firmware_sim.tasmota import TasmotaDiscoveryConfig, TasmotaSensor
from firmware_sim.zigbee2mqtt import BridgeDevice, Expose
from gateway.broker import PrivateBroker

FIXTURES = Path(__file__).parent.parent / "fixtures"
WAIT_S = 10.0
FAST_S = 0.2  # telemetry / report period used by these tests

MAC = "A4CF12B3C4D5"
TOPIC = "tasmota_B3C4D5"


# --- an independent MQTT client --------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


class Observer:
    """Records every message on its filters; tests wait for the ones they expect."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._changed = asyncio.Event()

    def mark(self) -> int:
        """A position in the record: `wait_for(..., after=mark)` ignores what came before."""
        return len(self.seen)

    async def wait_for(
        self,
        topic: str,
        match: Callable[[Seen], bool] = lambda _: True,
        *,
        after: int = 0,
        timeout: float = WAIT_S,
    ) -> Seen:
        start = after
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for item in self.seen[start:]:
                        if item.topic == topic and match(item):
                            return item
                    start = len(self.seen)
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            seen = sorted({s.topic for s in self.seen})
            raise AssertionError(
                f"no matching message on {topic} within {timeout:g} s; topics seen: {seen}"
            ) from None

    async def _pump(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the broker was killed under us
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                self.seen.append(Seen(message.topic.value, payload, bool(message.retain)))
                self._changed.set()


@contextlib.asynccontextmanager
async def observing(broker: PrivateBroker, *filters: str) -> AsyncIterator[Observer]:
    observer = Observer()
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"observer-{uuid.uuid4().hex[:8]}"
    ) as client:
        await client.subscribe([(f, 0) for f in filters])
        pump = asyncio.create_task(observer._pump(client), name="observer-pump")
        try:
            yield observer
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


@contextlib.asynccontextmanager
async def running(*simulators: TasmotaPlug | Zigbee2MqttBridge, url: str) -> AsyncIterator[None]:
    """Run simulators for the duration of the block; always cancelled and awaited after."""
    tasks = [asyncio.create_task(s.run(url), name=f"sim-{s.name}") for s in simulators]
    try:
        async with asyncio.timeout(WAIT_S):
            for simulator in simulators:
                await simulator.wait_ready()
        yield
    finally:
        await stop(*tasks)


async def stop(*tasks: asyncio.Task[None]) -> None:
    """Cancel and await; a simulator that does not stop within WAIT_S fails the test."""
    for task in tasks:
        task.cancel()
    async with asyncio.timeout(WAIT_S):
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish(broker: PrivateBroker, topic: str, payload: str | bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1)


def fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def expose_signature(expose: Expose) -> tuple[Any, ...]:
    """What a consumer relies on in an expose: name, type, access, unit, range, values."""
    return (
        expose.type, expose.name, expose.property, expose.access, expose.unit,
        expose.value_min, expose.value_max, expose.value_on, expose.value_off,
        tuple(expose.values or ()),
        tuple(expose_signature(f) for f in expose.features or ()),
    )  # fmt: skip


def flat_exposes(exposes: list[Expose]) -> set[tuple[Any, ...]]:
    flat: set[tuple[Any, ...]] = set()
    for expose in exposes:
        flat.add(expose_signature(expose.model_copy(update={"features": None})))
        flat |= flat_exposes(expose.features or [])
    return flat


def plug(**kw: Any) -> TasmotaPlug:
    options: dict[str, Any] = {
        "mac": MAC, "friendly_name": "客厅插座", "tele_period_s": FAST_S, "seed": 7,
    }  # fmt: skip
    return TasmotaPlug(**(options | kw))


# --- Tasmota ---------------------------------------------------------------------------


async def test_tasmota_discovery_matches_the_real_key_set(broker: PrivateBroker) -> None:
    device = plug()
    async with (
        running(device, url=broker.url),
        observing(broker, "tasmota/discovery/#", f"tele/{TOPIC}/#") as seen,
    ):
        config = await seen.wait_for(f"tasmota/discovery/{MAC}/config")
        sensors = await seen.wait_for(f"tasmota/discovery/{MAC}/sensors")
        lwt = await seen.wait_for(f"tele/{TOPIC}/LWT")

    assert config.retain
    assert sensors.retain
    assert lwt.retain
    assert lwt.text == "Online"
    recorded = fixture_json("tasmota/discovery_config_sonoff_s31.json")
    live = config.json()
    assert list(live) == list(recorded)  # same keys, in the firmware's order
    TasmotaDiscoveryConfig.model_validate(recorded)
    parsed = TasmotaDiscoveryConfig.model_validate(live)
    assert parsed.mac == MAC
    assert parsed.t == TOPIC
    assert parsed.ft == "%prefix%/%topic%/"
    assert parsed.fn == ["客厅插座", *[None] * 7]
    assert parsed.hn.startswith("tasmota-B3C4D5-")
    assert (parsed.ofln, parsed.onln, parsed.tp) == ("Offline", "Online", ["cmnd", "stat", "tele"])
    assert parsed.rl == [1, 0, 0, 0, 0, 0, 0, 0]
    sn = sensors.json()
    assert set(sn) == {"sn", "ver"}
    assert set(sn["sn"]["ENERGY"]) == set(fixture_json("tasmota/tele_sensor_energy.json")["ENERGY"])


async def test_tasmota_power_commands_answer_like_the_firmware(broker: PrivateBroker) -> None:
    device = plug()
    async with (
        running(device, url=broker.url),
        observing(broker, f"stat/{TOPIC}/#") as seen,
    ):
        for payload, expected in (("OFF", "OFF"), ("on", "ON"), ("TOGGLE", "OFF"), ("2", "ON"),
                                  ("0", "OFF"), ("", "OFF"), ("1", "ON")):  # fmt: skip
            mark = seen.mark()
            await publish(broker, f"cmnd/{TOPIC}/POWER", payload)
            result = await seen.wait_for(f"stat/{TOPIC}/RESULT", after=mark)
            power = await seen.wait_for(f"stat/{TOPIC}/POWER", after=mark)
            assert result.json() == {"POWER": expected}, payload
            assert power.text == expected
            assert not power.retain
        assert device.power_on

        mark = seen.mark()
        await publish(broker, f"cmnd/{TOPIC}/Power1", "off")
        assert (await seen.wait_for(f"stat/{TOPIC}/POWER", after=mark)).text == "OFF"

        mark = seen.mark()
        await publish(broker, f"cmnd/{TOPIC}/Dimmer", "50")
        unknown = await seen.wait_for(f"stat/{TOPIC}/RESULT", after=mark)
        assert unknown.json() == {"Command": "Unknown"}

        # Garbage is dropped (and logged once); the plug keeps answering.
        await publish(broker, f"cmnd/{TOPIC}/POWER", b"\xff\xfe\x00")
        mark = seen.mark()
        await publish(broker, f"cmnd/{TOPIC}/POWER", "sideways")
        assert (await seen.wait_for(f"stat/{TOPIC}/POWER", after=mark)).text == "OFF"
        assert device.complaints.count >= 2

        mark = seen.mark()
        await publish(broker, f"cmnd/{TOPIC}/STATUS", "10")
        status = await seen.wait_for(f"stat/{TOPIC}/STATUS10", after=mark)
        TasmotaSensor.model_validate(status.json()["StatusSNS"])

        mark = seen.mark()
        await publish(broker, f"cmnd/{TOPIC}/TelePeriod", "7")
        assert (await seen.wait_for(f"stat/{TOPIC}/RESULT", after=mark)).json() == {"TelePeriod": 10}
        mark = seen.mark()
        await publish(broker, f"cmnd/{TOPIC}/TelePeriod", "")
        assert (await seen.wait_for(f"stat/{TOPIC}/RESULT", after=mark)).json() == {"TelePeriod": 10}

        mark = seen.mark()
        await publish(broker, "cmnd/tasmotas/POWER", "ON")  # the group topic
        assert (await seen.wait_for(f"stat/{TOPIC}/POWER", after=mark)).text == "ON"


async def test_tasmota_energy_total_grows_while_on(broker: PrivateBroker) -> None:
    device = plug(power_w=2000.0)  # a kettle: 1 Wh every 1.8 s
    recorded_keys = list(fixture_json("tasmota/tele_sensor_energy.json")["ENERGY"])
    async with (
        running(device, url=broker.url),
        observing(broker, f"tele/{TOPIC}/#", f"stat/{TOPIC}/#") as seen,
    ):
        first = TasmotaSensor.model_validate((await seen.wait_for(f"tele/{TOPIC}/SENSOR")).json())
        assert first.ENERGY.Power > 1500
        grown = await seen.wait_for(
            f"tele/{TOPIC}/SENSOR",
            lambda s: s.json()["ENERGY"]["Total"] > first.ENERGY.Total,
        )
        energy = grown.json()["ENERGY"]
        assert list(energy) == recorded_keys
        assert energy["Today"] > first.ENERGY.Today
        assert 220 <= energy["Voltage"] <= 230
        assert energy["Current"] == pytest.approx(energy["ApparentPower"] / energy["Voltage"], 0.02)
        state = await seen.wait_for(f"tele/{TOPIC}/STATE")
        assert set(state.json()) == set(fixture_json("tasmota/tele_state.json"))
        assert state.json()["POWER"] == "ON"

        mark = seen.mark()
        await publish(broker, f"cmnd/{TOPIC}/POWER", "OFF")
        off = await seen.wait_for(
            f"tele/{TOPIC}/SENSOR", lambda s: s.json()["ENERGY"]["Power"] == 0, after=mark
        )
        assert off.json()["ENERGY"]["Current"] == 0
        assert b'"Factor":0.00' in off.payload
        assert b'"Current":0.000' in off.payload
        total_off = off.json()["ENERGY"]["Total"]
        later = await seen.wait_for(f"tele/{TOPIC}/SENSOR", after=seen.mark())
        assert later.json()["ENERGY"]["Total"] == total_off  # nothing is used while off


# --- Zigbee2MQTT -------------------------------------------------------------------------


async def test_z2m_bridge_devices_lists_the_devices_with_exposes(broker: PrivateBroker) -> None:
    bridge = Zigbee2MqttBridge(report_interval_s=FAST_S, seed=3)
    async with running(bridge, url=broker.url), observing(broker, "zigbee2mqtt/#") as seen:
        state = await seen.wait_for("zigbee2mqtt/bridge/state")
        devices = await seen.wait_for("zigbee2mqtt/bridge/devices")
        info = await seen.wait_for("zigbee2mqtt/bridge/info")
        names = [d.friendly_name for d in default_devices()]
        for name in names:
            availability = await seen.wait_for(f"zigbee2mqtt/{name}/availability")
            assert availability.retain
            assert availability.json() == {"state": "online"}
            assert (await seen.wait_for(f"zigbee2mqtt/{name}")).retain
        climate = await seen.wait_for(f"zigbee2mqtt/{names[0]}")

    assert state.retain
    assert state.json() == {"state": "online"}
    assert info.retain
    assert info.json()["coordinator"]["type"] == "zStack3x0"
    assert devices.retain
    entries = [BridgeDevice.model_validate(d) for d in devices.json()]
    assert entries[0].type == "Coordinator"
    assert entries[0].definition is None
    assert "definition" in devices.json()[0]  # present, as null
    by_model = {e.definition.model: e for e in entries[1:] if e.definition}
    assert set(by_model) == {"WSDCGQ11LM", "MCCGQ11LM", "RTCGQ11LM", "LED1545G12"}
    assert [e.friendly_name for e in entries[1:]] == names
    for entry in entries[1:]:
        assert entry.ieee_address.startswith("0x")
        assert len(entry.ieee_address) == 18
        assert entry.interview_completed
        assert entry.supported
        assert entry.definition
        assert entry.definition.exposes
    assert by_model["LED1545G12"].type == "Router"
    assert by_model["LED1545G12"].power_source == "Mains (single phase)"

    # Compared with what the real bridge publishes for the same models.
    recorded = {
        e.definition.model: e
        for e in (BridgeDevice.model_validate(d) for d in fixture_json(
            "zigbee2mqtt/bridge_devices_excerpt.json"))
        if e.definition
    }  # fmt: skip
    ours, real = by_model["WSDCGQ11LM"], recorded["WSDCGQ11LM"]
    assert ours.definition
    assert real.definition
    assert [expose_signature(x) for x in ours.definition.exposes] == [
        expose_signature(x) for x in real.definition.exposes
    ]
    assert ours.definition.exposes == real.definition.exposes  # labels, descriptions too
    assert (ours.model_id, ours.manufacturer, ours.definition.vendor) == (
        real.model_id, real.manufacturer, real.definition.vendor,
    )  # fmt: skip
    bulb, real_bulb = by_model["LED1545G12"], recorded["LED1545G12"]
    assert bulb.definition
    assert real_bulb.definition
    assert flat_exposes(bulb.definition.exposes) <= flat_exposes(real_bulb.definition.exposes)
    assert bulb.model_id == real_bulb.model_id
    assert set(climate.json()) == set(fixture_json("zigbee2mqtt/state_wsdcgq11lm.json"))


async def test_z2m_set_changes_the_bulb(broker: PrivateBroker) -> None:
    lamp = "客厅/灯"  # a friendly name with a slash, as rooms are often written
    bridge = Zigbee2MqttBridge(
        [*default_devices()[:3], ZigbeeDevice("0x000b57fffe8c4d21", lamp, DeviceKind.BULB)],
        report_interval_s=FAST_S,
        seed=5,
    )
    topic = f"zigbee2mqtt/{lamp}"
    async with running(bridge, url=broker.url), observing(broker, "zigbee2mqtt/#") as seen:
        initial = (await seen.wait_for(topic)).json()
        assert initial["state"] == "OFF"

        async def command(payload: str, suffix: str = "set") -> dict[str, Any]:
            mark = seen.mark()
            await publish(broker, f"{topic}/{suffix}", payload)
            state: dict[str, Any] = (await seen.wait_for(topic, after=mark)).json()
            return state

        state = await command('{"brightness":128}')
        assert state == {
            "brightness": 128, "color_mode": "color_temp", "color_temp": 370,
            "linkquality": initial["linkquality"], "state": "ON",
        }  # fmt: skip
        assert (await command('{"color_temp":600}'))["color_temp"] == 454  # clamped to range
        assert (await command('{"color_temp":"coolest"}'))["color_temp"] == 250
        assert (await command('{"brightness":300}'))["brightness"] == 254
        assert (await command('{"state":"OFF","brightness":10}'))["state"] == "OFF"
        assert (await command('{"state":"TOGGLE"}'))["state"] == "ON"
        assert (await command("OFF"))["state"] == "OFF"  # a bare payload means {"state": ...}
        by_attribute = await command("77", "set/brightness")  # /set/<attribute> form
        assert (by_attribute["brightness"], by_attribute["state"]) == (77, "ON")
        assert (await command('{"state":""}', "get"))["brightness"] == 77

        # Unknown properties and garbage are logged (bridge/logging) and change nothing.
        mark = seen.mark()
        await publish(broker, f"{topic}/set", '{"frobnicate":1}')
        log = await seen.wait_for("zigbee2mqtt/bridge/logging", after=mark)
        assert log.json()["message"] == "No converter available for 'frobnicate' (1)"
        mark = seen.mark()
        await publish(broker, f"{topic}/set", "{not json")
        await seen.wait_for("zigbee2mqtt/bridge/logging", after=mark)
        await publish(broker, f"{topic}/set", b"\xff\xfe")
        assert bridge.device_state(lamp)["brightness"] == 77

        mark = seen.mark()
        await publish(broker, "zigbee2mqtt/bridge/request/health_check", '{"transaction":"t-1"}')
        health = await seen.wait_for("zigbee2mqtt/bridge/response/health_check", after=mark)
        assert health.json() == {"data": {"healthy": True}, "status": "ok", "transaction": "t-1"}
        assert not health.retain


async def test_z2m_sensors_report_and_drift(broker: PrivateBroker) -> None:
    bridge = Zigbee2MqttBridge(report_interval_s=FAST_S, seed=11)
    climate, door = default_devices()[0].friendly_name, default_devices()[1].friendly_name
    async with running(bridge, url=broker.url), observing(broker, "zigbee2mqtt/#") as seen:
        first = (await seen.wait_for(f"zigbee2mqtt/{climate}")).json()
        changed = await seen.wait_for(
            f"zigbee2mqtt/{climate}", lambda s: s.json()["temperature"] != first["temperature"]
        )
        assert abs(changed.json()["temperature"] - first["temperature"]) < 2
        mark = seen.mark()
        await bridge.device_reports(door, {"contact": False, "device_temperature": 99})
        opened = await seen.wait_for(
            f"zigbee2mqtt/{door}", lambda s: s.json()["device_temperature"] == 99, after=mark
        )
        assert opened.json()["contact"] is False
        async with observing(broker, f"zigbee2mqtt/{door}") as later:
            assert (await later.wait_for(f"zigbee2mqtt/{door}")).retain


# --- faults and lifecycle ----------------------------------------------------------------


async def test_simulators_republish_retained_topics_after_broker_restart(
    broker: PrivateBroker,
) -> None:
    device = plug()
    bridge = Zigbee2MqttBridge(report_interval_s=FAST_S, seed=1)
    async with running(device, bridge, url=broker.url):
        async with observing(broker, "tasmota/#", "zigbee2mqtt/bridge/#") as seen:
            await seen.wait_for(f"tasmota/discovery/{MAC}/config")
            await seen.wait_for("zigbee2mqtt/bridge/devices")
        await broker.kill()  # the broker forgets every retained message
        await broker.start()
        climate = default_devices()[0].friendly_name
        filters = (
            f"tasmota/discovery/{MAC}/config", f"tele/{TOPIC}/LWT", "zigbee2mqtt/bridge/#",
            f"zigbee2mqtt/{climate}",
        )  # fmt: skip
        async with observing(broker, *filters) as seen:  # the simulators come back ...
            await seen.wait_for(f"tasmota/discovery/{MAC}/config")
            await seen.wait_for(f"tele/{TOPIC}/LWT", lambda s: s.text == "Online")
            await seen.wait_for("zigbee2mqtt/bridge/devices")
            await seen.wait_for(f"zigbee2mqtt/{climate}")
        async with observing(broker, *filters) as seen:  # ... and the broker holds it again
            config = await seen.wait_for(f"tasmota/discovery/{MAC}/config")
            lwt = await seen.wait_for(f"tele/{TOPIC}/LWT")
            devices = await seen.wait_for("zigbee2mqtt/bridge/devices")
            state = await seen.wait_for("zigbee2mqtt/bridge/state")
            reading = await seen.wait_for(f"zigbee2mqtt/{climate}", lambda s: s.retain)
        assert config.retain
        assert config.json()["mac"] == MAC
        assert lwt.retain
        assert lwt.text == "Online"
        assert devices.retain
        assert len(devices.json()) == 5
        assert state.retain
        assert state.json() == {"state": "online"}
        assert "temperature" in reading.json()
        assert device.connections == 2
        assert bridge.connections == 2


async def test_offline_is_announced_when_a_simulator_stops(broker: PrivateBroker) -> None:
    device = plug()
    bridge = Zigbee2MqttBridge(report_interval_s=FAST_S, seed=2)
    tasks = [asyncio.create_task(s.run(broker.url), name=f"sim-{s.name}") for s in (device, bridge)]
    try:
        async with observing(broker, f"tele/{TOPIC}/LWT", "zigbee2mqtt/bridge/state") as seen:
            await seen.wait_for(f"tele/{TOPIC}/LWT", lambda s: s.text == "Online")
            await seen.wait_for("zigbee2mqtt/bridge/state", lambda s: s.json()["state"] == "online")
            mark = seen.mark()
            await stop(*tasks)
            await seen.wait_for(f"tele/{TOPIC}/LWT", lambda s: s.text == "Offline", after=mark)
            await seen.wait_for(
                "zigbee2mqtt/bridge/state", lambda s: s.json()["state"] == "offline", after=mark
            )
        assert not device.connected
        assert not bridge.connected
        # Retained: whoever looks later sees them offline.
        async with observing(broker, f"tele/{TOPIC}/LWT", "zigbee2mqtt/bridge/state") as later:
            assert (await later.wait_for(f"tele/{TOPIC}/LWT")).text == "Offline"
            assert (await later.wait_for("zigbee2mqtt/bridge/state")).json() == {"state": "offline"}
    finally:
        await stop(*tasks)


async def test_simulator_waits_for_a_broker_that_is_not_there_yet(tmp_path: Path) -> None:
    broker = PrivateBroker(workdir=tmp_path / "late-broker")
    device = plug()
    task = asyncio.create_task(device.run(broker.url), name="sim-early")
    try:
        await broker.start()
        async with observing(broker, f"tele/{TOPIC}/LWT") as seen:
            await seen.wait_for(f"tele/{TOPIC}/LWT", lambda s: s.text == "Online", timeout=20)
    finally:
        await stop(task)
        await broker.stop()


async def test_stopping_while_the_broker_never_answers_leaves_no_socket_open() -> None:
    """A peer that accepts TCP but never sends CONNACK: stopping the simulator mid-connect
    must still close its socket (the peer sees EOF) and end the task."""
    accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    closed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = await reader.read(1024)  # the CONNECT packet
        if not accepted.done():
            accepted.set_result(None)
        while chunk := await reader.read(1024):
            received += chunk
        if not closed.done():
            closed.set_result(received)
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    device = plug()
    task = asyncio.create_task(device.run(f"mqtt://127.0.0.1:{port}"), name="sim-black-hole")
    try:
        async with asyncio.timeout(WAIT_S):
            await accepted
        await stop(task)
        async with asyncio.timeout(WAIT_S):
            connect_packet = await closed
        assert connect_packet[0] == 0x10  # it did get as far as sending CONNECT
        assert not device.connected
    finally:
        await stop(task)
        server.close()
        await server.wait_closed()


class _ReadyLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("household ready:") and not self.ready.done():
            self.ready.set_result(message)


async def test_household_runs_the_plug_and_the_bridge(broker: PrivateBroker) -> None:
    handler = _ReadyLog()
    household_log = logging.getLogger("firmware_sim.household")
    household_log.addHandler(handler)
    household_log.setLevel(logging.INFO)
    task = asyncio.create_task(
        run_household(mqtt_url=broker.url, seed=1, tele_period_s=FAST_S, lan=False), name="household"
    )
    try:
        async with observing(broker, "tasmota/discovery/#", "zigbee2mqtt/bridge/devices") as seen:
            async with asyncio.timeout(WAIT_S):
                message = await handler.ready
            assert TOPIC in message
            assert "zigbee2mqtt" in message
            config = await seen.wait_for(f"tasmota/discovery/{MAC}/config")
            assert config.json()["fn"][0] == "客厅插座"
            assert len((await seen.wait_for("zigbee2mqtt/bridge/devices")).json()) == 5
    finally:
        household_log.removeHandler(handler)
        household_log.setLevel(logging.NOTSET)
        await stop(task)


async def test_cli_stops_cleanly_on_sigterm(broker: PrivateBroker) -> None:
    async with observing(broker, f"tele/{TOPIC}/LWT", "zigbee2mqtt/bridge/state") as seen:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firmware_sim.cli", "household", "--mqtt", broker.url,
            "--tele-period", "0.5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        log = b""
        try:
            async with asyncio.timeout(WAIT_S):
                while b"household ready:" not in log:
                    line = await proc.stderr.readline()
                    assert line, f"firmware-sim exited early: {log.decode()}"
                    log += line
            mark = seen.mark()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                log += await proc.stderr.read()
                stdout = await proc.stdout.read()
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, log.decode()
        assert stdout == b""
        assert b"SIGTERM received" in log
        await seen.wait_for(f"tele/{TOPIC}/LWT", lambda s: s.text == "Offline", after=mark)
        await seen.wait_for("zigbee2mqtt/bridge/state", lambda s: s.json()["state"] == "offline", after=mark)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [("mqtt://127.0.0.1:1883", "127.0.0.1", 1883), ("mqtt://broker", "broker", 1883),
     ("mqtt://[::1]:8883", "::1", 8883)],
)  # fmt: skip
def test_broker_urls(url: str, host: str, port: int) -> None:
    address = parse_mqtt_url(url)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("url", ["http://x:1883", "mqtt://", "mqtt://h:99999", "mqtt://h/x"])
def test_bad_broker_urls(url: str) -> None:
    with pytest.raises(BrokerUrlError):
        parse_mqtt_url(url)
