"""The device registry: tortoise-orm on SQLite (WAL) in the state directory.

This is the only module that talks to tortoise (with its models in gateway/_db.py). It hands
out plain `DeviceRow` values, so nothing else sees ORM objects. The schema is upgraded at
open by applying the migrations shipped in gateway/migrations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tortoise.context import TortoiseContext
from tortoise.exceptions import BaseORMException
from tortoise.migrations.executor import MigrationExecutor
from tortoise.transactions import in_transaction

from gateway import _db
from gateway.errors import RegistryError

__all__ = ["DB_FILENAME", "AlertRow", "DeviceRow", "Registry"]

log = logging.getLogger(__name__)

DB_FILENAME = "registry.sqlite3"
_APP = "registry"


@dataclass(slots=True)
class DeviceRow:
    """A device as stored. `name` is the household's name ("" = use `native_name`)."""

    id: str
    protocol: str
    native_id: str
    kind: str
    name: str = ""
    native_name: str = ""
    room: str = ""
    model: str = ""
    manufacturer: str = ""
    address: str = ""
    capabilities: list[str] = field(default_factory=list)
    settable: list[str] = field(default_factory=list)
    ranges: dict[str, list[float]] = field(default_factory=dict)
    controllable: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    last_state: dict[str, Any] = field(default_factory=dict)
    last_seen: datetime | None = None
    approved: bool = False

    @property
    def display_name(self) -> str:
        return self.name or self.native_name or self.id


_COLUMNS = (
    "protocol",
    "native_id",
    "kind",
    "name",
    "native_name",
    "model",
    "manufacturer",
    "address",
    "capabilities",
    "settable",
    "ranges",
    "controllable",
    "meta",
    "last_state",
    "last_seen",
    "approved",
)


