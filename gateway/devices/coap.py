"""CoAP devices (RFC 7252) with IPSO Smart Objects / LwM2M resources, through aiocoap.

Discovery: a multicast `GET /.well-known/core` to 224.0.1.187:5683 ("All CoAP Nodes",
RFC 7252 §12.8) at start and every `interval_s`, sent from the LAN interface only. aiocoap's
request API delivers one response per multicast request, so the request is encoded with
aiocoap's `Message` and the responses are collected on a small datagram socket for a
window; everything else (unicast GET, Observe, PUT, block-wise) goes through aiocoap.
Links are parsed with aiocoap's link-format module (RFC 6690); values arrive as SenML
(RFC 8428, JSON or CBOR). Each readable object instance is observed (RFC 7641) and
re-registered when notifications stop; a device is offline when re-registration fails.
The device id comes from the serial number in the LwM2M Device object (/3/0 resource 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiocoap
from aiocoap import error as coap_error
from aiocoap.numbers import codes
from aiocoap.util import linkformat

from gateway.config import LanSettings
from gateway.devices.base import DeviceSink, Found
from gateway.devices.guard import Drops, isolated
from gateway.devices.senml import CT_SENML_CBOR, CT_SENML_JSON, Record, SenMLError, parse_senml
from gateway.errors import DeviceError
from gateway.ids import device_id
from gateway.model import DeviceInfo, Kind, clean_state

__all__ = ["CoapAdapter", "Link", "ObjectMap", "parse_links"]

log = logging.getLogger(__name__)

PROTOCOL = "coap"
ALL_COAP_NODES_V4 = "224.0.1.187"  # RFC 7252 §12.8
COAP_PORT = 5683
CT_LINK_FORMAT = 40  # RFC 6690 §7.3
_MAX_LINK_FORMAT = 64 * 1024
_MAX_LINKS = 256
#: Addresses identified at once; a burst of answers from many addresses waits its turn.
_MAX_PROBES = 16
_PATH = re.compile(r"^/(\d{1,5})/(\d{1,5})$")


@dataclass(frozen=True, slots=True)
class Link:
    href: str
    attrs: Mapping[str, str]


def parse_links(payload: bytes) -> list[Link]:
    """CoRE Link Format → links; ValueError (only) for anything unusable."""
    if len(payload) > _MAX_LINK_FORMAT:
        raise ValueError(f"link format larger than {_MAX_LINK_FORMAT} bytes")
    try:
        text = payload.decode("utf-8")
        parsed = linkformat.parse(text)
    except Exception as exc:  # the vendored parser raises assorted errors on junk
        raise ValueError(f"not CoRE link format: {type(exc).__name__}") from exc
    links = []
    for link in parsed.links[:_MAX_LINKS]:
        href = str(link.href)
        if not href.startswith("/") or len(href) > 128:
            continue
        attrs: dict[str, str] = {}
        for key, value in link.attr_pairs:
            attrs.setdefault(str(key), "" if value is None else str(value))
        links.append(Link(href, attrs))
    return links


@dataclass(frozen=True, slots=True)
class ObjectMap:
    """IPSO object → capabilities: resource id → (capability, settable)."""

    resources: Mapping[int, tuple[str, bool]]


IPSO: Mapping[int, ObjectMap] = {
    3303: ObjectMap({5700: ("temperature", False)}),  # Temperature
    3304: ObjectMap({5700: ("humidity", False)}),  # Humidity
    3302: ObjectMap({5500: ("motion", False)}),  # Presence
    3301: ObjectMap({5700: ("illuminance", False)}),  # Illuminance
    3305: ObjectMap({5800: ("power", False), 5805: ("energy", False)}),  # Power Measurement
    3311: ObjectMap(
        {5850: ("on", True), 5851: ("brightness", True), 5805: ("energy", False)}
    ),  # Light Control
    3312: ObjectMap({5850: ("on", True)}),  # Power Control
}
DIGITAL_INPUT = 3200
DEVICE_OBJECT = 3
# 3200 Digital Input's Application Type (5750) says what the input means.
_APPLICATION_TYPES = {
    "smoke": "smoke",
    "door": "contact",
    "window": "contact",
    "contact": "contact",
    "motion": "motion",
}


class _TokenBucket:
    """Bounds how many notifications per second one observation may cost us."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.last = rate, burst, burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(slots=True)
