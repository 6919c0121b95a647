"""The reference cloud's HTTP API (`/v1`, OpenAPI at `/openapi.json`).

Two roles with bearer tokens: `operator` (everything) and `installer` (work orders only).
`GET /v1/health` is open, and `POST /v1/provision` is authenticated by its work-order code.
Errors are `{"detail": {"reason": <stable code>, "message": <what to do>}}`; a missing or wrong
token is a bare 401.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloud_bridge.ca import CertificateAuthority, cert_info
from cloud_bridge.cap import MAX_CAP_BYTES, CapError, parse_cap_json, parse_cap_xml
from cloud_bridge.cloud.alerts import AlertDesk, AlertExpired, AlertTargetError
from cloud_bridge.cloud.broker import CLOUD_CLIENT_CN
from cloud_bridge.cloud.db import CloudDB, CommandRow, GatewayRow
from cloud_bridge.cloud.service import CloudService, CloudUnavailable
from cloud_bridge.cloud.shop import ShopError, validate_definition
from cloud_bridge.protocol import BridgeError, TrustedKey, iso, region_prefixes, utc_now
from cloud_bridge.services import MAX_PRICE_FEN, DefinitionError, OrderState
from gateway import __version__

__all__ = ["ApiContext", "Tokens", "code_hash", "create_app", "new_code", "normalize_code"]

log = logging.getLogger(__name__)

DEFAULT_WORKORDER_TTL_S = 3 * 86400.0
MAX_WORKORDER_TTL_S = 90 * 86400.0
GATEWAY_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"
# Crockford-like: no 0/O, 1/I/L, so a code read out over the phone survives.
_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_CODE_LENGTH = 10
_CODE_GROUPS = (4, 4, 2)


# -- work-order codes ------------------------------------------------------------------------


def new_code() -> str:
    """A random single-use code, grouped for typing: `K7QF-9M2X-RT` (≈ 49 bits)."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LENGTH))
    parts, start = [], 0
    for size in _CODE_GROUPS:
        parts.append(raw[start : start + size])
        start += size
    return "-".join(parts)


def normalize_code(code: str) -> str:
    return re.sub(r"[\s-]", "", code).upper()


def code_hash(code: str) -> str:
    return hashlib.sha256(normalize_code(code).encode()).hexdigest()


# -- context ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tokens:
    operator: str
    installer: str

    def role(self, presented: str) -> str | None:
        given = presented.encode()
        # Compare against both, always: the time taken says nothing about which one matched.
        is_operator = hmac.compare_digest(given, self.operator.encode())
        is_installer = hmac.compare_digest(given, self.installer.encode())
        return "operator" if is_operator else "installer" if is_installer else None


@dataclass(slots=True)
class ApiContext:
    """What the handlers need; one per running cloud."""

    db: CloudDB
    service: CloudService
    ca: CertificateAuthority
    tokens: Tokens
    mqtt_url: str
    api_url: str
    gateways_changed: Callable[[], Awaitable[None]]
    mqtt_connected: Callable[[], bool]
    alerts: AlertDesk


# -- bodies -------------------------------------------------------------------------------------


class Problem(BaseModel):
    reason: str
    message: str


class ProblemResponse(BaseModel):
    detail: Problem


def _region(value: str) -> str:
    region_prefixes(value)  # ValueError with a readable message
    return value


class Health(BaseModel):
    ok: bool
    version: str
    time: str
    mqtt_connected: bool


class WorkOrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    household: str = Field(min_length=1, max_length=128)
    region: str = Field(description="行政区划代码: 2, 4, 6, 9 or 12 digits")
    ttl_s: float | None = Field(default=None, gt=0, le=MAX_WORKORDER_TTL_S, description="default 3 days")

    _check_region = field_validator("region")(_region)


class WorkOrderOut(BaseModel):
    code: str
    household: str
    region: str
    expires_at: str


class ProvisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=64)
    gateway_id: str = Field(pattern=GATEWAY_ID_PATTERN)
    csr_pem: str = Field(min_length=1, max_length=16384)


class ProvisionOut(BaseModel):
    gateway_id: str
    household: str
    region: str
    certificate_pem: str
    ca_pem: str
    trust: list[TrustedKey]
    mqtt_url: str
    api_url: str


