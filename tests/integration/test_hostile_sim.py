"""`firmware-sim hostile`: each attack does what it says, seen by independent clients.

No gateway here: fake terminals are read with httpx and browsed with python-zeroconf, the CoAP
device with aiocoap's client and a plain UDP socket, MQTT attacks land on a private Mosquitto
and are read back with a watcher, HTTP attacks hit a small recording app on loopback.
Server attacks announce over mDNS and answer multicast, so they run in the private namespace:
    .venv/bin/python -m gateway.netns -- .venv/bin/python -m pytest tests/integration/test_hostile_sim.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import httpx
import pytest
import uvicorn
from aiocoap.numbers import ContentFormat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from firmware_sim.hostile import (
    ATTACKS,
    MIB,
    NESTED_DEPTH,
    ROGUE_MAC,
    BigIntCoapDevice,
    HugeEventTerminal,
    HugeInfoTerminal,
    ImpostorTerminal,
    NestedJsonTerminal,
    TerminalFlood,
    client_id_takeover,
    http_big_body,
    http_pair_guess,
    http_pin,
    http_rebind,
    http_streams,
    tasmota_absurd,
    tasmota_empty_config,
    tasmota_plus_topic,
    tasmota_relays,
    tasmota_repoint,
    tasmota_sensors,
    z2m_devices,
    z2m_empty,
    z2m_inf,
)
from firmware_sim.terminal import SERVICE_TYPE
from gateway.broker import PrivateBroker, free_port
from tests.helpers import Topics, Watcher, announce_tasmota_plug

WAIT_S = 10.0
TV_ID = "tv-5c0a1b2c3d4e"
PLUG_MAC = "A4CF12B3C4D5"
netns = pytest.mark.netns


# --- independent clients ------------------------------------------------------------------------


async def announced(count: int) -> list[AsyncServiceInfo]:
    """Browse `_bfy-terminal._tcp` like any LAN client until `count` services are seen;
    resolve each (SRV, TXT, A)."""
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    names: set[str] = set()
    seen = asyncio.Event()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            names.add(name)
            seen.set()

    browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    try:
        async with asyncio.timeout(WAIT_S):
            while len(names) < count:
                seen.clear()
                await seen.wait()
        infos = []
        for name in sorted(names):
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            assert await info.async_request(zc.zeroconf, 3000), name
            infos.append(info)
        return infos
    finally:
        await browser.async_cancel()
        await zc.async_close()


def txt(info: AsyncServiceInfo) -> dict[str, str]:
    return {k.decode(): (v or b"").decode() for k, v in info.properties.items()}


def http(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=WAIT_S, trust_env=False)


async def sse_message(lines: AsyncIterator[str]) -> list[str]:
    """The next server-sent message (or comment), as its lines without the blank one."""
    message: list[str] = []
    async with asyncio.timeout(WAIT_S):
        async for line in lines:
            if line == "" and message:
                return message
            if line:
                message.append(line)
    raise AssertionError(f"stream ended in {message}")


async def late_watch(broker: PrivateBroker, topic_filter: str, count: int) -> Topics:
    """A subscriber that comes after the attack: it gets only what the broker retained."""
    async with Watcher(broker, topic_filter, name="late-watcher") as topics:
        await topics.wait(lambda: len(topics.retained) >= count, WAIT_S, f"{count} on {topic_filter}")
    assert all(m.retain for m in topics.messages)
    return topics


# --- fake terminals ------------------------------------------------------------------------------


@netns
async def test_nested_json_terminal_is_announced_and_streams_deep_json() -> None:
    async with NestedJsonTerminal(
        address="127.0.0.60", port=0, device_id="tv-0badc0ffee01", keepalive_s=0.05
    ) as tv:
        (service,) = await announced(1)
        assert service.port == tv.port
        assert service.parsed_addresses() == ["127.0.0.60"]
        assert txt(service) == {
            "id": "tv-0badc0ffee01", "kind": "tv", "model": "BRAVIA 4K VH2", "manufacturer": "Sony",
            "api": "/api/v1",
        }  # fmt: skip
        async with http(f"http://127.0.0.60:{tv.port}") as client:
            info = (await client.get("/api/v1/info")).json()
            assert {
                "id",
                "kind",
                "name",
                "model",
                "manufacturer",
                "firmware",
                "capabilities",
                "settable",
            } <= set(info)
            assert (await client.get("/api/v1/state")).json()["on"] is True
            async with client.stream("GET", "/api/v1/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = response.aiter_lines()
                event, data = await sse_message(lines)
                assert await sse_message(lines) == [": keep-alive"]
    assert event == "event: state"
    payload = data.removeprefix("data: ")
    assert payload.startswith('{"a":{"a":') and payload.endswith("{}" + "}" * (NESTED_DEPTH - 1))
    assert payload.count("{") == NESTED_DEPTH
    with pytest.raises(RecursionError):
        json.loads(payload)
    report = tv.report()
    assert report["attack"] == "nested-json"
    assert report["sent"] == {"nested_events": 1, "nested_infos": 0}
    assert report["streams_opened"] == report["streams_max"] == 1


@netns
async def test_nested_json_variant_nests_the_info() -> None:
    async with (
        NestedJsonTerminal(address="127.0.0.60", port=0, info_nested=True) as tv,
        http(f"http://127.0.0.60:{tv.port}") as client,
    ):
        response = await client.get("/api/v1/info")
    assert response.status_code == 200
    text = response.text
    assert text.startswith(f'{{"id":"{tv.device_id}","kind":"tv",')
    assert '"settable":[' in text and ',"extra":{"a":{"a":' in text
    assert text.count("{") == NESTED_DEPTH + 1
    with pytest.raises(RecursionError):
        json.loads(text)
    assert tv.report()["sent"]["nested_infos"] == 1


@netns
async def test_huge_info_is_made_as_it_is_read() -> None:
    size = 64 * MIB
    async with HugeInfoTerminal(address="127.0.0.60", port=0, size_mb=64) as tv, http(tv.base_url) as client:
        async with client.stream("GET", "/info") as response:
            assert response.status_code == 200
            assert "content-length" not in response.headers
            head = b""
            async for chunk in response.aiter_raw():
                head += chunk
                if len(head) >= MIB:
                    break
        # The client stopped after 1 MiB: the server made only what the socket buffers held.
        assert tv.report()["sent"]["info_bytes"] < size
        assert head.startswith(f'{{"id":"{tv.device_id}","name":"AAAA'.encode())
        received = 0
        async with client.stream("GET", "/info") as response:
            async for chunk in response.aiter_raw():
                received += len(chunk)
                assert received <= size
    assert received == size


@netns
async def test_huge_event_is_one_line_without_newline() -> None:
    size = 2 * MIB
    head = b"event: state\ndata: "
    async with (
        HugeEventTerminal(address="127.0.0.60", port=0, size_mb=2, keepalive_s=0.05) as tv,
        http(tv.base_url) as client,
        client.stream("GET", "/events") as response,
    ):
        received = b""
        async with asyncio.timeout(WAIT_S):
            async for chunk in response.aiter_raw():
                received += chunk
                assert len(received) < size + 1000
                if b": keep-alive\n\n" in received:
                    break
    assert received.startswith(head)
    line, _, rest = received[len(head) :].partition(b"\n")
    assert len(line) == size and set(line) == {ord("A")}
    assert rest.startswith(b"\n: keep-alive\n\n")
    assert tv.report()["sent"]["event_bytes"] == len(head) + size


@netns
async def test_impostor_takes_a_real_tvs_id_records_commands_and_speaks() -> None:
    say = ("关闭客厅的灯", "打开空调")
    impostor = ImpostorTerminal(address="127.0.0.60", port=0, target_id=TV_ID, say=say, heard_interval_s=0.05)
    async with impostor, http(impostor.base_url) as client:
        (service,) = await announced(1)
        assert txt(service)["id"] == TV_ID and txt(service)["kind"] == "tv"
        info = (await client.get("/info")).json()
        assert info["id"] == TV_ID
        assert {"on", "volume", "muted", "channel", "overlay", "say"} <= set(info["capabilities"])
        assert set(info["settable"]) == set(info["capabilities"])
        async with client.stream("GET", "/events") as response:
            lines = response.aiter_lines()
            assert (await sse_message(lines))[0] == "event: state"
            heard = [await sse_message(lines) for _ in range(3)]
        assert [h[0] for h in heard] == ["event: heard"] * 3
        data = [json.loads(h[1].removeprefix("data: ")) for h in heard]
        assert [d["text"] for d in data] == [*say, say[0]]
        assert {d["lang"] for d in data} == {"zh-CN"}
        commands = [{"volume": 5}, {"say": {"text": "欢迎", "priority": "alert"}}]
        for command in commands:
            assert (await client.post("/command", json=command)).status_code == 200
        async with asyncio.timeout(WAIT_S):
            assert await impostor.wait_commands(2) == commands
    report = impostor.report()
    assert report["attack"] == "impostor" and report["id"] == TV_ID
    assert report["commands"] == commands
    assert report["sent"]["heard_events"] >= 3


@netns
async def test_terminal_flood_many_terminals_one_address_one_port() -> None:
    count = 5
    async with TerminalFlood(address="127.0.0.60", port=0, count=count, keepalive_s=0.05) as flood:
        services = await announced(count)
        assert {s.port for s in services} == {flood.port}
        assert {a for s in services for a in s.parsed_addresses()} == {"127.0.0.60"}
        ids = sorted(txt(s)["id"] for s in services)
        assert ids == [f"fake-{n:04d}" for n in range(count)]
        async with http(f"http://127.0.0.60:{flood.port}") as client:
            assert (await client.get(f"/t/{count}/api/v1/info")).status_code == 404
        async with (
            httpx.AsyncClient(
                base_url=f"http://127.0.0.60:{flood.port}", timeout=WAIT_S, trust_env=False,
                limits=httpx.Limits(max_connections=count),
            ) as client,
            contextlib.AsyncExitStack() as streams,
        ):  # fmt: skip
            held = []  # a dropped line iterator would close its response
            for service in services:
                api = txt(service)["api"]
                assert (await client.get(f"{api}/info")).json()["id"] == txt(service)["id"]
                response = await streams.enter_async_context(client.stream("GET", f"{api}/events"))
                held.append(response.aiter_lines())
                assert (await sse_message(held[-1]))[0] == "event: state"
            assert flood.streams_max == count
    report = flood.report()
    assert report["streams_opened"] == report["streams_max"] == count
    assert report["sent"] == {"terminals": count}


# --- CoAP -------------------------------------------------------------------------------------------


@netns
async def test_coap_bigint_in_senml_json_and_cbor() -> None:
    context = await aiocoap.Context.create_client_context()
    try:
        async with BigIntCoapDevice(address="127.0.0.61", digits=400) as device:

            async def get(path: str, accept: int | None = None) -> Any:
                request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.61{path}")
                if accept is not None:
                    request.opt.accept = ContentFormat(accept)
                async with asyncio.timeout(WAIT_S):
                    return await context.request(request).response

            links = (await get("/.well-known/core")).payload.decode()
            as_json = await get("/3/0")
            as_cbor = await get("/3/0", accept=112)
            discovered = await multicast_discovery()
    finally:
        await context.shutdown()
    assert "</3/0>" in links and "</3303/0>" in links
    assert as_json.opt.content_format == 110
    battery = next(r for r in json.loads(as_json.payload) if r.get("n") == "9")["v"]
    assert isinstance(battery, int) and len(str(battery)) == 400
    assert str(battery).encode() in as_json.payload  # a literal, not a float
    with pytest.raises(OverflowError):
        float(battery)
    assert as_cbor.opt.content_format == 112
    assert b"\xc2\x58" in as_cbor.payload  # tag 2 (bignum) over a byte string (RFC 8949 §3.4.3)
    records = cbor2.loads(as_cbor.payload)
    assert next(r for r in records if r.get(0) == "9")[2] == battery
    assert discovered == ("127.0.0.61", True)
    assert device.report()["sent"] == {"json": 1, "cbor": 1}


async def multicast_discovery() -> tuple[str, bool]:
    """GET /.well-known/core to 224.0.1.187 (RFC 7252 §8): who answers, listing `</3/0>`?"""
    request = aiocoap.Message(code=aiocoap.GET, uri_path=(".well-known", "core"))
    request.mtype = aiocoap.NON
    request.mid = 0x4242
    request.token = b"\x5a\xa5"
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        await loop.sock_sendto(sock, bytes(request.encode()), ("224.0.1.187", 5683))
        async with asyncio.timeout(WAIT_S):
            data, peer = await loop.sock_recvfrom(sock, 65535)
    return peer[0], b"</3/0>" in aiocoap.Message.decode(data).payload


# --- MQTT -------------------------------------------------------------------------------------------


def published(report: dict[str, Any], count: int) -> None:
    assert report["connack"] == 0 and report["connack_reason"] == "Success", report
    assert report["sent"] == report["accepted"] == count and report["denied"] == 0, report
    assert "error" not in report


async def test_tasmota_relays(broker: PrivateBroker) -> None:
    report = await tasmota_relays(broker.url, count=20_000)
    published(report, 1)
    topic = f"tasmota/discovery/{ROGUE_MAC}/config"
    config = (await late_watch(broker, topic, 1)).json(topic)
    assert config["rl"] == [1] * 20_000
    assert config["mac"] == ROGUE_MAC and config["t"] == f"tasmota_{ROGUE_MAC[-6:]}"


async def test_tasmota_sensors_for_unknown_macs(broker: PrivateBroker) -> None:
    published(await tasmota_sensors(broker.url, count=50, seed=1), 50)
    topics = await late_watch(broker, "tasmota/discovery/+/sensors", 50)
    macs = {t.split("/")[2] for t in topics.retained}
    assert len(macs) == 50 and PLUG_MAC not in macs
    sensors = topics.json(next(iter(topics.retained)))
    assert set(sensors["sn"]) == {"Time", "ENERGY"} and "Power" in sensors["sn"]["ENERGY"]


async def test_tasmota_sensors_not_retained(broker: PrivateBroker) -> None:
    async with Watcher(broker, "tasmota/discovery/#") as topics:
        published(await tasmota_sensors(broker.url, count=3, retain=False), 3)
        await topics.wait(lambda: len(topics.messages) == 3, WAIT_S, "3 sensors messages")


async def test_tasmota_repoint_plus_topic_and_empty_config(broker: PrivateBroker) -> None:
    announce_tasmota_plug(broker)  # a real plug's retained config, to be emptied
    async with Watcher(broker, f"tasmota/discovery/{PLUG_MAC}/config") as plug:
        await plug.wait(lambda: bool(plug.messages), WAIT_S, "the plug's config")
        published(await tasmota_empty_config(broker.url, mac=PLUG_MAC), 1)
        await plug.wait(lambda: plug.messages[-1].payload == b"", WAIT_S, "an empty config")
    published(await tasmota_repoint(broker.url, mac="02BADC0FFEE2", victim_topic="tasmota_B3C4D5"), 1)
    published(await tasmota_plus_topic(broker.url, mac="02BADC0FFEE3"), 2)
    topics = await late_watch(broker, "tasmota/discovery/+/config", 3)
    assert f"tasmota/discovery/{PLUG_MAC}/config" not in topics.retained  # emptied = gone
    assert topics.json("tasmota/discovery/02BADC0FFEE2/config")["t"] == "tasmota_B3C4D5"
    plus = topics.json("tasmota/discovery/02BADC0FFEE3/config")
    hash_ = topics.json("tasmota/discovery/02BADC0FFEE4/config")
    assert (plus["t"], hash_["t"]) == ("a+b", "a#b")
    assert "+" in plus["ft"] and "+" in hash_["ft"]


async def test_tasmota_absurd_telemetry(broker: PrivateBroker) -> None:
    async with Watcher(broker, "tele/#") as topics:
        published(await tasmota_absurd(broker.url, topic="tasmota_B3C4D5", count=3), 6)
        await topics.wait(lambda: len(topics.messages) == 6, WAIT_S, "6 telemetry messages")
    sensor = topics.json("tele/tasmota_B3C4D5/SENSOR")["ENERGY"]
    assert (sensor["Power"], sensor["Total"]) == (1e300, -5)
    state = topics.json("tele/tasmota_B3C4D5/STATE")
    assert (state["POWER"], state["Dimmer"]) == ("ON", 1e300)


async def test_z2m_devices_empty_and_inf(broker: PrivateBroker) -> None:
    published(await z2m_devices(broker.url, count=10_000), 2)
    published(await z2m_inf(broker.url, base_topic="z2m_inf"), 2)
    published(await z2m_empty(broker.url, base_topic="z2m_empty"), 1)
    topics = await late_watch(broker, "+/bridge/#", 5)
    assert topics.json("zigbee2mqtt/bridge/state") == {"state": "online"}
    devices = topics.json("zigbee2mqtt/bridge/devices")
    assert len(devices) == 10_000 and len({d["ieee_address"] for d in devices}) == 10_000
    first = devices[0]
    assert first["type"] == "EndDevice" and first["interview_completed"] and first["supported"]
    assert first["definition"]["exposes"][0]["property"] == "temperature"
    assert topics.retained["z2m_empty/bridge/devices"] == b"[]"
    text = topics.retained["z2m_inf/bridge/devices"].decode()
    assert '"value_min":Infinity' in text and '"value_min":NaN' in text

    def no_constants(name: str) -> object:
        raise ValueError(name)

    with pytest.raises(ValueError, match="Infinity"):
        json.loads(text, parse_constant=no_constants)  # not JSON, though Python reads it
    names = [d["friendly_name"] for d in json.loads(text)]
    assert any("+" in n for n in names) and any("#" in n for n in names)


async def test_client_id_takeover_kicks_the_victim_and_is_kicked_back(broker: PrivateBroker) -> None:
    async with Watcher(broker, "home/#", name="gateway-t1"):  # the victim reconnects when kicked
        report = await client_id_takeover(broker.url, victim_client_id="gateway-t1", count=3, interval_s=0.5)
    assert report["connacks"] == {"Success": 3}
    assert report["ended_by_broker"] >= 1
    kicked = [a for a in report["attempts"] if a.get("ended_by") == "broker"]
    reasons = {"Session taken over", "closed without DISCONNECT"}  # the latter: Mosquitto 2.0
    assert all(a["disconnect_reason"] in reasons and a["up_s"] < 0.5 for a in kicked)


async def test_refusals_are_reported_not_raised(tmp_path: Path) -> None:
    closed = await tasmota_empty_config(f"mqtt://127.0.0.1:{free_port()}")
    assert "connack" not in closed and "error" in closed and closed["sent"] == 0
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "rogue", "secret"], check=True, timeout=10
    )
    acl = tmp_path / "acl"
    acl.write_text("user rogue\ntopic readwrite zigbee2mqtt/#\n")
    config = f"allow_anonymous false\npassword_file {passwords}\nacl_file {acl}"
    async with PrivateBroker(workdir=tmp_path / "broker", extra_config=config) as locked:
        wrong = await tasmota_relays(f"mqtt://rogue:guess@127.0.0.1:{locked.port}", count=2)
        denied = await tasmota_relays(f"mqtt://rogue:secret@127.0.0.1:{locked.port}", count=2)
        allowed = await z2m_empty(f"mqtt://rogue:secret@127.0.0.1:{locked.port}")
    # Mosquitto 2.0 answers a wrong password with 0x87 where MQTT 5 suggests 0x86.
    assert wrong["connack_reason"] in {"Bad User Name or Password", "Not authorized"}
    assert wrong["sent"] == 0 and "error" not in wrong
    assert denied["connack"] == 0 and denied["acks"] == {"Not authorized": 1} and denied["denied"] == 1
    published(allowed, 1)
    with pytest.raises(ValueError, match="loopback"):
        await tasmota_relays("mqtt://192.0.2.1:1883")


# --- HTTP against a recording stand-in for the gateway's LAN API ----------------------------------


class LanApi:
    """Records what arrives; pairing throttles after 5 tries per address; 3 streams at most."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.streams = 0
        self.streams_max = 0
        self.closing = asyncio.Event()
        self.tries: Counter[str] = Counter()
        self.url = ""

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/pairing/pin", self.pin),
                Route("/api/v1/pair", self.pair, methods=["POST"]),
                Route("/api/v1/devices", self.devices),
                Route("/api/v1/stream", self.stream),
                Route("/api/v1/devices/{id}/command", self.command, methods=["POST"]),
            ]
        )

    def record(self, request: Request, **extra: Any) -> None:
        host = request.client.host if request.client else "?"
        self.seen.append({"path": request.url.path, "client": host, **dict(request.headers), **extra})

    async def pin(self, request: Request) -> Response:
        self.record(request)
        return JSONResponse({"pin": "123456", "expires_in_s": 300})

    async def pair(self, request: Request) -> Response:
        self.record(request, body=await request.json())
        client = request.client.host if request.client else "?"
        self.tries[client] += 1
        return JSONResponse({"detail": "no"}, status_code=429 if self.tries[client] > 2 else 401)

    async def devices(self, request: Request) -> Response:
        self.record(request)
        return JSONResponse([])

    async def stream(self, request: Request) -> Response:
        self.record(request)
        if self.streams >= 3:
            return JSONResponse({"detail": "too many streams"}, status_code=503)
        self.streams += 1
        self.streams_max = max(self.streams, self.streams_max)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": hello\n\n"
                await self.closing.wait()
            finally:
                self.streams -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def command(self, request: Request) -> Response:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
        self.record(request, received=received)
        return JSONResponse({"detail": "unauthorized"}, status_code=401)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield  # pytest owns the signals


