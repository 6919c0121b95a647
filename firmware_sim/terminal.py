"""Operator terminals (TVs, smart speakers) as their own firmware would run them.

Each terminal is a real network program on its own IPv4 address (DESIGN.md, Contract 2): an
HTTP+JSON API under `/api/v1` (`info`, `state`, `command`, server-sent `events`, and on a
speaker `hear`) served by uvicorn, advertised over mDNS/DNS-SD as `_bfy-terminal._tcp` by
python-zeroconf; a TV also advertises `_googlecast._tcp` with the TXT keys a cast-enabled TV
sends. None of them knows the gateway exists.

Zeroconf is bound to the terminal's own address (`interfaces=[address]`): its responder socket
then sends from that address and owns `<address>:5353`, so several terminals run side by side
on one host and each answers legacy unicast queries (`dig -p 5353 @<address>`) by itself. A
clean stop sends goodbyes (RFC 6762 §10.1); `crash()` closes the sockets without them, as a
power cut would, and the records then age out by their TTLs.

`HostileTerminal` is a misbehaving device for robustness tests: garbage TXT records that
change now and then, and an HTTP API that answers with malformed JSON, wrong types and an
event stream of junk.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import json
import logging
import random
import re
import socket
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired, TypeVar

import uvicorn
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    with_config,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from firmware_sim._mqtt import FirmwareSimError, PeerComplaints

__all__ = [
    "API_BASE",
    "CAST_PORT",
    "CAST_SERVICE_TYPE",
    "DEFAULT_HOST_TTL_S",
    "DEFAULT_KEEPALIVE_S",
    "DEFAULT_OTHER_TTL_S",
    "DEFAULT_PORT",
    "SAID_HISTORY",
    "SERVICE_TYPE",
    "TV_INPUTS",
    "ApiError",
    "HeardEvent",
    "HostileTerminal",
    "SaidEntry",
    "SpeakerSimulator",
    "SpeakerState",
    "TerminalInfo",
    "TerminalSimulator",
    "TerminalStartError",
    "TvSimulator",
    "TvState",
]

_log = logging.getLogger(__name__)

SERVICE_TYPE = "_bfy-terminal._tcp.local."
CAST_SERVICE_TYPE = "_googlecast._tcp.local."
API_BASE = "/api/v1"
DEFAULT_PORT = 8080
CAST_PORT = 8009  # the cast protocol's TLS port; nothing of ours listens there
DEFAULT_KEEPALIVE_S = 15.0
# RFC 6762 §10 recommends 120 s for records carrying a host name and 75 min for the others;
# embedded responders (cast devices among them) commonly use 120 s for everything.
DEFAULT_HOST_TTL_S = 120
DEFAULT_OTHER_TTL_S = 120
DEFAULT_EVENT_QUEUE = 32  # per event-stream listener; a full queue drops its oldest event
SAID_HISTORY = 50
SSE_RETRY_MS = 3000  # the reconnect delay suggested to event-stream clients
MAX_BODY_BYTES = 64 * 1024
MAX_OVERLAY_BYTES = 16 * 1024
MAX_TEXT_CHARS = 2000
GRACEFUL_SHUTDOWN_S = 2
TV_INPUTS = ("tv", "hdmi1", "hdmi2", "av")
CHANNEL_MAX = 9999
DEFAULT_LANG = "zh-CN"

_DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LANG_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$"
_DNS_LABEL_MAX_BYTES = 63  # RFC 1035 §2.3.4; the instance name is one label
_TXT_STRING_MAX_BYTES = 255  # RFC 6763 §6.1
_CAST_TXT_VERSION = "05"
_CAST_CAPABILITIES = "264709"  # video out, audio out, multizone group member, ... (a TV's mask)
_CAST_ICON = "/setup/icon.png"


class TerminalStartError(FirmwareSimError):
    """A terminal could not get on the network (address in use, zeroconf failure, ...)."""


class _Crashed(Exception):  # a control-flow signal, not an error
    """Raised inside `run()` to leave its task group when `crash()` was called."""


# --- wire models: what the terminal API sends -----------------------------------------------

Priority = Literal["low", "normal", "high", "alert"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TerminalInfo(_Wire):
    """`GET /api/v1/info`."""

    id: str
    kind: Literal["tv", "speaker"]
    name: str
    model: str
    manufacturer: str
    firmware: str
    api: str
    capabilities: list[str]
    settable: list[str]


class TvState(_Wire):
    """`GET /api/v1/state` of a TV; `overlay` is what is on screen over the picture."""

    on: bool
    volume: int
    muted: bool
    channel: int
    input: str
    playing: bool
    overlay: dict[str, Any] | None


class SaidEntry(_Wire):
    text: str
    lang: str
    priority: Priority
    ts: str


class SpeakerState(_Wire):
    """`GET /api/v1/state` of a speaker; `said` holds the last `SAID_HISTORY` utterances."""

    volume: int
    muted: bool
    playing: bool
    said: list[SaidEntry]


class HeardEvent(_Wire):
    """Data of an `event: heard` on the event stream."""

    text: str
    lang: str
    ts: str


class ApiError(_Wire):
    """Every 4xx answer: what was wrong and, for a bad value, which capability."""

    error: str
    field: str | None


# --- commands: validated at the edge like real firmware does ---------------------------------


def _overlay_fits(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(_dumps(value).encode()) > MAX_OVERLAY_BYTES:
        raise ValueError(f"overlay larger than {MAX_OVERLAY_BYTES} bytes")
    return value


def _say_from_text(value: object) -> object:
    return {"text": value} if isinstance(value, str) else value


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
Lang = Annotated[str, Field(pattern=_LANG_PATTERN)]
Volume = Annotated[int, Field(ge=0, le=100)]


@with_config(ConfigDict(extra="forbid", strict=True))
class _Say(TypedDict):
    text: Text
    lang: NotRequired[Lang]
    priority: NotRequired[Priority]


@with_config(ConfigDict(extra="forbid", strict=True))
class _TvCommand(TypedDict, total=False):
    on: bool
    volume: Volume
    muted: bool
    channel: Annotated[int, Field(ge=1, le=CHANNEL_MAX)]
    input: Literal["tv", "hdmi1", "hdmi2", "av"]
    playing: bool
    overlay: Annotated[dict[str, Any] | None, AfterValidator(_overlay_fits)]


@with_config(ConfigDict(extra="forbid", strict=True))
class _SpeakerCommand(TypedDict, total=False):
    volume: Volume
    muted: bool
    playing: bool
    say: Annotated[_Say, BeforeValidator(_say_from_text)]


@with_config(ConfigDict(extra="forbid", strict=True))
class _Hear(TypedDict):
    text: Text
    lang: NotRequired[Lang]


_T = TypeVar("_T")
_TV_COMMAND = TypeAdapter(_TvCommand)
_SPEAKER_COMMAND = TypeAdapter(_SpeakerCommand)
_HEAR = TypeAdapter(_Hear)


class _BadRequest(Exception):  # becomes a 400 answer, never escapes a handler
    def __init__(self, error: str, field: str | None) -> None:
        super().__init__(error)
        self.error = error
        self.field = field


def _parse(adapter: TypeAdapter[_T], body: bytes) -> _T:
    """Validate a JSON body; the first problem becomes a `_BadRequest` naming its field."""
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = [str(part) for part in first["loc"]]
        kind = first["type"]
        if kind == "json_invalid":
            raise _BadRequest("body is not valid JSON", None) from exc
        if not loc:
            raise _BadRequest("body must be a JSON object", None) from exc
        if kind == "extra_forbidden" and len(loc) == 1:
            raise _BadRequest(f"unknown capability {loc[0]!r} for this device", loc[0]) from exc
        if kind == "extra_forbidden":
            raise _BadRequest(f"unknown key {'.'.join(loc)!r}", loc[0]) from exc
        raise _BadRequest(f"{'.'.join(loc)}: {first['msg']}", loc[0]) from exc


# --- helpers -----------------------------------------------------------------------------------


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _guess_lang(text: str) -> str:
    return "en" if text.isascii() else DEFAULT_LANG


def _error(status: int, error: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(ApiError(error=error, field=field).model_dump(), status_code=status)


async def _read_body(request: Request) -> bytes:
    """The request body, refused beyond `MAX_BODY_BYTES` (firmware has little RAM)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BadRequest(f"body larger than {MAX_BODY_BYTES} bytes", None)
        chunks.append(chunk)
    return b"".join(chunks)


