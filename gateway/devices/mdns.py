"""mDNS/DNS-SD (RFC 6762/6763) with python-zeroconf: browsing, the gateway's own announcement,
and well-known third-party devices.

`MdnsDiscovery` owns the one zeroconf instance of the gateway, bound to the configured LAN
interfaces only. It browses the service types its consumers ask for, resolves each instance,
decodes its TXT record at the edge (invalid entries are dropped and counted) and hands a
`ServiceSeen` to the consumer of that type; goodbyes and expired records become `removed`.
python-zeroconf raises short PTR TTLs to 1125 s and never reports a device that vanished
without a goodbye, so the discovery tracks each instance's SRV record itself: at 80% of its
TTL it asks again (RFC 6762 §5.2), and an instance that does not answer by the time its
record expires is removed. It also announces the gateway as `_bfy-gateway._tcp`.

`MdnsDeviceAdapter` turns third-party services (Cast, AirPlay, HomeKit, ...) into devices with
`controllable: false`, following the rules in mdns_rules.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import ipaddress
import logging
import math
import re
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar, Protocol

import ifaddr
from zeroconf import IPVersion, ServiceStateChange, Zeroconf, current_time_millis

# zeroconf's own DNS codec (exported at runtime, not in its typed names)
from zeroconf._dns import DNSQuestion, DNSRecord
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_SRV

from gateway.devices.base import DeviceSink, Found
from gateway.devices.guard import Drops
from gateway.errors import DeviceError, GatewayError
from gateway.ids import device_id, normalize_mac
from gateway.model import DeviceInfo, Kind

__all__ = [
    "GATEWAY_SERVICE",
    "MdnsDeviceAdapter",
    "MdnsDiscovery",
    "MdnsRule",
    "ServiceConsumer",
    "ServiceSeen",
    "load_rules",
    "parse_txt",
    "resolve_interfaces",
]

log = logging.getLogger(__name__)

GATEWAY_SERVICE = "_bfy-gateway._tcp.local."
_RESOLVE_TIMEOUT_MS = 3000
_REQUERY_AT = 0.8  # of the record's TTL
#: RFC 6763 §6.2: a TXT record should stay small; 1300 bytes still fits one packet.
DEFAULT_MAX_TXT_BYTES = 1300
#: Service instances followed at once (resolving and tracking); beyond, new ones are dropped.
DEFAULT_MAX_INSTANCES = 512
_TXT_KEY = re.compile(r"^[\x20-\x3c\x3e-\x7e]{1,64}$")  # printable ASCII except "=" (RFC 6763 §6.4)


def resolve_interfaces(names: Sequence[str]) -> list[str]:
    """Interface names (or IPv4 addresses) → IPv4 addresses to bind multicast to.

    GatewayError if none exists: discovery never silently falls back to all interfaces.
    """
    adapters = {a.nice_name: a for a in ifaddr.get_adapters()}
    out: list[str] = []
    for name in names:
        try:
            out.append(str(ipaddress.IPv4Address(name)))
            continue
        except ValueError:
            pass
        adapter = adapters.get(name)
        if adapter is None:
            continue
        out.extend(str(ip.ip) for ip in adapter.ips if isinstance(ip.ip, str))
    if not out:
        raise GatewayError(
            f"none of the discovery interfaces {list(names)} exists here "
            f"(have: {sorted(adapters)}); set discovery.interfaces"
        )
    return out


def parse_txt(properties: Mapping[bytes, bytes | None]) -> tuple[dict[str, str], int]:
    """Decode a TXT record: (entries, number of invalid entries dropped).

    Keys are case-insensitive printable ASCII (RFC 6763 §6.4) and are lower-cased; values must
    be UTF-8. A key without "=" is a boolean attribute and maps to "".
    """
    out: dict[str, str] = {}
    bad = 0
    for raw_key, raw_value in properties.items():
        try:
            key = raw_key.decode("ascii")
        except UnicodeDecodeError:
            bad += 1
            continue
        if not _TXT_KEY.match(key):
            bad += 1
            continue
        if raw_value is None:
            out.setdefault(key.lower(), "")
            continue
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
            continue
        if any(ord(c) < 0x20 for c in value):
            bad += 1
            continue
        out.setdefault(key.lower(), value)
    return out, bad


@dataclass(frozen=True, slots=True)
class ServiceSeen:
    """A resolved service instance."""

    type: str  # "_googlecast._tcp" (no ".local.")
    instance: str  # the instance label, e.g. "客厅电视"
    name: str  # full name, e.g. "客厅电视._bfy-terminal._tcp.local."
    addresses: tuple[str, ...]
    port: int
    txt: Mapping[str, str]
    server: str
    ttl_s: int

    @property
    def address(self) -> str:
        return self.addresses[0] if self.addresses else ""


class ServiceConsumer(Protocol):
    def service_seen(self, service: ServiceSeen) -> None: ...

    def service_removed(self, service_type: str, name: str) -> None: ...


@dataclass(slots=True)
class MdnsStats:
    resolved: int = 0
    removed: int = 0
    bad_txt: int = 0
    unresolved: int = 0


def _short_type(zc_type: str) -> str:
    return zc_type.removesuffix(".local.").removesuffix(".")


def _full_type(short: str) -> str:
    return short if short.endswith(".local.") else f"{short}.local."


@dataclass(slots=True)
class _Tracked:
    service_type: str
    consumer: ServiceConsumer
    queried_record: float = 0.0  # `created` of the SRV record we last re-asked about


class MdnsDiscovery:
    """The gateway's zeroconf instance: browse for consumers, announce the gateway."""

    def __init__(
        self,
        *,
        interfaces: Sequence[str],
        announce: Mapping[str, str] | None = None,
        announce_port: int = 0,
        announce_name: str = "",
        max_txt_bytes: int = DEFAULT_MAX_TXT_BYTES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
    ) -> None:
        self._interfaces = list(interfaces)
        self._max_txt_bytes = max_txt_bytes
        self._max_instances = max_instances
        self._consumers: dict[str, ServiceConsumer] = {}
        self._announce = dict(announce or {})
        self._announce_port = announce_port
        self._announce_name = announce_name
        self._zc: AsyncZeroconf | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._tracked: dict[str, _Tracked] = {}  # by full service name
        self._tracking_changed = asyncio.Event()
        self.stats = MdnsStats()
        self.drops = Drops("mdns", log)

    def add_consumer(self, service_type: str, consumer: ServiceConsumer) -> None:
        self._consumers[_full_type(service_type)] = consumer

    async def run(self) -> None:
        addresses = await asyncio.to_thread(resolve_interfaces, self._interfaces)
        azc = AsyncZeroconf(interfaces=addresses, ip_version=IPVersion.V4Only)
        self._zc = azc
        browser = None
        info = None
        try:
            if self._announce_port:
                info = self._gateway_info(addresses)
                await azc.async_register_service(info, allow_name_change=True)
            if self._consumers:
                browser = AsyncServiceBrowser(
                    azc.zeroconf, sorted(self._consumers), handlers=[self._on_change]
                )
            log.info("mDNS on %s: browsing %d service types", ", ".join(addresses), len(self._consumers))
            await self._maintain()
        finally:
            if browser is not None:
                await browser.async_cancel()
            for task in list(self._pending):
                task.cancel()
            if self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)
            # Unregistering sends goodbye packets for the gateway's own service.
            await asyncio.shield(azc.async_close())
            self._zc = None

    def _gateway_info(self, addresses: list[str]) -> AsyncServiceInfo:
        label = self._announce_name or f"Beifang Gateway {self._announce.get('id', '')}".strip()
        host = re.sub(r"[^a-z0-9-]", "-", self._announce.get("id", "gateway").lower())
        return AsyncServiceInfo(
            GATEWAY_SERVICE,
            f"{label}.{GATEWAY_SERVICE}",
            addresses=[socket.inet_aton(a) for a in addresses],
            port=self._announce_port,
            properties=self._announce,
            server=f"{host}.local.",
        )

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        consumer = self._consumers.get(service_type)
        if consumer is None:
            return
        if state_change is ServiceStateChange.Removed:
            self._remove(name)
            return
        if name not in self._tracked and len(self._tracked) + len(self._pending) >= self._max_instances:
            self.drops.drop(name, "too_many_instances", f"{len(self._tracked)} followed")
            return
        self._spawn(self._resolve(consumer, service_type, name), f"mdns-resolve-{name[:80]}")

    async def _resolve(self, consumer: ServiceConsumer, service_type: str, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, _RESOLVE_TIMEOUT_MS):
            self.stats.unresolved += 1
            log.debug("mDNS: could not resolve %s", name)
            return
        if len(info.text or b"") > self._max_txt_bytes:
            self.stats.bad_txt += 1
            self.drops.drop(name, "txt_too_large", f"{len(info.text or b'')} bytes")
            return
        txt, bad = parse_txt(info.properties)
        if bad:
            self.stats.bad_txt += bad
            self.drops.drop(name, "invalid_txt", f"{bad} invalid TXT entries dropped", count=bad)
        instance = name[: -len(service_type) - 1] if name.endswith("." + service_type) else name
        seen = ServiceSeen(
            type=_short_type(service_type),
            instance=instance,
            name=name,
            addresses=tuple(info.parsed_addresses(IPVersion.V4Only)),
            port=info.port or 0,
            txt=txt,
            server=info.server or "",
            ttl_s=info.other_ttl,
        )
        self.stats.resolved += 1
        self._track(service_type, name, consumer)
        try:
            consumer.service_seen(seen)
        except Exception as exc:  # noqa: BLE001 - a consumer's bug must not stop discovery
            self.drops.drop(name, "internal_error", repr(exc), level=logging.ERROR, exc_info=True)

    def _srv(self, name: str) -> DNSRecord | None:
        assert self._zc is not None
        records = self._zc.zeroconf.cache.async_all_by_details(name, _TYPE_SRV, _CLASS_IN)
        live = [r for r in records if r.ttl > 0 and not r.is_expired(current_time_millis())]
        return max(live, key=lambda r: r.get_expiration_time(100)) if live else None

    def _track(self, service_type: str, name: str, consumer: ServiceConsumer) -> None:
        self._tracked[name] = _Tracked(service_type, consumer)
        self._tracking_changed.set()

    def _remove(self, name: str) -> None:
        entry = self._tracked.pop(name, None)
        if entry is None:
            matches = [(t, c) for t, c in self._consumers.items() if name.endswith("." + t)]
            if not matches:
                return
            entry = _Tracked(*matches[0])
        self.stats.removed += 1
        entry.consumer.service_removed(_short_type(entry.service_type), name)

    async def _maintain(self) -> None:
        """Re-ask for each instance in the last fifth of its SRV record's lifetime (RFC 6762
        §5.2); an instance whose record expires unanswered has left without a goodbye."""
        assert self._zc is not None
        while True:
            now = current_time_millis()
            next_due = math.inf
            for name, entry in list(self._tracked.items()):
                record = self._srv(name)
                if record is None:
                    log.info("mDNS: %s vanished (its records expired without a goodbye)", name)
                    self._remove(name)
                    continue
                requery_at = record.get_expiration_time(int(_REQUERY_AT * 100))
                if now >= requery_at and entry.queried_record != record.created:
                    entry.queried_record = record.created
                    out = DNSOutgoing(_FLAGS_QR_QUERY)
                    out.add_question(DNSQuestion(name, _TYPE_SRV, _CLASS_IN))
                    self._zc.zeroconf.async_send(out)
                next_due = min(
                    next_due,
                    requery_at if entry.queried_record != record.created else record.get_expiration_time(100),
                )
            self._tracking_changed.clear()
            timeout = None if next_due == math.inf else max(0.05, (next_due - current_time_millis()) / 1000)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._tracking_changed.wait()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


