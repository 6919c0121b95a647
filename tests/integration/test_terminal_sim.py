"""The simulated operator terminals, seen by independent clients on the private namespace.

httpx talks to the HTTP API (the event stream included), python-zeroconf browses and resolves
`_bfy-terminal._tcp` and `_googlecast._tcp` on 127.0.0.1, and `dig` sends legacy unicast DNS
queries. Every wait is on a received answer, event or record, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from zeroconf import IPVersion, RecordUpdate, RecordUpdateListener, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from firmware_sim.terminal import (
    CAST_SERVICE_TYPE,
    SERVICE_TYPE,
    HeardEvent,
    HostileTerminal,
    SpeakerSimulator,
    SpeakerState,
    TerminalInfo,
    TerminalStartError,
    TvSimulator,
    TvState,
)

pytestmark = pytest.mark.netns

WAIT_S = 10.0
TYPE_A = 1  # RFC 1035 §3.2.2
TYPE_SRV = 33  # RFC 2782
TV_ID = "tv-5c0a1b2c3d4e"
SPEAKER_ID = "speaker-8e2f41a0b7c3"


# --- running simulators -------------------------------------------------------------------


Device = TvSimulator | SpeakerSimulator | HostileTerminal


@contextlib.asynccontextmanager
async def running(*devices: Device) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run the devices until the block ends (then stop them cleanly, with goodbyes)."""
    tasks = [asyncio.create_task(d.run(), name=f"sim-{d.device_id}") for d in devices]
    try:
        async with asyncio.timeout(WAIT_S):
            for device in devices:
                await device.wait_ready()
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]


def tv(address: str, **kwargs: Any) -> TvSimulator:
    return TvSimulator(address=address, device_id=kwargs.pop("device_id", TV_ID), seed=1, **kwargs)


def speaker(address: str, **kwargs: Any) -> SpeakerSimulator:
    return SpeakerSimulator(address=address, device_id=kwargs.pop("device_id", SPEAKER_ID), seed=2, **kwargs)


# --- an independent mDNS client -------------------------------------------------------------


@dataclass
class Change:
    change: ServiceStateChange
    type_: str
    name: str


@dataclass
class RecordSeen:
    """A record leaving the observer's cache: by a goodbye (TTL 0) or by expiry."""

    how: str
    type_: int
    name: str
    ttl: int
    at: float


class _RecordWatch(RecordUpdateListener):
    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        loop_now = asyncio.get_running_loop().time()
        for update in records:
            record = update.new
            if record.ttl == 0:
                how = "goodbye"
            elif record.is_expired(now):
                how = "expired"
            else:
                continue
            self._observer.gone.append(
                RecordSeen(how, record.type, record.name.lower(), record.ttl, loop_now)
            )
        self._observer.changed.set()


