"""Operator terminals (the operator's TVs, speakers, set-top boxes): HTTP+JSON profile.

Found over mDNS as `_bfy-terminal._tcp` (TXT `id`, `kind`, `model`, `manufacturer`, `api`).
Per device one session: `GET <api>/info` describes it, `GET <api>/events` (server-sent events)
streams `state` and `heard` events; commands go to `POST <api>/command`. The device is online
while its event stream is open and talking (a keep-alive at least every `event_timeout_s`);
when the stream breaks the session reconnects with capped, jittered backoff and the device is
offline until `/info` answers again, at the address mDNS last gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.devices.base import DeviceSink, Found
from gateway.devices.mdns import ServiceSeen
from gateway.errors import DeviceError
from gateway.ids import device_id
from gateway.model import CAPABILITIES, DeviceInfo, Kind, clean_state

__all__ = ["SERVICE_TYPE", "TerminalAdapter", "TerminalInfo", "TerminalTxt", "parse_sse"]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_bfy-terminal._tcp"
PROTOCOL = "terminal"
_MAX_EVENT_BYTES = 256 * 1024
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.2, 10.0
_WARN_INTERVAL_S = 60.0


class TerminalTxt(BaseModel):
    """The TXT record of `_bfy-terminal._tcp` (decoded, keys lower-cased)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    kind: Literal["tv", "speaker", "gateway", "other"] = "other"
    model: str = Field(default="", max_length=128)
    manufacturer: str = Field(default="", max_length=128)
    api: str = Field(default="/api/v1", pattern=r"^/[A-Za-z0-9/_.-]{0,64}$")
    name: str = Field(default="", max_length=128)


