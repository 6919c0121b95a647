"""A rogue device on the home LAN that performs one attack on demand (`firmware-sim hostile`).

Robustness and security tests of a gateway need a peer that breaks the rules on purpose and
says exactly what it did. Like every simulator this one knows nothing of the gateway: it
only talks over the network, with the protocols of DESIGN.md Contract 2 (mDNS + the operator
terminal profile over HTTP, CoAP, MQTT) and the gateway's LAN HTTP API (Contract 4).

Every attack is bounded in count and time and ends by itself, with one JSON report of what
was sent and what the peer answered (HTTP statuses, MQTT reason codes, counts):

- Fake terminals (`NestedJsonTerminal`, `HugeInfoTerminal`, `HugeEventTerminal`,
  `ImpostorTerminal`, `TerminalFlood`) and a CoAP device (`BigIntCoapDevice`) are servers:
  `async with X(...) as x:` runs one until the block ends (a test inspects it meanwhile);
  `await x.attack(duration_s)` runs it for a while; `x.report()` says what happened.
- MQTT and HTTP attacks are coroutines (`tasmota_relays(url)`, `http_pin(url)`, ...) that
  return their report.

Nothing here reaches beyond loopback: every address and URL must be in 127.0.0.0/8 (or ::1,
`localhost`), and mDNS and CoAP multicast only happen inside the private network namespace
that the test runner and `gateway demo` provide. Large bodies (150 MB by default) are made
chunk by chunk as the peer reads them, never held in memory.

MQTT attacks connect with `Mqtt5Probe` (paho-mqtt speaking MQTT 5, from `firmware_sim._mqtt`)
rather than the simulators' aiomqtt link: an attacker must connect without a will and under
any client id, and report the broker's reason codes (CONNACK, PUBACK for a denied publish,
DISCONNECT for a session taken over), which that link does not surface.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import logging
import random
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Final, Self, TypeAlias

import aiocoap  # type: ignore[import-untyped, unused-ignore]
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from typing_extensions import TypedDict, Unpack
from zeroconf.asyncio import AsyncServiceInfo

from firmware_sim._mqtt import (
    DEFAULT_BROKER_URL,
    PROBE_KEEPALIVE_S,
    LinkDown,
    Mqtt5Probe,
    parse_mqtt_url,
)
from firmware_sim.coap import (
    _SENML_FORMATS,
    COAP_PORT,
    CT_SENML_CBOR,
    CoapDevice,
    _accepted,
    _encode_pack,
    _InstanceResource,
)
from firmware_sim.household import LIVING_ROOM_PLUG_MAC
from firmware_sim.tasmota import TasmotaPlug
from firmware_sim.terminal import (
    API_BASE,
    DEFAULT_HOST_TTL_S,
    DEFAULT_OTHER_TTL_S,
    DEFAULT_PORT,
    SERVICE_TYPE,
    HeardEvent,
    _BadRequest,
    _dumps,
    _NetworkDevice,
    _now_iso,
    _read_body,
)
from firmware_sim.zigbee2mqtt import DEFAULT_BASE_TOPIC

__all__ = [
    "ATTACKS",
    "DEFAULT_COAP_ADDRESS",
    "DEFAULT_DURATION_S",
    "DEFAULT_GATEWAY_URL",
    "DEFAULT_TERMINAL_ADDRESS",
    "BigIntCoapDevice",
    "HugeEventTerminal",
    "HugeInfoTerminal",
    "ImpostorTerminal",
    "NestedJsonTerminal",
    "Report",
    "TerminalFlood",
    "add_hostile_parser",
    "client_id_takeover",
    "hostile_work",
    "http_big_body",
    "http_pair_guess",
    "http_pin",
    "http_rebind",
    "http_streams",
    "tasmota_absurd",
    "tasmota_empty_config",
    "tasmota_plus_topic",
    "tasmota_relays",
    "tasmota_repoint",
    "tasmota_sensors",
    "z2m_devices",
    "z2m_empty",
    "z2m_inf",
]

_log = logging.getLogger(__name__)

Report: TypeAlias = dict[str, Any]
Work: TypeAlias = Callable[[], Coroutine[Any, Any, None]]

ATTACKS: Final[Mapping[str, str]] = {
    "nested-json": "fake terminal whose event stream (or info, --info-nested) is JSON nested 100,000 deep",
    "huge-info": "fake terminal whose /api/v1/info is a 150 MB body, made as it is read",
    "huge-event": "fake terminal whose event stream sends one 150 MB line",
    "impostor": "fake terminal under a real TV's id: records commands, sends 'heard' transcripts",
    "terminal-flood": "230 fake terminals on one address, each holding an event stream open",
    "coap-bigint": "CoAP device whose /3/0 SenML has a 400-digit integer (JSON literal, CBOR bignum)",
    "tasmota-relays": "retained Tasmota discovery config with 20,000 relays",
    "tasmota-sensors": "Tasmota sensors discovery for 1,500 unknown MACs",
    "tasmota-repoint": "retained Tasmota config whose topic is another plug's",
    "tasmota-absurd": "Tasmota telemetry with Power 1e300, negative Total and Dimmer 1e300",
    "tasmota-empty-config": "an empty retained Tasmota discovery config",
    "tasmota-plus-topic": "retained Tasmota configs whose topic holds + or # (and a FullTopic with +)",
    "z2m-devices": "Zigbee2MQTT bridge/devices listing 10,000 devices",
    "z2m-empty": "Zigbee2MQTT bridge/devices = []",
    "z2m-inf": "Zigbee2MQTT bridge/devices with Infinity/NaN ranges and + or # in names",
    "client-id-takeover": "connect again and again under a victim's MQTT client id",
    "http-pin": "GET /api/v1/pairing/pin",
    "http-rebind": "pair and list devices with a foreign Host and Origin (DNS rebinding)",
    "http-streams": "hold 20 /api/v1/stream event streams open",
    "http-pair-guess": "30 wrong pairing PIN guesses, optionally from several source addresses",
    "http-big-body": "a 150 MB command body with a garbage bearer token",
}

DEFAULT_TERMINAL_ADDRESS: Final = "127.0.0.60"
DEFAULT_COAP_ADDRESS: Final = "127.0.0.61"
DEFAULT_GATEWAY_URL: Final = "http://127.0.0.1:8080"
DEFAULT_DURATION_S: Final = 10.0
DEFAULT_KEEPALIVE_S: Final = 3.0  # SSE comments on otherwise idle event streams
DEFAULT_NAME: Final = "客厅电视"
DEFAULT_SAY: Final = "关闭客厅的灯"
DEFAULT_HEARD_INTERVAL_S: Final = 2.0
DEFAULT_SIZE_MB: Final = 150.0
NESTED_DEPTH: Final = 100_000
FLOOD_COUNT: Final = 230
BIGINT_DIGITS: Final = 400
RELAY_COUNT: Final = 20_000
SENSORS_COUNT: Final = 1_500
ABSURD_COUNT: Final = 10
Z2M_COUNT: Final = 10_000
TAKEOVER_COUNT: Final = 20
TAKEOVER_INTERVAL_S: Final = 1.0
STREAMS_COUNT: Final = 20
GUESS_COUNT: Final = 30
ROGUE_MAC: Final = "02BADC0FFEE1"  # locally administered: no vendor owns it
VICTIM_TOPIC: Final = f"tasmota_{LIVING_ROOM_PLUG_MAC[-6:]}"  # the household plug's topic
GARBAGE_TOKEN: Final = "bfy_0000000000000000000000000000000000000000"  # noqa: S105  # wrong on purpose
START_TIMEOUT_S: Final = 30.0  # registering hundreds of mDNS services takes a few seconds
HTTP_TIMEOUT_S: Final = 30.0
MIB: Final = 1024 * 1024  # "MB" in options means MiB
_FILLER: Final = b"A" * (64 * 1024)  # one chunk of a lazily made huge body
_KEEPALIVE: Final = b": keep-alive\n\n"
_FIRMWARE: Final = "BFY-TV-OS 3.2.1 (build 20240611)"
_PIN_PATH: Final = "/api/v1/pairing/pin"
_PAIR_PATH: Final = "/api/v1/pair"


def _loopback(host: str) -> str:
    """`host` if it is on this machine's loopback; ValueError otherwise (never beyond lo)."""
    if host == "localhost":
        return host
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError as exc:
        raise ValueError(f"hostile attacks stay on loopback: {host!r} is not an IP address") from exc
    if not ip.is_loopback:
        raise ValueError(f"hostile attacks stay on loopback (127.0.0.0/8, ::1), not {host}")
    return host


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an HTTP URL: {url!r}")
    _loopback(parts.hostname)
    return url.rstrip("/")


