"""The reference cloud's database: tortoise-orm on SQLite (default) or PostgreSQL.

This module and its models are the only code of the cloud that talks to tortoise; everything
else gets plain rows. The schema is created and upgraded at open by applying the migrations in
cloud_bridge/cloud/migrations. Uplinks are written in group commits (`CloudDB.batch()`): one
transaction per batch of whatever arrived meanwhile, so acks can follow the commit without
costing one fsync per message.

Like the gateway's registry, one open database per process: tortoise's global fallback makes it
usable from every task (HTTP handlers included).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.context import TortoiseContext
from tortoise.exceptions import BaseORMException, ConfigurationError
from tortoise.expressions import F
from tortoise.functions import Count
from tortoise.migrations.executor import MigrationExecutor
from tortoise.transactions import in_transaction

from cloud_bridge.cloud import models as m
from cloud_bridge.protocol import BridgeError

__all__ = [
    "AlertRow",
    "Batch",
    "BookingRow",
    "CloudDB",
    "CloudDBError",
    "CommandRow",
    "DefinitionRow",
    "GatewayRow",
    "NewUplink",
    "PushRow",
    "ReceiptRow",
    "SecurityEventRow",
    "ShadowRow",
    "ShopItemRow",
    "ShopOrderRow",
    "UplinkRow",
    "WorkOrderRow",
    "redact_url",
    "sqlite_url",
]

log = logging.getLogger(__name__)

_APP = "cloud"
_IN_CHUNK = 500  # ids per `IN (...)` query: far below SQLite's and PostgreSQL's parameter limits


class CloudDBError(BridgeError):
    """The cloud database could not be opened, read or written."""


def sqlite_url(path: Path) -> str:
    return f"sqlite://{path.resolve()}"


def redact_url(url: str) -> str:
    """The URL with its password replaced, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


# -- rows handed out -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayRow:
    id: str
    household: str
    region: str
    online: bool
    last_seen: datetime | None
    version: str
    cert_fingerprint: str
    cert_not_after: datetime
    provisioned_at: datetime
    trust_n: int
    devices: int = 0


@dataclass(frozen=True, slots=True)
class ShadowRow:
    gateway_id: str
    device_id: str
    info: dict[str, Any] | None
    state: dict[str, Any]
    online: bool | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewUplink:
    envelope_id: str
    gateway_id: str
    type: str
    ts: datetime
    received_at: datetime
    device: str | None
    seq: int | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UplinkRow:
    n: int
    id: str
    gateway_id: str
    type: str
    ts: datetime
    received_at: datetime
    device: str | None
    seq: int | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkOrderRow:
    household: str
    region: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    gateway_id: str | None


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: str
    gateway_id: str
    name: str
    args: dict[str, Any]
    status: str
    result: Any
    error: Any
    created_at: datetime
    replied_at: datetime | None


@dataclass(frozen=True, slots=True)
class PushRow:
    id: str
    target: dict[str, Any]
    service: dict[str, Any]
    topics: list[str]
    kid: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SecurityEventRow:
    at: datetime
    gateway_id: str | None
    source: str
    reason: str
    detail: str = ""
    envelope_id: str | None = None
    n: int = 0


# The same statement in each dialect's placeholders; tortoise stores datetimes in SQLite as
# `isoformat(" ")` text (its sqlite3 adapter), which the raw insert reuses.
_INSERT_UPLINK = {
    "sqlite": "INSERT INTO uplinks (envelope_id, gateway_id, type, ts, received_at, device, seq, payload) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (envelope_id) DO NOTHING",
    "postgres": "INSERT INTO uplinks (envelope_id, gateway_id, type, ts, received_at, device, seq, payload) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (envelope_id) DO NOTHING",
}


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _gateway_row(g: m.Gateway, devices: int = 0) -> GatewayRow:
    return GatewayRow(
        id=g.id,
        household=g.household,
        region=g.region,
        online=g.online,
        last_seen=g.last_seen,
        version=g.version,
        cert_fingerprint=g.cert_fingerprint,
        cert_not_after=g.cert_not_after,
        provisioned_at=g.provisioned_at,
        trust_n=g.trust_n,
        devices=devices,
    )