class GatewayOut(BaseModel):
    id: str
    household: str
    region: str
    online: bool
    last_seen: str | None
    version: str
    cert_not_after: str
    devices: int


class DeviceOut(BaseModel):
    id: str
    info: dict[str, Any] | None
    state: dict[str, Any]
    online: bool | None
    updated_at: str


class UplinkOut(BaseModel):
    n: int
    id: str
    gateway_id: str
    type: str
    ts: str
    received_at: str
    device: str | None
    seq: int | None
    payload: dict[str, Any]


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["diagnostics", "reboot", "set_config"]
    args: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=10.0, gt=0, le=300)


class CommandOut(BaseModel):
    command_id: str
    status: Literal["ok", "error", "timeout"]
    result: Any = None
    error: Any = None


class CommandRecord(BaseModel):
    id: str
    gateway_id: str
    name: str
    args: dict[str, Any]
    status: str
    result: Any = None
    error: Any = None
    created_at: str
    replied_at: str | None = None


class PushTarget(BaseModel):
    """Exactly one of `regions`, `gateways`, `all`."""

    model_config = ConfigDict(extra="forbid")

    regions: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    gateways: list[str] | None = Field(default=None, min_length=1, max_length=10000)
    all: bool | None = None

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str] | None) -> list[str] | None:
        for code in value or []:
            region_prefixes(code)
        return value

    @model_validator(mode="after")
    def _one(self) -> PushTarget:
        chosen = [self.regions is not None, self.gateways is not None, bool(self.all)]
        if sum(chosen) != 1:
            raise ValueError('give exactly one of {"regions": [...]}, {"gateways": [...]}, {"all": true}')
        return self


class ServiceIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    service_id: str = Field(min_length=1, max_length=128)
    version: str | int


class PushIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: PushTarget
    service: ServiceIn


class PushOut(BaseModel):
    id: str
    topics: list[str]


class PushRecord(BaseModel):
    id: str
    target: dict[str, Any]
    service: dict[str, Any]
    topics: list[str]
    kid: str
    created_at: str


class AlertAccepted(BaseModel):
    id: str = Field(description="CAP identity: 24 hex digits over (sender, identifier, sent)")
    duplicate: bool = Field(description="true: this CAP message was accepted before and is not resent")
    msg_type: str
    priority: int = Field(description="1 (red/Extreme, full screen) .. 4")
    targets: list[str] = Field(description="region codes published to, or ['all']")
    gateways_expected: int
    envelope_id: str = Field(
        description="empty when nothing was published (it was already cancelled or updated)"
    )
    accepted_at: str
    expires_at: str
    state: str = Field(
        default="active",
        description="active; or cancelled/updated when its Cancel or Update came first (then it is not sent)",
    )


class AlertSummary(BaseModel):
    id: str
    state: str = Field(
        description="active (in force), updated, cancelled or expired; a Cancel message itself is cancelled"
    )
    state_changed_at: str
    msg_type: str
    status: str
    priority: int
    headline: str | None
    targets: list[str]
    gateways_expected: int
    accepted_at: str
    expires_at: str


class DeviceStage(BaseModel):
    device: str
    ts: str | None = Field(description="when the device presented it (gateway clock)")
    dispatched: str | None = Field(default=None, description="when the gateway sent it to the device")


class AlertTimeline(BaseModel):
    verified: str | None = Field(default=None, description="the signature checked, on the gateway")
    persisted: str | None = Field(default=None, description="kept in the gateway's registry")
    dispatched: str | None = Field(default=None, description="sent to every TV and speaker")


class AlertEnd(BaseModel):
    how: str
    ts: str | None


class GatewayAlertStatus(BaseModel):
    id: str
    received: str | None
    result: str | None = Field(description="verified, or why the gateway did not present it")
    timeline: AlertTimeline | None = None
    displayed: list[DeviceStage]
    spoken: list[DeviceStage]
    acknowledged: str | None
    ended: AlertEnd | None
    suppressed: str | None
    unexpected: bool = False