def _positive(value: float, what: str) -> float:
    if not value > 0:
        raise ValueError(f"{what} must be positive, not {value}")
    return value


def _at_least_one(value: int, what: str) -> int:
    if value < 1:
        raise ValueError(f"{what} must be at least 1, not {value}")
    return value


def _frame(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()


def _nested(depth: int) -> str:
    """`{"a":{"a":...{}...}}`: `depth` objects, each inside the one before."""
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


# --- server attacks: one lifecycle ----------------------------------------------------------


class _Served(abc.ABC):
    """A server attack: `async with` runs it around a block, `attack()` for a bounded time."""

    _runner: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def run(self) -> None:
        """Serve until cancelled."""

    @abc.abstractmethod
    async def wait_ready(self) -> None:
        """Return once serving; raise if `run()` failed to start."""

    @abc.abstractmethod
    def report(self) -> Report:
        """What was sent and what the peers did, so far."""

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._runner = asyncio.create_task(self.run(), name=f"hostile-{type(self).__name__}")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await self.wait_ready()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    async def attack(self, duration_s: float = DEFAULT_DURATION_S) -> Report:
        """Serve for `duration_s` (less if the server fails), then stop and report."""
        _positive(duration_s, "duration_s")
        async with self:
            assert self._runner is not None
            await asyncio.wait({self._runner}, timeout=duration_s)
        return self.report()

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        runner.cancel()
        try:
            await runner  # a failure of the server surfaces here
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise


# --- fake operator terminals (DESIGN.md Contract 2) -------------------------------------------


class _TerminalOptions(TypedDict, total=False):
    address: str
    port: int
    device_id: str | None
    name: str
    model: str
    manufacturer: str
    keepalive_s: float
    seed: int | None


class _RogueTerminal(_NetworkDevice, _Served):
    """A `_bfy-terminal._tcp` TV with the profile's four endpoints, each of which a subclass
    can make hostile. Records every command it is sent (`commands`) and counts requests and
    event streams (`streams_max`: the most held open at once)."""

    kind = "tv"
    attack_name: ClassVar[str]
    capabilities: ClassVar[tuple[str, ...]] = ("on", "volume", "muted", "channel", "input", "overlay")

    def __init__(
        self,
        *,
        address: str = DEFAULT_TERMINAL_ADDRESS,
        port: int = DEFAULT_PORT,
        device_id: str | None = None,
        name: str = DEFAULT_NAME,
        model: str = "BRAVIA 4K VH2",
        manufacturer: str = "Sony",
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            address=address,
            port=port,
            device_id=device_id,
            name=name,
            model=model,
            manufacturer=manufacturer,
            keepalive_s=keepalive_s,
            host_ttl_s=DEFAULT_HOST_TTL_S,
            other_ttl_s=DEFAULT_OTHER_TTL_S,
            seed=seed,
            logger=_log,
        )
        self._stopping = asyncio.Event()
        self._state: dict[str, Any] = {
            "on": True, "volume": 20, "muted": False, "channel": 1, "input": "tv", "overlay": None,
        }  # fmt: skip
        self.commands: list[Any] = []
        self._command_seen = asyncio.Event()
        self.requests: Counter[str] = Counter()
        self.streams_opened = 0
        self.streams_max = 0
        self._streams_open = 0

    @property
    def state(self) -> dict[str, Any]:
        return dict(self._state)

    def info(self) -> dict[str, Any]:
        """`GET /api/v1/info` of a well-behaved terminal."""
        return {
            "id": self._device_id, "kind": self.kind, "name": self._name, "model": self._model,
            "manufacturer": self._manufacturer, "firmware": _FIRMWARE, "api": API_BASE,
            "capabilities": list(self.capabilities), "settable": list(self.capabilities),
        }  # fmt: skip

    def txt_record(self) -> dict[str, str]:
        return {
            "id": self._device_id, "kind": self.kind, "model": self._model,
            "manufacturer": self._manufacturer, "api": API_BASE,
        }  # fmt: skip

    async def wait_commands(self, count: int = 1) -> list[Any]:
        """Return the commands received once there are at least `count` (the caller bounds it)."""
        while len(self.commands) < count:
            self._command_seen.clear()
            await self._command_seen.wait()
        return list(self.commands)

    def report(self) -> Report:
        return {
            "attack": self.attack_name,
            "address": self._address,
            "port": self._port,
            "id": self._device_id,
            "sent": self._sent(),
            "requests": dict(self.requests),
            "streams_opened": self.streams_opened,
            "streams_max": self.streams_max,
            "commands": list(self.commands),
        }

    def _sent(self) -> dict[str, int]:
        return {}

    # --- _NetworkDevice -----------------------------------------------------------------------

    def _service_infos(self) -> list[AsyncServiceInfo]:
        return [self._ad(self._name, self.txt_record())]

    def _ad(self, instance: str, txt: dict[str, str]) -> AsyncServiceInfo:
        return self._service_info(
            SERVICE_TYPE, instance, port=self._port, server=f"{self._device_id}.local.", properties=txt
        )

    def _on_starting(self) -> None:
        self._stopping.clear()

    def _on_stopping(self) -> None:
        self._stopping.set()  # ends event streams and huge bodies, so the server can stop

    def _app(self) -> Starlette:
        return Starlette(routes=self._routes(API_BASE))

    def _routes(self, base: str) -> list[Route]:
        return [
            Route(f"{base}/info", self._get_info, methods=["GET"]),
            Route(f"{base}/state", self._get_state, methods=["GET"]),
            Route(f"{base}/command", self._post_command, methods=["POST"]),
            Route(f"{base}/events", self._get_events, methods=["GET"]),
        ]

    # --- HTTP ------------------------------------------------------------------------------------

    def _seen(self, request: Request) -> None:
        """Count a request; a subclass may refuse it by raising HTTPException."""
        self.requests[f"{request.method} {request.url.path}"] += 1

    async def _get_info(self, request: Request) -> Response:
        self._seen(request)
        return self._info_response(request)

    def _info_response(self, request: Request) -> Response:
        return JSONResponse(self.info())

    async def _get_state(self, request: Request) -> Response:
        self._seen(request)
        return JSONResponse(self.state)

    async def _post_command(self, request: Request) -> Response:
        self._seen(request)
        try:
            body = await _read_body(request)
        except _BadRequest as exc:
            return JSONResponse({"error": exc.error, "field": None}, status_code=400)
        try:
            command: Any = json.loads(body)
        except (ValueError, RecursionError):
            command = body.decode("utf-8", "replace")
        self.commands.append(command)
        self._command_seen.set()
        if isinstance(command, dict):
            self._state.update((k, v) for k, v in command.items() if k in self._state)
        return JSONResponse(self.state)

    async def _get_events(self, request: Request) -> Response:
        self._seen(request)
        return StreamingResponse(
            self._counted(self._events()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )

    async def _counted(self, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        self.streams_opened += 1
        self._streams_open += 1
        self.streams_max = max(self.streams_max, self._streams_open)
        try:
            async for frame in frames:
                yield frame
        finally:
            self._streams_open -= 1

    async def _events(self) -> AsyncIterator[bytes]:
        """The event stream: the state, then keep-alive comments until stopped."""
        yield _frame("state", self.state)
        async for comment in self._keepalives():
            yield comment

    async def _keepalives(self) -> AsyncIterator[bytes]:
        while await self._idle(self._keepalive_s):
            yield _KEEPALIVE

    async def _idle(self, seconds: float) -> bool:
        """Wait up to `seconds`; False as soon as the terminal is stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._stopping.wait()
        return not self._stopping.is_set()

    async def _lazy(self, head: bytes, size: int, counter: Counter[str], key: str) -> AsyncIterator[bytes]:
        """`head`, then `size` bytes of filler made chunk by chunk as the peer reads them;
        `counter[key]` counts the bytes handed to the server."""
        yield head
        counter[key] += len(head)
        left = size
        while left > 0 and not self._stopping.is_set():
            chunk = _FILLER[: min(left, len(_FILLER))]
            yield chunk
            counter[key] += len(chunk)
            left -= len(chunk)


class NestedJsonTerminal(_RogueTerminal):
    """Its event stream sends one `state` event whose data is a JSON object nested `depth`
    levels deep, then keep-alives; with `info_nested` its `/api/v1/info` holds the same
    nesting under `extra` (after the usual keys)."""

    attack_name = "nested-json"

    def __init__(
        self, *, depth: int = NESTED_DEPTH, info_nested: bool = False, **options: Unpack[_TerminalOptions]
    ) -> None:
        super().__init__(**options)
        self._nested = _nested(_at_least_one(depth, "depth")).encode()
        self._info_nested = info_nested
        self._counts: Counter[str] = Counter()

    def _sent(self) -> dict[str, int]:
        return {"nested_events": self._counts["events"], "nested_infos": self._counts["infos"]}

    def _info_response(self, request: Request) -> Response:
        if not self._info_nested:
            return super()._info_response(request)
        self._counts["infos"] += 1
        body = _dumps(self.info())[:-1].encode() + b',"extra":' + self._nested + b"}"
        return Response(body, media_type="application/json")

    async def _events(self) -> AsyncIterator[bytes]:
        yield b"event: state\ndata: " + self._nested + b"\n\n"
        self._counts["events"] += 1
        async for comment in self._keepalives():
            yield comment


class HugeInfoTerminal(_RogueTerminal):
    """`GET /api/v1/info` answers 200 with `size_mb` MiB (no Content-Length) that begin like
    the real thing, `{"id":"<id>","name":"AAAA...`, and never end the JSON."""

    attack_name = "huge-info"

    def __init__(self, *, size_mb: float = DEFAULT_SIZE_MB, **options: Unpack[_TerminalOptions]) -> None:
        super().__init__(**options)
        self._size = int(_positive(size_mb, "size_mb") * MIB)
        self._counts: Counter[str] = Counter()

    def _sent(self) -> dict[str, int]:
        return {"info_bytes": self._counts["info_bytes"]}

    def _info_response(self, request: Request) -> Response:
        head = f'{{"id":"{self._device_id}","name":"'.encode()
        body = self._lazy(head, self._size - len(head), self._counts, "info_bytes")
        return StreamingResponse(body, media_type="application/json")


class HugeEventTerminal(_RogueTerminal):
    """Its event stream sends `event: state` and then one line of `data: ` followed by
    `size_mb` MiB without a newline; the line is then ended and keep-alives follow."""

    attack_name = "huge-event"

    def __init__(self, *, size_mb: float = DEFAULT_SIZE_MB, **options: Unpack[_TerminalOptions]) -> None:
        super().__init__(**options)
        self._size = int(_positive(size_mb, "size_mb") * MIB)
        self._counts: Counter[str] = Counter()

    def _sent(self) -> dict[str, int]:
        return {"event_bytes": self._counts["event_bytes"]}

    async def _events(self) -> AsyncIterator[bytes]:
        async for chunk in self._lazy(b"event: state\ndata: ", self._size, self._counts, "event_bytes"):
            yield chunk
        yield b"\n\n"
        async for comment in self._keepalives():
            yield comment


class ImpostorTerminal(_RogueTerminal):
    """Announces itself under a real TV's id (`target_id`) with a normal info, records every
    command (`commands`, `wait_commands()`), and on each event stream sends `heard` events,
    one text of `say` after the other, every `heard_interval_s`."""

    attack_name = "impostor"
    capabilities = ("on", "volume", "muted", "channel", "overlay", "say")

    def __init__(
        self,
        *,
        target_id: str,
        say: Sequence[str] = (DEFAULT_SAY,),
        heard_interval_s: float = DEFAULT_HEARD_INTERVAL_S,
        lang: str = "zh-CN",
        **options: Unpack[_TerminalOptions],
    ) -> None:
        options["device_id"] = target_id
        super().__init__(**options)
        if not say:
            raise ValueError("say: give at least one text")
        self._say = tuple(say)
        self._heard_interval_s = _positive(heard_interval_s, "heard_interval_s")
        self._lang = lang
        self.heard_sent = 0

    def _sent(self) -> dict[str, int]:
        return {"heard_events": self.heard_sent}

    async def _events(self) -> AsyncIterator[bytes]:
        yield _frame("state", self.state)
        texts = itertools.cycle(self._say)
        loop = asyncio.get_running_loop()
        due = loop.time() + self._heard_interval_s
        while await self._idle(min(self._keepalive_s, due - loop.time())):
            if loop.time() < due:
                yield _KEEPALIVE
                continue
            heard = HeardEvent(text=next(texts), lang=self._lang, ts=_now_iso())
            yield _frame("heard", heard.model_dump())
            self.heard_sent += 1
            due += self._heard_interval_s


class TerminalFlood(_RogueTerminal):
    """`count` distinct fake terminals (TXT ids `fake-0000`, ..., instance names
    `Fake TV 0000`, ...) from one zeroconf responder and one HTTP server: terminal n's API
    is at `/t/<n>/api/v1` (its TXT `api`). Every event stream stays open with keep-alives,
    so a client that follows them all runs out of connections; `streams_max` says how many
    the peer held open at once."""

    attack_name = "terminal-flood"

    def __init__(self, *, count: int = FLOOD_COUNT, **options: Unpack[_TerminalOptions]) -> None:
        super().__init__(**options)
        if not 1 <= count <= 10_000:
            raise ValueError(f"count must be 1..10000, not {count}")
        self._count = count

    @staticmethod
    def terminal_id(n: int) -> str:
        return f"fake-{n:04d}"

    def _sent(self) -> dict[str, int]:
        return {"terminals": self._count}

    def _service_infos(self) -> list[AsyncServiceInfo]:
        return [
            self._ad(
                f"Fake TV {n:04d}",
                {**self.txt_record(), "id": self.terminal_id(n), "api": f"/t/{n}{API_BASE}"},
            )
            for n in range(self._count)
        ]

    def _app(self) -> Starlette:
        return Starlette(routes=self._routes(f"/t/{{n:int}}{API_BASE}"))

    def _seen(self, request: Request) -> None:
        super()._seen(request)
        if request.path_params["n"] >= self._count:
            raise HTTPException(404)

    def _info_response(self, request: Request) -> Response:
        n = request.path_params["n"]
        return JSONResponse(
            {**self.info(), "id": self.terminal_id(n), "name": f"Fake TV {n:04d}", "api": f"/t/{n}{API_BASE}"}
        )


# --- CoAP: a number too large for a float ---------------------------------------------------


class BigIntCoapDevice(CoapDevice, _Served):
    """A climate sensor (`/3/0`, `/3303/0`, `/3304/0` in `/.well-known/core`, answering
    multicast discovery like every `CoapDevice`) whose device object `/3/0` reports its
    battery level (resource 9) as an integer of `digits` digits: a literal in SenML JSON
    (110, the default) and a CBOR bignum (tag 2, RFC 8949 §3.4.3) in SenML CBOR (112)."""

    def __init__(
        self,
        *,
        address: str = DEFAULT_COAP_ADDRESS,
        serial: str = "BFY-TH10-B16B16",
        name: str = "卧室温湿度",
        digits: int = BIGINT_DIGITS,
        seed: int | None = None,
    ) -> None:
        self._big = int("9" * _at_least_one(digits, "digits"))
        self.gets: Counter[str] = Counter()
        super().__init__(kind="climate", address=_loopback(address), serial=serial, name=name, seed=seed)

    def _build_site(self) -> Any:
        site = super()._build_site()
        device = next(obj for obj in self._objects if obj.object_id == 3)
        site.add_resource(("3", "0"), _BigIntInstance(self, device))
        return site

    def report(self) -> Report:
        return {
            "attack": "coap-bigint",
            "address": self.address,
            "port": COAP_PORT,
            "digits": len(str(self._big)),
            "sent": dict(self.gets),
        }


class _BigIntInstance(_InstanceResource):
    def __init__(self, device: BigIntCoapDevice, obj: Any) -> None:
        super().__init__(device, obj)
        self._big_device = device

    async def render_get(self, request: Any) -> Any:
        device = self._big_device
        content_format = _accepted(request, _SENML_FORMATS)
        pack = device._pack(self._obj, (r.key for r in self._obj.resources))
        for record in pack:
            if record.get("n") == "9":
                record["v"] = device._big
        device.gets["cbor" if content_format == CT_SENML_CBOR else "json"] += 1
        # json.dumps writes a big int as a literal, cbor2 as a tag 2 bignum.
        return aiocoap.Message(payload=_encode_pack(pack, content_format), content_format=content_format)


# --- MQTT: a rogue client ------------------------------------------------------------------

_Pub: TypeAlias = tuple[str, bytes, bool]  # topic, payload, retain


def _probe(mqtt_url: str, client_id: str) -> Mqtt5Probe:
    address = parse_mqtt_url(mqtt_url)
    _loopback(address.host)
    return Mqtt5Probe(address, client_id=client_id)


def _summary(probe: Mqtt5Probe) -> Report:
    """What the broker answered one connection: CONNACK, PUBACKs (by reason), DISCONNECT."""
    out: Report = {"client_id": probe.client_id, "sent": probe.sent}
    if probe.connack is not None:
        out |= {"connack": probe.connack.code, "connack_reason": probe.connack.name}
    if probe.sent:
        out["acks"] = {reason.name: n for reason, n in sorted(probe.acks.items())}
        out["accepted"] = sum(n for reason, n in probe.acks.items() if not reason.failure)
        out["denied"] = sum(n for reason, n in probe.acks.items() if reason.failure)
    if probe.disconnect is not None:
        out["disconnect_reason"] = probe.disconnect.name
    return out


def _client_id(attack: str) -> str:
    return f"hostile-{attack}-{random.getrandbits(24):06x}"


async def _publish(attack: str, mqtt_url: str, client_id: str | None, messages: Sequence[_Pub]) -> Report:
    """Connect, publish `messages` if the broker accepts us, and report what it answered."""
    probe = _probe(mqtt_url, client_id or _client_id(attack))
    report: Report = {"attack": attack, "broker": str(probe.address)}
    try:
        async with probe:
            if probe.accepted:
                await probe.publish(messages)
    except LinkDown as exc:
        report["error"] = str(exc)
    report |= _summary(probe)
    report["topics"] = sorted({topic for topic, _, _ in messages})[:20]
    return report


def _mac(mac: str) -> str:
    clean = mac.replace(":", "").replace("-", "").upper()
    if len(clean) != 12 or any(c not in "0123456789ABCDEF" for c in clean):
        raise ValueError(f"a MAC is 12 hex digits, not {mac!r}")
    return clean


def _tasmota_config(mac: str, **changes: Any) -> bytes:
    """`tasmota/discovery/<MAC>/config` as the simulated plug sends it, with `changes`."""
    config = TasmotaPlug(mac=mac).discovery_config().model_dump(mode="json", by_alias=True)
    return _dumps({**config, **changes}).encode()


def _config_topic(mac: str) -> str:
    return f"tasmota/discovery/{mac}/config"


def _tasmota_time() -> str:
    return datetime.now().strftime("%Y-%m-%dT%H:%M:%S")  # Tasmota sends local time


async def tasmota_relays(
    mqtt_url: str, *, mac: str = ROGUE_MAC, count: int = RELAY_COUNT, client_id: str | None = None
) -> Report:
    """A retained discovery config whose `rl` (relay types) has `count` entries, all 1."""
    mac = _mac(mac)
    config = _tasmota_config(mac, rl=[1] * _at_least_one(count, "count"))
    return await _publish("tasmota-relays", mqtt_url, client_id, [(_config_topic(mac), config, True)])


async def tasmota_sensors(
    mqtt_url: str,
    *,
    count: int = SENSORS_COUNT,
    retain: bool = True,
    client_id: str | None = None,
    seed: int | None = None,
) -> Report:
    """`tasmota/discovery/<mac>/sensors` with an ENERGY reading for `count` random MACs
    no device has announced."""
    rng = random.Random(seed)  # made-up MACs, not secrets
    macs: set[str] = set()
    while len(macs) < _at_least_one(count, "count"):
        # unicast, locally administered (IEEE 802 bits 0 and 1 of the first octet)
        macs.add(f"{rng.getrandbits(48) & ~(1 << 40) | (1 << 41):012X}")
    energy = {
        "TotalStartTime": "2024-01-01T00:00:00", "Total": 12.345, "Yesterday": 0.5, "Today": 0.1,
        "Power": 60, "ApparentPower": 62, "ReactivePower": 15, "Factor": 0.97, "Voltage": 225,
        "Current": 0.27,
    }  # fmt: skip
    payload = _dumps({"sn": {"Time": _tasmota_time(), "ENERGY": energy}, "ver": 1}).encode()
    messages = [(f"tasmota/discovery/{mac}/sensors", payload, retain) for mac in sorted(macs)]
    return await _publish("tasmota-sensors", mqtt_url, client_id, messages)


async def tasmota_repoint(
    mqtt_url: str, *, mac: str = ROGUE_MAC, victim_topic: str = VICTIM_TOPIC, client_id: str | None = None
) -> Report:
    """The retained config of `mac`, but with `t` (its topic) set to another plug's topic."""
    mac = _mac(mac)
    config = _tasmota_config(mac, t=victim_topic)
    return await _publish("tasmota-repoint", mqtt_url, client_id, [(_config_topic(mac), config, True)])


async def tasmota_absurd(
    mqtt_url: str, *, topic: str = VICTIM_TOPIC, count: int = ABSURD_COUNT, client_id: str | None = None
) -> Report:
    """`count` times `tele/<topic>/SENSOR` with Power 1e300 and Total -5, and
    `tele/<topic>/STATE` with Dimmer 1e300."""
    sensor = _dumps(
        {"Time": _tasmota_time(), "ENERGY": {"Power": 1e300, "Total": -5, "Voltage": 230, "Current": 0.3}}
    )
    state = _dumps({"Time": _tasmota_time(), "POWER": "ON", "Dimmer": 1e300})
    messages = [
        (f"tele/{topic}/{what}", payload.encode(), False)
        for _ in range(_at_least_one(count, "count"))
        for what, payload in (("SENSOR", sensor), ("STATE", state))
    ]
    return await _publish("tasmota-absurd", mqtt_url, client_id, messages)


async def tasmota_empty_config(
    mqtt_url: str, *, mac: str = LIVING_ROOM_PLUG_MAC, client_id: str | None = None
) -> Report:
    """An empty retained message on `tasmota/discovery/<mac>/config` (clears what was there)."""
    return await _publish(
        "tasmota-empty-config", mqtt_url, client_id, [(_config_topic(_mac(mac)), b"", True)]
    )


async def tasmota_plus_topic(mqtt_url: str, *, mac: str = ROGUE_MAC, client_id: str | None = None) -> Report:
    """Retained configs whose topic `t` is `a+b` (for `mac`) and `a#b` (for `mac` + 1), both
    with a FullTopic `ft` holding a `+` level: wildcards where a topic name belongs."""
    mac = _mac(mac)
    second = f"{(int(mac, 16) + 1) % (1 << 48):012X}"
    full_topic = "%prefix%/+/%topic%/"
    messages = [
        (_config_topic(mac), _tasmota_config(mac, t="a+b", ft=full_topic), True),
        (_config_topic(second), _tasmota_config(second, t="a#b", ft=full_topic), True),
    ]
    return await _publish("tasmota-plus-topic", mqtt_url, client_id, messages)


def _z2m_sensor(ieee: int, friendly_name: str) -> dict[str, Any]:
    return {
        "ieee_address": f"0x{ieee:016x}", "friendly_name": friendly_name, "type": "EndDevice",
        "definition": {
            "model": "WSDCGQ11LM", "vendor": "Aqara", "description": "Temperature and humidity sensor",
            "exposes": [{
                "type": "numeric", "property": "temperature", "name": "temperature", "access": 1,
                "unit": "°C",
            }],
        },
        "interview_completed": True, "supported": True, "disabled": False,
    }  # fmt: skip


def _z2m_light(ieee: int, friendly_name: str, mired_min: float) -> dict[str, Any]:
    features = [
        {"type": "binary", "name": "state", "property": "state", "access": 7, "value_on": "ON",
         "value_off": "OFF", "value_toggle": "TOGGLE"},
        {"type": "numeric", "name": "brightness", "property": "brightness", "access": 7,
         "value_min": 0, "value_max": 254},
        {"type": "numeric", "name": "color_temp", "property": "color_temp", "access": 7,
         "unit": "mired", "value_min": mired_min, "value_max": 454},
    ]  # fmt: skip
    device = _z2m_sensor(ieee, friendly_name)
    device["type"] = "Router"
    device["definition"] = {
        "model": "LED1545G12", "vendor": "IKEA", "description": "TRADFRI bulb E26/E27, white spectrum",
        "exposes": [{"type": "light", "features": features}],
    }  # fmt: skip
    return device


def _ieees(count: int, seed: int | None) -> list[int]:
    rng = random.Random(seed)  # made-up addresses, not secrets
    ieees: set[int] = set()
    while len(ieees) < count:
        ieees.add(0x00158D0000000000 | rng.getrandbits(40))
    return sorted(ieees)


async def z2m_devices(
    mqtt_url: str,
    *,
    base_topic: str = DEFAULT_BASE_TOPIC,
    count: int = Z2M_COUNT,
    client_id: str | None = None,
    seed: int | None = None,
) -> Report:
    """Retained `<base>/bridge/devices` listing `count` sensors, and `bridge/state` online."""
    devices = [
        _z2m_sensor(ieee, f"sensor_{n:05d}")
        for n, ieee in enumerate(_ieees(_at_least_one(count, "count"), seed))
    ]
    messages = [
        (f"{base_topic}/bridge/state", b'{"state":"online"}', True),
        (f"{base_topic}/bridge/devices", _dumps(devices).encode(), True),
    ]
    return await _publish("z2m-devices", mqtt_url, client_id, messages)


async def z2m_empty(
    mqtt_url: str, *, base_topic: str = DEFAULT_BASE_TOPIC, client_id: str | None = None
) -> Report:
    """Retained `<base>/bridge/devices` = `[]`: the bridge says it has no devices."""
    return await _publish("z2m-empty", mqtt_url, client_id, [(f"{base_topic}/bridge/devices", b"[]", True)])


async def z2m_inf(
    mqtt_url: str,
    *,
    base_topic: str = DEFAULT_BASE_TOPIC,
    client_id: str | None = None,
    seed: int | None = None,
) -> Report:
    """Retained `<base>/bridge/devices`: three good sensors, a light whose `color_temp`
    range starts at `Infinity`, one at `NaN` (literals that are not JSON but that
    Node.js-based tools emit), and sensors named with `+` and `#`; `bridge/state` online."""
    ieee = _ieees(7, seed)
    devices = [
        *(_z2m_sensor(ieee[n], f"sensor_{n}") for n in range(3)),
        _z2m_light(ieee[3], "light_inf", float("inf")),
        _z2m_light(ieee[4], "light_nan", float("nan")),
        _z2m_sensor(ieee[5], "客厅+温度"),
        _z2m_sensor(ieee[6], "卧室#温度"),
    ]
    # json.dumps writes float('inf') and float('nan') as the bare literals Infinity and NaN.
    payload = json.dumps(devices, ensure_ascii=False, separators=(",", ":")).encode()
    messages = [
        (f"{base_topic}/bridge/state", b'{"state":"online"}', True),
        (f"{base_topic}/bridge/devices", payload, True),
    ]
    return await _publish("z2m-inf", mqtt_url, client_id, messages)


async def client_id_takeover(
    mqtt_url: str,
    *,
    victim_client_id: str,
    count: int = TAKEOVER_COUNT,
    interval_s: float = TAKEOVER_INTERVAL_S,
) -> Report:
    """Connect `count` times, one every `interval_s`, under `victim_client_id` (with the
    URL's own credentials); each connection is held until the broker ends it or the next
    is due. Reports every CONNACK and how long each connection stayed up."""
    _at_least_one(count, "count")
    if not 0 < interval_s <= PROBE_KEEPALIVE_S / 2:
        raise ValueError(f"interval_s must be in (0, {PROBE_KEEPALIVE_S // 2}], not {interval_s}")
    loop = asyncio.get_running_loop()
    start = loop.time()
    attempts: list[Report] = []
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n * interval_s - loop.time()))  # pacing
        probe = _probe(mqtt_url, victim_client_id)
        attempt: Report = {}
        try:
            async with probe:
                up_at = loop.time()
                if probe.accepted:
                    ended = await probe.hold(start + (n + 1) * interval_s - loop.time())
                    attempt |= {
                        "up_s": round(loop.time() - up_at, 3),
                        "ended_by": "broker" if ended else "attacker",
                    }
                    if ended and probe.disconnect is None:  # Mosquitto 2.0 closes without a reason
                        attempt["disconnect_reason"] = "closed without DISCONNECT"
        except LinkDown as exc:
            attempt["error"] = str(exc)
        summary = _summary(probe)
        attempts.append(
            {k: summary[k] for k in ("connack", "connack_reason", "disconnect_reason") if k in summary}
            | attempt
        )
    return {
        "attack": "client-id-takeover",
        "broker": str(parse_mqtt_url(mqtt_url)),
        "client_id": victim_client_id,
        "sent": count,
        "connacks": dict(Counter(a.get("connack_reason", "no CONNACK") for a in attempts)),
        "ended_by_broker": sum(a.get("ended_by") == "broker" for a in attempts),
        "attempts": attempts,
    }


# --- HTTP against the gateway's LAN API -------------------------------------------------------


def _http(url: str, *, local_address: str | None = None, **options: Any) -> httpx.AsyncClient:
    # trust_env=False: an HTTP(S)_PROXY from the environment must never carry us off this machine.
    transport = None
    if local_address:  # the pool's limits belong to the transport then
        limits = options.pop("limits", httpx.Limits())
        transport = httpx.AsyncHTTPTransport(local_address=local_address, limits=limits)
    return httpx.AsyncClient(
        base_url=_check_url(url),
        timeout=options.pop("timeout", HTTP_TIMEOUT_S),
        transport=transport,
        trust_env=False,
        **options,
    )


def _failure(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _status(client: httpx.AsyncClient, method: str, path: str, **options: Any) -> int | str:
    """The answer's status code, or what went wrong (connection refused, reset, ...)."""
    try:
        response = await client.request(method, path, **options)
    except httpx.HTTPError as exc:
        return _failure(exc)
    return response.status_code


async def http_pin(url: str = DEFAULT_GATEWAY_URL) -> Report:
    """`GET /api/v1/pairing/pin`: does any LAN device get the pairing PIN?"""
    report: Report = {"attack": "http-pin", "url": url, "sent": 1, "pin_returned": False}
    async with _http(url) as client:
        try:
            response = await client.get(_PIN_PATH)
        except httpx.HTTPError as exc:
            return report | {"error": _failure(exc)}
    report["status"] = response.status_code
    with contextlib.suppress(ValueError):
        body = response.json()
        report["pin_returned"] = isinstance(body, dict) and bool(body.get("pin"))
    return report


async def http_rebind(url: str = DEFAULT_GATEWAY_URL) -> Report:
    """What a web page on `evil.example`, DNS-rebound to the gateway, could do from a
    browser: pair with a guessed PIN (foreign Host and Origin), list devices (foreign Host)."""
    host = "evil.example:8080"
    async with _http(url) as client:
        pair = await _status(
            client, "POST", _PAIR_PATH, json={"pin": "000000", "name": "evil"},
            headers={"Host": host, "Origin": f"http://{host}"},
        )  # fmt: skip
        devices = await _status(client, "GET", "/api/v1/devices", headers={"Host": host})
    return {"attack": "http-rebind", "url": url, "sent": 2, "host": host, "pair": pair, "devices": devices}


async def http_streams(
    url: str = DEFAULT_GATEWAY_URL,
    *,
    count: int = STREAMS_COUNT,
    duration_s: float = DEFAULT_DURATION_S,
    source_address: str | None = None,
) -> Report:
    """Open `count` `GET /api/v1/stream` event streams at once and hold them `duration_s`, all
    from one client (`source_address`, default whatever the system picks)."""
    _at_least_one(count, "count")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _positive(duration_s, "duration_s")
    statuses: Counter[str] = Counter()
    ended_early = 0
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)

    async def hold(client: httpx.AsyncClient) -> None:
        nonlocal ended_early
        status = "no answer"
        try:
            async with asyncio.timeout_at(deadline):
                async with client.stream("GET", "/api/v1/stream") as response:
                    status = str(response.status_code)
                    async for _ in response.aiter_raw():
                        pass
                    ended_early += response.status_code == 200
        except TimeoutError:
            pass  # held to the end (or never answered)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        statuses[status] += 1

    timeout = httpx.Timeout(HTTP_TIMEOUT_S, read=None)
    async with (
        _http(url, limits=limits, timeout=timeout, local_address=source_address) as client,
        asyncio.TaskGroup() as tg,
    ):
        for n in range(count):
            tg.create_task(hold(client), name=f"http-stream-{n}")
    return {
        "attack": "http-streams",
        "url": url,
        "sent": count,
        "accepted": statuses["200"],
        "statuses": dict(statuses),
        "ended_by_server": ended_early,
    }


async def http_pair_guess(
    url: str = DEFAULT_GATEWAY_URL,
    *,
    count: int = GUESS_COUNT,
    source_addresses: Sequence[str] = (),
    seed: int | None = None,
) -> Report:
    """`count` random 6-digit PINs to `POST /api/v1/pair`, one after the other, taking
    turns over `source_addresses` (local addresses to send from; default: the system's)."""
    _at_least_one(count, "count")
    rng = random.Random(seed)  # guesses, not secrets
    sources: list[str | None] = [_loopback(a) for a in source_addresses] or [None]
    statuses: Counter[str] = Counter()
    by_source: dict[str, Counter[str]] = {str(s or "default"): Counter() for s in sources}
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(_http(url, local_address=s)) for s in sources]
        for n in range(count):
            pin = f"{rng.randrange(1_000_000):06d}"
            status = str(
                await _status(
                    clients[n % len(sources)], "POST", _PAIR_PATH, json={"pin": pin, "name": "guess"}
                )
            )
            statuses[status] += 1
            by_source[str(sources[n % len(sources)] or "default")][status] += 1
    return {
        "attack": "http-pair-guess",
        "url": url,
        "sent": count,
        "elapsed_s": round(time.monotonic() - started, 3),
        "statuses": dict(statuses),
        "by_source": {source: dict(c) for source, c in by_source.items()},
    }