class Registry:
    """`async with Registry(state_dir) as reg:` opens (creating and upgrading) the database."""

    def __init__(self, state_dir: Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        self.path = Path(state_dir) / DB_FILENAME
        self._synchronous = synchronous
        self._ctx: TortoiseContext | None = None
        self._closed = False

    def _config(self) -> dict[str, Any]:
        return {
            "connections": {
                "default": {
                    "engine": "tortoise.backends.sqlite",
                    "credentials": {
                        "file_path": str(self.path),
                        # Set explicitly: never rely on how SQLite was built.
                        "journal_mode": "WAL",
                        "synchronous": self._synchronous,
                        "busy_timeout": 5000,
                        "foreign_keys": "ON",
                    },
                }
            },
            "apps": {
                _APP: {
                    "models": ["gateway._db"],
                    "migrations": "gateway.migrations",
                    "default_connection": "default",
                }
            },
        }

    async def open(self) -> None:
        if self._closed:
            raise RegistryError("registry was closed; open a new one")
        if self._ctx is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise RegistryError(
                f"cannot create state directory {self.path.parent}: {exc.strerror}"
                " (set state_dir in the config or --state-dir)"
            ) from exc
        ctx = TortoiseContext()
        ctx.__enter__()
        try:
            config = self._config()
            # The fallback makes the registry usable from every task of the process (HTTP
            # handlers, callers outside the task that opened it). One open registry per process.
            await ctx.init(config=config, _enable_global_fallback=True)
            executor = MigrationExecutor(ctx.connections.get("default"), config["apps"])
            await executor.migrate()
        except (BaseORMException, OSError) as exc:
            await ctx.close_connections()
            ctx.__exit__(None, None, None)
            if "Global context fallback is already enabled" in str(exc):
                raise RegistryError("another registry is already open in this process") from exc
            raise RegistryError(f"cannot open registry {self.path}: {exc}") from exc
        self._ctx = ctx
        mode, sync = await self.pragmas()
        if mode != "wal":
            raise RegistryError(f"{self.path}: journal_mode is {mode}, expected wal")
        log.debug("registry %s open (journal_mode=%s synchronous=%s)", self.path, mode, sync)

    async def close(self) -> None:
        if self._ctx is None:
            self._closed = True
            return
        ctx, self._ctx = self._ctx, None
        self._closed = True
        await ctx.close_connections()
        ctx.__exit__(None, None, None)

    async def __aenter__(self) -> Registry:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _conn(self) -> Any:
        if self._ctx is None:
            raise RegistryError("registry is not open")
        return self._ctx.connections.get("default")

    async def pragmas(self) -> tuple[str, str]:
        """(journal_mode, synchronous) as SQLite reports them on the live connection."""
        conn = self._conn()
        _, mode = await conn.execute_query("PRAGMA journal_mode")
        _, sync = await conn.execute_query("PRAGMA synchronous")
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return str(mode[0][0]).lower(), names.get(int(sync[0][0]), str(sync[0][0]))

    # -- devices ------------------------------------------------------------------------

    async def devices(self) -> list[DeviceRow]:
        self._conn()
        rows = await _db.Device.all().prefetch_related("room").order_by("id")
        return [_to_row(d) for d in rows]

    async def get(self, device_id: str) -> DeviceRow | None:
        self._conn()
        dev = await _db.Device.get_or_none(id=device_id).prefetch_related("room")
        return _to_row(dev) if dev else None

    async def upsert(self, row: DeviceRow) -> None:
        """Insert or replace everything about a device (its room by name, created if new)."""
        self._conn()
        try:
            async with in_transaction("default"):
                room = await self._room(row.room)
                values = {c: getattr(row, c) for c in _COLUMNS}
                room_id = room.id if room is not None else None
                updated = await _db.Device.filter(id=row.id).update(room_id=room_id, **values)
                if not updated:
                    await _db.Device.create(id=row.id, room_id=room_id, **values)
        except BaseORMException as exc:
            raise RegistryError(f"cannot save device {row.id}: {exc}") from exc

    async def save_states(self, states: Mapping[str, tuple[dict[str, Any], datetime]]) -> None:
        """Write last state and last-seen for many devices in one transaction."""
        if not states:
            return
        self._conn()
        rows = [
            [json.dumps(state, separators=(",", ":")), seen.astimezone(UTC).isoformat(), dev_id]
            for dev_id, (state, seen) in states.items()
        ]
        try:
            async with in_transaction("default") as tx:
                await tx.execute_many("UPDATE devices SET last_state = ?, last_seen = ? WHERE id = ?", rows)
        except (BaseORMException, OSError) as exc:
            raise RegistryError(f"cannot save device states: {exc}") from exc

    async def remove(self, device_id: str) -> bool:
        self._conn()
        return bool(await _db.Device.filter(id=device_id).delete())

    # -- alerts -------------------------------------------------------------------------

    async def save_alert(self, rec: AlertRow) -> None:
        """Insert or update an alert (the record is on disk when this returns)."""
        self._conn()
        values: dict[str, Any] = {
            "alert": rec.alert, "level": rec.level, "state": rec.state, "local": rec.local,
            "expires_at": rec.expires_at, "received_at": rec.received_at,
            "acknowledged_at": rec.acknowledged_at, "acknowledged_by": rec.acknowledged_by,
            "ended_at": rec.ended_at,
        }  # fmt: skip
        try:
            async with in_transaction("default"):
                if not await _db.AlertRecord.filter(id=rec.id).update(**values):
                    await _db.AlertRecord.create(id=rec.id, **values)
        except BaseORMException as exc:
            raise RegistryError(f"cannot save alert {rec.id}: {exc}") from exc

    async def alerts(self, *, states: Iterable[str] | None = None, limit: int = 200) -> list[AlertRow]:
        self._conn()
        query = _db.AlertRecord.all()
        if states is not None:
            query = query.filter(state__in=list(states))
        rows = await query.order_by("-received_at").limit(limit)
        return [
            AlertRow(
                id=r.id,
                alert=dict(r.alert),
                level=r.level,
                state=r.state,
                local=r.local,
                expires_at=r.expires_at,
                received_at=r.received_at,
                acknowledged_at=r.acknowledged_at,
                acknowledged_by=r.acknowledged_by,
                ended_at=r.ended_at,
            )
            for r in rows
        ]

    async def alert_exists(self, alert_id: str) -> bool:
        self._conn()
        return await _db.AlertRecord.exists(id=alert_id)

    async def add_tombstones(self, ids: Iterable[str], *, reason: str, until: datetime) -> None:
        self._conn()
        async with in_transaction("default"):
            for alert_id in ids:
                await _db.AlertTombstone.update_or_create(
                    alert_id=alert_id, defaults={"reason": reason, "until": until}
                )

    async def tombstone(self, alert_id: str) -> str | None:
        """Why this alert must not be presented (cancelled/updated), if it must not."""
        self._conn()
        row = await _db.AlertTombstone.get_or_none(alert_id=alert_id)
        return row.reason if row is not None else None

    async def forget_old_alerts(self, before: datetime) -> None:
        self._conn()
        await _db.AlertTombstone.filter(until__lt=before).delete()
        await _db.AlertRecord.filter(state__not="active", received_at__lt=before).delete()

    # -- rooms --------------------------------------------------------------------------

    async def rooms(self) -> list[str]:
        self._conn()
        return [r.name for r in await _db.Room.all().order_by("id")]

    async def add_rooms(self, names: Iterable[str]) -> None:
        self._conn()
        for name in names:
            await self._room(name)

    async def _room(self, name: str) -> _db.Room | None:
        name = name.strip()
        if not name:
            return None
        room, _ = await _db.Room.get_or_create(name=name)
        return room


@dataclass(slots=True)
class AlertRow:
    """An alert as stored: the normalized alert and its state in this home."""

    id: str
    alert: dict[str, Any]
    level: int
    state: str  # active, acknowledged, expired, cancelled
    expires_at: datetime
    received_at: datetime
    local: bool = False
    acknowledged_at: datetime | None = None
    acknowledged_by: str = ""
    ended_at: datetime | None = None


def _to_row(dev: _db.Device) -> DeviceRow:
    return DeviceRow(
        id=dev.id,
        protocol=dev.protocol,
        native_id=dev.native_id,
        kind=dev.kind,
        name=dev.name,
        native_name=dev.native_name,
        room=dev.room.name if dev.room else "",
        model=dev.model,
        manufacturer=dev.manufacturer,
        address=dev.address,
        capabilities=list(dev.capabilities or []),
        settable=list(dev.settable or []),
        ranges=dict(dev.ranges or {}),
        controllable=dev.controllable,
        meta=dict(dev.meta or {}),
        last_state=dict(dev.last_state or {}),
        last_seen=dev.last_seen,
        approved=dev.approved,
    )