class Coverage(BaseModel):
    gateways_expected: int
    gateways_received: int
    gateway_share: float | None
    devices_known: int = Field(description="TVs and speakers the targeted gateways reported")
    devices_presented: int
    device_share: float | None


class AlertStatus(BaseModel):
    id: str
    state: str = Field(
        description="active (in force), updated, cancelled or expired; a Cancel message itself is cancelled"
    )
    state_changed_at: str | None
    msg_type: str
    status: str
    priority: int
    headline: str | None
    targets: list[str]
    accepted_at: str | None
    created_at: str | None
    expires_at: str | None
    envelope_id: str
    gateways: list[GatewayAlertStatus]
    coverage: Coverage


class SecurityEventOut(BaseModel):
    n: int
    at: str
    gateway_id: str | None
    source: str
    reason: str
    detail: str
    envelope_id: str | None


class KeyOut(BaseModel):
    n: int
    kid: str
    public_key: str
    current: bool
    retired: bool


class RotationOut(BaseModel):
    kid: str
    previous_kid: str
    envelope_id: str
    notified: int


# -- helpers ---------------------------------------------------------------------------------


def _problem(code: int, reason: str, message: str) -> HTTPException:
    return HTTPException(code, detail={"reason": reason, "message": message})


def _iso(ts: datetime | None) -> str | None:
    return iso(ts) if ts is not None else None


def _gateway_out(g: GatewayRow) -> GatewayOut:
    return GatewayOut(
        id=g.id,
        household=g.household,
        region=g.region,
        online=g.online,
        last_seen=_iso(g.last_seen),
        version=g.version,
        cert_not_after=iso(g.cert_not_after),
        devices=g.devices,
    )


def _command_record(c: CommandRow) -> CommandRecord:
    return CommandRecord(
        id=c.id,
        gateway_id=c.gateway_id,
        name=c.name,
        args=c.args,
        status=c.status,
        result=c.result,
        error=c.error,
        created_at=iso(c.created_at),
        replied_at=_iso(c.replied_at),
    )


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(_ctx)]
_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _role(ctx: Ctx, credentials: Credentials) -> str:
    role = ctx.tokens.role(credentials.credentials) if credentials is not None else None
    if role is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return role


Role = Annotated[str, Depends(_role)]


def require_operator(role: Role) -> None:
    if role != "operator":
        raise _problem(403, "forbidden", "this needs the operator token (`cloud token show operator`)")


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token"},
    403: {"model": ProblemResponse},
    404: {"model": ProblemResponse},
}


async def _gateway_or_404(ctx: ApiContext, gateway_id: str) -> GatewayRow:
    gateway = await ctx.db.gateway(gateway_id)
    if gateway is None:
        raise _problem(404, "unknown_gateway", f"no gateway {gateway_id!r} has been provisioned")
    return gateway


# -- routes ------------------------------------------------------------------------------------