async def http_big_body(
    url: str = DEFAULT_GATEWAY_URL, *, size_mb: float = DEFAULT_SIZE_MB, token: str = GARBAGE_TOKEN
) -> Report:
    """`POST /api/v1/devices/x/command` with a `size_mb` MiB body (Content-Length declared,
    made chunk by chunk) and a bearer token."""
    size = int(_positive(size_mb, "size_mb") * MIB)
    head = b'{"say":"'
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield head
        sent += len(head)
        while sent < size:
            chunk = _FILLER[: min(size - sent, len(_FILLER))]
            yield chunk
            sent += len(chunk)

    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Length": str(size),
    }
    report: Report = {"attack": "http-big-body", "url": url, "declared_bytes": size}
    async with _http(url) as client:
        report["status"] = await _status(
            client, "POST", "/api/v1/devices/x/command", content=body(), headers=headers
        )
    return report | {"sent": sent}


# --- the CLI: firmware-sim hostile ATTACK [options] -------------------------------------------


def _seconds(text: str) -> float:
    try:
        return _positive(float(text), "seconds")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_hostile_parser(sub: Any) -> None:
    """`firmware-sim hostile ...` on the CLI's subcommands (`sub` from add_subparsers)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "hostile", help="a rogue LAN device performing one attack (prints a JSON report)"
    )
    attacks = p.add_subparsers(dest="attack", required=True, metavar="ATTACK")
    attacks.add_parser("list", help="list the attacks")

    terminal = argparse.ArgumentParser(add_help=False)
    terminal.add_argument("--address", default=DEFAULT_TERMINAL_ADDRESS, help="IPv4 address in 127.0.0.0/8")
    terminal.add_argument("--port", type=int, default=DEFAULT_PORT)
    ident = argparse.ArgumentParser(add_help=False)
    ident.add_argument("--id", dest="device_id", default=None, help="TXT id (default: random tv-...)")
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--duration-s", type=_seconds, default=DEFAULT_DURATION_S, metavar="S",
        help=f"stop after S seconds (default {DEFAULT_DURATION_S:g}; also at SIGTERM)",
    )  # fmt: skip
    size = argparse.ArgumentParser(add_help=False)
    size.add_argument("--size-mb", type=float, default=DEFAULT_SIZE_MB, help="MiB (default 150)")
    mqtt = argparse.ArgumentParser(add_help=False)
    mqtt.add_argument(
        "--mqtt", default=DEFAULT_BROKER_URL, metavar="URL", help="mqtt://[user:pass@]HOST:PORT"
    )
    mqtt.add_argument("--client-id", default=None, help="default hostile-<attack>-<random>")
    http = argparse.ArgumentParser(add_help=False)
    http.add_argument(
        "--url", default=DEFAULT_GATEWAY_URL, help=f"the gateway (default {DEFAULT_GATEWAY_URL})"
    )
    groups = {"terminal": [terminal, ident, server], "coap": [server], "mqtt": [mqtt], "http": [http]}

    def add(name: str, group: str) -> argparse.ArgumentParser:
        return attacks.add_parser(name, parents=groups[group], help=ATTACKS[name], description=ATTACKS[name])

    add("nested-json", "terminal").add_argument("--depth", type=int, default=NESTED_DEPTH)
    attacks.choices["nested-json"].add_argument("--info-nested", action="store_true")
    attacks.add_parser("huge-info", parents=[terminal, ident, server, size], help=ATTACKS["huge-info"])
    attacks.add_parser("huge-event", parents=[terminal, ident, server, size], help=ATTACKS["huge-event"])
    impostor = attacks.add_parser("impostor", parents=[terminal, server], help=ATTACKS["impostor"])
    impostor.add_argument("--target-id", required=True, help="the real TV's TXT id, e.g. tv-5c0a1b2c3d4e")
    impostor.add_argument(
        "--say", action="append", metavar="TEXT", help=f"repeatable (default {DEFAULT_SAY})"
    )
    impostor.add_argument("--heard-interval-s", type=_seconds, default=DEFAULT_HEARD_INTERVAL_S, metavar="S")
    add("terminal-flood", "terminal").add_argument("--count", type=int, default=FLOOD_COUNT)
    bigint = add("coap-bigint", "coap")
    bigint.add_argument("--address", default=DEFAULT_COAP_ADDRESS, help="IPv4 address in 127.0.0.0/8")
    bigint.add_argument("--digits", type=int, default=BIGINT_DIGITS)
    for name, count in (("tasmota-relays", RELAY_COUNT), ("tasmota-sensors", SENSORS_COUNT)):
        add(name, "mqtt").add_argument("--count", type=int, default=count)
    attacks.choices["tasmota-relays"].add_argument("--mac", default=ROGUE_MAC)
    attacks.choices["tasmota-sensors"].add_argument("--no-retain", dest="retain", action="store_false")
    repoint = add("tasmota-repoint", "mqtt")
    repoint.add_argument("--mac", default=ROGUE_MAC)
    repoint.add_argument("--victim-topic", default=VICTIM_TOPIC)
    absurd = add("tasmota-absurd", "mqtt")
    absurd.add_argument("--topic", default=VICTIM_TOPIC)
    absurd.add_argument("--count", type=int, default=ABSURD_COUNT)
    add("tasmota-empty-config", "mqtt").add_argument("--mac", default=LIVING_ROOM_PLUG_MAC)
    add("tasmota-plus-topic", "mqtt").add_argument("--mac", default=ROGUE_MAC)
    for name in ("z2m-devices", "z2m-empty", "z2m-inf"):
        add(name, "mqtt").add_argument("--base-topic", default=DEFAULT_BASE_TOPIC)
    attacks.choices["z2m-devices"].add_argument("--count", type=int, default=Z2M_COUNT)
    takeover = add("client-id-takeover", "mqtt")
    takeover.add_argument("--victim-client-id", required=True, help="e.g. gateway-t1")
    takeover.add_argument("--count", type=int, default=TAKEOVER_COUNT)
    takeover.add_argument("--interval-s", type=_seconds, default=TAKEOVER_INTERVAL_S, metavar="S")
    add("http-pin", "http")
    add("http-rebind", "http")
    streams = add("http-streams", "http")
    streams.add_argument("--count", type=int, default=STREAMS_COUNT)
    streams.add_argument("--duration-s", type=_seconds, default=DEFAULT_DURATION_S, metavar="S")
    streams.add_argument("--source-address", default=None, help="the local address to open them all from")
    guess = add("http-pair-guess", "http")
    guess.add_argument("--count", type=int, default=GUESS_COUNT)
    guess.add_argument(
        "--source-addresses", type=lambda text: [a for a in text.split(",") if a], default=[],
        metavar="A,B,...", help="local addresses to send from, taking turns (e.g. 127.0.0.70,127.0.0.71)",
    )  # fmt: skip
    big = attacks.add_parser("http-big-body", parents=[http, size], help=ATTACKS["http-big-body"])
    big.add_argument(
        "--token", default=GARBAGE_TOKEN, help="bearer token (write --token=T if T starts with -)"
    )


def _server(args: argparse.Namespace) -> _Served | None:
    """The server attack the arguments ask for, or None for a client attack."""
    if args.attack == "coap-bigint":
        return BigIntCoapDevice(address=args.address, digits=args.digits)
    if args.attack not in ("nested-json", "huge-info", "huge-event", "impostor", "terminal-flood"):
        return None
    options: _TerminalOptions = {"address": args.address, "port": args.port}
    if args.attack == "impostor":
        say = tuple(args.say or (DEFAULT_SAY,))
        return ImpostorTerminal(
            target_id=args.target_id, say=say, heard_interval_s=args.heard_interval_s, **options
        )
    options["device_id"] = args.device_id
    match args.attack:
        case "nested-json":
            return NestedJsonTerminal(depth=args.depth, info_nested=args.info_nested, **options)
        case "huge-info":
            return HugeInfoTerminal(size_mb=args.size_mb, **options)
        case "huge-event":
            return HugeEventTerminal(size_mb=args.size_mb, **options)
    return TerminalFlood(count=args.count, **options)


def _client(args: argparse.Namespace) -> Callable[[], Coroutine[Any, Any, Report]]:
    """The client attack the arguments ask for, checked now (ValueError), run later."""
    a = args
    if a.attack.startswith("http-"):
        _check_url(a.url)
    else:
        _loopback(parse_mqtt_url(a.mqtt).host)
    match a.attack:
        case "tasmota-relays":
            return lambda: tasmota_relays(a.mqtt, mac=_mac(a.mac), count=a.count, client_id=a.client_id)
        case "tasmota-sensors":
            return lambda: tasmota_sensors(a.mqtt, count=a.count, retain=a.retain, client_id=a.client_id)
        case "tasmota-repoint":
            mac = _mac(a.mac)
            return lambda: tasmota_repoint(
                a.mqtt, mac=mac, victim_topic=a.victim_topic, client_id=a.client_id
            )
        case "tasmota-absurd":
            return lambda: tasmota_absurd(a.mqtt, topic=a.topic, count=a.count, client_id=a.client_id)
        case "tasmota-empty-config":
            return lambda: tasmota_empty_config(a.mqtt, mac=_mac(a.mac), client_id=a.client_id)
        case "tasmota-plus-topic":
            return lambda: tasmota_plus_topic(a.mqtt, mac=_mac(a.mac), client_id=a.client_id)
        case "z2m-devices":
            return lambda: z2m_devices(a.mqtt, base_topic=a.base_topic, count=a.count, client_id=a.client_id)
        case "z2m-empty":
            return lambda: z2m_empty(a.mqtt, base_topic=a.base_topic, client_id=a.client_id)
        case "z2m-inf":
            return lambda: z2m_inf(a.mqtt, base_topic=a.base_topic, client_id=a.client_id)
        case "client-id-takeover":
            return lambda: client_id_takeover(
                a.mqtt, victim_client_id=a.victim_client_id, count=a.count, interval_s=a.interval_s
            )
        case "http-pin":
            return lambda: http_pin(a.url)
        case "http-rebind":
            return lambda: http_rebind(a.url)
        case "http-streams":
            return lambda: http_streams(
                a.url, count=a.count, duration_s=a.duration_s, source_address=a.source_address
            )
        case "http-pair-guess":
            return lambda: http_pair_guess(a.url, count=a.count, source_addresses=a.source_addresses)
    return lambda: http_big_body(a.url, size_mb=a.size_mb, token=a.token)


def _print(report: Report) -> None:
    sys.stdout.write(json.dumps(report, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def hostile_work(args: argparse.Namespace) -> Work:
    """What `firmware-sim hostile ATTACK` runs; ValueError for arguments it refuses. The
    report goes to stdout as one JSON line, also when SIGTERM ends the attack early."""
    if args.attack == "list":

        async def show() -> None:
            width = max(map(len, ATTACKS))
            sys.stdout.write("".join(f"{name:<{width}}  {text}\n" for name, text in ATTACKS.items()))

        return show
    server = _server(args)
    if server is not None:
        attack_server, duration_s = server, args.duration_s

        async def serve() -> None:
            try:
                await attack_server.attack(duration_s)
            finally:
                _print(attack_server.report())

        return serve
    client = _client(args)

    async def strike() -> None:
        report: Report = {"attack": args.attack, "interrupted": True}
        try:
            report = await client()
        finally:
            _print(report)

    return strike
