"""The gateway's LAN HTTP server: JSON API under `/api/v1/` (OpenAPI at `/openapi.json`).

Reading is open on the LAN; changing anything needs a bearer token. The installer's admin
token lives in the state directory (owner-only file), so only someone on the box can use it;
households get their own tokens by pairing with the PIN on the TV (`gateway.services.pairing`)
and may use devices with them, while approving and forgetting devices stays the installer's.
Services (TV menu, voice, ...) add their own routers.

In front of every route sits `LanGuard`: a request must name the box itself in `Host` (its own
addresses and names; a web page that rebinds its own DNS name to the box is refused), a
state-changing request from a browser must come from the box's own origin, bodies are bounded,
and one client has only so many requests in flight. The box's own screen (127.0.0.1) and the
approved TVs are `screens`: they may see the pairing PIN and are never crowded out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from gateway import __version__
from gateway.errors import CommandRejected, DeviceError
from gateway.hub import Device, Hub
from gateway.logins import DeviceLogins, LoginError
from gateway.model import DeviceInfo, Kind

__all__ = [
    "ADMIN_CALLER",
    "ADMIN_TOKEN_FILE",
    "LOOPBACK_HOSTS",
    "LanGuard",
    "WebContext",
    "client_key",
    "create_app",
    "device_view",
    "is_box_itself",
    "load_admin_token",
    "logins_router",
    "require_admin",
    "require_writer",
    "serve",
]

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret
#: Who a write made with the installer's admin token is attributed to.
ADMIN_CALLER = "admin"
#: Names every request from the box itself may use in `Host`.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: A request body (commands, pairing, orders) is small; anything bigger is refused.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
#: Requests one LAN client may have in flight at once (screens are not limited).
DEFAULT_MAX_REQUESTS_PER_CLIENT = 16
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def client_key(host: str) -> str:
    """What limits count per client: the IPv4 address, or the /64 of an IPv6 address (one
    device can take any number of addresses in its /64)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


#: The box's own screen reaches the gateway from these. (Other 127.0.0.0/8 addresses are not
#: the box's screen: the simulated home network gives its devices such addresses.)
BOX_ADDRESSES = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def is_box_itself(host: str) -> bool:
    return host in BOX_ADDRESSES


def load_admin_token(state_dir: Path) -> str:
    """Read the admin token, creating it (0600) on first use."""
    path = state_dir / ADMIN_TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return token


class WebContext:
    """What request handlers need; one per running gateway."""

    def __init__(
        self,
        hub: Hub,
        *,
        gateway_id: str,
        admin_token: str,
        mqtt_connected: Callable[[], bool] = lambda: False,
        household: Callable[[str], str | None] = lambda token: None,
        allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
        health: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.hub = hub
        self.gateway_id = gateway_id
        self.admin_token = admin_token
        self.mqtt_connected = mqtt_connected
        #: The name a household token was paired under, or None (`Pairing.name_of`).
        self.household = household
        #: What a request may name in `Host`: the box's addresses and names (lower case).
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts) | LOOPBACK_HOSTS
        #: Counters of the running daemon for the admin health view (links, services, ...).
        self.health = health
        #: Requests the LAN guard refused, by reason.
        self.http_drops: Counter[str] = Counter()

    def is_screen(self, client_host: str) -> bool:
        """The box's own screen (127.0.0.1) or an approved TV at its approved address: where the
        pairing PIN may be shown, and who is never crowded out by other LAN clients."""
        if is_box_itself(client_host):
            return True
        for dev in self.hub.devices(approved=True):
            if dev.info.kind is Kind.TV and dev.info.protocol == "terminal":
                host = dev.info.address.rsplit(":", 1)[0].strip("[]")
                if host == client_host:
                    return True
        return False


class DeviceView(BaseModel):
    info: DeviceInfo
    state: dict[str, Any]
    online: bool
    approved: bool
    last_seen: str | None = None


class Health(BaseModel):
    id: str
    version: str
    mqtt_connected: bool
    devices: int
    pending: int