class TerminalInfo(BaseModel):
    """`GET <api>/info`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(max_length=64)
    kind: str = "other"
    name: str = Field(default="", max_length=128)
    model: str = Field(default="", max_length=128)
    manufacturer: str = Field(default="", max_length=128)
    firmware: str = Field(default="", max_length=64)
    capabilities: list[str] = Field(default_factory=list, max_length=64)
    settable: list[str] = Field(default_factory=list, max_length=64)


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str
    id: str = ""


async def parse_sse(
    lines: AsyncIterator[str], *, max_bytes: int = _MAX_EVENT_BYTES
) -> AsyncIterator[SseEvent | None]:
    """Server-sent events (HTML Living Standard §9.2.6) from text lines.

    Yields an event per blank-line-terminated block, and None for a comment (keep-alive), so
    callers can tell a quiet stream from a dead one. Oversized events are skipped.
    """
    event, ident, size = "message", "", 0
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data), ident)
            event, data, size = "message", [], 0
            continue
        if line.startswith(":"):
            yield None
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        size += len(value)
        if size > max_bytes:
            event, data, size = "message", [], 0
            continue
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            ident = value


@dataclass(slots=True)
class _Session:
    device_id: str
    base_url: str
    txt: TerminalTxt
    service_name: str
    task: asyncio.Task[None] | None = None
    settable: tuple[str, ...] = ()


class TerminalAdapter:
    protocol: ClassVar[str] = PROTOCOL

    def __init__(
        self,
        sink: DeviceSink,
        *,
        event_timeout_s: float = 45.0,
        http_timeout_s: float = 5.0,
    ) -> None:
        self._sink = sink
        self._event_timeout_s = event_timeout_s
        self._http_timeout_s = http_timeout_s
        self._sessions: dict[str, _Session] = {}
        self._by_service: dict[str, str] = {}
        self._changes: asyncio.Queue[tuple[str, _Session | None]] = asyncio.Queue(1000)
        self._client: httpx.AsyncClient | None = None  # /info and the event streams
        self._commands: httpx.AsyncClient | None = None
        self._warned: dict[str, float] = {}
        self.bad_messages = 0

    # -- discovery (ServiceConsumer) ------------------------------------------------------

    def claims(self, address: str) -> bool:
        """Whether an address belongs to a known terminal (third-party twins are skipped)."""
        return any(s.base_url.startswith(f"http://{address}:") for s in self._sessions.values())

    def service_seen(self, service: ServiceSeen) -> None:
        try:
            txt = TerminalTxt.model_validate(service.txt)
        except ValidationError as exc:
            self._bad(service.name, f"invalid TXT record ({exc.error_count()} errors)")
            return
        if not service.address or not service.port:
            self._bad(service.name, "no address")
            return
        dev_id = device_id("bfy", txt.id)
        base_url = f"http://{service.address}:{service.port}{txt.api.rstrip('/')}"
        current = self._sessions.get(dev_id)
        if current is not None and current.base_url == base_url and current.txt == txt:
            return
        session = _Session(dev_id, base_url, txt, service.name)
        self._sessions[dev_id] = session
        self._by_service[service.name] = dev_id
        self._put((dev_id, session))

    def service_removed(self, service_type: str, name: str) -> None:
        dev_id = self._by_service.pop(name, None)
        if dev_id is None:
            return
        self._sessions.pop(dev_id, None)
        self._put((dev_id, None))
        self._sink.device_availability(dev_id, False)

    def _put(self, change: tuple[str, _Session | None]) -> None:
        try:
            self._changes.put_nowait(change)
        except asyncio.QueueFull:
            self._bad("discovery", "too many service changes queued")

    # -- sessions -------------------------------------------------------------------------

    async def run(self) -> None:
        timeout = httpx.Timeout(self._http_timeout_s, read=self._event_timeout_s)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        running: dict[str, asyncio.Task[None]] = {}
        # Commands get a pool of their own: httpcore rescans every pooled connection at each
        # request, and the long-lived event streams would make every command pay for them.
        async with (
            httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client,
            httpx.AsyncClient(timeout=self._http_timeout_s, limits=limits, trust_env=False) as commands,
        ):
            self._client, self._commands = client, commands
            try:
                async with asyncio.TaskGroup() as tg:
                    while True:
                        dev_id, session = await self._changes.get()
                        old = running.pop(dev_id, None)
                        if old is not None:
                            old.cancel()
                        if session is not None:
                            running[dev_id] = tg.create_task(
                                self._session(session), name=f"terminal-{dev_id}"
                            )
            finally:
                self._client = self._commands = None

    async def _session(self, s: _Session) -> None:
        assert self._client is not None
        attempt = 0
        while True:
            try:
                await self._describe(s)
                attempt = 0
                await self._stream(s)
                reason = "event stream ended"
            except (httpx.HTTPError, ValueError, ValidationError) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:200]
            self._sink.device_availability(s.device_id, False)
            self._bad(s.device_id, reason, level=logging.INFO)
            cap = min(_BACKOFF_MAX_S, _BACKOFF_MIN_S * 2**attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(_BACKOFF_MIN_S, cap))

    async def _describe(self, s: _Session) -> None:
        assert self._client is not None
        r = await self._client.get(f"{s.base_url}/info")
        r.raise_for_status()
        info = TerminalInfo.model_validate_json(r.content)
        caps = [c for c in info.capabilities if c in CAPABILITIES]
        settable = [c for c in info.settable if c in CAPABILITIES]
        kind = Kind(info.kind) if info.kind in Kind._value2member_map_ else Kind(s.txt.kind)
        s.settable = tuple(settable)
        self._sink.device_found(
            Found(
                info=DeviceInfo(
                    id=s.device_id,
                    name=(info.name or s.txt.name or s.txt.id)[:128],
                    kind=kind,
                    protocol=PROTOCOL,
                    model=info.model or s.txt.model,
                    manufacturer=info.manufacturer or s.txt.manufacturer,
                    address=s.base_url.removeprefix("http://").split("/", 1)[0],
                    capabilities=tuple(caps),
                    settable=tuple(settable),
                    controllable=bool(settable),
                ),
                native_id=s.txt.id,
                meta={"api": s.base_url, "firmware": info.firmware, "service": s.service_name},
            )
        )

    async def _stream(self, s: _Session) -> None:
        assert self._client is not None
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        async with self._client.stream("GET", f"{s.base_url}/events", headers=headers) as r:
            r.raise_for_status()
            self._sink.device_availability(s.device_id, True)
            allowed = set(CAPABILITIES)
            async for event in parse_sse(r.aiter_lines()):
                if event is None:
                    continue
                self._on_event(s, event, allowed)

    def _on_event(self, s: _Session, event: SseEvent, allowed: set[str]) -> None:
        try:
            data = json.loads(event.data)
        except ValueError:
            self._bad(s.device_id, f"{event.event} event is not JSON")
            return
        if not isinstance(data, dict):
            self._bad(s.device_id, f"{event.event} event is not an object")
            return
        if event.event == "state":
            values, dropped = clean_state(data, allowed)
            if dropped:
                self.bad_messages += dropped
            if values:
                self._sink.device_state(s.device_id, values)
        elif event.event == "heard":
            text = data.get("text")
            lang = data.get("lang", "zh-CN")
            if isinstance(text, str) and text.strip() and isinstance(lang, str) and len(text) <= 500:
                self._sink.device_event(s.device_id, "voice", {"text": text.strip(), "lang": lang[:16]})
            else:
                self._bad(s.device_id, "heard event without text")

    # -- commands -------------------------------------------------------------------------

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None:
        s = self._sessions.get(device_id)
        if s is None or self._commands is None:
            raise DeviceError(device_id, "device_offline", "the terminal is not on the network")
        try:
            r = await self._commands.post(
                f"{s.base_url}/command", json=dict(values), timeout=self._http_timeout_s
            )
        except httpx.HTTPError as exc:
            raise DeviceError(device_id, "device_unreachable", str(exc)[:200]) from exc
        if r.status_code >= 400:
            detail = ""
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(r.json().get("error", ""))[:200]
            raise DeviceError(device_id, "device_refused", f"HTTP {r.status_code} {detail}".strip())

    def _bad(self, source: str, reason: str, *, level: int = logging.WARNING) -> None:
        if level >= logging.WARNING:
            self.bad_messages += 1
        now = time.monotonic()
        if now - self._warned.get(source, -1e9) > _WARN_INTERVAL_S:
            if len(self._warned) > 1000:
                self._warned.clear()
            self._warned[source] = now
            log.log(level, "terminal %s: %s", source, reason)
