"""The TV menu's HTTP side: the page and its assets, and the JSON and live events it reads.

The page (`/`, `/static/...`) is plain HTML/CSS/JS shipped in this package. The menu reads
`/api/v1/home`, `/settings`, `/alerts`, `/services` and follows `/api/v1/stream` (server-sent
events) for live changes. Device commands go to the gateway's own
`POST /api/v1/devices/{id}/command`; acknowledging an alert needs a household (or admin) token.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import ifaddr
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import __version__
from gateway.bus import Event
from gateway.hub import Device
from gateway.model import Kind
from gateway.rooms import COMMON_ROOMS
from gateway.web import DeviceView, WebContext, client_key, device_view, require_writer

__all__ = [
    "ALERT_CLEARED_EVENT",
    "ALERT_EVENT",
    "STATIC_DIR",
    "AlertView",
    "AlertsView",
    "HomeView",
    "NoAlerts",
    "NoServices",
    "ServicesView",
    "SettingsView",
    "tvmenu_router",
]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: Bus events of kind "event" with these names carry alerts to the menu.
ALERT_EVENT = "alert"
ALERT_CLEARED_EVENT = "alert_cleared"
DEFAULT_KEEPALIVE_S = 15.0
#: Open event streams at once from clients that are not screens (each holds a bus queue), and
#: from any one of them; screens (the box, approved TVs) always get theirs.
DEFAULT_MAX_STREAMS = 32
DEFAULT_MAX_STREAMS_PER_CLIENT = 4
#: Events a slow stream may fall behind by before the oldest are dropped (state is current
#: in every `device` frame, so only history is lost).
STREAM_QUEUE = 512
SSE_RETRY_MS = 3000
ALERT_HISTORY_LIMIT = 20
DEFAULT_LANGUAGE = "zh-CN"

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
#: The menu runs only its own files; nothing may frame it (it shows a pairing PIN).
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_VERSION_MARK = "__ASSET_VERSION__"
_KIND_ORDER = {kind: i for i, kind in enumerate(
    (Kind.TV, Kind.LIGHT, Kind.PLUG, Kind.SWITCH, Kind.SPEAKER, Kind.SENSOR, Kind.LOCK, Kind.CAMERA)
)}  # fmt: skip


# -- what the menu is given -------------------------------------------------------------


class AlertsView(Protocol):
    """What the menu needs from the alerts service (alert dicts as `AlertView` describes)."""

    def active(self) -> list[dict[str, Any]]: ...

    def history(self, limit: int) -> list[dict[str, Any]]: ...

    async def acknowledge(self, alert_id: str, source: str) -> bool: ...


class ServicesView(Protocol):
    """What the menu needs from the services feature: `[{service_id, title, kind, ...}]`."""

    def list(self) -> list[dict[str, Any]]: ...


class NoAlerts:
    """An AlertsView with nothing in it (no alerts service running)."""

    def active(self) -> list[dict[str, Any]]:
        return []

    def history(self, limit: int) -> list[dict[str, Any]]:
        return []

    async def acknowledge(self, alert_id: str, source: str) -> bool:
        return False


class NoServices:
    def list(self) -> list[dict[str, Any]]:
        return []


# -- response models ----------------------------------------------------------------------


class GatewaySummary(BaseModel):
    id: str
    version: str
    region: str = Field(description="行政区划代码; empty until provisioned")
    household: str = Field(description="empty until provisioned")


class Room(BaseModel):
    name: str = Field(description='the room; "" holds the devices that have none (shown as 其他 Other)')
    devices: list[DeviceView]


class HomeView(BaseModel):
    gateway: GatewaySummary
    rooms: list[Room]


class NetworkAddress(BaseModel):
    interface: str
    address: str


class SettingsView(BaseModel):
    gateway_id: str
    region: str
    household: str
    version: str
    network: list[NetworkAddress]
    language: str = Field(description="the gateway's default menu language; each TV may switch")


class AlertInfo(BaseModel):
    """One language's text of an alert."""

    model_config = ConfigDict(extra="allow")

    language: str = ""
    headline: str = ""
    description: str = ""
    instruction: str = ""
    event: str = ""


class AlertView(BaseModel):
    """An alert as the alerts service hands it to screens."""

    model_config = ConfigDict(extra="allow")

    id: str
    level: int = Field(ge=1, le=4, description="1 red 特别重大, 2 orange 重大, 3 yellow 较大, 4 blue 一般")
    status: str = Field(default="Actual", description="CAP status: Actual, Exercise, System, Test, Draft")
    drill: bool = False
    headline: str = ""
    description: str = ""
    instruction: str = ""
    event: str = ""
    sender_name: str = ""
    sent: str | None = None
    expires: str | None = None
    language: str = ""
    infos: list[AlertInfo] = Field(default_factory=list)
    acknowledged: bool = False
    state: Literal["active", "expired", "cancelled", "acknowledged"] = "active"


class AlertsList(BaseModel):
    active: list[AlertView]
    history: list[AlertView]


class ServiceView(BaseModel):
    model_config = ConfigDict(extra="allow")

    service_id: str
    title: str
    title_en: str | None = None
    kind: str