class AdminHealth(Health):
    """The installer's view: what the gateway refused and why."""

    drops: dict[str, dict[str, int]] = Field(
        description="drops, rejects and impostors by adapter (terminal, coap, tasmota, zigbee2mqtt, "
        "mdns, hub, http) and reason, since the daemon started"
    )
    impostors: int = Field(description="announcements of an approved device from another address")
    details: dict[str, Any] = Field(default_factory=dict, description="link and service counters")


class Approve(BaseModel):
    name: str | None = Field(default=None, max_length=128)
    room: str | None = Field(default=None, max_length=64)
    replaces: str | None = Field(
        default=None,
        max_length=64,
        description="an approved device that this waiting one is, at a new address: it keeps its "
        "id, name and room and moves there (only the installer may move a device)",
    )


class ProblemDetail(BaseModel):
    reason: str = Field(description="machine-readable, e.g. unknown_device, out_of_range")
    detail: str = Field(description="for people")


class Problem(BaseModel):
    """A refused request: `{"detail": {"reason": ..., "detail": ...}}`."""

    detail: ProblemDetail


class Refused(BaseModel):
    """A refusal that says no more than its status: `{"detail": "Unauthorized"}`."""

    detail: str


#: Writes without a valid token; bodies that are not JSON.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": Refused, "description": "no valid token (no detail is given)"}
}
NOT_JSON: dict[int | str, dict[str, Any]] = {400: {"model": Refused, "description": "the body is not JSON"}}


def device_view(dev: Device) -> DeviceView:
    return DeviceView(
        info=dev.info,
        state=dev.state_payload() if dev.state else {},
        online=dev.online,
        approved=dev.row.approved,
        last_seen=dev.state_ts,
    )


_bearer = HTTPBearer(auto_error=False)


def _ctx(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


Ctx = Annotated[WebContext, Depends(_ctx)]


def require_admin(
    ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The installer's token (constant-time); 401 with no detail otherwise."""
    if credentials is None or not hmac.compare_digest(
        credentials.credentials.encode(), ctx.admin_token.encode()
    ):
        raise _unauthorized()


def require_writer(
    ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """A household token or the admin token; returns who is writing (the name the token was
    paired under, or `ADMIN_CALLER`). 401 with no detail otherwise."""
    if credentials is None:
        raise _unauthorized()
    token = credentials.credentials
    if hmac.compare_digest(token.encode(), ctx.admin_token.encode()):
        return ADMIN_CALLER
    name = ctx.household(token)
    if name is None:
        raise _unauthorized()
    return name


def _unauthorized() -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


def _devices_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["devices"])

    @r.get("/health")
    def health(ctx: Ctx) -> Health:
        return Health(
            id=ctx.gateway_id,
            version=__version__,
            mqtt_connected=ctx.mqtt_connected(),
            devices=len(ctx.hub.devices(approved=True)),
            pending=len(ctx.hub.devices(approved=False)),
        )

    @r.get("/health/detail", dependencies=[Depends(require_admin)], responses=UNAUTHORIZED)
    def health_detail(ctx: Ctx) -> AdminHealth:
        """Drops, rejects and impostors per adapter, for the installer (admin token)."""
        drops = ctx.hub.drop_counts()
        if ctx.http_drops:
            drops["http"] = dict(sorted(ctx.http_drops.items()))
        return AdminHealth(
            **health(ctx).model_dump(),
            drops=drops,
            impostors=drops.get("hub", {}).get("impostor", 0),
            details=ctx.health(),
        )

    @r.get("/devices")
    def devices(ctx: Ctx, pending: bool = False) -> list[DeviceView]:
        """Approved devices, or with `pending=true` the ones waiting for the installer."""
        devs = sorted(ctx.hub.devices(approved=not pending), key=lambda d: d.info.id)
        return [device_view(d) for d in devs]

    @r.get("/devices/{device_id}", responses={404: {"model": Problem}})
    def device(ctx: Ctx, device_id: str) -> DeviceView:
        dev = ctx.hub.get(device_id)
        if dev is None:
            raise HTTPException(404, detail={"reason": "unknown_device", "detail": "no such device"})
        return device_view(dev)

    @r.post(
        "/devices/{device_id}/command",
        status_code=202,
        responses={400: {"model": Problem}, 404: {"model": Problem}, 503: {"model": Problem}, **UNAUTHORIZED},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "description": 'capability values, as for MQTT `set`: {"on": true}',
                        }
                    }
                },
            }
        },
    )
    async def command(
        ctx: Ctx, device_id: str, request: Request, caller: Annotated[str, Depends(require_writer)]
    ) -> dict[str, Any]:
        """Send capability values to a device, exactly as MQTT `set` does (household or admin token)."""
        body = await request.body()
        log.debug("command to %s by %s", device_id, caller)
        try:
            values = ctx.hub.validate(device_id, body)
            await ctx.hub.command(device_id, values)
        except CommandRejected as exc:
            code = 404 if exc.reason == "unknown_device" else 400
            raise HTTPException(code, detail={"reason": exc.reason, "detail": exc.detail}) from exc
        except DeviceError as exc:
            raise HTTPException(503, detail={"reason": exc.reason, "detail": exc.detail}) from exc
        return {"accepted": values}

    @r.post(
        "/devices/{device_id}/approve",
        dependencies=[Depends(require_admin)],
        responses={404: {"model": Problem}, 409: {"model": Problem}, **UNAUTHORIZED, **NOT_JSON},
    )
    async def approve(ctx: Ctx, device_id: str, body: Approve) -> DeviceView:
        try:
            if body.replaces:
                dev = await ctx.hub.move(device_id, body.replaces)
                if body.name is not None or body.room is not None:
                    dev = await ctx.hub.approve(body.replaces, name=body.name, room=body.room)
            else:
                dev = await ctx.hub.approve(device_id, name=body.name, room=body.room)
        except CommandRejected as exc:
            code = 404 if exc.reason == "unknown_device" else 409
            raise HTTPException(code, detail={"reason": exc.reason, "detail": exc.detail}) from exc
        return device_view(dev)

    @r.delete(
        "/devices/{device_id}",
        dependencies=[Depends(require_admin)],
        status_code=204,
        responses={404: {"model": Problem}, **UNAUTHORIZED},
    )
    async def forget(ctx: Ctx, device_id: str) -> None:
        try:
            await ctx.hub.forget(device_id)
        except CommandRejected as exc:
            raise HTTPException(404, detail={"reason": exc.reason, "detail": exc.detail}) from exc

    return r