@dataclass(slots=True)
class AlertRow:
    id: str
    envelope_id: str
    alert: dict[str, Any]
    priority: int
    msg_type: str
    status: str
    targets: list[str]
    expected: list[str]
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime
    state: str = "active"  # active, updated, cancelled, expired
    state_changed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    alert_id: str
    gateway_id: str
    stage: str
    device: str | None
    ts: datetime
    received_at: datetime
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DefinitionRow:
    service_id: str
    kind: str
    version: int
    withdrawn: bool
    definition: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ShopItemRow:
    service_id: str
    item_id: str
    title: str
    price_fen: int
    stock: int


@dataclass(frozen=True, slots=True)
class ShopOrderRow:
    id: str
    gateway_id: str
    order_key: str
    service_id: str
    lines: list[dict[str, Any]]
    total_fen: int
    state: str
    reason: str | None
    pay_token: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class BookingRow:
    id: str
    gateway_id: str
    booking_key: str
    service_id: str
    appointment_id: str
    slot_id: str
    state: str
    created_at: datetime


def _definition_row(d: m.ServiceDefinition) -> DefinitionRow:
    return DefinitionRow(d.service_id, d.kind, d.version, d.withdrawn, dict(d.definition), d.updated_at)


def _order_row(o: m.ShopOrder) -> ShopOrderRow:
    return ShopOrderRow(
        o.id, o.gateway_id, o.order_key, o.service_id, list(o.lines), o.total_fen, o.state, o.reason,
        o.pay_token, o.created_at, o.updated_at,
    )  # fmt: skip


def _booking_row(b: m.GovBooking) -> BookingRow:
    return BookingRow(
        b.id, b.gateway_id, b.booking_key, b.service_id, b.appointment_id, b.slot_id, b.state, b.created_at
    )


def _alert_row(a: m.CloudAlert) -> AlertRow:
    return AlertRow(
        a.id, a.envelope_id, dict(a.alert), a.priority, a.msg_type, a.status, list(a.targets),
        list(a.expected), a.created_at, a.expires_at, a.accepted_at, a.state,
        a.state_changed_at or a.created_at,
    )  # fmt: skip


def _shadow_row(s: m.DeviceShadow) -> ShadowRow:
    return ShadowRow(s.gateway_id, s.device_id, s.info, dict(s.state or {}), s.online, s.updated_at)


def _command_row(c: m.Command) -> CommandRow:
    return CommandRow(
        c.id,
        c.gateway_id,
        c.name,
        dict(c.args or {}),
        c.status,
        c.result,
        c.error,
        c.created_at,
        c.replied_at,
    )