class _Device:
    serial: str
    device_id: str
    address: str
    links: list[Link]
    task: asyncio.Task[None] | None = None
    # capability → (object, instance, resource) for commands
    writable: dict[str, tuple[int, int, int]] = field(default_factory=dict)


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue(256)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((data, addr))


class CoapAdapter:
    protocol: ClassVar[str] = PROTOCOL
    address_bound: ClassVar[bool] = True

    def __init__(
        self,
        sink: DeviceSink,
        *,
        interface_addresses: Sequence[str],
        interval_s: float = 60.0,
        window_s: float = 2.0,
        observe_timeout_s: float = 60.0,
        request_timeout_s: float = 5.0,
        max_notifications_per_s: float = 20.0,
        limits: LanSettings | None = None,
    ) -> None:
        self._sink = sink
        self._ifaces = list(interface_addresses)
        self._interval_s = interval_s
        self._window_s = window_s
        self._observe_timeout_s = observe_timeout_s
        self._request_timeout_s = request_timeout_s
        self._rate = max_notifications_per_s
        self._limits = limits or LanSettings()
        self._ctx: aiocoap.Context | None = None
        self._by_id: dict[str, _Device] = {}
        self._probing: set[str] = set()
        self.drops = Drops(PROTOCOL, log)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        ctx = await aiocoap.Context.create_client_context()
        self._ctx = ctx
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                while True:
                    for address in await self.discover():
                        if address in self._probing:
                            continue
                        if len(self._probing) >= _MAX_PROBES:
                            self.drops.drop(address, "too_many_probes", "identified later")
                            continue
                        self._probing.add(address)
                        probe = isolated(self.drops, address, self._probe(address))
                        tg.create_task(probe, name=f"coap-probe-{address}")
                    await asyncio.sleep(self._interval_s)
        finally:
            self._ctx = None
            await asyncio.shield(ctx.shutdown())

    async def discover(self) -> list[str]:
        """Multicast GET /.well-known/core on every LAN interface; addresses that answered."""
        found: list[str] = []
        for iface in self._ifaces:
            with contextlib.suppress(OSError):
                found.extend(a for a in await self._discover_on(iface) if a not in found)
        return found

    async def _discover_on(self, iface: str) -> list[str]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((iface, 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        transport, proto = await loop.create_datagram_endpoint(_Collector, sock=sock)
        token = random.randbytes(4)
        request = aiocoap.Message(code=aiocoap.GET, uri_path=(".well-known", "core"))
        # (aiocoap deprecates passing these to the constructor)
        request.mtype = aiocoap.NON
        request.mid = random.randrange(0x10000)
        request.token = token
        addresses: list[str] = []
        try:
            transport.sendto(request.encode(), (ALL_COAP_NODES_V4, COAP_PORT))
            deadline = loop.time() + self._window_s
            while (remaining := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(remaining):
                        data, (host, port) = await proto.queue.get()
                except TimeoutError:
                    break
                try:
                    reply = aiocoap.Message.decode(data)
                except Exception:  # noqa: BLE001 - aiocoap raises assorted errors on junk
                    self.drops.drop(host, "invalid_coap", "undecodable CoAP datagram")
                    continue
                if reply.token != token or not reply.code.is_successful():
                    continue
                if port == COAP_PORT and host not in addresses:
                    addresses.append(host)
        finally:
            transport.close()
        log.debug("CoAP discovery on %s: %s", iface, addresses)
        return addresses

    # -- one device -----------------------------------------------------------------------

    async def _request(self, msg: aiocoap.Message) -> aiocoap.Message:
        assert self._ctx is not None
        try:
            async with asyncio.timeout(self._request_timeout_s):
                return await self._ctx.request(msg).response
        except TimeoutError:
            raise
        except coap_error.Error as exc:
            raise OSError(f"CoAP: {exc}") from exc

    async def _get_senml(self, address: str, path: str) -> list[Record]:
        msg = aiocoap.Message(code=aiocoap.GET, uri=f"coap://{address}{path}")
        msg.opt.accept = CT_SENML_JSON
        resp = await self._request(msg)
        if not resp.code.is_successful():
            raise OSError(f"GET {path}: {resp.code}")
        return parse_senml(resp.payload, resp.opt.content_format or CT_SENML_JSON)

    async def _probe(self, address: str) -> None:
        """Identify what answered at `address` and (re)start its session."""
        try:
            msg = aiocoap.Message(code=aiocoap.GET, uri=f"coap://{address}/.well-known/core")
            resp = await self._request(msg)
            links = parse_links(resp.payload)
            device_info = await self._get_senml(address, "/3/0")
        except (OSError, TimeoutError, ValueError) as exc:
            self.drops.drop(address, "probe_failed", str(exc))
            return
        finally:
            self._probing.discard(address)
        fields = {r.name.removeprefix("/3/0/"): r.value for r in device_info}
        serial = fields.get("2")
        if not isinstance(serial, str) or not serial.strip():
            self.drops.drop(address, "no_serial", "device object /3/0 has no serial number (resource 2)")
            return
        dev_id = self._sink.admit(device_id("coap", serial), PROTOCOL, address)
        if dev_id is None:
            return
        dev = self._by_id.get(dev_id)
        if dev is not None and dev.address == address and dev.task is not None and not dev.task.done():
            return
        if dev is not None and dev.task is not None:
            dev.task.cancel()
        dev = _Device(serial=serial, device_id=dev_id, address=address, links=links)
        self._start(dev, fields)

    def _start(self, dev: _Device, fields: Mapping[str, Any]) -> None:
        self._by_id[dev.device_id] = dev
        session = isolated(self.drops, dev.device_id, self._session(dev, fields))
        dev.task = self._tg.create_task(session, name=f"coap-{dev.device_id}")

    def rebind(self, old_id: str, new_id: str) -> None:
        dev = self._by_id.pop(old_id, None)
        if dev is None:
            return
        if dev.task is not None:
            dev.task.cancel()
        old = self._by_id.get(new_id)
        if old is not None and old.task is not None:
            old.task.cancel()
        self._probing.add(dev.address)
        self._tg.create_task(isolated(self.drops, dev.address, self._probe(dev.address)), name="coap-reprobe")

    async def _session(self, dev: _Device, device_fields: Mapping[str, Any]) -> None:
        instances: list[tuple[int, int]] = []
        for link in dev.links:
            m = _PATH.match(link.href)
            if (
                m
                and (int(m[1]) in IPSO or int(m[1]) == DIGITAL_INPUT)
                and (int(m[1]), int(m[2])) not in instances
            ):
                instances.append((int(m[1]), int(m[2])))
        most = self._limits.max_channels_per_device
        if len(instances) > most:
            self.drops.drop(dev.device_id, "too_many_objects", f"{len(instances)} objects, {most} used")
            del instances[most:]
        caps: dict[str, bool] = {}
        digital: dict[tuple[int, int], str] = {}
        first_values: dict[str, Any] = {}
        for obj, inst in instances:
            try:
                records = await self._get_senml(dev.address, f"/{obj}/{inst}")
            except (OSError, TimeoutError, SenMLError) as exc:
                self.drops.drop(dev.device_id, "read_failed", f"/{obj}/{inst}: {exc}")
                continue
            if obj == DIGITAL_INPUT:
                app = next((str(r.value).lower() for r in records if r.name.endswith("/5750")), "")
                digital[(obj, inst)] = next((c for k, c in _APPLICATION_TYPES.items() if k in app), "contact")
            for cap, settable, res in self._mapping(obj, inst, digital):
                caps[cap] = caps.get(cap, False) or settable
                if settable:
                    dev.writable[cap] = (obj, inst, res)
            first_values.update(self._values(obj, inst, records, digital))
        if not caps:
            self.drops.drop(dev.device_id, "no_objects", "no IPSO objects we understand")
            return
        kind = (
            Kind.LIGHT
            if any(o == 3311 for o, _ in instances)
            else Kind.PLUG
            if any(o == 3312 for o, _ in instances)
            else Kind.SENSOR
        )
        # The simulated (and the operator's) devices carry their name in /3/0/5750.
        name = str(device_fields.get("5750") or device_fields.get("17") or dev.serial)
        self._sink.device_found(
            Found(
                info=DeviceInfo(
                    id=dev.device_id,
                    name=name[:128],
                    kind=kind,
                    protocol=PROTOCOL,
                    model=str(device_fields.get("1", ""))[:128],
                    manufacturer=str(device_fields.get("0", ""))[:128],
                    address=dev.address,
                    capabilities=tuple(caps),
                    settable=tuple(c for c, s in caps.items() if s),
                    controllable=any(caps.values()),
                ),
                native_id=dev.serial,
                meta={"address": dev.address, "firmware": str(device_fields.get("3", ""))},
            )
        )
        if first_values:
            self._sink.device_state(dev.device_id, first_values)
        self._sink.device_availability(dev.device_id, True)
        async with asyncio.TaskGroup() as tg:
            for obj, inst in instances:
                tg.create_task(
                    isolated(self.drops, dev.device_id, self._observe(dev, obj, inst, digital)),
                    name=f"coap-observe-{dev.device_id}-{obj}-{inst}",
                )

    @staticmethod
    def _mapping(obj: int, inst: int, digital: Mapping[tuple[int, int], str]) -> list[tuple[str, bool, int]]:
        if obj == DIGITAL_INPUT:
            return [(digital.get((obj, inst), "contact"), False, 5500)]
        return [(cap, settable, res) for res, (cap, settable) in IPSO[obj].resources.items()]

    def _values(
        self, obj: int, inst: int, records: list[Record], digital: Mapping[tuple[int, int], str]
    ) -> dict[str, Any]:
        prefix = f"/{obj}/{inst}/"
        by_res = {r.name.removeprefix(prefix): r.value for r in records if r.name.startswith(prefix)}
        values: dict[str, Any] = {}
        for cap, _settable, res in self._mapping(obj, inst, digital):
            if str(res) in by_res:
                v = by_res[str(res)]
                if cap in ("on", "motion", "smoke", "contact") and isinstance(v, float):
                    v = bool(v)
                if cap == "brightness" and isinstance(v, float):
                    v = round(v)
                if cap == "energy" and isinstance(v, float):
                    v = v / 1000  # IPSO 5805 Cumulative active power is in Wh; ours is kWh
                values[cap] = v
        clean, dropped = clean_state(values, values.keys())
        if dropped:
            self.drops.drop(f"/{obj}/{inst}", "invalid_value", f"{dropped} values", count=dropped)
        return clean

    async def _observe(
        self, dev: _Device, obj: int, inst: int, digital: Mapping[tuple[int, int], str]
    ) -> None:
        """Observe one instance forever; re-register when notifications stop."""
        assert self._ctx is not None
        path = f"/{obj}/{inst}"
        bucket = _TokenBucket(self._rate, self._rate * 2)
        failures = 0
        while True:
            msg = aiocoap.Message(code=aiocoap.GET, uri=f"coap://{dev.address}{path}", observe=0)
            # Notifications in SenML CBOR: a third of the JSON size on a constrained link.
            msg.opt.accept = CT_SENML_CBOR
            request = self._ctx.request(msg)
            try:
                async with asyncio.timeout(self._request_timeout_s):
                    first = await request.response
                failures = 0
                self._sink.device_availability(dev.device_id, True)
                self._notify(dev, obj, inst, first, digital, bucket)
                if request.observation is None:
                    await asyncio.sleep(self._observe_timeout_s)  # not observable: poll slowly
                    continue
                it = aiter(request.observation)
                silence_s = self._silence_allowed(first)
                while True:
                    async with asyncio.timeout(silence_s):
                        note = await anext(it)
                    silence_s = self._silence_allowed(note)
                    self._notify(dev, obj, inst, note, digital, bucket)
            except (TimeoutError, coap_error.Error, StopAsyncIteration) as exc:
                failures += 1
                if failures >= 2 or isinstance(exc, coap_error.Error):
                    self._sink.device_availability(dev.device_id, False)
                log.debug(
                    "CoAP %s%s: observation lapsed (%s); re-registering",
                    dev.address,
                    path,
                    type(exc).__name__,
                )
            finally:
                # Also on cancellation: tell aiocoap we lost interest (it then resets the device's
                # further notifications instead of keeping the observation alive).
                if request.observation is not None and not request.observation.cancelled:
                    request.observation.cancel()
            await asyncio.sleep(min(30.0, 0.5 * 2**failures) * random.uniform(0.5, 1.0))

    def _silence_allowed(self, msg: aiocoap.Message) -> float:
        """How long an observation may stay silent: the configured timeout, or longer when the
        device says its values stay fresh longer (Max-Age, RFC 7641 §3.3.1)."""
        max_age = msg.opt.max_age if msg.opt.max_age is not None else 60
        return max(self._observe_timeout_s, max_age * 1.25 + 2)

    def _notify(
        self,
        dev: _Device,
        obj: int,
        inst: int,
        msg: aiocoap.Message,
        digital: Mapping[tuple[int, int], str],
        bucket: _TokenBucket,
    ) -> None:
        if not bucket.take():
            self.drops.drop(dev.device_id, "flood", "notifications faster than allowed; dropping the excess")
            return
        if not msg.code.is_successful():
            self.drops.drop(dev.device_id, "error_notification", f"/{obj}/{inst}: {msg.code}")
            return
        try:
            records = parse_senml(msg.payload, msg.opt.content_format or CT_SENML_JSON)
        except SenMLError as exc:
            self.drops.drop(dev.device_id, "invalid_senml", f"/{obj}/{inst}: {exc}")
            return
        values = self._values(obj, inst, records, digital)
        if values:
            self._sink.device_state(dev.device_id, values)

    # -- commands -------------------------------------------------------------------------

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None:
        dev = self._by_id.get(device_id)
        if dev is None or self._ctx is None:
            raise DeviceError(device_id, "device_offline", "not found on the LAN")
        for cap, value in values.items():
            target = dev.writable.get(cap)
            if target is None:
                raise DeviceError(device_id, "unsupported_capability", cap)
            obj, inst, res = target
            text = ("1" if value else "0") if isinstance(value, bool) else str(int(value))
            msg = aiocoap.Message(
                code=aiocoap.PUT,
                uri=f"coap://{dev.address}/{obj}/{inst}/{res}",
                payload=text.encode(),
            )
            msg.opt.content_format = 0
            try:
                resp = await self._request(msg)
            except (OSError, TimeoutError) as exc:
                raise DeviceError(device_id, "device_unreachable", str(exc)[:200]) from exc
            if resp.code not in (codes.CHANGED, codes.CONTENT, codes.CREATED):
                raise DeviceError(device_id, "device_refused", f"{resp.code}: {resp.payload[:100]!r}")