class NewLogin(BaseModel):
    kind: Literal["tasmota", "zigbee2mqtt", "homeassistant"]
    mac: str = Field(default="", max_length=17, description="Tasmota: the plug's MAC address")
    topic: str = Field(
        default="",
        max_length=64,
        description="Tasmota: its topic (default tasmota_<last 6 of the MAC>); Zigbee2MQTT: its base topic",
    )


class LoginView(BaseModel):
    username: str
    kind: str
    created: str
    mac: str
    topic: str


class LoginCreated(LoginView):
    password: str = Field(description="shown once; the gateway keeps only the broker's hash")
    client_id: str = Field(description="the broker uses the user name as client id whatever is sent")


def logins_router(logins: DeviceLogins) -> APIRouter:
    """`/api/v1/logins`: the installer's per-device broker logins (admin token)."""
    r = APIRouter(prefix="/api/v1/logins", tags=["logins"], dependencies=[Depends(require_admin)])
    refused = {409: {"model": Problem, "description": "the login cannot be made or removed"}, **UNAUTHORIZED}

    @r.get("", responses=UNAUTHORIZED)
    async def list_logins() -> list[LoginView]:
        return [LoginView(**asdict(x)) for x in logins.logins()]

    @r.post("", status_code=201, responses={**refused, **NOT_JSON})
    async def create_login(body: NewLogin) -> LoginCreated:
        try:
            made = await logins.create(body.kind, mac=body.mac, topic=body.topic)
        except LoginError as exc:
            raise HTTPException(409, detail={"reason": "login_refused", "detail": str(exc)}) from exc
        return LoginCreated(**asdict(made.login), password=made.password, client_id=made.username)

    @r.delete("/{username}", status_code=204, responses={404: {"model": Problem}, **refused})
    async def remove_login(username: str) -> None:
        try:
            removed = await logins.remove(username)
        except LoginError as exc:
            raise HTTPException(409, detail={"reason": "login_refused", "detail": str(exc)}) from exc
        if not removed:
            raise HTTPException(404, detail={"reason": "unknown_login", "detail": f"no login {username!r}"})

    return r