@pytest.fixture
async def lan_api() -> AsyncIterator[LanApi]:
    api = LanApi()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    api.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        api.app(), lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=2
    )
    server = _Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        yield api
    finally:
        api.closing.set()
        await server.shutdown(sockets=[sock])
        sock.close()


async def test_http_pin_and_rebind(lan_api: LanApi) -> None:
    pin = await http_pin(lan_api.url)
    assert (pin["status"], pin["pin_returned"]) == (200, True)
    rebind = await http_rebind(lan_api.url)
    assert (rebind["pair"], rebind["devices"]) == (401, 200)
    pair, devices = lan_api.seen[1:]
    assert pair["host"] == devices["host"] == "evil.example:8080"
    assert pair["origin"] == "http://evil.example:8080"
    assert pair["body"] == {"pin": "000000", "name": "evil"}
    assert (await http_pin(f"http://127.0.0.1:{free_port()}"))["error"].startswith("ConnectError")


async def test_http_streams_held_and_refused(lan_api: LanApi) -> None:
    report = await http_streams(lan_api.url, count=5, duration_s=0.5)
    assert report["accepted"] == 3 and report["statuses"] == {"200": 3, "503": 2}
    assert report["ended_by_server"] == 0
    assert lan_api.streams_max == 3


async def test_http_pair_guess_from_several_addresses(lan_api: LanApi) -> None:
    sources = ["127.0.0.70", "127.0.0.71"]
    report = await http_pair_guess(lan_api.url, count=8, source_addresses=sources)
    assert report["sent"] == 8 and report["statuses"] == {"401": 4, "429": 4}
    assert report["by_source"] == {s: {"401": 2, "429": 2} for s in sources}
    guesses = [s for s in lan_api.seen if s["path"] == "/api/v1/pair"]
    assert Counter(g["client"] for g in guesses) == dict.fromkeys(sources, 4)
    assert all(len(g["body"]["pin"]) == 6 and g["body"]["name"] == "guess" for g in guesses)