# -- third-party devices ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MdnsRule:
    type: str
    kind: Kind
    manufacturer: str
    model: str
    name: str
    identity: str
    instance: re.Pattern[str] | None = None
    txt: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def matches(self, service: ServiceSeen) -> bool:
        if service.type != self.type:
            return False
        if self.instance is not None and not self.instance.match(service.instance):
            return False
        return all(k in service.txt and p.match(service.txt[k]) for k, p in self.txt)


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


def load_rules(text: str | None = None) -> list[MdnsRule]:
    """Compile the rules table (the packaged mdns_rules.toml unless `text` is given)."""
    if text is None:
        text = resources.files("gateway.devices").joinpath("mdns_rules.toml").read_text("utf-8")
    data = tomllib.loads(text)
    rules = []
    for raw in data.get("rule", []):
        rules.append(
            MdnsRule(
                type=raw["type"],
                kind=Kind(raw["kind"]),
                manufacturer=raw.get("manufacturer", ""),
                model=raw.get("model", ""),
                name=raw.get("name", "{instance}"),
                identity=raw["identity"],
                instance=_glob(raw["instance"]) if "instance" in raw else None,
                txt=tuple((k.lower(), _glob(v)) for k, v in raw.get("txt", {}).items()),
            )
        )
    return rules


