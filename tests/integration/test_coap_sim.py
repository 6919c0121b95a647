"""Simulated CoAP devices against independent clients: aiocoap's, a plain UDP socket for
multicast discovery, and libcoap's `coap-client-notls` where it is installed.

Runs in the private network namespace only (multicast on `lo`):
    .venv/bin/python -m gateway.netns -- .venv/bin/python -m pytest tests/integration/test_coap_sim.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiocoap
import aiocoap.optiontypes
import cbor2
import pytest
from aiocoap.numbers import ContentFormat
from aiocoap.util import linkformat
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.coap import (
    ALL_COAP_NODES_V4,
    COAP_PORT,
    MULTICAST_LEISURE_S,
    OBJECT_URNS,
    CoapDevice,
    CoapKind,
    CoapSimError,
    HostileCoapDevice,
    SenmlError,
    decode_senml,
    run_coap_devices,
)

pytestmark = pytest.mark.netns

TEXT = ContentFormat(0)
LINK_FORMAT = ContentFormat(40)
SENML_JSON = ContentFormat(110)
SENML_CBOR = ContentFormat(112)
WAIT_S = 10.0
# After the expected answers are in, how long to listen for answers that must not come:
# every device answers within its leisure, so a few leisures is ample.
QUIET_S = 6 * MULTICAST_LEISURE_S
COAP_CLIENT = shutil.which("coap-client-notls")
needs_libcoap = pytest.mark.skipif(
    COAP_CLIENT is None, reason="libcoap's coap-client-notls is not installed (libcoap3-bin)"
)

OBJECTS: dict[CoapKind, list[int]] = {
    "climate": [3, 3303, 3304],
    "smoke": [3, 3200],
    "door": [3, 3200],
    "motion": [3, 3302],
    "light": [3, 3311],
    "plug": [3, 3312, 3305],
}


def device(kind: CoapKind, host: int, **options: Any) -> CoapDevice:
    return CoapDevice(
        kind=kind,
        address=f"127.0.0.{host}",
        serial=f"BFY-{kind[:3].upper()}-{host:06d}",
        name=options.pop("name", f"测试{kind}"),
        seed=host,
        **options,
    )


@contextlib.asynccontextmanager
async def serving(*devices: CoapDevice) -> AsyncIterator[asyncio.Task[None]]:
    """Run the devices for the body of the block; their failure fails the test."""
    task = asyncio.create_task(run_coap_devices(devices), name="coap-devices-under-test")
    try:
        async with asyncio.timeout(WAIT_S):
            for d in devices:
                await d.wait_ready()
        yield task
        assert not task.done(), "the simulated devices stopped by themselves"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context()
    try:
        yield context
    finally:
        await context.shutdown()


async def request(
    client: Any,
    code: Any,
    uri: str,
    *,
    payload: bytes = b"",
    accept: int | None = None,
    content_format: int | None = None,
) -> Any:
    message = aiocoap.Message(code=code, uri=uri, payload=payload)
    if accept is not None:
        message.opt.accept = ContentFormat(accept)
    if content_format is not None:
        message.opt.content_format = ContentFormat(content_format)
    async with asyncio.timeout(WAIT_S):
        return await client.request(message).response


def values(payload: bytes, content_format: int) -> dict[str, object]:
    return {e.name: e.value for e in decode_senml(payload, content_format)}


def links(payload: bytes) -> dict[str, dict[str, list[str | None]]]:
    parsed = linkformat.parse(payload.decode())
    out: dict[str, dict[str, list[str | None]]] = {}
    for link in parsed.links:
        attrs: dict[str, list[str | None]] = {}
        for key, value in link.attr_pairs:
            attrs.setdefault(key, []).append(value)
        out[link.href] = attrs
    return out


# --- unicast ----------------------------------------------------------------------------------


async def test_well_known_core_lists_each_kinds_objects(client: Any) -> None:
    devices = [device(kind, 30 + i) for i, kind in enumerate(OBJECTS)]
    async with serving(*devices):
        for d in devices:
            response = await request(client, aiocoap.GET, f"coap://{d.address}/.well-known/core")
            assert response.code == aiocoap.CONTENT
            assert response.opt.content_format == LINK_FORMAT
            listed = links(response.payload)
            assert list(listed) == [f"/{obj}/0" for obj in OBJECTS[d.kind]]
            for href, attrs in listed.items():
                obj = int(href.split("/")[1])
                assert attrs == {"rt": [OBJECT_URNS[obj]], "ct": ["110 112"], "obs": [None]}
            info = await request(client, aiocoap.GET, f"coap://{d.address}/3/0")
            device_info = values(info.payload, info.opt.content_format)
            assert device_info["/3/0/2"] == d.serial
            assert device_info["/3/0/5750"] == d.name
            assert device_info["/3/0/0"] and device_info["/3/0/1"] and device_info["/3/0/3"]
            assert device_info["/3/0/17"]

        filtered = await request(
            client, aiocoap.GET, f"coap://{devices[0].address}/.well-known/core?rt=urn:oma:lwm2m:ext:3304"
        )
        assert list(links(filtered.payload)) == ["/3304/0"]


async def test_climate_senml_json_and_cbor_agree(client: Any) -> None:
    climate = device("climate", 40, report_interval_s=3600.0)  # no drift during the test
    async with serving(climate):
        base = f"coap://{climate.address}/3303/0"
        as_json = await request(client, aiocoap.GET, base)
        as_cbor = await request(client, aiocoap.GET, base, accept=SENML_CBOR)
        assert as_json.opt.content_format == SENML_JSON  # the default
        assert as_cbor.opt.content_format == SENML_CBOR

        pack = json.loads(as_json.payload)
        assert pack[0]["bn"] == "/3303/0/"
        assert isinstance(pack[0]["bt"], float)
        assert [r["n"] for r in pack] == ["5700", "5701", "5601", "5602", "5603", "5604"]
        assert pack[0]["u"] == "Cel"
        raw_cbor = cbor2.loads(as_cbor.payload)
        assert raw_cbor[0][-2] == "/3303/0/"  # RFC 8428 §6: bn is label -2

        from_json = values(as_json.payload, SENML_JSON)
        assert from_json == values(as_cbor.payload, SENML_CBOR)
        temperature = from_json["/3303/0/5700"]
        assert isinstance(temperature, float)
        assert 18.0 <= temperature <= 26.0
        assert from_json["/3303/0/5701"] == "Cel"
        assert temperature == climate.state["temperature"]

        single = await request(client, aiocoap.GET, f"{base}/5700", accept=TEXT)
        assert single.opt.content_format == TEXT
        assert float(single.payload) == temperature
        single_cbor = await request(client, aiocoap.GET, f"{base}/5700", accept=SENML_CBOR)
        assert values(single_cbor.payload, SENML_CBOR) == {"/3303/0/5700": temperature}

        humidity = values(
            (await request(client, aiocoap.GET, f"coap://{climate.address}/3304/0")).payload, 110
        )
        assert 30.0 <= float(humidity["/3304/0/5700"]) <= 70.0  # type: ignore[arg-type]

        refused = await request(client, aiocoap.GET, base, accept=50)
        assert refused.code == aiocoap.NOT_ACCEPTABLE


async def test_observe_delivers_changes(client: Any) -> None:
    climate = device("climate", 41, report_interval_s=0.1)
    async with serving(climate):
        for path in ("/3303/0", "/3304/0/5700"):
            message = aiocoap.Message(code=aiocoap.GET, uri=f"coap://{climate.address}{path}", observe=0)
            pending = client.request(message)
            async with asyncio.timeout(WAIT_S):
                first = await pending.response
                assert first.opt.observe is not None
                assert first.opt.max_age == 2  # ceil(0.1) + 1: notifications come first
                seen = [values(first.payload, SENML_JSON)]
                times = [json.loads(first.payload)[0]["bt"]]
                async for notification in pending.observation:
                    seen.append(values(notification.payload, SENML_JSON))
                    times.append(json.loads(notification.payload)[0]["bt"])
                    if len(seen) == 6:
                        break
            pending.observation.cancel()
            assert times == sorted(times) and len(set(times)) == len(times)
            key = path if path.endswith("/5700") else f"{path}/5700"
            readings = [s[key] for s in seen]
            assert len(set(readings)) > 1, f"{path} did not drift: {readings}"


async def test_put_switches_the_light_and_notifies_observers(client: Any) -> None:
    light = device("light", 42, report_interval_s=3600.0)  # only changes notify
    base = f"coap://{light.address}/3311/0"
    async with serving(light):
        pending = client.request(aiocoap.Message(code=aiocoap.GET, uri=base, observe=0))
        notifications = aiter(pending.observation)
        async with asyncio.timeout(WAIT_S):
            first = values((await pending.response).payload, SENML_JSON)
            assert first["/3311/0/5850"] is False

            changed = await request(client, aiocoap.PUT, f"{base}/5850", payload=b"1", content_format=TEXT)
            assert changed.code == aiocoap.CHANGED
            notified = values((await anext(notifications)).payload, SENML_JSON)
            assert notified["/3311/0/5850"] is True
        now_on = await request(client, aiocoap.GET, f"{base}/5850", accept=TEXT)
        assert now_on.payload == b"1"
        assert light.state["on"] is True

        # several resources at once, SenML JSON to the instance, names relative to it
        pack = json.dumps([{"n": "5850", "vb": False}, {"n": "5851", "v": 40}]).encode()
        changed = await request(client, aiocoap.PUT, base, payload=pack, content_format=SENML_JSON)
        assert changed.code == aiocoap.CHANGED
        async with asyncio.timeout(WAIT_S):
            notified = values((await anext(notifications)).payload, SENML_JSON)
        assert (notified["/3311/0/5850"], notified["/3311/0/5851"]) == (False, 40)
        assert light.state == {"on": False, "brightness": 40}

        # SenML CBOR with a full base name, and "true" as text on the dimmer's neighbour
        pack = cbor2.dumps([{-2: "/3311/0/", 0: "5851", 2: 75}, {0: "5850", 4: True}])
        changed = await request(client, aiocoap.POST, base, payload=pack, content_format=SENML_CBOR)
        assert changed.code == aiocoap.CHANGED
        assert light.state == {"on": True, "brightness": 75}
        changed = await request(client, aiocoap.PUT, f"{base}/5850", payload=b"false", content_format=TEXT)
        assert changed.code == aiocoap.CHANGED
        assert light.state["on"] is False
        pending.observation.cancel()


async def test_bad_writes_get_client_errors_and_change_nothing(client: Any) -> None:
    light = device("light", 43, report_interval_s=3600.0)
    base = f"coap://{light.address}/3311/0"
    cases: list[tuple[str, bytes, int | None, Any]] = [
        (f"{base}/5850", b"maybe", TEXT, aiocoap.BAD_REQUEST),
        (f"{base}/5850", b"\xff\xfe", TEXT, aiocoap.BAD_REQUEST),
        (f"{base}/5851", b"150", TEXT, aiocoap.BAD_REQUEST),
        (f"{base}/5851", b"12.5", TEXT, aiocoap.BAD_REQUEST),
        (f"{base}/5851", b'[{"n":"5851","vb":true}]', SENML_JSON, aiocoap.BAD_REQUEST),
        (f"{base}/5850", b'{"on": true}', 50, aiocoap.UNSUPPORTED_CONTENT_FORMAT),
        (base, b"1", TEXT, aiocoap.UNSUPPORTED_CONTENT_FORMAT),
        (base, b"[{", SENML_JSON, aiocoap.BAD_REQUEST),
        (base, b"\xa1\x00", SENML_CBOR, aiocoap.BAD_REQUEST),
        (base, b"[]", SENML_JSON, aiocoap.BAD_REQUEST),
        (base, b'[{"n":"5850","vb":true},{"n":"5851","v":"high"}]', SENML_JSON, aiocoap.BAD_REQUEST),
        (base, b'[{"n":"5850","vb":true,"v":1}]', SENML_JSON, aiocoap.BAD_REQUEST),
        (base, b'[{"n":"5850","vb":true,"x_":1}]', SENML_JSON, aiocoap.BAD_REQUEST),
        (base, b'[{"bn":"/3/0/","n":"0","vs":"evil"}]', SENML_JSON, aiocoap.BAD_REQUEST),
        (base, b'[{"n":"5851","v":NaN}]', SENML_JSON, aiocoap.BAD_REQUEST),
        (base, b'[{"n":"5805","v":1.0}]', SENML_JSON, aiocoap.METHOD_NOT_ALLOWED),
        (base, b'[{"n":"9999","v":1}]', SENML_JSON, aiocoap.NOT_FOUND),
        (f"{base}/5805", b"0", TEXT, aiocoap.METHOD_NOT_ALLOWED),
        (f"coap://{light.address}/3/0/0", b"evil", TEXT, aiocoap.METHOD_NOT_ALLOWED),
    ]
    async with serving(light) as running:
        before = light.state
        for uri, payload, content_format, expected in cases:
            response = await request(client, aiocoap.PUT, uri, payload=payload, content_format=content_format)
            assert response.code == expected, (uri, payload, response.payload)
            assert response.payload, f"no diagnostic for {payload!r}"
        assert light.state == before
        assert not running.done()
        alive = await request(client, aiocoap.GET, base)
        assert alive.code == aiocoap.CONTENT


async def test_test_button_and_set_input(client: Any) -> None:
    smoke = device("smoke", 44, report_interval_s=3600.0)
    door = device("door", 45, report_interval_s=3600.0)
    motion = device("motion", 46, report_interval_s=3600.0)
    async with serving(smoke, door, motion):
        pending = client.request(
            aiocoap.Message(code=aiocoap.GET, uri=f"coap://{smoke.address}/3200/0/5500", observe=0)
        )
        async with asyncio.timeout(WAIT_S):
            first = await pending.response
            assert values(first.payload, SENML_JSON) == {"/3200/0/5500": False}
            pressed = await request(
                client, aiocoap.POST, f"coap://{smoke.address}/sim/test", payload=b"smoke"
            )
            assert pressed.code == aiocoap.CHANGED
            alarm = await anext(aiter(pending.observation))
        assert values(alarm.payload, SENML_JSON) == {"/3200/0/5500": True}
        assert smoke.state["smoke"] is True
        smoke.set_input(False)
        assert smoke.state["smoke"] is False
        pending.observation.cancel()

        info = values(
            (await request(client, aiocoap.GET, f"coap://{door.address}/3200/0")).payload, SENML_JSON
        )
        assert info["/3200/0/5750"] == "door"
        assert info["/3200/0/5500"] is True  # closed
        await request(client, aiocoap.POST, f"coap://{door.address}/sim/test", payload=b"open")
        assert door.state["contact"] is False

        await request(client, aiocoap.POST, f"coap://{motion.address}/sim/test", payload=b"motion")
        counter = await request(client, aiocoap.GET, f"coap://{motion.address}/3302/0/5501", accept=TEXT)
        assert motion.state["motion"] is True and int(counter.payload) >= 1

        wrong = await request(client, aiocoap.POST, f"coap://{door.address}/sim/test", payload=b"smoke")
        assert wrong.code == aiocoap.BAD_REQUEST
        wkc = await request(client, aiocoap.GET, f"coap://{door.address}/.well-known/core")
        assert "/sim/test" not in links(wkc.payload)
    with pytest.raises(CoapSimError):
        device("light", 47).set_input(True)


async def test_large_device_object_arrives_block_wise(client: Any) -> None:
    name = "卧室温湿度传感器" * 60  # 1440 bytes of UTF-8 on its own
    climate = device("climate", 48, name=name, report_interval_s=3600.0)
    async with serving(climate):
        response = await request(client, aiocoap.GET, f"coap://{climate.address}/3/0")
        assert len(response.payload) > 1024
        assert response.opt.block2 is not None  # the last block of a Block2 transfer
        assert response.opt.block2.block_number >= 1
        assert values(response.payload, SENML_JSON)["/3/0/5750"] == name
        first = aiocoap.Message(code=aiocoap.GET, uri=f"coap://{climate.address}/3/0")
        first.opt.block2 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, False, 6)
        async with asyncio.timeout(WAIT_S):
            block0 = await client.request(first, handle_blockwise=False).response
        assert block0.opt.block2.more and len(block0.payload) == 1024


async def test_devices_refuse_a_busy_address() -> None:
    first = device("plug", 49)
    second = device("light", 49)
    async with serving(first):
        task = asyncio.create_task(second.run())
        with pytest.raises(CoapSimError):
            async with asyncio.timeout(WAIT_S):
                await second.wait_ready()
        with pytest.raises(CoapSimError):
            await task


# --- multicast discovery ----------------------------------------------------------------------


def discovery_request(
    query: str | None = None, *, token: bytes = b"\x5a\xa5", confirmable: bool = False
) -> bytes:
    message = aiocoap.Message(code=aiocoap.GET, uri_path=(".well-known", "core"))
    if query is not None:
        message.opt.uri_query = (query,)
    # RFC 7252 §8.1: group requests are never confirmable
    message.mtype = aiocoap.CON if confirmable else aiocoap.NON
    message.mid = 0x4242
    message.token = token
    return bytes(message.encode())


@contextlib.contextmanager
def udp_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


async def collect_answers(sock: socket.socket, expected: int) -> list[tuple[tuple[str, int], Any]]:
    """Read answers until `expected` arrived, then listen QUIET_S longer for extra ones."""
    loop = asyncio.get_running_loop()
    answers: list[tuple[tuple[str, int], Any]] = []
    async with asyncio.timeout(WAIT_S):
        while len(answers) < expected:
            data, source = await loop.sock_recvfrom(sock, 65_535)
            answers.append((source, aiocoap.Message.decode(data)))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(QUIET_S):
            while True:
                data, source = await loop.sock_recvfrom(sock, 65_535)
                answers.append((source, aiocoap.Message.decode(data)))
    return answers


async def test_multicast_discovery_one_answer_per_device_from_its_own_address() -> None:
    devices = [device(kind, 50 + i) for i, kind in enumerate(("climate", "light", "door", "plug"))]
    loop = asyncio.get_running_loop()
    async with serving(*devices):
        with udp_socket() as sock:
            await loop.sock_sendto(sock, discovery_request(), (ALL_COAP_NODES_V4, COAP_PORT))
            answers = await collect_answers(sock, expected=len(devices))
        by_source = dict(answers)
        assert len(answers) == len(by_source) == len(devices), answers
        assert set(by_source) == {(d.address, COAP_PORT) for d in devices}
        for d in devices:
            answer = by_source[(d.address, COAP_PORT)]
            assert answer.mtype == aiocoap.NON
            assert answer.code == aiocoap.CONTENT
            assert answer.token == b"\x5a\xa5"
            assert answer.opt.content_format == LINK_FORMAT
            assert list(links(answer.payload)) == [f"/{obj}/0" for obj in OBJECTS[d.kind]]

        # RFC 6690 §4.1 filter: only the light has 3311; the others stay silent
        with udp_socket() as sock:
            query = f"rt={OBJECT_URNS[3311]}"
            await loop.sock_sendto(sock, discovery_request(query), (ALL_COAP_NODES_V4, COAP_PORT))
            answers = await collect_answers(sock, expected=1)
        assert [source for source, _ in answers] == [(devices[1].address, COAP_PORT)]
        assert list(links(answers[0][1].payload)) == ["/3311/0"]

        with udp_socket() as sock:  # a prefix filter
            await loop.sock_sendto(
                sock, discovery_request("rt=urn:oma:lwm2m:ext:330*"), (ALL_COAP_NODES_V4, COAP_PORT)
            )
            answers = await collect_answers(sock, expected=2)
        assert {source[0] for source, _ in answers} == {devices[0].address, devices[3].address}


async def test_multicast_garbage_is_dropped_and_discovery_still_works() -> None:
    climate = device("climate", 60)
    loop = asyncio.get_running_loop()
    garbage = [
        b"",
        b"\x00",
        b"\xff" * 40,
        b"\x4f" + b"\x01" * 30,  # token length 15
        b"\x50\x01\x00\x01" + b"\xff",  # payload marker, no payload
        b"\x40\x01\x00\x01\xdd",  # option announced but absent
        b"\x40\x02\x00\x01\xbb.well-known\x04core",  # POST: not answered
        discovery_request(confirmable=True),
    ]
    async with serving(climate) as running:
        with udp_socket() as sock:
            for datagram in garbage:
                await loop.sock_sendto(sock, datagram, (ALL_COAP_NODES_V4, COAP_PORT))
            await loop.sock_sendto(sock, discovery_request(token=b"ok"), (ALL_COAP_NODES_V4, COAP_PORT))
            answers = await collect_answers(sock, expected=1)
        assert [m.token for _, m in answers] == [b"ok"]
        assert not running.done()


# --- the hostile device -----------------------------------------------------------------------


async def test_hostile_link_format_arrives_block_wise(client: Any) -> None:
    hostile = HostileCoapDevice(address="127.0.0.66", serial="EVIL-000001", seed=1)
    loop = asyncio.get_running_loop()
    async with serving(hostile) as running:
        started = time.monotonic()
        response = await request(client, aiocoap.GET, f"coap://{hostile.address}/.well-known/core")
        assert response.code == aiocoap.CONTENT
        assert len(response.payload) >= 300 * 1024
        assert response.opt.block2 is not None and response.opt.block2.block_number >= 299
        head = links(response.payload[: response.payload.index(b",</3303/1>")])
        assert head["/3303/0"]["rt"] == [OBJECT_URNS[3303]]
        assert "/3302/0" in head
        assert time.monotonic() - started < WAIT_S

        with udp_socket() as sock:  # the group answer is block 0, with Size2
            await loop.sock_sendto(
                sock, discovery_request("rt=nothing-matches"), (ALL_COAP_NODES_V4, COAP_PORT)
            )
            answers = await collect_answers(sock, expected=1)
        [(source, answer)] = answers
        assert source == (hostile.address, COAP_PORT)
        assert answer.opt.block2.block_number == 0 and answer.opt.block2.more
        assert answer.opt.size2 == len(response.payload)
        assert len(answer.payload) == 1024
        assert not running.done()


async def test_hostile_senml_is_unusable_but_served(client: Any) -> None:
    hostile = HostileCoapDevice(address="127.0.0.67", serial="EVIL-000002", seed=2)
    async with serving(hostile) as running:
        for accept, rounds in ((None, 9), (SENML_CBOR, 6)):
            for _ in range(rounds):
                response = await request(
                    client, aiocoap.GET, f"coap://{hostile.address}/3303/0", accept=accept
                )
                assert response.code == aiocoap.CONTENT
                try:
                    entries = decode_senml(response.payload, response.opt.content_format)
                except SenmlError:
                    continue
                assert not entries, f"usable SenML from the hostile device: {response.payload[:80]!r}"
        assert not running.done()


async def test_hostile_flood_can_be_observed_and_survived(client: Any) -> None:
    hostile = HostileCoapDevice(address="127.0.0.68", serial="EVIL-000003", seed=3, flood_rate_hz=500.0)
    async with serving(hostile) as running:
        pending = client.request(
            aiocoap.Message(code=aiocoap.GET, uri=f"coap://{hostile.address}/3302/0", observe=0)
        )
        received = 0
        async with asyncio.timeout(WAIT_S):
            await pending.response
            started = time.monotonic()
            async for _ in pending.observation:
                received += 1
                if received == 300:
                    break
        elapsed = time.monotonic() - started
        pending.observation.cancel()
        assert received / elapsed > 100, f"only {received} notifications in {elapsed:.2f} s"
        assert hostile.notifications_flooded >= received
        async with asyncio.timeout(WAIT_S):
            await hostile.wait_unobserved()  # the next notification met a Reset
        stopped_at = hostile.notifications_flooded

        alive = await request(client, aiocoap.GET, f"coap://{hostile.address}/3/0")
        assert values(alive.payload, SENML_JSON)["/3/0/2"] == "EVIL-000003"
        assert hostile.notifications_flooded == stopped_at
        assert not running.done()


async def test_a_device_can_be_power_cycled(client: Any) -> None:
    plug = device("plug", 73, report_interval_s=3600.0)
    uri = f"coap://{plug.address}/3312/0/5850"
    async with serving(plug):
        await request(client, aiocoap.PUT, uri, payload=b"1", content_format=TEXT)
        power = await request(client, aiocoap.GET, f"coap://{plug.address}/3305/0/5800", accept=TEXT)
        assert float(power.payload) > 0
    async with serving(plug):  # same address again, values kept like non-volatile settings
        response = await request(client, aiocoap.GET, uri, accept=TEXT)
        assert response.payload == b"1"
        assert plug.state["on"] is True


# --- the SenML parser the tests (and a gateway) rely on ---------------------------------------

_SENML_ISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["bn", "bt", "n", "v", "vs", "vb", "x_", "t"]), inner, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=256), content_format=st.sampled_from([0, 50, 110, 112]))
def test_decode_senml_raises_only_senml_error_on_bytes(payload: bytes, content_format: int) -> None:
    with contextlib.suppress(SenmlError):
        decode_senml(payload, content_format)


@settings(max_examples=300, deadline=None)
@given(document=_SENML_ISH)
def test_decode_senml_raises_only_senml_error_on_structures(document: object) -> None:
    as_json = json.dumps(document).encode()  # NaN and Infinity included, as a peer may send
    for payload, content_format in ((as_json, 110), (cbor2.dumps(document), 112)):
        try:
            entries = decode_senml(payload, content_format)
        except SenmlError:
            continue
        for entry in entries:
            assert isinstance(entry.value, bool | int | float | str)


# --- libcoap's client -------------------------------------------------------------------------


async def coap_client(*args: str) -> tuple[bytes, bytes]:
    """Run libcoap's client; returns (stdout, stderr)."""
    assert COAP_CLIENT is not None
    process = await asyncio.create_subprocess_exec(
        COAP_CLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(WAIT_S):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return stdout, stderr


@needs_libcoap
async def test_libcoap_client_reads_writes_and_discovers() -> None:
    climate = device("climate", 70, report_interval_s=3600.0)
    light = device("light", 71, report_interval_s=3600.0)
    async with serving(climate, light):
        out, _ = await coap_client("-m", "get", f"coap://{climate.address}/.well-known/core")
        assert list(links(out.strip())) == ["/3/0", "/3303/0", "/3304/0"]

        out, _ = await coap_client("-m", "get", "-A", "112", f"coap://{climate.address}/3303/0")
        assert values(out, SENML_CBOR)["/3303/0/5700"] == climate.state["temperature"]

        out, _ = await coap_client("-m", "get", "-A", "0", f"coap://{climate.address}/3304/0/5700")
        assert float(out) == climate.state["humidity"]

        await coap_client("-m", "put", "-t", "0", "-e", "1", f"coap://{light.address}/3311/0/5850")
        assert light.state["on"] is True
        pack = '[{"n":"5851","v":30}]'
        await coap_client("-m", "put", "-t", "110", "-e", pack, f"coap://{light.address}/3311/0")
        assert light.state["brightness"] == 30

        out, err = await coap_client(
            "-m", "put", "-t", "0", "-e", "maybe", f"coap://{light.address}/3311/0/5850"
        )
        assert b"4.00" in out + err

        out, _ = await coap_client(
            "-N", "-m", "get", "-B", "1", f"coap://{ALL_COAP_NODES_V4}/.well-known/core"
        )
        assert out.count(b"</3/0>") == 2
        assert b"</3303/0>" in out and b"</3311/0>" in out


@needs_libcoap
async def test_libcoap_client_observes() -> None:
    climate = device("climate", 72, report_interval_s=0.1)
    async with serving(climate):
        out, _ = await coap_client("-m", "get", "-s", "1", "-A", "110", f"coap://{climate.address}/3303/0")
    # one SenML pack per notification, printed back to back
    assert out.count(b'"bn":"/3303/0/"') >= 4