async def _http_error(request: Request, exc: Exception) -> Response:
    """404/405 and friends answer in the API's error shape, not Starlette's plain text."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    return _error(status, str(detail).lower())


def _listen(address: str, port: int) -> socket.socket:
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is
    # IPPROTO_TCP, and without it every response on a kept-alive connection waits ~40 ms
    # for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _stable_hex(device_id: str, purpose: str, digits: int) -> str:
    """Hex digits derived from the hardware id, so they survive restarts like burnt-in ids."""
    return hashlib.sha256(f"{purpose}:{device_id}".encode()).hexdigest()[:digits]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # whoever runs the simulators owns SIGINT/SIGTERM


class _EventFanout:
    """Server-sent events to any number of listeners.

    Each listener has a bounded queue; when a slow listener's queue is full its oldest event
    is dropped (counted in `dropped`), so nobody waits for the slowest reader. Events carry
    increasing ids. `close()` ends every stream.
    """

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._listeners: set[asyncio.Queue[bytes | None]] = set()
        self._last_id = 0
        self._closed = False
        self.dropped = 0

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def frame(self, event: str, data: object, *, retry: bool = False) -> bytes:
        """One SSE message for the current id (the greeting sent on connect uses this)."""
        head = f"retry: {SSE_RETRY_MS}\n" if retry else ""
        return f"{head}id: {self._last_id}\nevent: {event}\ndata: {_dumps(data)}\n\n".encode()

    def publish(self, event: str, data: object) -> None:
        self._last_id += 1
        frame = self.frame(event, data)
        for queue in self._listeners:
            self._put(queue, frame)

    def _put(self, queue: asyncio.Queue[bytes | None], item: bytes | None) -> None:
        while True:
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                queue.get_nowait()
                self.dropped += 1
            else:
                return

    @contextlib.contextmanager
    def listen(self) -> Iterator[asyncio.Queue[bytes | None]]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(self._queue_size)
        if self._closed:
            queue.put_nowait(None)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    def close(self) -> None:
        self._closed = True
        for queue in self._listeners:
            self._put(queue, None)

    def reopen(self) -> None:
        self._closed = False


# --- the device: HTTP server + mDNS advertisements, one lifecycle ------------------------------


class _NetworkDevice(abc.ABC):
    """Lifecycle shared by all terminals: an HTTP server on `(address, port)` and zeroconf
    advertisements bound to `address`, both owned by `run()` until it is cancelled or
    `crash()` is called. `run()` may be called again after it returned (a reboot); `move_to()`
    gives the next run another address, as a new DHCP lease would."""

    kind: str = "other"

    def __init__(
        self,
        *,
        address: str,
        port: int,
        device_id: str | None,
        name: str,
        model: str,
        manufacturer: str,
        keepalive_s: float,
        host_ttl_s: int,
        other_ttl_s: int,
        seed: int | None,
        logger: logging.Logger,
    ) -> None:
        self._rng = random.Random(seed)  # simulated ids and junk, not security
        self._address = _check_address(address)
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        if device_id is None:
            device_id = f"{self.kind}-{self._rng.getrandbits(48):012x}"
        if not _DEVICE_ID_RE.match(device_id):
            raise ValueError(f"device_id must match {_DEVICE_ID_RE.pattern}, got {device_id!r}")
        if keepalive_s <= 0:
            raise ValueError("keepalive_s must be positive")
        if host_ttl_s < 1 or other_ttl_s < 1:
            raise ValueError("TTLs must be at least 1 s")
        self._port = port
        self._device_id = device_id
        self._name = _check_name(name)
        self._model = model
        self._manufacturer = manufacturer
        self._keepalive_s = keepalive_s
        self._host_ttl_s = host_ttl_s
        self._other_ttl_s = other_ttl_s
        self._log = logger
        self.complaints = PeerComplaints(logger, f"{self.kind} {device_id}")
        self._running = False
        self._crashed = False
        self._crash_requested = asyncio.Event()
        self._settled = asyncio.Event()  # on the network, or failed to get there
        self._start_error: BaseException | None = None
        self._instance_names: list[str] = []

    # --- what users of the simulator see ------------------------------------------------------

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        return self._port

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        return self._model

    @property
    def manufacturer(self) -> str:
        return self._manufacturer

    @property
    def base_url(self) -> str:
        return f"http://{self._address}:{self._port}{API_BASE}"

    @property
    def running(self) -> bool:
        return self._running

    @property
    def instance_names(self) -> list[str]:
        """Registered DNS-SD instance names (a name conflict makes zeroconf rename, RFC 6762 §9)."""
        return list(self._instance_names)

    @property
    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """What `GET /api/v1/state` answers (for assertions and the household)."""

    def move_to(self, address: str) -> None:
        """Use another address from the next `run()` on (the device keeps its id and state)."""
        if self._running:
            raise RuntimeError(f"{self._name}: stop the device before moving it")
        self._address = _check_address(address)

    async def wait_ready(self) -> None:
        """Return once the API is served and the advertisements are announced."""
        await self._settled.wait()
        if self._start_error is not None:
            raise TerminalStartError(
                f"{self.kind} {self._device_id} did not start on {self._address}:{self._port}"
            ) from self._start_error

    def crash(self) -> None:
        """Stop abruptly, as on power loss: sockets close, no mDNS goodbye, no clean HTTP end.
        `run()` then returns."""
        if self._running:
            self._crashed = True
            self._crash_requested.set()

    async def run(self) -> None:
        """Be on the network until cancelled (then say goodbye) or `crash()`ed (then don't)."""
        if self._running:
            raise RuntimeError(f"{self._name}: already running")
        self._running = True
        self._crashed = False
        self._crash_requested.clear()
        self._start_error = None
        self._settled.clear()
        self._on_starting()
        try:
            async with self._serving() as server, self._advertising() as zeroconf:
                self._settled.set()
                self._log.info(
                    "%s %s (%s) ready: %s, mDNS %s",
                    self.kind,
                    self._name,
                    self._device_id,
                    self.base_url,
                    ", ".join(self._instance_names),
                )
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._until_crashed(), name=f"{self.kind}-power")
                        self._start_tasks(tg, zeroconf, server)
                except* _Crashed:
                    self._log.info("%s %s crashed (no goodbye)", self.kind, self._device_id)
        except BaseException as exc:
            if not self._settled.is_set():
                self._start_error = exc
            raise
        finally:
            self._running = False
            if self._start_error is None:
                self._settled.clear()
            else:
                self._settled.set()  # wait_ready() raises instead of waiting for ever

    async def _until_crashed(self) -> None:
        await self._crash_requested.wait()
        raise _Crashed

    # --- subclass hooks ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _app(self) -> Starlette:
        """The HTTP application."""

    @abc.abstractmethod
    def _service_infos(self) -> list[AsyncServiceInfo]:
        """The DNS-SD services to advertise."""

    def _start_tasks(  # noqa: B027  # an optional hook
        self, tg: asyncio.TaskGroup, zeroconf: AsyncZeroconf, server: _Server
    ) -> None:
        """Start the device's own long-running tasks in `run()`'s task group."""

    def _on_starting(self) -> None:  # noqa: B027  # an optional hook
        """A run begins: reset what lives for one run only."""

    def _on_stopping(self) -> None:  # noqa: B027  # an optional hook
        """The HTTP server is about to stop: end long-lived responses."""

    # --- the two halves ---------------------------------------------------------------------------

    def _service_info(
        self, type_: str, instance: str, *, port: int, server: str, properties: bytes | dict[str, str]
    ) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            type_,
            f"{instance}.{type_}",
            port=port,
            addresses=[socket.inet_aton(self._address)],
            properties=properties,
            server=server,
            host_ttl=self._host_ttl_s,
            other_ttl=self._other_ttl_s,
        )

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[_Server]:
        try:
            sock = _listen(self._address, self._port)
        except OSError as exc:
            raise TerminalStartError(f"cannot listen on {self._address}:{self._port}: {exc}") from exc
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(),
            http="h11",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        server = _Server(config)
        config.load()
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        try:
            yield server
        finally:
            self._on_stopping()
            if self._crashed:
                # Power loss: connections die where they stand (RST), streams end mid-way.
                for connection in list(server.server_state.connections):
                    transport = getattr(connection, "transport", None)
                    if isinstance(transport, asyncio.Transport):
                        transport.abort()
            await server.shutdown(sockets=[sock])

    @contextlib.asynccontextmanager
    async def _advertising(self) -> AsyncIterator[AsyncZeroconf]:
        infos = self._service_infos()
        # Bound to the device's own address: replies come from it, and unicast to
        # <address>:5353 reaches this responder alone (see the module docstring).
        zeroconf = AsyncZeroconf(interfaces=[self._address], ip_version=IPVersion.V4Only)
        try:
            async with asyncio.TaskGroup() as tg:
                for info in infos:
                    tg.create_task(self._register(zeroconf, info), name=f"mdns-register-{info.type}")
            self._instance_names = [info.name for info in infos]
            yield zeroconf
        finally:
            if self._crashed:
                # Forget the services first, so closing sends no goodbye packets.
                zeroconf.zeroconf.registry.async_remove(zeroconf.zeroconf.registry.async_get_service_infos())
            await zeroconf.async_close()  # goodbyes (TTL 0) for whatever is still registered

    async def _register(self, zeroconf: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        # Probing (RFC 6762 §8.1) renames on conflict; the returned awaitable is the announcements.
        announced = await zeroconf.async_register_service(info, allow_name_change=True)
        await announced


def _check_address(address: str) -> str:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError as exc:
        raise ValueError(f"address must be an IPv4 address, got {address!r}") from exc
    if not ip.is_loopback:
        # Simulated devices live on the private namespace's `lo`; multicast never goes to a
        # host interface (DESIGN.md, "Testing on one machine").
        raise ValueError(f"simulated terminals use addresses from 127.0.0.0/8, got {address}")
    return address


def _check_name(name: str) -> str:
    if not name or len(name.encode()) > _DNS_LABEL_MAX_BYTES:
        raise ValueError(f"name must be 1..{_DNS_LABEL_MAX_BYTES} UTF-8 bytes, got {name!r}")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(f"name must not contain control characters: {name!r}")
    return name


# --- the operator terminal profile -----------------------------------------------------------


class TerminalSimulator(_NetworkDevice):
    """An operator-firmware terminal: the `/api/v1` profile and its `_bfy-terminal._tcp` ad."""

    kind: Literal["tv", "speaker"]
    firmware: str = "BFY-OS 3.2.1"
    capabilities: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        address: str,
        port: int,
        device_id: str | None,
        name: str,
        model: str,
        manufacturer: str,
        keepalive_s: float,
        host_ttl_s: int,
        other_ttl_s: int,
        seed: int | None,
        event_queue_size: int,
    ) -> None:
        super().__init__(
            address=address,
            port=port,
            device_id=device_id,
            name=name,
            model=model,
            manufacturer=manufacturer,
            keepalive_s=keepalive_s,
            host_ttl_s=host_ttl_s,
            other_ttl_s=other_ttl_s,
            seed=seed,
            logger=_log,
        )
        if event_queue_size < 1:
            raise ValueError("event_queue_size must be at least 1")
        self._events = _EventFanout(event_queue_size)

    @property
    def dropped_events(self) -> int:
        """Events dropped for listeners that did not keep up."""
        return self._events.dropped

    @property
    def listeners(self) -> int:
        """Connected event-stream clients."""
        return self._events.listeners

    def info(self) -> TerminalInfo:
        return TerminalInfo(
            id=self._device_id,
            kind=self.kind,
            name=self._name,
            model=self._model,
            manufacturer=self._manufacturer,
            firmware=self.firmware,
            api=API_BASE,
            capabilities=list(self.capabilities),
            settable=list(self.capabilities),
        )

    def txt_record(self) -> dict[str, str]:
        """The `_bfy-terminal._tcp` TXT record, key by key, in the order sent."""
        return {
            "id": self._device_id,
            "kind": self.kind,
            "model": self._model,
            "manufacturer": self._manufacturer,
            "api": API_BASE,
            "name": self._name,
        }

    def command(self, body: bytes) -> dict[str, Any]:
        """Apply a `POST /api/v1/command` body; raise `_BadRequest` and change nothing if any
        value is bad. Publishes `event: state` when something changed."""
        before = self.state
        self._apply(body)
        after = self.state
        if after != before:
            self._events.publish("state", after)
        return after

    @abc.abstractmethod
    def _apply(self, body: bytes) -> None:
        """Validate the whole command, then apply it."""

    # --- _NetworkDevice ---------------------------------------------------------------------

    def _service_infos(self) -> list[AsyncServiceInfo]:
        return [
            self._service_info(
                SERVICE_TYPE,
                self._name,
                port=self._port,
                server=f"{self._device_id}.local.",
                properties=self.txt_record(),
            )
        ]

    def _on_starting(self) -> None:
        self._events.reopen()

    def _on_stopping(self) -> None:
        self._events.close()

    def _routes(self) -> list[Route]:
        return [
            Route(f"{API_BASE}/info", self._get_info, methods=["GET"]),
            Route(f"{API_BASE}/state", self._get_state, methods=["GET"]),
            Route(f"{API_BASE}/command", self._post_command, methods=["POST"]),
            Route(f"{API_BASE}/events", self._get_events, methods=["GET"]),
        ]

    def _app(self) -> Starlette:
        return Starlette(routes=self._routes(), exception_handlers={HTTPException: _http_error})

    # --- HTTP handlers -------------------------------------------------------------------------

    async def _get_info(self, request: Request) -> Response:
        return JSONResponse(self.info().model_dump())

    async def _get_state(self, request: Request) -> Response:
        return JSONResponse(self.state)

    async def _post_command(self, request: Request) -> Response:
        try:
            state = self.command(await _read_body(request))
        except _BadRequest as exc:
            self.complaints.report("command", "rejected command: %s", exc.error)
            return _error(400, exc.error, exc.field)
        return JSONResponse(state)

    async def _get_events(self, request: Request) -> Response:
        return StreamingResponse(
            self._stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(self) -> AsyncIterator[bytes]:
        with self._events.listen() as queue:
            # Subscribed before the snapshot, with no await between: no change is missed.
            yield self._events.frame("state", self.state, retry=True)
            while True:
                try:
                    async with asyncio.timeout(self._keepalive_s):
                        frame = await queue.get()
                except TimeoutError:
                    yield b": ping\n\n"
                    continue
                if frame is None:
                    return
                yield frame


class TvSimulator(TerminalSimulator):
    """A smart TV on operator firmware, also announcing itself as a cast device.

    `overlay` in the state is what is on screen over the picture: in standby (`on: false`)
    nothing is, so an overlay sent then stays pending and shows only after an explicit
    `on: true` (the firmware never wakes from standby by itself). Standby stops playback;
    waking resumes it.
    """

    kind = "tv"
    firmware = "BFY-TV-OS 3.2.1 (build 20240611)"
    capabilities = ("on", "volume", "muted", "channel", "input", "playing", "overlay")

    def __init__(
        self,
        *,
        address: str,
        port: int = DEFAULT_PORT,
        device_id: str | None = None,
        name: str = "客厅电视",
        model: str = "BRAVIA 4K VH2",
        manufacturer: str = "Sony",
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        host_ttl_s: int = DEFAULT_HOST_TTL_S,
        other_ttl_s: int = DEFAULT_OTHER_TTL_S,
        seed: int | None = None,
        event_queue_size: int = DEFAULT_EVENT_QUEUE,
        power_on: bool = True,
    ) -> None:
        super().__init__(
            address=address,
            port=port,
            device_id=device_id,
            name=name,
            model=model,
            manufacturer=manufacturer,
            keepalive_s=keepalive_s,
            host_ttl_s=host_ttl_s,
            other_ttl_s=other_ttl_s,
            seed=seed,
            event_queue_size=event_queue_size,
        )
        self._on = power_on
        self._volume = 25
        self._muted = False
        self._channel = 1
        self._input = "tv"
        self._playing = power_on
        self._overlay: dict[str, Any] | None = None

    @property
    def state(self) -> dict[str, Any]:
        return TvState(
            on=self._on,
            volume=self._volume,
            muted=self._muted,
            channel=self._channel,
            input=self._input,
            playing=self._playing,
            overlay=self._overlay if self._on else None,
        ).model_dump()

    @property
    def pending_overlay(self) -> dict[str, Any] | None:
        """The overlay set while in standby, not on screen until the TV is switched on."""
        return None if self._on else self._overlay

    def cast_txt_record(self) -> dict[str, str]:
        """The `_googlecast._tcp` TXT record, as a cast-enabled TV sends it, in that order."""
        return {
            "id": self._cast_id(),
            "cd": _stable_hex(self._device_id, "cast-cd", 32).upper(),
            "rm": "",
            "ve": _CAST_TXT_VERSION,
            "md": self._model,
            "ic": _CAST_ICON,
            "fn": self._name,
            "ca": _CAST_CAPABILITIES,
            "st": "0",
            "bs": _stable_hex(self._device_id, "cast-bs", 12).upper(),
            "nf": "1",
            "rs": "",
        }

    def cast_instance_name(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9]+', '-', self._model).strip('-')}-{self._cast_id()}"

    def _cast_id(self) -> str:
        return _stable_hex(self._device_id, "cast-id", 32)

    def _service_infos(self) -> list[AsyncServiceInfo]:
        cast_id = self._cast_id()
        uuid = f"{cast_id[:8]}-{cast_id[8:12]}-{cast_id[12:16]}-{cast_id[16:20]}-{cast_id[20:]}"
        return [
            *super()._service_infos(),
            self._service_info(
                CAST_SERVICE_TYPE,
                self.cast_instance_name(),
                port=CAST_PORT,
                server=f"{uuid}.local.",
                properties=self.cast_txt_record(),
            ),
        ]

    def _apply(self, body: bytes) -> None:
        command = _parse(_TV_COMMAND, body)
        if "on" in command and command["on"] != self._on:
            self._on = command["on"]
            self._playing = self._on
        if "volume" in command:
            self._volume = command["volume"]
        if "muted" in command:
            self._muted = command["muted"]
        if "channel" in command:
            self._channel = command["channel"]
        if "input" in command:
            self._input = command["input"]
        if "playing" in command:
            self._playing = command["playing"]
        if "overlay" in command:
            self._overlay = command["overlay"]


class SpeakerSimulator(TerminalSimulator):
    """A smart speaker on operator firmware.

    Saying something appends it to `said` (nothing is played). `POST /api/v1/hear` simulates
    a person speaking to it: the transcript goes out as `event: heard`.
    """

    kind = "speaker"
    firmware = "BFY-SPK 2.4.0 (build 20240528)"
    capabilities = ("volume", "muted", "playing", "say")

    def __init__(
        self,
        *,
        address: str,
        port: int = DEFAULT_PORT,
        device_id: str | None = None,
        name: str = "客厅音箱",
        model: str = "BFY-S1",
        manufacturer: str = "Beifang Cloud",
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        host_ttl_s: int = DEFAULT_HOST_TTL_S,
        other_ttl_s: int = DEFAULT_OTHER_TTL_S,
        seed: int | None = None,
        event_queue_size: int = DEFAULT_EVENT_QUEUE,
    ) -> None:
        super().__init__(
            address=address,
            port=port,
            device_id=device_id,
            name=name,
            model=model,
            manufacturer=manufacturer,
            keepalive_s=keepalive_s,
            host_ttl_s=host_ttl_s,
            other_ttl_s=other_ttl_s,
            seed=seed,
            event_queue_size=event_queue_size,
        )
        self._volume = 40
        self._muted = False
        self._playing = False
        self._said: deque[SaidEntry] = deque(maxlen=SAID_HISTORY)

    @property
    def state(self) -> dict[str, Any]:
        return SpeakerState(
            volume=self._volume, muted=self._muted, playing=self._playing, said=list(self._said)
        ).model_dump()

    def hear(self, text: str, lang: str | None = None) -> HeardEvent:
        """A person said `text` to the speaker: publish it as `event: heard`."""
        heard = HeardEvent(text=text, lang=lang or _guess_lang(text), ts=_now_iso())
        self._events.publish("heard", heard.model_dump())
        self._log.debug("speaker %s heard %r", self._device_id, text)
        return heard

    def _apply(self, body: bytes) -> None:
        command = _parse(_SPEAKER_COMMAND, body)
        if "volume" in command:
            self._volume = command["volume"]
        if "muted" in command:
            self._muted = command["muted"]
        if "playing" in command:
            self._playing = command["playing"]
        if "say" in command:
            say = command["say"]
            text = say["text"]
            self._said.append(
                SaidEntry(
                    text=text,
                    lang=say.get("lang") or _guess_lang(text),
                    priority=say.get("priority", "normal"),
                    ts=_now_iso(),
                )
            )

    def _routes(self) -> list[Route]:
        return [*super()._routes(), Route(f"{API_BASE}/hear", self._post_hear, methods=["POST"])]

    async def _post_hear(self, request: Request) -> Response:
        try:
            body = _parse(_HEAR, await _read_body(request))
        except _BadRequest as exc:
            self.complaints.report("hear", "rejected hear: %s", exc.error)
            return _error(400, exc.error, exc.field)
        return JSONResponse(self.hear(body["text"], body.get("lang")).model_dump())


# --- a misbehaving device ----------------------------------------------------------------------


def _txt(*strings: bytes) -> bytes:
    """Raw TXT rdata: length-prefixed strings (RFC 6763 §6.1), however odd their content."""
    return b"".join(bytes((len(s),)) + s for s in strings)


# Every variant lacks a usable `id`. The first has all the classic faults at once: duplicate
# keys, non-UTF-8 bytes, a 250-byte value, a key without `=`, a truncated UTF-8 sequence.
_GARBAGE_TXT: tuple[bytes, ...] = (
    _txt(
        b"kind=tv",
        b"kind=speaker",
        b"model=\xff\xfe\xfd",
        b"note=" + b"N" * 250,
        b"api=/api/v1",
        b"flag",
        b"name=\xe5\xae",
    ),
    _txt(b"id=", b"id=hostile", b"kind=toaster", b"api=javascript:alert(1)", b"=orphan", b""),
    # ... and a last string whose length byte claims more than the record holds.
    _txt(b"txtvers=1", b"kind", b"model=\x00\x01\x02", b"api=" + b"/" * 250) + b"\x40short",
    _txt(b"ID=TV-UPPER", b"Kind=TV", b"kind=tv", b"api=/api/v1", b"\xff\xfe=\xff"),
    b"\x00",  # the "empty" TXT record: one zero-length string
)

_JSON = "application/json"
_GARBAGE_HTTP: tuple[tuple[int, str, bytes], ...] = (
    (200, _JSON, b'{"id": "hostile", "kind": '),
    (
        200,
        _JSON,
        b'{"id": 42, "kind": ["tv"], "name": null, "api": 7, "capabilities": "on,volume",'
        b' "settable": {"on": 1}}',
    ),
    (200, _JSON, b"[]"),
    (200, _JSON + "; charset=utf-8", b'{"id": "\xff\xfe", "kind": "tv"}'),
    (200, _JSON, b'{"id": "a", "id": "b", "kind": "tv", "kind": "speaker"}'),
    (200, _JSON, b'{"volume": NaN, "channel": Infinity, "big": 1e999}'),
    (200, "text/html", b"<html><body><h1>It works!</h1></body></html>"),
    (500, _JSON, b'{"error": '),
    (200, _JSON, b"[" * 5000 + b"]" * 5000),
    (200, _JSON, b""),
    (200, _JSON, b'{"id": "x"}{"id": "y"}'),
    (
        200,
        _JSON,
        b'{"on": "yes", "volume": "loud", "channel": -1000.5, "input": 5, "overlay": "<b>",'
        b' "said": "nothing"}',
    ),
    (418, "text/plain", b"I'm a teapot"),
)

_GARBAGE_SSE: tuple[bytes, ...] = (
    b'data: {"on": tru\n\n',
    b"event: state\ndata: [1, 2, 3]\n\n",
    b'event: state\ndata: {"volume": "loud", "on": "yes"}\n\n',
    b'event: heard\ndata: {"text": null, "lang": 5}\n\n',
    b"id: 1\x002\nevent: state\ndata: {}\n\n",
    b"retry: soon\n\n",
    b"\xff\xfe\xfd garbage without a field name\n\n",
    b"event: \xe4\xbd\xa0\xff\ndata: x\n\n",
    b"data: " + b"A" * 70_000 + b"\n\n",
    b"event: state\n\n",
    b'data: {"a": 1}\r\rdata: mixed\r\n line endings\n\n',
    b'event: state\ndata: {"on": true}',  # no blank line: runs into the next message
    b"event: state\ndata: " + b"[" * 5000 + b"\n\n",
)


class HostileTerminal(_NetworkDevice):
    """A misbehaving `_bfy-terminal._tcp` device.

    Its TXT record is garbage (see `_GARBAGE_TXT`) and changes every `churn_s` or so (service
    updates); every API answer is malformed JSON, wrong types or the wrong content type, in a
    seeded rotation; `GET /api/v1/events` streams junk, one piece every `keepalive_s`.
    It stays up whatever its peers do.
    """

    kind = "hostile"

    def __init__(
        self,
        *,
        address: str,
        port: int = DEFAULT_PORT,
        device_id: str | None = None,
        name: str = "☠ 坏设备 \u202eVT",
        model: str = "\ufffd",
        manufacturer: str = "",
        keepalive_s: float = 1.0,
        host_ttl_s: int = DEFAULT_HOST_TTL_S,
        other_ttl_s: int = DEFAULT_OTHER_TTL_S,
        seed: int | None = None,
        churn_s: float = 5.0,
    ) -> None:
        super().__init__(
            address=address,
            port=port,
            device_id=device_id,
            name=name,
            model=model,
            manufacturer=manufacturer,
            keepalive_s=keepalive_s,
            host_ttl_s=host_ttl_s,
            other_ttl_s=other_ttl_s,
            seed=seed,
            logger=_log,
        )
        if churn_s <= 0:
            raise ValueError("churn_s must be positive")
        self._churn_s = churn_s
        self._txt_variants = itertools.cycle(_GARBAGE_TXT)
        http = list(_GARBAGE_HTTP)
        self._rng.shuffle(http)
        self._http_answers = itertools.cycle(http)
        self._sse_junk = itertools.cycle(_GARBAGE_SSE)
        self._stopping = asyncio.Event()
        self._requests = 0
        self._txt_updates = 0

    @property
    def state(self) -> dict[str, Any]:
        return {"requests": self._requests, "txt_updates": self._txt_updates}

    @property
    def txt_updates(self) -> int:
        return self._txt_updates

    def _info(self, txt: bytes) -> AsyncServiceInfo:
        return self._service_info(
            SERVICE_TYPE,
            self._name,
            port=self._port,
            server=f"{self._device_id}.local.",
            properties=txt,
        )

    def _service_infos(self) -> list[AsyncServiceInfo]:
        return [self._info(next(self._txt_variants))]

    def _start_tasks(self, tg: asyncio.TaskGroup, zeroconf: AsyncZeroconf, server: _Server) -> None:
        tg.create_task(self._churn(zeroconf), name=f"hostile-churn-{self._device_id}")

    async def _churn(self, zeroconf: AsyncZeroconf) -> None:
        """Re-announce with different garbage now and then (a DNS-SD service update)."""
        while True:
            await asyncio.sleep(self._churn_s * self._rng.uniform(0.5, 1.5))
            info = self._info(next(self._txt_variants))
            info.name = self._instance_names[0]  # keep a name that zeroconf may have changed
            announced = await zeroconf.async_update_service(info)
            self._txt_updates += 1
            await announced

    def _on_starting(self) -> None:
        self._stopping.clear()

    def _on_stopping(self) -> None:
        self._stopping.set()

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(f"{API_BASE}/events", self._get_events, methods=["GET"]),
                Route(f"{API_BASE}/{{rest:path}}", self._junk, methods=["GET", "POST"]),
            ],
        )

    async def _junk(self, request: Request) -> Response:
        self._requests += 1
        with contextlib.suppress(ClientDisconnect):
            await request.body()
        status, content_type, body = next(self._http_answers)
        return Response(body, status_code=status, headers={"Content-Type": content_type})

    async def _get_events(self, request: Request) -> Response:
        self._requests += 1
        return StreamingResponse(self._junk_stream(), media_type="text/event-stream")

    async def _junk_stream(self) -> AsyncIterator[bytes]:
        while not self._stopping.is_set():
            yield next(self._sse_junk)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._keepalive_s):
                    await self._stopping.wait()