async def test_http_big_body_declares_its_length(lan_api: LanApi) -> None:
    report = await http_big_body(lan_api.url, size_mb=2)
    assert report["status"] == 401 and report["sent"] == report["declared_bytes"] == 2 * MIB
    (seen,) = lan_api.seen
    assert seen["content-length"] == str(2 * MIB) and "transfer-encoding" not in seen
    assert seen["received"] == 2 * MIB
    assert seen["authorization"].startswith("Bearer ")


# --- CLI ----------------------------------------------------------------------------------------------


async def firmware_sim(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_sim.cli", "hostile", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_cli_lists_attacks_and_reports_one_json_line(broker: PrivateBroker) -> None:
    listing = await firmware_sim("list")
    out, _ = await asyncio.wait_for(listing.communicate(), WAIT_S)
    assert [line.split()[0] for line in out.decode().splitlines()] == list(ATTACKS)
    attack = await firmware_sim("tasmota-empty-config", "--mqtt", broker.url, "--mac", "02BADC0FFEE9")
    out, _ = await asyncio.wait_for(attack.communicate(), WAIT_S)
    assert attack.returncode == 0
    (line,) = out.decode().splitlines()
    report = json.loads(line)
    assert report["attack"] == "tasmota-empty-config" and report["connack"] == 0 and report["accepted"] == 1


@netns
async def test_cli_server_attack_reports_on_sigterm() -> None:
    proc = await firmware_sim("impostor", "--address", "127.0.0.62", "--port", "0", "--target-id", TV_ID)
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(WAIT_S):
            while b" ready: " not in await proc.stderr.readline():
                pass
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    report = json.loads(out)
    assert report["attack"] == "impostor" and report["id"] == TV_ID and report["commands"] == []