class Observer:
    """Browses like any mDNS client on the LAN would, and records what it saw."""

    def __init__(self, zc: AsyncZeroconf) -> None:
        self.zc = zc
        self.changes: list[Change] = []
        self.gone: list[RecordSeen] = []
        self.changed = asyncio.Event()
        self._browser: AsyncServiceBrowser | None = None
        self._watch = _RecordWatch(self)
        zc.zeroconf.async_add_listener(self._watch, None)

    def browse(self, *types: str) -> None:
        def on_change(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            self.changes.append(Change(state_change, service_type, name))
            self.changed.set()

        self._browser = AsyncServiceBrowser(self.zc.zeroconf, list(types), handlers=[on_change])

    async def wait(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None

    async def wait_change(
        self, change: ServiceStateChange, name: str, timeout: float = WAIT_S, after: int = 0
    ) -> None:
        await self.wait(
            lambda: any(c.change == change and c.name == name for c in self.changes[after:]),
            f"{change.name} {name}",
            timeout,
        )

    def saw(self, change: ServiceStateChange, name: str) -> bool:
        return any(c.change == change and c.name == name for c in self.changes)

    async def resolve(self, type_: str, name: str, timeout_ms: int = 3000) -> AsyncServiceInfo | None:
        info = AsyncServiceInfo(type_, name)
        return info if await info.async_request(self.zc.zeroconf, timeout_ms) else None

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        self.zc.zeroconf.async_remove_listener(self._watch)


@contextlib.asynccontextmanager
async def observing() -> AsyncIterator[Observer]:
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    observer = Observer(zc)
    try:
        yield observer
    finally:
        await observer.close()
        await zc.async_close()


@pytest.fixture
async def mdns() -> AsyncIterator[Observer]:
    async with observing() as observer:
        yield observer


def txt_keys(text: bytes) -> list[bytes]:
    """Keys of a TXT record in the order sent (RFC 6763 §6.1 length-prefixed strings)."""
    keys, pos = [], 0
    while pos < len(text):
        length = text[pos]
        keys.append(text[pos + 1 : pos + 1 + length].partition(b"=")[0])
        pos += 1 + length
    return keys


# --- an independent event-stream client -----------------------------------------------------


@dataclass
class Sse:
    event: str | None = None
    data: str = ""
    id: str | None = None
    comment: str | None = None
    retry: str | None = None
    fields: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """Parses `text/event-stream` (WHATWG HTML §9.2) from an httpx streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = WAIT_S) -> Sse:
        message = Sse()
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                line = await anext(self._lines)
                if line == "":
                    if message.fields:
                        message.data = "\n".join(data)
                        return message
                    continue
                if line.startswith(":"):
                    return Sse(comment=line[1:].strip())
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                message.fields.append(name)
                if name == "data":
                    data.append(value)
                elif name == "event":
                    message.event = value
                elif name == "id":
                    message.id = value
                elif name == "retry":
                    message.retry = value

    async def next_event(self, event: str, timeout: float = WAIT_S) -> Sse:
        """The next message named `event` (comments and other events are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next(timeout)
                if message.event == event:
                    return message


# --- HTTP API ----------------------------------------------------------------------------------


async def test_tv_info_state_and_commands() -> None:
    device = tv("127.0.0.31")
    async with running(device), httpx.AsyncClient(base_url=device.base_url, timeout=WAIT_S) as http:
        assert device.base_url == "http://127.0.0.31:8080/api/v1"
        info = (await http.get("/info")).json()
        assert info == {
            "id": TV_ID,
            "kind": "tv",
            "name": "客厅电视",
            "model": "BRAVIA 4K VH2",
            "manufacturer": "Sony",
            "firmware": info["firmware"],
            "api": "/api/v1",
            "capabilities": ["on", "volume", "muted", "channel", "input", "playing", "overlay"],
            "settable": ["on", "volume", "muted", "channel", "input", "playing", "overlay"],
        }
        TerminalInfo.model_validate(info)

        state = (await http.get("/state")).json()
        assert state == {
            "on": True,
            "volume": 25,
            "muted": False,
            "channel": 1,
            "input": "tv",
            "playing": True,
            "overlay": None,
        }

        reply = await http.post("/command", json={"volume": 20})
        assert reply.status_code == 200
        assert reply.json() == {**state, "volume": 20}
        assert (await http.get("/state")).json()["volume"] == 20
        assert device.state["volume"] == 20

        reply = await http.post("/command", json={"channel": 5, "input": "hdmi1", "muted": True})
        assert reply.status_code == 200
        assert TvState.model_validate(reply.json()).model_dump() == {
            **state, "volume": 20, "channel": 5, "input": "hdmi1", "muted": True,
        }  # fmt: skip

        bad: list[tuple[object | bytes, str | None]] = [
            ({"volume": 101}, "volume"),
            ({"volume": -1}, "volume"),
            ({"volume": "20"}, "volume"),
            ({"volume": True}, "volume"),
            ({"volume": 20.5}, "volume"),
            ({"volume": None}, "volume"),
            ({"on": 1}, "on"),
            ({"channel": 0}, "channel"),
            ({"input": "hdmi9"}, "input"),
            ({"overlay": "暴雨预警"}, "overlay"),
            ({"overlay": {"text": "x" * 20_000}}, "overlay"),
            ({"brightness": 50}, "brightness"),
            ({"say": "你好"}, "say"),  # a TV has no voice
            ({"volume": 30, "channel": -5}, "channel"),  # all or nothing
            ([{"volume": 20}], None),
            ("volume=20", None),
            (b"{not json", None),
            (b"", None),
            (b'{"volume": \xff}', None),
        ]
        for body, field_name in bad:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            reply = await http.post("/command", content=content)
            assert reply.status_code == 400, body
            error = reply.json()
            assert set(error) == {"error", "field"}
            assert error["field"] == field_name, (body, error)
            assert error["error"]
        assert (await http.get("/state")).json()["volume"] == 20  # nothing applied

        assert (await http.post("/command", content=b"{}")).json()["volume"] == 20
        missing = await http.get("/nothing-here")
        assert missing.status_code == 404
        assert missing.json() == {"error": "not found", "field": None}
        wrong_method = await http.get("/command")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["field"] is None
        hear = await http.post("/hear", json={"text": "hello"})
        assert hear.status_code == 404  # only a speaker has a microphone
        too_big = await http.post("/command", content=b" " * 70_000)
        assert too_big.status_code == 400


async def test_tv_overlay_is_what_is_on_screen() -> None:
    device = tv("127.0.0.32", power_on=False)
    alert = {"type": "alert", "title": "暴雨红色预警", "text": "请避免外出", "priority": "alert"}
    async with running(device), httpx.AsyncClient(base_url=device.base_url, timeout=WAIT_S) as http:
        state = (await http.get("/state")).json()
        assert state["on"] is False
        assert state["playing"] is False
        assert state["overlay"] is None

        # In standby an overlay is kept but not shown: the TV does not wake by itself.
        reply = (await http.post("/command", json={"overlay": alert})).json()
        assert reply["on"] is False
        assert reply["overlay"] is None
        assert device.pending_overlay == alert

        reply = (await http.post("/command", json={"on": True})).json()
        assert reply["on"] is True
        assert reply["overlay"] == alert
        assert reply["playing"] is True

        reply = (await http.post("/command", json={"overlay": None})).json()
        assert reply["overlay"] is None

        # Standby, then wake and show in one command, as an alert would.
        await http.post("/command", json={"on": False})
        reply = (await http.post("/command", json={"on": True, "overlay": alert})).json()
        assert reply == {**reply, "on": True, "overlay": alert}
        assert (await http.get("/state")).json()["overlay"] == alert


async def test_events_stream_state_to_several_clients() -> None:
    device = tv("127.0.0.33", keepalive_s=0.3)
    async with (
        running(device),
        httpx.AsyncClient(base_url=device.base_url, timeout=WAIT_S) as http,
        http.stream("GET", "/events") as first,
        http.stream("GET", "/events") as second,
    ):
        readers = [SseReader(first), SseReader(second)]
        greetings = [await r.next() for r in readers]
        for greeting in greetings:
            assert greeting.event == "state"
            assert greeting.retry is not None
            assert greeting.json() == device.state
        assert device.listeners == 2

        reply = (await http.post("/command", json={"volume": 20})).json()
        ids = []
        for reader in readers:
            event = await reader.next_event("state")
            assert event.json() == reply
            assert event.id is not None
            ids.append(int(event.id))
        assert ids[0] == ids[1]
        assert ids[0] > int(greetings[0].id or 0)

        # No change, no event: the next thing on the stream is a keep-alive comment.
        await http.post("/command", json={"volume": 20})
        assert (await readers[0].next(timeout=5)).comment == "ping"

        await http.post("/command", json={"muted": True})
        event = await readers[1].next_event("state")
        assert event.json()["muted"] is True
        assert int(event.id or 0) == ids[1] + 1


async def test_slow_event_client_does_not_hold_up_others() -> None:
    device = tv("127.0.0.34", event_queue_size=4)
    loop = asyncio.get_running_loop()
    async with running(device), httpx.AsyncClient(base_url=device.base_url, timeout=WAIT_S) as http:
        # A client that asks for the stream and then never reads, with a tiny receive window.
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        try:
            await loop.sock_connect(slow, ("127.0.0.34", 8080))
            await loop.sock_sendall(slow, b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.34\r\n\r\n")
            async with http.stream("GET", "/events") as fast:
                reader = SseReader(fast)
                await reader.next()
                # ~15 kB per state event: the slow client's socket buffers fill after a few
                # MB (about 200 events here), then its queue overflows and drops its oldest.
                filler = "预警" * 2500
                n = 0
                while not device.dropped_events:
                    n += 1
                    assert n < 3000, "the slow client's queue never overflowed"
                    await http.post("/command", json={"overlay": {"t": filler, "n": n}})
                    event = await reader.next_event("state", timeout=5)
                    assert event.json()["overlay"]["n"] == n  # the fast client keeps up

            # The slow client still gets the newest state once it reads.
            received = bytearray()
            async with asyncio.timeout(WAIT_S):
                while f'"n":{n}}}'.encode() not in received:
                    chunk = await loop.sock_recv(slow, 65536)
                    assert chunk, "stream ended early"
                    received += chunk
        finally:
            slow.close()


async def test_speaker_says_and_hears() -> None:
    device = speaker("127.0.0.35")
    async with (
        running(device),
        httpx.AsyncClient(base_url=device.base_url, timeout=WAIT_S) as http,
    ):
        info = TerminalInfo.model_validate((await http.get("/info")).json())
        assert info.kind == "speaker"
        assert info.capabilities == ["volume", "muted", "playing", "say"]
        assert (await http.get("/state")).json() == {
            "volume": 40,
            "muted": False,
            "playing": False,
            "said": [],
        }

        async with http.stream("GET", "/events") as stream:
            reader = SseReader(stream)
            assert (await reader.next()).event == "state"

            alert = {"text": "台风红色预警 请留在室内", "lang": "zh-CN", "priority": "alert"}
            reply = await http.post("/command", json={"say": alert})
            assert reply.status_code == 200
            said = SpeakerState.model_validate(reply.json()).said
            assert [(s.text, s.lang, s.priority) for s in said] == [
                ("台风红色预警 请留在室内", "zh-CN", "alert")
            ]
            event = await reader.next_event("state")
            assert event.json()["said"][-1]["text"] == alert["text"]

            await http.post("/command", json={"say": "Good evening"})
            await http.post("/command", json={"say": "晚上好"})
            said = SpeakerState.model_validate((await http.get("/state")).json()).said
            assert [(s.text, s.lang, s.priority) for s in said[1:]] == [
                ("Good evening", "en", "normal"),
                ("晚上好", "zh-CN", "normal"),
            ]

            for bad in (
                {"say": {"text": ""}},
                {"say": {"lang": "en"}},
                {"say": {"text": "x", "priority": "urgent"}},
                {"say": {"text": "x", "volume": 3}},
                {"say": 5},
                {"on": True},
            ):
                reply = await http.post("/command", json=bad)
                assert reply.status_code == 400, bad
                assert reply.json()["field"] == next(iter(bad))

            reply = await http.post("/hear", json={"text": "打开客厅的灯"})
            assert reply.status_code == 200
            heard = HeardEvent.model_validate((await reader.next_event("heard")).json())
            assert (heard.text, heard.lang) == ("打开客厅的灯", "zh-CN")
            assert heard.ts.endswith("Z")

            await http.post("/hear", json={"text": "turn on the light"})
            heard = HeardEvent.model_validate((await reader.next_event("heard")).json())
            assert (heard.text, heard.lang) == ("turn on the light", "en")

            await http.post("/hear", json={"text": "開燈", "lang": "zh-TW"})
            heard = HeardEvent.model_validate((await reader.next_event("heard")).json())
            assert heard.lang == "zh-TW"

            for bad_hear in ({"text": ""}, {"lang": "en"}, {"text": 5}, ["hi"]):
                assert (await http.post("/hear", json=bad_hear)).status_code == 400

        for i in range(60):
            await http.post("/command", json={"say": f"line {i}"})
        said = (await http.get("/state")).json()["said"]
        assert len(said) == 50
        assert said[-1]["text"] == "line 59"


# --- mDNS / DNS-SD ----------------------------------------------------------------------------


async def test_advertisements_and_txt_records(mdns: Observer) -> None:
    the_tv = tv("127.0.0.41", host_ttl_s=30, other_ttl_s=60)
    the_speaker = speaker("127.0.0.42")
    mdns.browse(SERVICE_TYPE, CAST_SERVICE_TYPE)
    async with running(the_tv, the_speaker):
        tv_name = f"客厅电视.{SERVICE_TYPE}"
        speaker_name = f"客厅音箱.{SERVICE_TYPE}"
        await mdns.wait_change(ServiceStateChange.Added, tv_name)
        await mdns.wait_change(ServiceStateChange.Added, speaker_name)

        info = await mdns.resolve(SERVICE_TYPE, tv_name)
        assert info is not None
        assert info.parsed_addresses() == ["127.0.0.41"]
        assert info.port == 8080
        assert info.server == f"{TV_ID}.local."
        assert info.decoded_properties == {
            "id": TV_ID,
            "kind": "tv",
            "model": "BRAVIA 4K VH2",
            "manufacturer": "Sony",
            "api": "/api/v1",
            "name": "客厅电视",
        }
        assert txt_keys(info.text) == [b"id", b"kind", b"model", b"manufacturer", b"api", b"name"]
        records = mdns.zc.zeroconf.cache.async_entries_with_name(tv_name)
        assert {(r.type, r.ttl) for r in records if r.type in (TYPE_SRV, 16)} == {
            (TYPE_SRV, 30),
            (16, 60),  # TXT, RFC 1035 §3.3.14
        }

        info = await mdns.resolve(SERVICE_TYPE, speaker_name)
        assert info is not None
        assert info.parsed_addresses() == ["127.0.0.42"]
        assert info.decoded_properties["id"] == SPEAKER_ID
        assert info.decoded_properties["kind"] == "speaker"

        await mdns.wait(lambda: any(c.type_ == CAST_SERVICE_TYPE for c in mdns.changes), "a cast device")
        casts = [c.name for c in mdns.changes if c.type_ == CAST_SERVICE_TYPE]
        assert len(set(casts)) == 1  # the TV, not the speaker
        cast = await mdns.resolve(CAST_SERVICE_TYPE, casts[0])
        assert cast is not None
        props = cast.decoded_properties
        assert txt_keys(cast.text) == [
            b"id", b"cd", b"rm", b"ve", b"md", b"ic", b"fn", b"ca", b"st", b"bs", b"nf", b"rs",
        ]  # fmt: skip
        assert re.fullmatch(r"[0-9a-f]{32}", props["id"] or "")
        assert re.fullmatch(r"[0-9A-F]{32}", props["cd"] or "")
        assert re.fullmatch(r"[0-9A-F]{12}", props["bs"] or "")
        assert {k: props[k] for k in ("rm", "ve", "md", "ic", "fn", "ca", "st", "nf", "rs")} == {
            "rm": "",
            "ve": "05",
            "md": "BRAVIA 4K VH2",
            "ic": "/setup/icon.png",
            "fn": "客厅电视",
            "ca": "264709",
            "st": "0",
            "nf": "1",
            "rs": "",
        }
        assert casts[0] == f"BRAVIA-4K-VH2-{props['id']}.{CAST_SERVICE_TYPE}"
        assert cast.port == 8009
        assert cast.parsed_addresses() == ["127.0.0.41"]


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) is not installed")
async def test_dig_legacy_unicast() -> None:
    # No other mDNS responder on this host: unicast to 127.0.0.1:5353 reaches the device's
    # wildcard socket (several responders would share those queries between them).
    device = tv("127.0.0.43", name="Bedroom TV", host_ttl_s=8, other_ttl_s=8)

    async def dig(server: str, name: str, rtype: str) -> list[list[str]]:
        proc = await asyncio.create_subprocess_exec(
            "dig", "+time=2", "+tries=3", "+noall", "+answer", "-p", "5353", f"@{server}",
            name, rtype,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out
        return [line.split(None, 4) for line in out.decode().splitlines() if line.strip()]

    async with running(device):
        for server in ("127.0.0.1", "127.0.0.43"):
            answers = await dig(server, "_bfy-terminal._tcp.local", "PTR")
            assert [(a[0], a[3], a[4]) for a in answers] == [
                ("_bfy-terminal._tcp.local.", "PTR", "Bedroom\\032TV._bfy-terminal._tcp.local.")
            ]
            # The configured TTL: python-zeroconf does not apply the 10 s cap that RFC 6762
            # §6.7 suggests for legacy unicast answers.
            assert int(answers[0][1]) == 8

        answers = await dig("127.0.0.43", "Bedroom TV._bfy-terminal._tcp.local", "TXT")
        assert [a[3] for a in answers] == ["TXT"]
        assert answers[0][4] == (
            f'"id={TV_ID}" "kind=tv" "model=BRAVIA 4K VH2" "manufacturer=Sony" '
            '"api=/api/v1" "name=Bedroom TV"'
        )
        answers = await dig("127.0.0.43", f"{TV_ID}.local", "A")
        assert [a[4] for a in answers if a[3] == "A"] == ["127.0.0.43"]


async def test_clean_stop_says_goodbye_and_return_is_seen(mdns: Observer) -> None:
    device = tv("127.0.0.44")  # TTLs of 120 s: only a goodbye removes it quickly
    name = f"客厅电视.{SERVICE_TYPE}"
    mdns.browse(SERVICE_TYPE)
    async with running(device):
        await mdns.wait_change(ServiceStateChange.Added, name)
        assert await mdns.resolve(SERVICE_TYPE, name) is not None
        mark = len(mdns.changes)  # leaving the block stops the device
    await mdns.wait_change(ServiceStateChange.Removed, name, timeout=5, after=mark)
    assert any(g.how == "goodbye" and g.type_ == TYPE_SRV and g.name == name for g in mdns.gone)
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{device.base_url}/info")

    # ... and back again (the same object: a reboot).
    mark = len(mdns.changes)
    async with running(device):
        await mdns.wait_change(ServiceStateChange.Added, name, after=mark)


async def test_crash_sends_no_goodbye_and_records_expire(mdns: Observer) -> None:
    ttl_s = 4
    crashing = tv("127.0.0.45", host_ttl_s=ttl_s, other_ttl_s=ttl_s)
    staying = speaker("127.0.0.46", host_ttl_s=ttl_s, other_ttl_s=ttl_s)
    crash_name = f"客厅电视.{SERVICE_TYPE}".lower()
    stay_name = f"客厅音箱.{SERVICE_TYPE}"
    mdns.browse(SERVICE_TYPE)
    loop = asyncio.get_running_loop()
    async with (
        running(crashing, staying) as tasks,
        httpx.AsyncClient(base_url=crashing.base_url, timeout=WAIT_S) as http,
    ):
        await mdns.wait_change(ServiceStateChange.Added, f"客厅电视.{SERVICE_TYPE}")
        assert await mdns.resolve(SERVICE_TYPE, f"客厅电视.{SERVICE_TYPE}") is not None
        resolved_at = loop.time()

        async with http.stream("GET", "/events") as stream:
            reader = SseReader(stream)
            await reader.next()
            crashing.crash()
            async with asyncio.timeout(WAIT_S):
                await tasks[0]  # run() returns by itself
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await reader.next()
        with pytest.raises(httpx.ConnectError):
            await http.get("/info")

        # Nobody says goodbye: the records leave the cache only when their TTL runs out
        # (zeroconf's cache sweep runs every 10 s).
        await mdns.wait(
            lambda: any(g.name == crash_name and g.type_ == TYPE_SRV for g in mdns.gone),
            "the SRV record to expire",
            timeout=ttl_s + 15,
        )
        srv = next(g for g in mdns.gone if g.name == crash_name and g.type_ == TYPE_SRV)
        assert srv.how == "expired"
        assert srv.ttl == ttl_s
        assert srv.at - resolved_at >= ttl_s - 0.5
        assert not any(g.how == "goodbye" for g in mdns.gone)
        assert not mdns.saw(ServiceStateChange.Removed, f"客厅电视.{SERVICE_TYPE}")

        # Asked again, the crashed TV is silent while its neighbour still answers.
        assert await mdns.resolve(SERVICE_TYPE, f"客厅电视.{SERVICE_TYPE}", 1500) is None
        assert await mdns.resolve(SERVICE_TYPE, stay_name) is not None
        assert not tasks[1].done()


async def test_restart_on_another_address_keeps_id(mdns: Observer) -> None:
    device = tv("127.0.0.47")
    name = f"客厅电视.{SERVICE_TYPE}"
    mdns.browse(SERVICE_TYPE, CAST_SERVICE_TYPE)
    task = asyncio.create_task(device.run())
    try:
        async with asyncio.timeout(WAIT_S):
            await device.wait_ready()
        await mdns.wait_change(ServiceStateChange.Added, name)
        before = await mdns.resolve(SERVICE_TYPE, name)
        assert before is not None
        assert before.parsed_addresses() == ["127.0.0.47"]
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            await http.post(f"{device.base_url}/command", json={"volume": 33})
        cast_before = device.cast_txt_record()
        with pytest.raises(RuntimeError):
            device.move_to("127.0.0.48")  # not while running

        device.crash()
        async with asyncio.timeout(WAIT_S):
            await task
        with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
            device.move_to("192.168.1.20")  # never on a host interface
        device.move_to("127.0.0.48")
        mark = len(mdns.changes)
        task = asyncio.create_task(device.run())
        async with asyncio.timeout(WAIT_S):
            await device.wait_ready()

        # The browser that knew the old address sees the service change...
        await mdns.wait_change(ServiceStateChange.Updated, name, after=mark)
        # ... and a client with a fresh cache finds it only at the new one, same id.
        async with observing() as fresh:
            after = await fresh.resolve(SERVICE_TYPE, name)
            assert after is not None
            assert after.parsed_addresses() == ["127.0.0.48"]
            assert after.decoded_properties["id"] == TV_ID
            cast_name = f"{device.cast_instance_name()}.{CAST_SERVICE_TYPE}"
            cast = await fresh.resolve(CAST_SERVICE_TYPE, cast_name)
            assert cast is not None
            assert cast.decoded_properties["id"] == cast_before["id"]
            assert cast.parsed_addresses() == ["127.0.0.48"]
        async with httpx.AsyncClient(base_url=device.base_url, timeout=WAIT_S) as http:
            assert device.base_url.startswith("http://127.0.0.48:8080")
            assert (await http.get("/info")).json()["id"] == TV_ID
            assert (await http.get("/state")).json()["volume"] == 33  # kept across the reboot
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- a hostile neighbour --------------------------------------------------------------------


async def test_hostile_device_stays_up_and_serves_garbage(mdns: Observer) -> None:
    hostile = HostileTerminal(address="127.0.0.51", churn_s=2.0, keepalive_s=0.05, seed=7)
    neighbour = tv("127.0.0.52")
    mdns.browse(SERVICE_TYPE)
    hostile_name = f"{hostile.name}.{SERVICE_TYPE}"
    async with running(hostile, neighbour) as tasks:
        await mdns.wait_change(ServiceStateChange.Added, hostile_name)
        info = await mdns.resolve(SERVICE_TYPE, hostile_name)
        assert info is not None
        props = info.properties
        assert b"id" not in props
        assert props[b"kind"] == b"tv"  # duplicate key: the first one counts (RFC 6763 §6.4)
        assert b"kind=speaker" in info.text
        assert props[b"flag"] is None  # a key without '='
        assert props[b"model"] == b"\xff\xfe\xfd"
        assert props[b"note"] == b"N" * 250
        first_text = info.text

        # It re-announces with other garbage now and then (a service update).
        await mdns.wait_change(ServiceStateChange.Updated, hostile_name)
        info = await mdns.resolve(SERVICE_TYPE, hostile_name)
        assert info is not None
        assert info.text != first_text
        assert hostile.txt_updates >= 1

        # The sane neighbour is browsed and resolved as usual.
        await mdns.wait_change(ServiceStateChange.Added, f"客厅电视.{SERVICE_TYPE}")
        assert await mdns.resolve(SERVICE_TYPE, f"客厅电视.{SERVICE_TYPE}") is not None

        base = "http://127.0.0.51:8080/api/v1"
        outcomes: set[str] = set()
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            for _ in range(15):
                for method, path in (("GET", "/info"), ("GET", "/state"), ("POST", "/command")):
                    reply = await http.request(method, base + path, content=b'{"volume": 20}')
                    outcomes.add(_judge(reply))
            async with http.stream("GET", base + "/events") as stream:
                chunks = []
                async with asyncio.timeout(WAIT_S):
                    async for chunk in stream.aiter_raw():
                        chunks.append(chunk)
                        if len(b"".join(chunks)) > 80_000 and len(chunks) > 10:
                            break
            junk = b"".join(chunks)
            assert b"\xff\xfe\xfd" in junk
            with pytest.raises(UnicodeDecodeError):
                junk.decode()
            # A client that hangs up mid-request does not upset it either.
            with contextlib.suppress(httpx.HTTPError):
                await http.post(base + "/command", content=b"{" * 100, timeout=0.001)
            reply = await http.get(base + "/info")
            assert reply.status_code in (200, 418, 500)

        assert {"invalid json", "not an object", "wrong types", "http error"} <= outcomes, outcomes
        assert not any(task.done() for task in tasks)
        assert hostile.state["requests"] >= 46


def _judge(reply: httpx.Response) -> str:
    if reply.status_code >= 400:
        return "http error"
    try:
        payload = json.loads(reply.content)
    except (ValueError, RecursionError):
        return "invalid json"
    if not isinstance(payload, dict):
        return "not an object"
    return "wrong types"


# --- lifecycle ---------------------------------------------------------------------------


async def test_lifecycle_errors() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        TvSimulator(address="192.168.1.5")
    with pytest.raises(ValueError, match="IPv4"):
        TvSimulator(address="::1")
    with pytest.raises(ValueError, match="device_id"):
        TvSimulator(address="127.0.0.61", device_id="TV 1")
    with pytest.raises(ValueError, match="name"):
        TvSimulator(address="127.0.0.61", name="电视" * 20)

    # Port taken: run() and wait_ready() both say so.
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.61", 8080))
        blocker.listen(1)
        device = tv("127.0.0.61")
        task = asyncio.create_task(device.run())
        with pytest.raises(TerminalStartError):
            async with asyncio.timeout(WAIT_S):
                await device.wait_ready()
        with pytest.raises(TerminalStartError):
            await task
    finally:
        blocker.close()

    other = speaker("127.0.0.62")
    async with running(other):
        with pytest.raises(RuntimeError, match="already running"):
            await other.run()