_FIELD = re.compile(r"\{([a-z0-9_-]+)\}")


def _fill(template: str, service: ServiceSeen) -> str:
    values = dict(service.txt)
    values["instance"] = service.instance
    values["instance_after_at"] = service.instance.partition("@")[2] or service.instance
    return _FIELD.sub(lambda m: values.get(m.group(1), ""), template).strip()


@dataclass(slots=True)
class _Known:
    device_id: str
    names: set[str] = field(default_factory=set)


class MdnsDeviceAdapter:
    """Third-party mDNS devices (recognized by the rules table); read-only."""

    protocol: ClassVar[str] = "mdns"
    address_bound: ClassVar[bool] = True

    def __init__(
        self,
        sink: DeviceSink,
        rules: list[MdnsRule] | None = None,
        *,
        is_claimed: Callable[[str], bool] = lambda address: False,
    ) -> None:
        self._sink = sink
        self._rules = rules if rules is not None else load_rules()
        self._by_name: dict[str, str] = {}  # service full name → device id
        self._is_claimed = is_claimed
        self.unmatched = 0
        self.drops = Drops(self.protocol, log)

    @property
    def service_types(self) -> list[str]:
        return sorted({r.type for r in self._rules})

    async def run(self) -> None:
        await asyncio.Future()

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None:
        raise DeviceError(device_id, "not_controllable", "third-party mDNS devices are read-only")

    def service_seen(self, service: ServiceSeen) -> None:
        rule = next((r for r in self._rules if r.matches(service)), None)
        if rule is None:
            self.unmatched += 1
            return
        if service.address and self._is_claimed(service.address):
            return  # the same box already speaks to us as an operator terminal
        identity = _fill(rule.identity, service)
        if not identity:
            log.debug("mDNS: %s has no identity (%s); ignored", service.name, rule.identity)
            return
        with contextlib.suppress(ValueError):
            identity = normalize_mac(identity)  # HomeKit ids and AirPlay device ids are MACs
        address = f"{service.address}:{service.port}" if service.address else ""
        admitted = self._sink.admit(
            device_id(rule.type.strip("_").split(".")[0], identity), self.protocol, address
        )
        if admitted is None:
            return
        dev_id = admitted
        name = _fill(rule.name, service) or service.instance
        info = DeviceInfo(
            id=dev_id,
            name=name[:128],
            kind=rule.kind,
            protocol=self.protocol,
            model=_fill(rule.model, service)[:128],
            manufacturer=_fill(rule.manufacturer, service)[:128],
            address=address,
            controllable=False,
        )
        self._by_name[service.name] = dev_id
        self._sink.device_found(Found(info=info, native_id=identity[:256], meta={"service": service.name}))
        self._sink.device_availability(dev_id, True)

    def service_removed(self, service_type: str, name: str) -> None:
        dev_id = self._by_name.get(name)
        if dev_id is not None:
            self._sink.device_availability(dev_id, False)

    def rebind(self, old_id: str, new_id: str) -> None:
        for name, dev_id in self._by_name.items():
            if dev_id == old_id:
                self._by_name[name] = new_id