def _open_router() -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["open"])

    @r.get("/health")
    def health(ctx: Ctx) -> Health:
        connected = ctx.mqtt_connected()
        return Health(ok=connected, version=__version__, time=iso(utc_now()), mqtt_connected=connected)

    @r.post(
        "/provision",
        responses={
            400: {"model": ProblemResponse, "description": "bad_csr"},
            404: {"model": ProblemResponse, "description": "unknown_code"},
            409: {"model": ProblemResponse, "description": "code_used"},
            410: {"model": ProblemResponse, "description": "code_expired"},
        },
    )
    async def provision(ctx: Ctx, body: ProvisionIn) -> ProvisionOut:
        """Claim a box with a work-order code: the CSR's CN must be the gateway id. The code is
        used up only when the certificate is issued."""
        hashed = code_hash(body.code)
        order = await ctx.db.workorder(hashed)
        now = utc_now()
        if order is None:
            raise _problem(404, "unknown_code", "no such work-order code: check it, or ask for a new one")
        if order.used_at is not None:
            raise _problem(409, "code_used", "this work-order code has been used; ask for a new work order")
        if order.expires_at <= now:
            raise _problem(410, "code_expired", "this work-order code has expired; ask for a new work order")
        if body.gateway_id == CLOUD_CLIENT_CN:
            raise _problem(400, "bad_csr", f"{CLOUD_CLIENT_CN!r} is reserved for the cloud itself")
        try:
            cert_pem = await asyncio.to_thread(
                ctx.ca.sign_csr, body.csr_pem.encode(), common_name=body.gateway_id
            )
        except BridgeError as exc:
            raise _problem(400, "bad_csr", str(exc)) from exc
        info = cert_info(cert_pem)
        claimed = await ctx.db.claim(
            hashed,
            gateway_id=body.gateway_id,
            household=order.household,
            region=order.region,
            cert_fingerprint=info.fingerprint,
            cert_not_after=info.not_after,
            trust_n=ctx.service.keys.current.n,
            now=now,
        )
        if not claimed:
            raise _problem(
                409, "code_used", "this work-order code has just been used; ask for a new work order"
            )
        log.info(
            "gateway %s provisioned (household %s, region %s)", body.gateway_id, order.household, order.region
        )
        await ctx.gateways_changed()
        return ProvisionOut(
            gateway_id=body.gateway_id,
            household=order.household,
            region=order.region,
            certificate_pem=cert_pem.decode(),
            ca_pem=ctx.ca.pem.decode(),
            trust=ctx.service.keys.trusted(),
            mqtt_url=ctx.mqtt_url,
            api_url=ctx.api_url,
        )

    @r.get("/shop/pay/{order_id}", responses={404: {"model": ProblemResponse}})
    async def pay_page(ctx: Ctx, order_id: str, t: Annotated[str, Query(max_length=64)] = "") -> PaymentPage:
        """Where the TV's payment QR code leads (authenticated by the token in the URL). The
        reference cloud only simulates the provider: payment is confirmed by its callback."""
        row = await ctx.db.shop_order_by_id(order_id)
        if row is None or not hmac.compare_digest(t.encode(), row.pay_token.encode()):
            raise _problem(404, "unknown_order", "no such payment")
        return PaymentPage(
            order_id=row.id,
            total_fen=row.total_fen,
            state=row.state,
            message="simulated payment provider: POST /v1/shop/payments/{order_id}/callback confirms it",
        )

    return r


def _installer_router() -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["work orders"], responses=_ERRORS)

    @r.post("/workorders", status_code=201)
    async def create_workorder(ctx: Ctx, role: Role, body: WorkOrderIn) -> WorkOrderOut:
        """A single-use provisioning code for one household (operator or installer)."""
        now = utc_now()
        expires = now + timedelta(seconds=body.ttl_s or DEFAULT_WORKORDER_TTL_S)
        code = new_code()
        await ctx.db.create_workorder(
            code_hash=code_hash(code),
            household=body.household,
            region=body.region,
            created_by=role,
            created_at=now,
            expires_at=expires,
        )
        log.info("work order for household %s (region %s) by %s", body.household, body.region, role)
        return WorkOrderOut(code=code, household=body.household, region=body.region, expires_at=iso(expires))

    return r