class Batch:
    """One group commit. Every method runs inside the batch's transaction."""

    def __init__(self, conn: Any, dialect: str) -> None:
        self._conn = conn
        self._dialect = dialect

    async def insert_uplinks(self, uplinks: Sequence[NewUplink]) -> list[NewUplink]:
        """Store the uplinks not seen before (by envelope id, within the batch too); returns them
        in arrival order."""
        ids = [u.envelope_id for u in uplinks]
        seen: set[str] = set()
        for chunk in _chunks(ids):
            found = (
                await m.Uplink.filter(envelope_id__in=list(chunk))
                .using_db(self._conn)
                .values_list("envelope_id", flat=True)
            )
            seen.update(str(i) for i in found)
        fresh: list[NewUplink] = []
        for u in uplinks:
            if u.envelope_id not in seen:
                seen.add(u.envelope_id)
                fresh.append(u)
        if fresh:
            # Plain executemany: building an ORM object per uplink costs more than the insert.
            # ON CONFLICT: a second cloud process on the same PostgreSQL may have won the race.
            await self._conn.execute_many(
                _INSERT_UPLINK[self._dialect],
                [
                    [
                        u.envelope_id,
                        u.gateway_id,
                        u.type,
                        u.ts.astimezone(UTC),
                        u.received_at.astimezone(UTC),
                        u.device,
                        u.seq,
                        orjson.dumps(u.payload).decode(),
                    ]
                    for u in fresh
                ],
            )
        return fresh

    async def shadows(self, gateway_id: str, device_ids: Iterable[str]) -> dict[str, ShadowRow]:
        wanted = sorted(set(device_ids))
        out: dict[str, ShadowRow] = {}
        for chunk in _chunks(wanted):
            rows = await m.DeviceShadow.filter(gateway_id=gateway_id, device_id__in=list(chunk)).using_db(
                self._conn
            )
            out.update({r.device_id: _shadow_row(r) for r in rows})
        return out

    async def save_shadows(self, rows: Sequence[ShadowRow]) -> None:
        if not rows:
            return
        await m.DeviceShadow.bulk_create(
            [
                m.DeviceShadow(
                    gateway_id=r.gateway_id,
                    device_id=r.device_id,
                    info=r.info,
                    state=r.state,
                    online=r.online,
                    updated_at=r.updated_at,
                )
                for r in rows
            ],
            on_conflict=["gateway_id", "device_id"],
            update_fields=["info", "state", "online", "updated_at"],
            using_db=self._conn,
        )

    async def delete_shadows(self, gateway_id: str, device_ids: Iterable[str]) -> None:
        for chunk in _chunks(sorted(set(device_ids))):
            await (
                m.DeviceShadow.filter(gateway_id=gateway_id, device_id__in=list(chunk))
                .using_db(self._conn)
                .delete()
            )

    async def seen(self, last_seen: Mapping[str, datetime]) -> None:
        for gw, at in last_seen.items():
            await m.Gateway.filter(id=gw).using_db(self._conn).update(last_seen=at)

    async def presence(self, gateway_id: str, *, online: bool, at: datetime) -> None:
        await m.Gateway.filter(id=gateway_id).using_db(self._conn).update(online=online, last_seen=at)

    async def set_version(self, gateway_id: str, version: str) -> None:
        await m.Gateway.filter(id=gateway_id).using_db(self._conn).update(version=version[:64])

    async def trust_n(self, gateway_ids: Iterable[str]) -> dict[str, int]:
        ids = sorted(set(gateway_ids))
        if not ids:
            return {}
        rows = await m.Gateway.filter(id__in=ids).using_db(self._conn).values_list("id", "trust_n")
        return {str(gw): int(n) for gw, n in rows}

    async def finish_command(
        self, command_id: str, *, status: str, result: Any, error: Any, at: datetime
    ) -> bool:
        """Record a reply; False if no such command was sent."""
        updated = (
            await m.Command.filter(id=command_id)
            .using_db(self._conn)
            .update(status=status, result=result, error=error, replied_at=at)
        )
        return bool(updated)

    async def add_security_events(self, events: Sequence[SecurityEventRow]) -> None:
        if events:
            await m.SecurityEvent.bulk_create(
                [
                    m.SecurityEvent(
                        at=e.at,
                        gateway_id=e.gateway_id,
                        source=e.source,
                        reason=e.reason[:64],
                        detail=e.detail,
                        envelope_id=e.envelope_id,
                    )
                    for e in events
                ],
                using_db=self._conn,
            )

    async def add_receipts(self, receipts: Sequence[ReceiptRow]) -> None:
        if receipts:
            await m.AlertReceipt.bulk_create(
                [
                    m.AlertReceipt(
                        alert_id=r.alert_id,
                        gateway_id=r.gateway_id,
                        stage=r.stage,
                        device=r.device,
                        ts=r.ts,
                        received_at=r.received_at,
                        detail=r.detail,
                    )
                    for r in receipts
                ],
                using_db=self._conn,
            )

    # -- shop and government services (inside the uplink's group commit) ----------------------

    async def gateway_region(self, gateway_id: str) -> str | None:
        rows = await m.Gateway.filter(id=gateway_id).using_db(self._conn).values_list("region", flat=True)
        return str(rows[0]) if rows else None

    async def definition(self, service_id: str) -> DefinitionRow | None:
        d = await m.ServiceDefinition.filter(service_id=service_id).using_db(self._conn).first()
        return _definition_row(d) if d is not None else None

    async def shop_items(self, service_id: str) -> dict[str, ShopItemRow]:
        rows = await m.ShopItem.filter(service_id=service_id).using_db(self._conn)
        return {r.item_id: ShopItemRow(r.service_id, r.item_id, r.title, r.price_fen, r.stock) for r in rows}

    async def take_stock(self, service_id: str, item_id: str, quantity: int) -> bool:
        """Take `quantity` off the stock if that much is there (one conditional UPDATE)."""
        updated = (
            await m.ShopItem.filter(service_id=service_id, item_id=item_id, stock__gte=quantity)
            .using_db(self._conn)
            .update(stock=F("stock") - quantity)
        )
        return bool(updated)

    async def shop_order(self, gateway_id: str, order_key: str) -> ShopOrderRow | None:
        o = await m.ShopOrder.filter(gateway_id=gateway_id, order_key=order_key).using_db(self._conn).first()
        return _order_row(o) if o is not None else None

    async def add_shop_order(self, row: ShopOrderRow) -> None:
        await m.ShopOrder.create(
            using_db=self._conn,
            id=row.id, gateway_id=row.gateway_id, order_key=row.order_key, service_id=row.service_id,
            lines=row.lines, total_fen=row.total_fen, state=row.state, reason=row.reason,
            pay_token=row.pay_token, created_at=row.created_at, updated_at=row.updated_at,
        )  # fmt: skip

    async def booking(self, gateway_id: str, booking_key: str) -> BookingRow | None:
        b = (
            await m.GovBooking.filter(gateway_id=gateway_id, booking_key=booking_key)
            .using_db(self._conn)
            .first()
        )
        return _booking_row(b) if b is not None else None

    async def booked(self, service_id: str, appointment_id: str, slot_id: str) -> int:
        return int(
            await m.GovBooking.filter(
                service_id=service_id, appointment_id=appointment_id, slot_id=slot_id, state="booked"
            )
            .using_db(self._conn)
            .count()
        )

    async def add_booking(self, row: BookingRow) -> None:
        await m.GovBooking.create(
            using_db=self._conn,
            id=row.id, gateway_id=row.gateway_id, booking_key=row.booking_key, service_id=row.service_id,
            appointment_id=row.appointment_id, slot_id=row.slot_id, state=row.state,
            created_at=row.created_at,
        )  # fmt: skip