class Problem(BaseModel):
    detail: str


# -- helpers -------------------------------------------------------------------------------


def _room_order(name: str) -> tuple[int, int, str]:
    if not name:
        return (2, 0, "")
    try:
        return (0, COMMON_ROOMS.index(name), name)
    except ValueError:
        return (1, 0, name)


def _rooms(devices: Iterable[Device]) -> list[Room]:
    by_room: dict[str, list[Device]] = {}
    for dev in devices:
        by_room.setdefault(dev.info.room.strip(), []).append(dev)
    return [
        Room(
            name=name,
            devices=[
                device_view(d)
                for d in sorted(
                    by_room[name], key=lambda d: (_KIND_ORDER.get(d.info.kind, 99), d.info.name, d.info.id)
                )
            ],
        )
        for name in sorted(by_room, key=_room_order)
    ]


def _valid_alerts(items: Iterable[dict[str, Any]], where: str) -> list[AlertView]:
    out = []
    for item in items:
        try:
            out.append(AlertView.model_validate(item))
        except ValidationError as exc:
            log.warning("alerts: dropped a malformed alert from %s: %s", where, exc.errors(include_url=False))
    return out


def _lan_addresses() -> list[NetworkAddress]:
    """The box's addresses, loopback only when there is nothing else (blocking: run in a thread)."""
    found: list[NetworkAddress] = []
    loopback: list[NetworkAddress] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                address = ip.ip
            else:
                address = ip.ip[0]
                if address.startswith("fe80:"):
                    continue
            entry = NetworkAddress(interface=adapter.nice_name, address=address)
            (loopback if address.startswith("127.") or address == "::1" else found).append(entry)
    return found or loopback


def _frame(event: str, data: BaseModel | dict[str, Any]) -> bytes:
    payload = data.model_dump_json() if isinstance(data, BaseModel) else orjson.dumps(data).decode()
    return f"event: {event}\ndata: {payload}\n\n".encode()


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


class _Assets:
    """The menu's files, read once (in a thread) and kept in memory: a few tens of kB."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._files: dict[str, _Asset] | None = None
        self._lock = asyncio.Lock()
        #: A hash of every asset; index.html puts it in their URLs so they can be cached forever.
        self.version = ""

    async def get(self, name: str) -> _Asset | None:
        if self._files is None:
            async with self._lock:
                if self._files is None:
                    self._files = await asyncio.to_thread(self._load)
        return self._files.get(name)

    def _load(self) -> dict[str, _Asset]:
        raw = {
            p.name: p.read_bytes()
            for p in sorted(self._directory.iterdir())
            if p.is_file() and p.suffix in _MEDIA_TYPES
        }
        version = hashlib.sha256(b"".join(raw[n] for n in sorted(raw) if n != "index.html")).hexdigest()[:12]
        files = {}
        for name, content in raw.items():
            body = (
                content.replace(_VERSION_MARK.encode(), version.encode()) if name == "index.html" else content
            )
            etag = hashlib.sha256(body).hexdigest()[:16]
            # Compressed once here: the set-top box's CPU is spent on the TV, not on us.
            files[name] = _Asset(body, gzip.compress(body, mtime=0), _MEDIA_TYPES[Path(name).suffix], etag)
        self.version = version
        return files


def _asset_response(
    request: Request, asset: _Asset, cache: str, extra: dict[str, str] | None = None
) -> Response:
    zipped = "gzip" in request.headers.get("accept-encoding", "")
    etag = f'"{asset.etag}{"-gz" if zipped else ""}"'  # one ETag per representation (RFC 9110 §8.8.3)
    headers = {"ETag": etag, "Cache-Control": cache, "Vary": "Accept-Encoding", **(extra or {})}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    if zipped:
        headers["Content-Encoding"] = "gzip"
        return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


class _CountedStream(StreamingResponse):
    """A stream whose slot is given back when the response is over, even if it never started."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


# -- the router ----------------------------------------------------------------------------