def create_app(ctx: WebContext, routers: tuple[APIRouter, ...] = ()) -> FastAPI:
    app = FastAPI(
        title="Beifang Home Gateway",
        version=__version__,
        description="北方云家庭网关 LAN API. Reading is open on the home network; changes need a token.",
    )
    app.state.ctx = ctx
    app.include_router(_devices_router())
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(405, _method_not_allowed)
    app.add_middleware(LanGuard, ctx=ctx)
    return app


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class LanGuard:
    """ASGI middleware in front of the LAN API (see the module docstring). Refusals are counted
    by reason in `drops` (shown under `http` on the admin health view)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        ctx: WebContext,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_requests_per_client: int = DEFAULT_MAX_REQUESTS_PER_CLIENT,
    ) -> None:
        self.app = app
        self._ctx = ctx
        self._max_body = max_body_bytes
        self._max_in_flight = max_requests_per_client
        self._in_flight: Counter[str] = Counter()
        self.drops = ctx.http_drops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        host = headers.get(b"host", b"").decode("latin-1")
        if _hostname(host) not in self._ctx.allowed_hosts:
            # DNS rebinding: a page whose name now points at the box still sends its own name.
            await self._refuse(send, 421, "wrong_host", "this is not a name of the gateway; use its address")
            return
        if scope["method"] not in _SAFE_METHODS:
            origin = headers.get(b"origin")
            if origin is not None and origin.decode("latin-1").lower() != f"http://{host}".lower():
                await self._refuse(send, 403, "cross_origin", "requests from other web pages are refused")
                return
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self._max_body:
                await self._refuse(
                    send, 413, "too_large", f"a request body is at most {self._max_body} bytes"
                )
                return
        client = (scope.get("client") or ("?", 0))[0]
        key = client_key(client)
        screen = self._ctx.is_screen(client)
        if not screen and self._in_flight[key] >= self._max_in_flight:
            await self._refuse(send, 429, "busy", "too many requests at once from this client", retry=True)
            return
        self._in_flight[key] += 1
        try:
            await self._bounded(scope, receive, send)
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the body as it arrives (chunked bodies have no length to check up front)."""
        seen = 0
        over = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._max_body:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a cut-off body (400 or so) gives way to our 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(send, 413, "too_large", f"a request body is at most {self._max_body} bytes")

    async def _refuse(
        self, send: Send, status_code: int, reason: str, detail: str, *, retry: bool = False
    ) -> None:
        self.drops[reason] += 1
        body = orjson.dumps({"detail": {"reason": reason, "detail": detail}})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _hostname(host: str) -> str:
    """`Host` without its port, lower case (`[::1]:8080` → `::1`)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    """405 with an `Allow` header naming every method of the path (Starlette names only those
    of the first route that matched the path)."""
    allowed = {
        method
        for route in request.app.routes
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
        for method in route.methods or ()
    }
    return JSONResponse(
        {"detail": "Method Not Allowed"},
        status.HTTP_405_METHOD_NOT_ALLOWED,
        headers={"Allow": ", ".join(sorted(allowed))},
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the daemon owns SIGTERM/SIGINT


def bind(host: str, port: int) -> socket.socket:
    """Open the listening socket (before the event loop needs it, and so the demo can pass it
    into a network namespace)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets it knows are TCP, and
    # without it Nagle plus delayed ACKs adds ~40 ms to every kept-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(app: FastAPI, *socks: socket.socket, ready: asyncio.Event | None = None) -> None:
    """Serve on every one of `socks` until cancelled, then close connections gracefully (bounded)."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        # Nobody proxies the box: the client address is the TCP peer's, never a header's.
        proxy_headers=False,
        server_header=False,
    )
    server = _Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=list(socks))
    if ready is not None:
        ready.set()
    try:
        await asyncio.Future()
    finally:
        server.force_exit = True
        await asyncio.shield(server.shutdown(sockets=list(socks)))
