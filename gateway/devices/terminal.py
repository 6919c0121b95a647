"""Operator terminals (the operator's TVs, speakers, set-top boxes): HTTP+JSON profile.

Found over mDNS as `_bfy-terminal._tcp` (TXT `id`, `kind`, `model`, `manufacturer`, `api`).
Per device one session: `GET <api>/info` describes it, `GET <api>/events` (server-sent events)
streams `state` and `heard` events; commands go to `POST <api>/command`. The device is online
while its event stream is open and talking (a keep-alive at least every `event_timeout_s`);
when the stream breaks the session reconnects with capped, jittered backoff and the device is
offline until `/info` answers again, at the address mDNS last gave.

Terminals have no credentials, so a terminal is whoever answers at its address: every
announcement is `admit`ted by the hub, and a second announcer of an approved terminal's id gets
a session (and an id) of its own, as a device waiting for the installer. Everything a terminal
sends is bounded (`lan.*` settings): its `/info`, each event line, JSON size and nesting. A
terminal costs at most two connections (its event stream, and one command at a time); sessions
are capped at `lan.max_devices_per_protocol`, and when they are all taken an approved terminal
displaces one that waits for approval. A session's failure, whatever it is, stays with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import LanSettings
from gateway.devices.base import DeviceSink, Found
from gateway.devices.guard import Drops, PeerDataError, bounded_lines, json_or_drop, loads_json, read_bounded
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
#: Terminals described at once: a burst of announcements cannot take every connection.
_DESCRIBE_AT_ONCE = 8
#: Of a refused command's answer, only this much is read (for the error message).
_MAX_ERROR_BYTES = 4096


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
    settable: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        """`host:port`, what the hub binds an approved terminal to."""
        return self.base_url.removeprefix("http://").split("/", 1)[0]


class TerminalAdapter:
    protocol: ClassVar[str] = PROTOCOL
    address_bound: ClassVar[bool] = True

    def __init__(
        self,
        sink: DeviceSink,
        *,
        event_timeout_s: float = 45.0,
        http_timeout_s: float = 5.0,
        limits: LanSettings | None = None,
    ) -> None:
        self._sink = sink
        self._event_timeout_s = event_timeout_s
        self._http_timeout_s = http_timeout_s
        self._limits = limits or LanSettings()
        self._sessions: dict[str, _Session] = {}
        self._by_service: dict[str, set[str]] = {}
        self._changes: asyncio.Queue[tuple[str, _Session | None]] = asyncio.Queue(1000)
        self._client: httpx.AsyncClient | None = None  # /info and the event streams
        self._commands: httpx.AsyncClient | None = None
        self._describing = asyncio.Semaphore(_DESCRIBE_AT_ONCE)
        self.drops = Drops(PROTOCOL, log)

    # -- discovery (ServiceConsumer) ------------------------------------------------------

    def claims(self, address: str) -> bool:
        """Whether an address belongs to a known terminal (third-party twins are skipped)."""
        return any(s.base_url.startswith(f"http://{address}:") for s in self._sessions.values())

    def service_seen(self, service: ServiceSeen) -> None:
        try:
            txt = TerminalTxt.model_validate(service.txt)
        except ValidationError as exc:
            self.drops.drop(service.name, "invalid_txt", f"{exc.error_count()} errors")
            return
        if not service.address or not service.port:
            self.drops.drop(service.name, "no_address")
            return
        base_url = f"http://{service.address}:{service.port}{txt.api.rstrip('/')}"
        session = _Session("", base_url, txt, service.name)
        dev_id = self._sink.admit(device_id("bfy", txt.id), PROTOCOL, session.address)
        if dev_id is None:
            return  # the registry has no room; the hub counted it
        session.device_id = dev_id
        current = self._sessions.get(dev_id)
        if current is not None and current.base_url == base_url and current.txt == txt:
            return
        if current is None and not self._make_room(dev_id):
            self.drops.drop(service.name, "too_many_sessions", f"{len(self._sessions)} terminals")
            return
        self._sessions[dev_id] = session
        self._by_service.setdefault(service.name, set()).add(dev_id)
        self._put((dev_id, session))

    def _make_room(self, dev_id: str) -> bool:
        if len(self._sessions) < self._limits.max_devices_per_protocol:
            return True
        if not self._sink.approved(dev_id):
            return False
        waiting = next((i for i in self._sessions if not self._sink.approved(i)), None)
        if waiting is None:
            return False
        self._end_session(waiting)
        return True

    def service_removed(self, service_type: str, name: str) -> None:
        for dev_id in self._by_service.pop(name, set()):
            self._end_session(dev_id)

    def _end_session(self, dev_id: str) -> None:
        if self._sessions.pop(dev_id, None) is not None:
            self._put((dev_id, None))
            self._sink.device_availability(dev_id, False)

    def rebind(self, old_id: str, new_id: str) -> None:
        session = self._sessions.get(old_id)
        if session is None:
            return
        self._end_session(old_id)
        for ids in self._by_service.values():
            if old_id in ids:
                ids.discard(old_id)
                ids.add(new_id)
        moved = _Session(new_id, session.base_url, session.txt, session.service_name)
        self._end_session(new_id)
        self._sessions[new_id] = moved
        self._put((new_id, moved))

    def _put(self, change: tuple[str, _Session | None]) -> None:
        try:
            self._changes.put_nowait(change)
        except asyncio.QueueFull:
            self.drops.drop("discovery", "queue_full", "too many service changes queued")

    # -- sessions -------------------------------------------------------------------------

    async def run(self) -> None:
        timeout = httpx.Timeout(self._http_timeout_s, read=self._event_timeout_s)
        # Every session holds one event stream: the pool has room for all of them and for the
        # describes in flight; commands get a pool of their own (httpcore rescans every pooled
        # connection at each request, and the long-lived streams would make every command pay).
        most = self._limits.max_devices_per_protocol
        streams = httpx.Limits(max_connections=most + _DESCRIBE_AT_ONCE, max_keepalive_connections=16)
        commands = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        running: dict[str, asyncio.Task[None]] = {}
        async with (
            httpx.AsyncClient(timeout=timeout, limits=streams, trust_env=False) as client,
            httpx.AsyncClient(timeout=self._http_timeout_s, limits=commands, trust_env=False) as cmds,
        ):
            self._client, self._commands = client, cmds
            try:
                async with asyncio.TaskGroup() as tg:
                    while True:
                        dev_id, session = await self._changes.get()
                        old = running.pop(dev_id, None)
                        if old is not None:
                            old.cancel()
                        if session is not None and self._sessions.get(dev_id) is session:
                            running[dev_id] = tg.create_task(
                                self._session(session), name=f"terminal-{dev_id}"
                            )
            finally:
                self._client = self._commands = None

    async def _session(self, s: _Session) -> None:
        assert self._client is not None
        attempt = 0
        while True:
            level = logging.INFO
            try:
                async with self._describing:
                    known = await self._describe(s)
                if not known:
                    # The hub refused it (its inbox is full): no stream, no retries until it
                    # announces itself again.
                    if self._sessions.get(s.device_id) is s:
                        del self._sessions[s.device_id]
                    return
                attempt = 0
                await self._stream(s)
                reason, detail = "stream_ended", "event stream ended"
            except PeerDataError as exc:
                reason, detail, level = exc.reason, exc.detail, logging.WARNING
            except ValidationError as exc:
                reason, detail, level = "invalid_info", f"{exc.error_count()} errors", logging.WARNING
            except httpx.HTTPError as exc:
                reason, detail = "unreachable", f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # our bug or the unexpected: this device's problem only
                reason, detail, level = "internal_error", f"{type(exc).__name__}: {exc}", logging.ERROR
                log.exception("terminal %s: session failed", s.device_id)
            self._sink.device_availability(s.device_id, False)
            self.drops.drop(
                s.device_id, reason, detail[:200], level=level, count=int(level >= logging.WARNING)
            )
            cap = min(_BACKOFF_MAX_S, _BACKOFF_MIN_S * 2**attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(_BACKOFF_MIN_S, cap))

    async def _describe(self, s: _Session) -> bool:
        """GET /info within bounds and report the device; False if the hub did not take it."""
        assert self._client is not None
        limit = self._limits.max_http_body_bytes
        async with self._client.stream("GET", f"{s.base_url}/info") as r:
            r.raise_for_status()
            length = r.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise PeerDataError("too_large", f"/info of {length} bytes")
            body = await read_bounded(r.aiter_bytes(), limit)
        data = loads_json(body, max_bytes=limit, max_depth=self._limits.max_json_depth)
        info = TerminalInfo.model_validate(data)
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
                    address=s.address,
                    capabilities=tuple(caps),
                    settable=tuple(settable),
                    controllable=bool(settable),
                ),
                native_id=s.txt.id,
                meta={"api": s.base_url, "firmware": info.firmware, "service": s.service_name},
            )
        )
        return self._sink.device_meta(s.device_id) is not None

    async def _stream(self, s: _Session) -> None:
        assert self._client is not None
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        limit = self._limits.max_http_body_bytes
        async with self._client.stream("GET", f"{s.base_url}/events", headers=headers) as r:
            r.raise_for_status()
            self._sink.device_availability(s.device_id, True)
            allowed = set(CAPABILITIES)

            def overlong() -> None:
                self.drops.drop(s.device_id, "too_large", f"an event line over {limit} bytes")

            lines = bounded_lines(r.aiter_bytes(), max_line_bytes=limit, on_overlong=overlong)
            async for event in parse_sse(lines, max_bytes=limit):
                if event is not None:
                    self._on_event(s, event, allowed)

    def _on_event(self, s: _Session, event: SseEvent, allowed: set[str]) -> None:
        limits = self._limits
        data = json_or_drop(
            self.drops,
            s.device_id,
            event.data,
            max_bytes=limits.max_json_bytes,
            max_depth=limits.max_json_depth,
        )
        if data is None:
            return
        if event.event == "state":
            # Keys that are not capabilities (a speaker's `said` history) are simply not ours.
            values, dropped = clean_state({k: v for k, v in data.items() if k in allowed}, allowed)
            if dropped:
                self.drops.drop(s.device_id, "invalid_value", f"{dropped} state values", count=dropped)
            if values:
                self._sink.device_state(s.device_id, values)
        elif event.event == "heard":
            text = data.get("text")
            lang = data.get("lang", "zh-CN")
            if isinstance(text, str) and text.strip() and isinstance(lang, str) and len(text) <= 500:
                self._sink.device_event(s.device_id, "voice", {"text": text.strip(), "lang": lang[:16]})
            else:
                self.drops.drop(s.device_id, "invalid_event", "heard event without text")

    # -- commands -------------------------------------------------------------------------

    async def command(self, device_id: str, values: Mapping[str, Any]) -> None:
        s = self._sessions.get(device_id)
        if s is None or self._commands is None:
            raise DeviceError(device_id, "device_offline", "the terminal is not on the network")
        try:
            async with self._commands.stream(
                "POST", f"{s.base_url}/command", json=dict(values), timeout=self._http_timeout_s
            ) as r:
                status = r.status_code
                body = b""
                if status >= 400:
                    with contextlib.suppress(PeerDataError):
                        body = await read_bounded(r.aiter_bytes(), _MAX_ERROR_BYTES)
        except httpx.HTTPError as exc:
            raise DeviceError(device_id, "device_unreachable", str(exc)[:200]) from exc
        if status >= 400:
            detail = ""
            with contextlib.suppress(PeerDataError, AttributeError):
                detail = str(loads_json(body, max_bytes=_MAX_ERROR_BYTES, max_depth=4).get("error", ""))[:200]
            raise DeviceError(device_id, "device_refused", f"HTTP {status} {detail}".strip())