def tvmenu_router(
    ctx: WebContext,
    alerts: AlertsView,
    *,
    services: ServicesView | None = None,
    region: str = "",
    household: str = "",
    language: str = DEFAULT_LANGUAGE,
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
    max_streams: int = DEFAULT_MAX_STREAMS,
    max_streams_per_client: int = DEFAULT_MAX_STREAMS_PER_CLIENT,
    static_dir: Path = STATIC_DIR,
) -> APIRouter:
    """The TV menu: `/`, `/static/...` and its `/api/v1/` endpoints (pairing has its own router)."""
    services_view: ServicesView = services if services is not None else NoServices()
    assets = _Assets(static_dir)
    streams: Counter[str] = Counter()  # open streams by client (screens under "screen:…")
    r = APIRouter()

    # -- the page ---------------------------------------------------------------------------

    @r.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        asset = await assets.get("index.html")
        if asset is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND)
        return _asset_response(request, asset, _REVALIDATE, _PAGE_HEADERS)

    @r.get("/static/{name}", include_in_schema=False)
    async def static(request: Request, name: str, v: str = "") -> Response:
        asset = await assets.get(name) if name != "index.html" else None
        if asset is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND)
        # Versioned URLs (as index.html writes them) never change; anything else revalidates.
        cache = _IMMUTABLE if v == assets.version else _REVALIDATE
        return _asset_response(request, asset, cache, {"X-Content-Type-Options": "nosniff"})

    # -- what the menu reads --------------------------------------------------------------

    api = APIRouter(prefix="/api/v1", tags=["tvmenu"])

    # Handlers that read the hub are `async`: they run on the event loop that changes it.
    @api.get("/home")
    async def home() -> HomeView:
        """Approved devices by room, with live values."""
        return HomeView(
            gateway=GatewaySummary(
                id=ctx.gateway_id, version=__version__, region=region, household=household
            ),
            rooms=_rooms(ctx.hub.devices(approved=True)),
        )

    @api.get("/settings")
    async def settings() -> SettingsView:
        """What the settings screen shows (no secrets; the PIN is at `/api/v1/pairing/pin`)."""
        return SettingsView(
            gateway_id=ctx.gateway_id,
            region=region,
            household=household,
            version=__version__,
            network=await asyncio.to_thread(_lan_addresses),
            language=language,
        )

    @api.get("/alerts")
    async def alert_list() -> AlertsList:
        return AlertsList(
            active=_valid_alerts(alerts.active(), "active()"),
            history=_valid_alerts(alerts.history(ALERT_HISTORY_LIMIT), "history()"),
        )

    @api.post(
        "/alerts/{alert_id}/ack",
        status_code=204,
        responses={401: {"model": Problem}, 404: {"model": Problem}},
    )
    async def acknowledge(alert_id: str, caller: Annotated[str, Depends(require_writer)]) -> None:
        """A person pressed OK on the alert (household or admin token)."""
        if not await alerts.acknowledge(alert_id, f"tvmenu:{caller}"):
            raise HTTPException(status.HTTP_404_NOT_FOUND)

    @api.get("/services")
    async def service_list() -> list[ServiceView]:
        out = []
        for item in services_view.list():
            try:
                out.append(ServiceView.model_validate(item))
            except ValidationError as exc:
                log.warning("services: dropped a malformed entry: %s", exc.errors(include_url=False))
        return out

    # -- live events ----------------------------------------------------------------------

    def frames(batch: list[Event]) -> Iterable[bytes]:
        """One frame per changed device (its current view) and every alert event, in order."""
        sent: set[str] = set()
        for event in batch:
            if event.kind == "event":
                if event.device_id == ALERT_EVENT:
                    for alert in _valid_alerts([event.data], "the bus"):
                        yield _frame("alert", alert)
                elif event.device_id == ALERT_CLEARED_EVENT and isinstance(event.data.get("id"), str):
                    yield _frame("alert_cleared", {"id": event.data["id"]})
            elif event.kind == "removed":
                sent.add(event.device_id)
                yield _frame("removed", {"id": event.device_id})
            elif event.device_id not in sent:
                sent.add(event.device_id)
                dev = ctx.hub.get(event.device_id)
                if dev is not None and dev.row.approved:
                    yield _frame("device", device_view(dev))

    async def event_stream() -> AsyncIterator[bytes]:
        async with ctx.hub.bus.subscribe(STREAM_QUEUE) as queue:
            yield f"retry: {SSE_RETRY_MS}\n: connected\n\n".encode()
            while True:
                try:
                    async with asyncio.timeout(keepalive_s):
                        first = await queue.get()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                batch = [first]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                chunk = b"".join(frames(batch))
                if chunk:
                    yield chunk

    def release(client: str) -> None:
        streams[client] -= 1
        if not streams[client]:
            del streams[client]

    @api.get(
        "/stream",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": (
                    "Server-sent events: `device` (a DeviceView), `removed` ({id}), `alert` (an alert), "
                    "`alert_cleared` ({id}); a keep-alive comment every 15 s"
                ),
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            429: {"model": Problem, "description": "this client has too many open streams"},
            503: {"model": Problem, "description": "too many open streams"},
        },
    )
    async def stream(request: Request) -> StreamingResponse:
        """Live changes for the menu; re-read `/home` and `/alerts` after (re)connecting."""
        host = request.client.host if request.client else "?"
        screen = ctx.is_screen(host)
        client = f"screen:{host}" if screen else client_key(host)
        if streams[client] >= max_streams_per_client:
            ctx.http_drops["too_many_streams"] += 1
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail={"reason": "too_many_streams", "detail": "close another stream first"},
                headers={"Retry-After": "10"},
            )
        others = sum(n for c, n in streams.items() if not c.startswith("screen:"))
        if not screen and others >= max_streams:
            ctx.http_drops["too_many_streams"] += 1
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail={"reason": "too_many_streams", "detail": "the gateway serves enough streams now"},
                headers={"Retry-After": "10"},
            )
        # Counted here, before anything awaits (so concurrent requests cannot all slip under
        # the limit), and released when the response ends however it ends.
        streams[client] += 1
        return _CountedStream(
            event_stream(),
            lambda: release(client),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    r.include_router(api)
    return r