class CloudDB:
    """`async with CloudDB(url) as db:` opens (creating and upgrading) the database.

    `url`: `sqlite:///ABS/PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (a socket
    directory works as `?host=/var/run/postgresql`).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._ctx: TortoiseContext | None = None
        self._closed = False
        self.dialect = ""
        # Named per dialect: tortoise caches each table's INSERT statement by connection name
        # (process-wide), and SQLite and PostgreSQL statements differ.
        self._conn_name = ""

    def _config(self) -> dict[str, Any]:
        try:
            conn = expand_db_url(self.url)
        except (ConfigurationError, ValueError, KeyError) as exc:
            raise CloudDBError(
                f"cannot use database URL {redact_url(self.url)}: {exc}"
                " (use sqlite:///PATH or postgres://USER@HOST/DB)"
            ) from exc
        engine = str(conn["engine"])
        if engine.endswith(".sqlite"):
            self.dialect = "sqlite"
            path = Path(conn["credentials"]["file_path"])
            if str(path) == ":memory:":
                raise CloudDBError("an in-memory SQLite database cannot hold the cloud's state")
            # Acks promise the uplink is stored: FULL makes a commit survive power loss too.
            conn["credentials"].update(
                {"journal_mode": "WAL", "synchronous": "FULL", "busy_timeout": 5000, "foreign_keys": "ON"}
            )
        elif engine.endswith(".asyncpg"):
            self.dialect = "postgres"
        else:
            raise CloudDBError(f"unsupported database {redact_url(self.url)}: use sqlite:// or postgres://")
        self._conn_name = f"cloud_{self.dialect}"
        return {
            "connections": {self._conn_name: conn},
            "apps": {
                _APP: {
                    "models": ["cloud_bridge.cloud.models"],
                    "migrations": "cloud_bridge.cloud.migrations",
                    "default_connection": self._conn_name,
                }
            },
            "use_tz": True,
            "timezone": "UTC",
        }

    async def open(self) -> None:
        if self._closed:
            raise CloudDBError("database was closed; open a new one")
        if self._ctx is not None:
            return
        config = self._config()
        if self.dialect == "sqlite":
            parent = Path(config["connections"][self._conn_name]["credentials"]["file_path"]).parent
            try:
                parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise CloudDBError(f"cannot create {parent}: {exc.strerror}") from exc
        ctx = TortoiseContext()
        ctx.__enter__()
        try:
            await ctx.init(config=config, _enable_global_fallback=True)
            executor = MigrationExecutor(ctx.connections.get(self._conn_name), config["apps"])
            await executor.migrate()
        except (BaseORMException, OSError) as exc:
            await ctx.close_connections()
            ctx.__exit__(None, None, None)
            if "Global context fallback is already enabled" in str(exc):
                raise CloudDBError("another database is already open in this process") from exc
            hint = (
                " (does the database exist, and does the server accept this user?)"
                if self.dialect == "postgres"
                else ""
            )
            raise CloudDBError(f"cannot open database {redact_url(self.url)}: {exc}{hint}") from exc
        self._ctx = ctx
        log.debug("database %s open (%s)", redact_url(self.url), self.dialect)

    async def close(self) -> None:
        self._closed = True
        if self._ctx is None:
            return
        ctx, self._ctx = self._ctx, None
        await ctx.close_connections()
        ctx.__exit__(None, None, None)

    async def __aenter__(self) -> CloudDB:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check(self) -> None:
        if self._ctx is None:
            raise CloudDBError("database is not open")

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[Batch]:
        """One transaction; CloudDBError (after rollback) if anything in it fails."""
        self._check()
        try:
            async with in_transaction(self._conn_name) as conn:
                yield Batch(conn, self.dialect)
        except (BaseORMException, OSError) as exc:
            raise CloudDBError(f"batch not stored: {exc}") from exc

    # -- gateways -------------------------------------------------------------------------

    async def gateway(self, gateway_id: str) -> GatewayRow | None:
        self._check()
        g = await m.Gateway.get_or_none(id=gateway_id)
        if g is None:
            return None
        devices = await m.DeviceShadow.filter(gateway_id=gateway_id).count()
        return _gateway_row(g, devices)

    async def gateways(
        self, *, region_prefix: str | None = None, online: bool | None = None, limit: int = 1000
    ) -> list[GatewayRow]:
        self._check()
        q = m.Gateway.all()
        if region_prefix:
            q = q.filter(region__startswith=region_prefix)
        if online is not None:
            q = q.filter(online=online)
        rows = await q.order_by("id").limit(limit)
        counts: dict[str, int] = {}
        ids = [g.id for g in rows]
        for chunk in _chunks(ids):
            found = (
                await m.DeviceShadow.filter(gateway_id__in=list(chunk))
                .annotate(count=Count("n"))
                .group_by("gateway_id")
                .values_list("gateway_id", "count")
            )
            counts.update({str(gw): int(c) for gw, c in found})
        return [_gateway_row(g, counts.get(g.id, 0)) for g in rows]

    async def acl_entries(self) -> list[tuple[str, str]]:
        """(gateway id, region) of every provisioned gateway, for the broker's ACL."""
        self._check()
        rows = await m.Gateway.all().order_by("id").values_list("id", "region")
        return [(str(gw), str(region)) for gw, region in rows]

    async def gateway_presence(self) -> list[tuple[str, bool]]:
        """(id, online) of every gateway."""
        self._check()
        rows = await m.Gateway.all().order_by("id").values_list("id", "online")
        return [(str(gw), bool(online)) for gw, online in rows]

    async def set_trust_n(self, gateway_ids: Iterable[str], n: int) -> None:
        self._check()
        for chunk in _chunks(sorted(set(gateway_ids))):
            await m.Gateway.filter(id__in=list(chunk), trust_n__lt=n).update(trust_n=n)

    async def devices(self, gateway_id: str) -> list[ShadowRow]:
        self._check()
        rows = await m.DeviceShadow.filter(gateway_id=gateway_id).order_by("device_id")
        return [_shadow_row(r) for r in rows]

    # -- work orders and provisioning ------------------------------------------------------

    async def create_workorder(
        self,
        *,
        code_hash: str,
        household: str,
        region: str,
        created_by: str,
        created_at: datetime,
        expires_at: datetime,
    ) -> None:
        self._check()
        try:
            await m.WorkOrder.create(
                code_hash=code_hash,
                household=household,
                region=region,
                created_by=created_by,
                created_at=created_at,
                expires_at=expires_at,
            )
        except BaseORMException as exc:
            raise CloudDBError(f"cannot store the work order: {exc}") from exc

    async def workorder(self, code_hash: str) -> WorkOrderRow | None:
        self._check()
        w = await m.WorkOrder.get_or_none(code_hash=code_hash)
        if w is None:
            return None
        return WorkOrderRow(
            w.household, w.region, w.created_by, w.created_at, w.expires_at, w.used_at, w.gateway_id
        )

    async def claim(
        self,
        code_hash: str,
        *,
        gateway_id: str,
        household: str,
        region: str,
        cert_fingerprint: str,
        cert_not_after: datetime,
        trust_n: int,
        now: datetime,
    ) -> bool:
        """Use the work order and record (or replace) the gateway, atomically. False if the
        code was used meanwhile."""
        self._check()
        values = {
            "household": household,
            "region": region,
            "cert_fingerprint": cert_fingerprint,
            "cert_not_after": cert_not_after,
            "provisioned_at": now,
            "trust_n": trust_n,
        }
        try:
            async with in_transaction(self._conn_name) as conn:
                used = (
                    await m.WorkOrder.filter(code_hash=code_hash, used_at__isnull=True)
                    .using_db(conn)
                    .update(used_at=now, gateway_id=gateway_id)
                )
                if not used:
                    return False
                updated = await m.Gateway.filter(id=gateway_id).using_db(conn).update(**values)
                if not updated:
                    await m.Gateway.create(id=gateway_id, using_db=conn, **values)
        except BaseORMException as exc:
            raise CloudDBError(f"cannot record gateway {gateway_id}: {exc}") from exc
        return True

    # -- uplinks ------------------------------------------------------------------------------

    async def uplinks(
        self,
        *,
        gateway_id: str | None = None,
        type_: str | None = None,
        device: str | None = None,
        after: int = 0,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[UplinkRow]:
        self._check()
        q = m.Uplink.all()
        if gateway_id:
            q = q.filter(gateway_id=gateway_id)
        if type_:
            q = q.filter(type=type_)
        if device:
            q = q.filter(device=device)
        if after:
            q = q.filter(n__gt=after)
        rows = await q.order_by("-n" if newest_first else "n").limit(limit)
        return [
            UplinkRow(
                u.n, u.envelope_id, u.gateway_id, u.type, u.ts, u.received_at, u.device, u.seq, u.payload
            )
            for u in rows
        ]

    # -- commands -------------------------------------------------------------------------------

    async def create_command(
        self, *, command_id: str, gateway_id: str, name: str, args: dict[str, Any], created_at: datetime
    ) -> None:
        self._check()
        await m.Command.create(
            id=command_id, gateway_id=gateway_id, name=name, args=args, created_at=created_at
        )

    async def timeout_command(self, command_id: str) -> None:
        """Mark a command timed out unless its reply was stored meanwhile."""
        self._check()
        await m.Command.filter(id=command_id, status="sent").update(status="timeout")

    async def command(self, command_id: str) -> CommandRow | None:
        self._check()
        c = await m.Command.get_or_none(id=command_id)
        return _command_row(c) if c else None

    async def commands(self, *, gateway_id: str | None = None, limit: int = 100) -> list[CommandRow]:
        self._check()
        q = m.Command.all()
        if gateway_id:
            q = q.filter(gateway_id=gateway_id)
        return [_command_row(c) for c in await q.order_by("-created_at").limit(limit)]

    # -- service pushes ------------------------------------------------------------------------

    async def add_push(self, row: PushRow) -> None:
        self._check()
        await m.ServicePush.create(
            id=row.id,
            target=row.target,
            service=row.service,
            topics=row.topics,
            kid=row.kid,
            created_at=row.created_at,
        )

    async def pushes(self, *, limit: int = 100) -> list[PushRow]:
        self._check()
        rows = await m.ServicePush.all().order_by("-created_at").limit(limit)
        return [
            PushRow(p.id, dict(p.target), dict(p.service), list(p.topics), p.kid, p.created_at) for p in rows
        ]

    # -- alerts ---------------------------------------------------------------------------------

    async def add_alert(self, row: AlertRow) -> None:
        self._check()
        await m.CloudAlert.update_or_create(
            id=row.id,
            defaults={
                "envelope_id": row.envelope_id, "alert": row.alert, "priority": row.priority,
                "msg_type": row.msg_type, "status": row.status, "targets": row.targets,
                "expected": row.expected, "created_at": row.created_at, "expires_at": row.expires_at,
                "state": row.state, "accepted_at": row.accepted_at,
                "state_changed_at": row.state_changed_at or row.created_at,
            },
        )  # fmt: skip

    async def alert(self, alert_id: str) -> AlertRow | None:
        self._check()
        a = await m.CloudAlert.get_or_none(id=alert_id)
        return _alert_row(a) if a is not None else None

    async def alerts(self, *, active_only: bool = False, limit: int = 100) -> list[AlertRow]:
        """Newest first; `active_only`: in force now (active and not yet expired)."""
        self._check()
        q = m.CloudAlert.all()
        if active_only:
            q = q.filter(state="active", expires_at__gt=datetime.now(UTC))
        return [_alert_row(a) for a in await q.order_by("-created_at").limit(limit)]

    async def set_alert_state(self, alert_ids: Iterable[str], state: str, *, at: datetime) -> int:
        """Active alerts among `alert_ids` take `state` (an ended alert keeps how it ended)."""
        self._check()
        ids = list(alert_ids)
        return int(
            await m.CloudAlert.filter(id__in=ids, state="active").update(state=state, state_changed_at=at)
        )

    async def expire_alerts(self, now: datetime) -> int:
        """Active alerts whose time is up become `expired` (at their expiry time)."""
        self._check()
        due = await m.CloudAlert.filter(state="active", expires_at__lte=now).values_list("id", "expires_at")
        for alert_id, expires_at in due:
            await m.CloudAlert.filter(id=alert_id, state="active").update(
                state="expired", state_changed_at=expires_at
            )
        return len(due)

    async def add_alert_tombstones(
        self, alert_ids: Iterable[str], state: str, *, by: str, at: datetime
    ) -> None:
        """Remember what an Update or Cancel named, should it arrive after it."""
        self._check()
        for alert_id in alert_ids:
            await m.CloudAlertTombstone.get_or_create(
                alert_id=alert_id, defaults={"state": state, "by": by, "at": at}
            )

    async def alert_tombstone(self, alert_id: str) -> tuple[str, datetime] | None:
        self._check()
        t = await m.CloudAlertTombstone.get_or_none(alert_id=alert_id)
        return (t.state, t.at) if t is not None else None

    async def receipts(self, alert_id: str) -> list[ReceiptRow]:
        self._check()
        rows = await m.AlertReceipt.filter(alert_id=alert_id).order_by("n")
        return [
            ReceiptRow(r.alert_id, r.gateway_id, r.stage, r.device, r.ts, r.received_at, dict(r.detail or {}))
            for r in rows
        ]

    # -- security events -----------------------------------------------------------------------

    async def add_security_event(self, event: SecurityEventRow) -> None:
        self._check()
        async with self.batch() as tx:
            await tx.add_security_events([event])

    async def security_events(
        self, *, gateway_id: str | None = None, limit: int = 100
    ) -> list[SecurityEventRow]:
        self._check()
        q = m.SecurityEvent.all()
        if gateway_id:
            q = q.filter(gateway_id=gateway_id)
        rows = await q.order_by("-n").limit(limit)
        return [
            SecurityEventRow(e.at, e.gateway_id, e.source, e.reason, e.detail, e.envelope_id, e.n)
            for e in rows
        ]

    # -- service definitions, shop, bookings -----------------------------------------------------

    async def save_definition(
        self,
        row: DefinitionRow,
        items: Sequence[ShopItemRow] | None = None,
    ) -> None:
        """Store the newest definition of a service; `items` (a shop's) set price and stock."""
        self._check()
        try:
            async with in_transaction(self._conn_name) as conn:
                await m.ServiceDefinition.update_or_create(
                    service_id=row.service_id,
                    defaults={
                        "kind": row.kind, "version": row.version, "withdrawn": row.withdrawn,
                        "definition": row.definition, "updated_at": row.updated_at,
                    },
                    using_db=conn,
                )  # fmt: skip
                if items:
                    await m.ShopItem.bulk_create(
                        [
                            m.ShopItem(
                                service_id=i.service_id,
                                item_id=i.item_id,
                                title=i.title,
                                price_fen=i.price_fen,
                                stock=i.stock,
                            )
                            for i in items
                        ],
                        on_conflict=["service_id", "item_id"],
                        update_fields=["title", "price_fen", "stock"],
                        using_db=conn,
                    )
        except BaseORMException as exc:
            raise CloudDBError(f"cannot store service {row.service_id}: {exc}") from exc

    async def definition(self, service_id: str) -> DefinitionRow | None:
        self._check()
        d = await m.ServiceDefinition.get_or_none(service_id=service_id)
        return _definition_row(d) if d is not None else None

    async def definitions(self) -> list[DefinitionRow]:
        self._check()
        return [_definition_row(d) for d in await m.ServiceDefinition.all().order_by("service_id")]

    async def shop_items(self, service_id: str) -> list[ShopItemRow]:
        self._check()
        rows = await m.ShopItem.filter(service_id=service_id).order_by("n")
        return [ShopItemRow(r.service_id, r.item_id, r.title, r.price_fen, r.stock) for r in rows]

    async def set_shop_item(
        self, service_id: str, item_id: str, *, price_fen: int | None = None, stock: int | None = None
    ) -> ShopItemRow | None:
        self._check()
        values: dict[str, Any] = {}
        if price_fen is not None:
            values["price_fen"] = price_fen
        if stock is not None:
            values["stock"] = stock
        if values:
            await m.ShopItem.filter(service_id=service_id, item_id=item_id).update(**values)
        r = await m.ShopItem.get_or_none(service_id=service_id, item_id=item_id)
        return ShopItemRow(r.service_id, r.item_id, r.title, r.price_fen, r.stock) if r else None

    async def shop_order_by_id(self, order_id: str) -> ShopOrderRow | None:
        self._check()
        o = await m.ShopOrder.get_or_none(id=order_id)
        return _order_row(o) if o is not None else None

    async def shop_orders(
        self, *, gateway_id: str | None = None, service_id: str | None = None, limit: int = 100
    ) -> list[ShopOrderRow]:
        self._check()
        q = m.ShopOrder.all()
        if gateway_id:
            q = q.filter(gateway_id=gateway_id)
        if service_id:
            q = q.filter(service_id=service_id)
        return [_order_row(o) for o in await q.order_by("-created_at", "id").limit(limit)]

    async def shop_orders_by_keys(self, gateway_id: str, keys: Sequence[str]) -> list[ShopOrderRow]:
        self._check()
        out: list[ShopOrderRow] = []
        for chunk in _chunks(list(keys)):
            rows = await m.ShopOrder.filter(gateway_id=gateway_id, order_key__in=list(chunk))
            out += [_order_row(o) for o in rows]
        return out

    async def set_order_state(
        self, order_id: str, *, from_states: Iterable[str], state: str, at: datetime
    ) -> bool:
        """Move an order to `state` if it is in one of `from_states` now (compare-and-set). A
        cancelled order gives its stock back, in the same transaction."""
        self._check()
        try:
            async with in_transaction(self._conn_name) as conn:
                updated = (
                    await m.ShopOrder.filter(id=order_id, state__in=list(from_states))
                    .using_db(conn)
                    .update(state=state, updated_at=at)
                )
                if updated and state == "cancelled":
                    order = await m.ShopOrder.get(id=order_id, using_db=conn)
                    for line in order.lines:
                        await (
                            m.ShopItem.filter(service_id=order.service_id, item_id=line["item_id"])
                            .using_db(conn)
                            .update(stock=F("stock") + int(line["quantity"]))
                        )
        except (BaseORMException, OSError) as exc:
            raise CloudDBError(f"cannot update order {order_id}: {exc}") from exc
        return bool(updated)

    async def bookings(self, *, service_id: str | None = None, limit: int = 100) -> list[BookingRow]:
        self._check()
        q = m.GovBooking.all()
        if service_id:
            q = q.filter(service_id=service_id)
        return [_booking_row(b) for b in await q.order_by("-created_at", "id").limit(limit)]