def _operator_router() -> APIRouter:
    r = APIRouter(
        prefix="/v1", tags=["operator"], dependencies=[Depends(require_operator)], responses=_ERRORS
    )

    @r.get("/gateways")
    async def gateways(
        ctx: Ctx,
        region: Annotated[str | None, Query(pattern=r"^\d{2,12}$", description="region code prefix")] = None,
        online: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> list[GatewayOut]:
        rows = await ctx.db.gateways(region_prefix=region, online=online, limit=limit)
        return [_gateway_out(g) for g in rows]

    @r.get("/gateways/{gateway_id}")
    async def gateway(ctx: Ctx, gateway_id: str) -> GatewayOut:
        return _gateway_out(await _gateway_or_404(ctx, gateway_id))

    @r.get("/gateways/{gateway_id}/devices")
    async def devices(ctx: Ctx, gateway_id: str) -> list[DeviceOut]:
        await _gateway_or_404(ctx, gateway_id)
        return [
            DeviceOut(
                id=d.device_id, info=d.info, state=d.state, online=d.online, updated_at=iso(d.updated_at)
            )
            for d in await ctx.db.devices(gateway_id)
        ]

    @r.post(
        "/gateways/{gateway_id}/commands",
        response_model_exclude_none=True,
        responses={503: {"model": ProblemResponse}},
    )
    async def command(ctx: Ctx, gateway_id: str, body: CommandIn) -> CommandOut:
        """Send a signed command and wait up to `timeout_s` for the gateway's reply."""
        await _gateway_or_404(ctx, gateway_id)
        try:
            outcome = await ctx.service.command(gateway_id, body.name, body.args, timeout_s=body.timeout_s)
        except CloudUnavailable as exc:
            raise _problem(503, "mqtt_unavailable", str(exc)) from exc
        return CommandOut(
            command_id=outcome.command_id, status=outcome.status, result=outcome.result, error=outcome.error
        )

    @r.get("/commands")
    async def commands(
        ctx: Ctx, gateway_id: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> list[CommandRecord]:
        return [_command_record(c) for c in await ctx.db.commands(gateway_id=gateway_id, limit=limit)]

    @r.get("/commands/{command_id}")
    async def command_record(ctx: Ctx, command_id: str) -> CommandRecord:
        row = await ctx.db.command(command_id)
        if row is None:
            raise _problem(404, "unknown_command", f"no command {command_id!r}")
        return _command_record(row)

    @r.get("/uplinks")
    async def uplinks(
        ctx: Ctx,
        gateway_id: str | None = None,
        type: str | None = None,
        device: str | None = None,
        after: Annotated[int, Query(ge=0, description="only uplinks stored after this `n`")] = 0,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 100,
        order: Literal["asc", "desc"] = "asc",
    ) -> list[UplinkOut]:
        """Stored uplinks in storage order (`n`); `order=desc` for the newest first."""
        rows = await ctx.db.uplinks(
            gateway_id=gateway_id,
            type_=type,
            device=device,
            after=after,
            limit=limit,
            newest_first=order == "desc",
        )
        return [
            UplinkOut(
                n=u.n,
                id=u.id,
                gateway_id=u.gateway_id,
                type=u.type,
                ts=iso(u.ts),
                received_at=iso(u.received_at),
                device=u.device,
                seq=u.seq,
                payload=u.payload,
            )
            for u in rows
        ]

    @r.get("/security-events")
    async def security_events(
        ctx: Ctx, gateway_id: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> list[SecurityEventOut]:
        """Newest first: what the cloud refused, and what gateways reported."""
        rows = await ctx.db.security_events(gateway_id=gateway_id, limit=limit)
        return [
            SecurityEventOut(
                n=e.n,
                at=iso(e.at),
                gateway_id=e.gateway_id,
                source=e.source,
                reason=e.reason,
                detail=e.detail,
                envelope_id=e.envelope_id,
            )
            for e in rows
        ]

    @r.post(
        "/services/push",
        responses={
            400: {"model": ProblemResponse, "description": "invalid_service (with `reasons`)"},
            409: {"model": ProblemResponse, "description": "stale_version"},
            503: {"model": ProblemResponse},
        },
    )
    async def push(ctx: Ctx, body: PushIn) -> PushOut:
        """One signed `service` envelope (payload = `service`), published once per target topic.

        The service is a definition (cloud_bridge/services.py: `kind` shop, gov or info, or
        `withdrawn: true`): validated as the gateways will (400 with reasons), stored (catalog,
        price and stock), and pushed in its normalized form."""
        target = body.target.model_dump(exclude_none=True)
        for gateway_id in body.target.gateways or []:
            await _gateway_or_404(ctx, gateway_id)
        try:
            definition = validate_definition(body.service.model_dump())
        except DefinitionError as exc:
            raise HTTPException(
                400,
                {"reason": "invalid_service", "message": str(exc)[:2000], "reasons": exc.reasons[:50]},
            ) from exc
        try:
            await ctx.service.shop.define(definition)
        except ShopError as exc:
            raise _problem(exc.status, exc.reason, str(exc)) from exc
        service = definition.model_dump(mode="json", exclude_none=True)
        try:
            row = await ctx.service.push_service(target, service)
        except CloudUnavailable as exc:
            raise _problem(503, "mqtt_unavailable", str(exc)) from exc
        return PushOut(id=row.id, topics=row.topics)

    @r.get("/services")
    async def services(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[PushRecord]:
        return [
            PushRecord(
                id=p.id,
                target=p.target,
                service=p.service,
                topics=p.topics,
                kid=p.kid,
                created_at=iso(p.created_at),
            )
            for p in await ctx.db.pushes(limit=limit)
        ]

    @r.post(
        "/alerts",
        status_code=201,
        responses={
            200: {"model": AlertAccepted, "description": "the same CAP message was accepted before"},
            400: {"model": ProblemResponse},
            413: {"model": ProblemResponse},
            415: {"model": ProblemResponse},
            422: {"model": ProblemResponse, "description": "expired: its time is over; nothing was sent"},
            503: {"model": ProblemResponse},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/cap+xml": {"schema": {"type": "string"}},
                    "application/xml": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def send_alert(
        ctx: Ctx,
        request: Request,
        region: Annotated[
            list[str] | None,
            Query(description="region code(s) to target (行政区划代码); default: the CAP geocodes"),
        ] = None,
    ) -> JSONResponse:
        """Accept one CAP 1.2 alert (XML, or JSON in the model's field names), sign it and
        publish it once per region topic. An Update or Cancel without regions goes where the
        alert it references went."""
        accepted_at = utc_now()
        body = await _read_limited(request, MAX_CAP_BYTES)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in ("application/cap+xml", "application/xml", "text/xml"):
            parse: Callable[[bytes], Any] = parse_cap_xml
        elif kind == "application/json":
            parse = parse_cap_json
        else:
            raise _problem(
                415, "unsupported_media_type", "send CAP as application/cap+xml or application/json"
            )
        try:
            alert = await asyncio.to_thread(parse, body)
        except CapError as exc:
            raise HTTPException(
                400, {"reason": "invalid_cap", "message": str(exc)[:2000], "reasons": exc.reasons[:50]}
            ) from exc
        for code in region or []:
            try:
                region_prefixes(code)
            except ValueError as exc:
                raise _problem(400, "invalid_region", str(exc)) from exc
        existing = await ctx.db.alert(alert.alert_id)
        if existing is None:
            try:
                row = await ctx.alerts.submit(alert, regions_=region, accepted_at=accepted_at)
            except AlertTargetError as exc:
                raise _problem(400, "no_target", str(exc)) from exc
            except AlertExpired as exc:
                raise _problem(422, "expired", str(exc)) from exc
            except CloudUnavailable as exc:
                raise _problem(503, "mqtt_unavailable", str(exc)) from exc
        else:
            row = existing
        out = AlertAccepted(
            id=row.id,
            duplicate=existing is not None,
            msg_type=row.msg_type,
            priority=row.priority,
            targets=row.targets,
            gateways_expected=len(row.expected),
            envelope_id=row.envelope_id,
            accepted_at=iso(row.accepted_at),
            expires_at=iso(row.expires_at),
            state=row.state,
        )
        return JSONResponse(
            out.model_dump(),
            status_code=200 if existing is not None else 201,
            headers={"Location": f"/v1/alerts/{row.id}"},
        )

    @r.get("/alerts")
    async def alerts(
        ctx: Ctx,
        active: bool = False,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[AlertSummary]:
        """Newest first; `active=true`: what is in force now (neither expired, updated nor cancelled)."""
        await ctx.alerts.expire_due()
        return [
            AlertSummary(
                id=a.id,
                state=a.state,
                state_changed_at=iso(a.state_changed_at or a.created_at),
                msg_type=a.msg_type,
                status=a.status,
                priority=a.priority,
                headline=_headline(a.alert),
                targets=a.targets,
                gateways_expected=len(a.expected),
                accepted_at=iso(a.accepted_at),
                expires_at=iso(a.expires_at),
            )
            for a in await ctx.db.alerts(active_only=active, limit=limit)
        ]

    @r.get("/alerts/{alert_id}")
    async def alert_status(ctx: Ctx, alert_id: str) -> AlertStatus:
        """Per gateway: received (and the verdict), displayed/spoken per device, acknowledged,
        ended; and coverage of the gateways and presenting devices that were targeted."""
        await ctx.alerts.expire_due()
        found = await ctx.alerts.status(alert_id)
        if found is None:
            raise _problem(404, "unknown_alert", f"no alert {alert_id!r} was sent from this cloud")
        return AlertStatus.model_validate(found)

    @r.get("/keys")
    def keys(ctx: Ctx) -> list[KeyOut]:
        ring = ctx.service.keys
        return [
            KeyOut(
                n=k.n,
                kid=k.kid,
                public_key=k.trusted.public_key,
                current=k.n == ring.current.n,
                retired=k.retired,
            )
            for k in ring.all
        ]

    @r.post("/keys/rotate", responses={503: {"model": ProblemResponse}})
    async def rotate(ctx: Ctx) -> RotationOut:
        """New signing key, announced to every gateway in a `trust.update` signed by the old one."""
        try:
            rotation = await ctx.service.rotate_keys()
        except CloudUnavailable as exc:
            raise _problem(503, "mqtt_unavailable", str(exc)) from exc
        return RotationOut(
            kid=rotation.kid,
            previous_kid=rotation.previous_kid,
            envelope_id=rotation.envelope_id,
            notified=len(rotation.notified),
        )

    return r


# -- shop and government services ----------------------------------------------------------------


class PaymentPage(BaseModel):
    order_id: str
    total_fen: int
    state: str
    message: str


class ShopItemOut(BaseModel):
    service_id: str
    item_id: str
    title: str
    price_fen: int
    stock: int


class ShopItemPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    price_fen: int | None = Field(default=None, ge=0, le=MAX_PRICE_FEN)
    stock: int | None = Field(default=None, ge=0, le=10_000_000)


class ShopOrderOut(BaseModel):
    id: str
    gateway_id: str
    key: str = Field(description="the box's idempotency key")
    service_id: str
    lines: list[dict[str, Any]]
    total_fen: int
    state: str
    reason: str | None
    pay_url: str | None = Field(description="while confirmed: what the TV shows as a QR code")
    created_at: str
    updated_at: str


class OrderStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["shipped", "delivered", "cancelled"]


class DefinitionOut(BaseModel):
    service_id: str
    kind: str
    version: int
    withdrawn: bool
    definition: dict[str, Any]
    updated_at: str


class BackendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    online: bool


class BookingOut(BaseModel):
    id: str
    gateway_id: str
    key: str
    service_id: str
    appointment_id: str
    slot_id: str
    state: str
    created_at: str


def _shop_error(exc: ShopError) -> HTTPException:
    return _problem(exc.status, exc.reason, str(exc))


def _services_router() -> APIRouter:
    r = APIRouter(
        prefix="/v1", tags=["services"], dependencies=[Depends(require_operator)], responses=_ERRORS
    )

    def order_out(ctx: ApiContext, o: Any) -> ShopOrderOut:
        return ShopOrderOut(
            id=o.id, gateway_id=o.gateway_id, key=o.order_key, service_id=o.service_id, lines=o.lines,
            total_fen=o.total_fen, state=o.state, reason=o.reason,
            pay_url=ctx.service.shop.pay_url(o) if o.state == OrderState.CONFIRMED else None,
            created_at=iso(o.created_at), updated_at=iso(o.updated_at),
        )  # fmt: skip

    @r.get("/services/definitions")
    async def definitions(ctx: Ctx) -> list[DefinitionOut]:
        """The newest definition of every service pushed with a `kind` (withdrawn ones included)."""
        return [
            DefinitionOut(
                service_id=d.service_id,
                kind=d.kind,
                version=d.version,
                withdrawn=d.withdrawn,
                definition=d.definition,
                updated_at=iso(d.updated_at),
            )
            for d in await ctx.db.definitions()
        ]

    @r.get("/shop/{service_id}/items")
    async def shop_items(ctx: Ctx, service_id: str) -> list[ShopItemOut]:
        """Current price and stock of a shop's items (as orders are checked against them)."""
        return [
            ShopItemOut(
                service_id=i.service_id,
                item_id=i.item_id,
                title=i.title,
                price_fen=i.price_fen,
                stock=i.stock,
            )
            for i in await ctx.db.shop_items(service_id)
        ]

    @r.patch("/shop/{service_id}/items/{item_id}")
    async def shop_item(ctx: Ctx, service_id: str, item_id: str, body: ShopItemPatch) -> ShopItemOut:
        """Catalog admin: change an item's price or stock now (a changed price is shown to the
        household at its next order, before it confirms again)."""
        row = await ctx.db.set_shop_item(service_id, item_id, price_fen=body.price_fen, stock=body.stock)
        if row is None:
            raise _problem(404, "unknown_item", f"no item {item_id!r} in {service_id!r}")
        return ShopItemOut(
            service_id=row.service_id, item_id=row.item_id, title=row.title, price_fen=row.price_fen,
            stock=row.stock,
        )  # fmt: skip

    @r.get("/shop/orders")
    async def shop_orders(
        ctx: Ctx,
        gateway_id: str | None = None,
        service_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[ShopOrderOut]:
        """Newest first; attempts that were not placed (price_changed, rejected) included."""
        rows = await ctx.db.shop_orders(gateway_id=gateway_id, service_id=service_id, limit=limit)
        return [order_out(ctx, o) for o in rows]

    @r.get("/shop/orders/{order_id}")
    async def shop_order(ctx: Ctx, order_id: str) -> ShopOrderOut:
        row = await ctx.db.shop_order_by_id(order_id)
        if row is None:
            raise _problem(404, "unknown_order", f"no order {order_id!r}")
        return order_out(ctx, row)

    @r.post("/shop/orders/{order_id}/status", responses={409: {"model": ProblemResponse}})
    async def order_status(ctx: Ctx, order_id: str, body: OrderStatusIn) -> ShopOrderOut:
        """The operator ships, delivers or cancels an order; the box is told."""
        try:
            row = await ctx.service.shop.set_status(order_id, OrderState(body.state))
        except ShopError as exc:
            raise _shop_error(exc) from exc
        return order_out(ctx, row)

    @r.post("/shop/payments/{order_id}/callback", responses={409: {"model": ProblemResponse}})
    async def payment_callback(ctx: Ctx, order_id: str) -> ShopOrderOut:
        """Simulates the payment provider's callback: the order is paid (idempotent); the box is told."""
        try:
            row = await ctx.service.shop.payment_callback(order_id)
        except ShopError as exc:
            raise _shop_error(exc) from exc
        return order_out(ctx, row)

    @r.put("/gov/{service_id}/backend", status_code=204)
    async def gov_backend(ctx: Ctx, service_id: str, body: BackendIn) -> None:
        """Take a government back end offline (queries go unanswered) or bring it back."""
        ctx.service.gov.set_online(service_id, body.online)

    @r.get("/gov/bookings")
    async def gov_bookings(
        ctx: Ctx, service_id: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> list[BookingOut]:
        return [
            BookingOut(
                id=b.id,
                gateway_id=b.gateway_id,
                key=b.booking_key,
                service_id=b.service_id,
                appointment_id=b.appointment_id,
                slot_id=b.slot_id,
                state=b.state,
                created_at=iso(b.created_at),
            )
            for b in await ctx.db.bookings(service_id=service_id, limit=limit)
        ]

    return r


def _headline(alert: dict[str, Any]) -> str | None:
    infos = alert.get("infos") or [{}]
    first = infos[0] if isinstance(infos[0], dict) else {}
    value = first.get("headline") or first.get("event")
    return str(value) if value else None


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it is longer than `limit`, before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _problem(413, "too_large", f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _problem(413, "too_large", f"the body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))
    return JSONResponse(
        status_code=422,
        content={
            "detail": {"reason": "invalid_request", "message": message, "errors": jsonable_encoder(errors)}
        },
    )


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="北方云 reference cloud",
        version=__version__,
        description=(
            "Operator API of the lab stand-in for 北方云: provisioning, fleet, commands, service pushes, "
            "emergency alerts."
        ),
    )
    app.state.ctx = ctx
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(_open_router())
    app.include_router(_installer_router())
    app.include_router(_operator_router())
    app.include_router(_services_router())
    ctx.service.shop.pay_base = ctx.api_url
    return app
