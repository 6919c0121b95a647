"""The gateway's LAN HTTP server: JSON API under `/api/v1/` (OpenAPI at `/openapi.json`).

Reading is open on the LAN; changing anything needs a bearer token. The installer's admin
token lives in the state directory (owner-only file), so only someone on the box can use it;
households get their own tokens by pairing with the PIN on the TV (`gateway.services.pairing`)
and may use devices with them, while approving and forgetting devices stays the installer's.
Services (TV menu, voice, ...) add their own routers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from gateway import __version__
from gateway.errors import CommandRejected, DeviceError
from gateway.hub import Device, Hub
from gateway.model import DeviceInfo

__all__ = [
    "ADMIN_CALLER",
    "ADMIN_TOKEN_FILE",
    "WebContext",
    "create_app",
    "device_view",
    "load_admin_token",
    "require_admin",
    "require_writer",
    "serve",
]

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret
#: Who a write made with the installer's admin token is attributed to.
ADMIN_CALLER = "admin"


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
    ) -> None:
        self.hub = hub
        self.gateway_id = gateway_id
        self.admin_token = admin_token
        self.mqtt_connected = mqtt_connected
        #: The name a household token was paired under, or None (`Pairing.name_of`).
        self.household = household


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


class Approve(BaseModel):
    name: str | None = Field(default=None, max_length=128)
    room: str | None = Field(default=None, max_length=64)


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
        responses={404: {"model": Problem}, **UNAUTHORIZED, **NOT_JSON},
    )
    async def approve(ctx: Ctx, device_id: str, body: Approve) -> DeviceView:
        try:
            dev = await ctx.hub.approve(device_id, name=body.name, room=body.room)
        except CommandRejected as exc:
            raise HTTPException(404, detail={"reason": exc.reason, "detail": exc.detail}) from exc
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
    return app


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
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
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
