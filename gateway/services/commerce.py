"""Operator services on the box: pushed definitions (cached), and the shop's order flow.

Definitions arrive as signed `service` messages (Contract 3), are validated again here
(cloud_bridge/services.py), and kept in `<state_dir>/services.json` (written atomically), so the
menu has them at the next start before the cloud link is up. A newer version replaces an older
one, an older or equal one is ignored, a withdrawal removes the service (its version is kept,
so a late copy of an older push cannot bring it back).

An order is stored here first (`pending`, `<state_dir>/orders.sqlite3`) with an idempotency key
made on the box, then sent through the durable outbox. The cloud answers `order.status`:
`confirmed` (with a payment URL, shown as a QR code), `price_changed` (with the new prices; the
household may order again at those), `rejected`; later `paid`, `shipped`, `delivered`,
`cancelled`. A status only ever moves an order forward (`can_advance`). At every start, orders
still pending are sent again and unfinished ones are asked about (`order.sync`): a crash at any
point between "placed" and "confirmed" costs nothing, and the cloud's (gateway, key) uniqueness
makes the repeats one order.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any

import segno
from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_bridge.protocol import Envelope, iso, utc_now
from cloud_bridge.services import (
    MAX_QUANTITY,
    DefinitionError,
    GovService,
    InfoCard,
    OrderLine,
    OrderRequest,
    OrderState,
    OrderStatus,
    OrderSync,
    Shop,
    Withdrawal,
    can_advance,
    parse_definition,
    summary,
)
from gateway.errors import GatewayError
from gateway.web import require_writer

if TYPE_CHECKING:
    from cloud_bridge.agent import CloudAgent

__all__ = [
    "ORDERS_FILE",
    "SERVICES_FILE",
    "Catalog",
    "OperatorServices",
    "OrderBook",
    "OrderView",
    "ServicesUnavailable",
    "commerce_router",
]

log = logging.getLogger(__name__)

#: Writes need a household (or the admin) token.
Writer = Annotated[str, Depends(require_writer)]

SERVICES_FILE = "services.json"
ORDERS_FILE = "orders.sqlite3"
_SYNC_CHUNK = 200
_UNFINISHED = (OrderState.CONFIRMED, OrderState.PAID, OrderState.SHIPPED)

Definition = Shop | GovService | InfoCard
#: Durable uplink: (type, payload) into the outbox as CRITICAL; returns once on disk.
Send = Callable[[str, Mapping[str, Any]], Awaitable[Any]]


class ServicesUnavailable(GatewayError):
    """The box cannot reach the operator's cloud (not provisioned, or the link is down)."""


def _write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: the file is the old one or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- definitions ---------------------------------------------------------------------------------


class Catalog:
    """Accepted definitions, cached in a JSON file. `region`: this box's (shops that do not
    deliver here are not shown)."""

    def __init__(self, path: Path, *, region: str = "") -> None:
        self._path = path
        self.region = region
        self._defs: dict[str, Definition | Withdrawal] = {}
        self._lock = asyncio.Lock()
        self.rejected = 0

    def load(self) -> None:
        """Blocking: read the cache (a broken entry is dropped with a warning)."""
        try:
            raw = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("services: cache %s unreadable (%s); starting empty", self._path, exc)
            return
        for service_id, data in (raw.get("services") or {}).items() if isinstance(raw, dict) else []:
            try:
                self._defs[str(service_id)] = parse_definition(data)
            except DefinitionError as exc:
                log.warning("services: cached %s dropped: %s", service_id, exc)
        log.info("services: %d definitions restored", len(self.visible()))

    def _dump(self) -> bytes:
        body = {k: d.model_dump(mode="json", exclude_none=True) for k, d in sorted(self._defs.items())}
        return json.dumps({"services": body}, ensure_ascii=False).encode()

    async def accept(self, payload: Mapping[str, Any]) -> str:
        """One pushed payload: `added`, `replaced`, `withdrawn`, `ignored` (not newer) or
        `invalid` (logged with its reasons, counted)."""
        try:
            definition = parse_definition(dict(payload))
        except DefinitionError as exc:
            self.rejected += 1
            log.warning("services: push of %r refused: %s", payload.get("service_id"), exc)
            return "invalid"
        async with self._lock:
            old = self._defs.get(definition.service_id)
            if old is not None and definition.version <= old.version:
                log.debug("services: %s v%d ignored (have v%d)", definition.service_id, definition.version,
                          old.version)  # fmt: skip
                return "ignored"
            self._defs[definition.service_id] = definition
            await asyncio.to_thread(_write_atomic, self._path, self._dump())
        outcome = "withdrawn" if isinstance(definition, Withdrawal) else "replaced" if old else "added"
        log.info("services: %s v%d %s", definition.service_id, definition.version, outcome)
        return outcome

    def get(self, service_id: str) -> Definition | None:
        found = self._defs.get(service_id)
        if found is None or isinstance(found, Withdrawal):
            return None
        if isinstance(found, Shop) and self.region and not found.delivers_to(self.region):
            return None
        return found

    def visible(self) -> list[Definition]:
        out = [d for k in self._defs if (d := self.get(k)) is not None]
        return sorted(out, key=lambda d: (d.kind != "shop", d.kind, d.title, d.service_id))


# -- the local order book ----------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    key TEXT PRIMARY KEY, service_id TEXT NOT NULL, version INTEGER NOT NULL, lines TEXT NOT NULL,
    total_fen INTEGER NOT NULL, state TEXT NOT NULL, order_id TEXT, pay_url TEXT, reason TEXT,
    prices TEXT, placed_by TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bookings (
    key TEXT PRIMARY KEY, service_id TEXT NOT NULL, appointment_id TEXT NOT NULL, slot_id TEXT NOT NULL,
    state TEXT NOT NULL, booking_id TEXT, reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notice_reads (
    service_id TEXT NOT NULL, notice_id TEXT NOT NULL, version INTEGER NOT NULL, read_at TEXT NOT NULL,
    PRIMARY KEY (service_id, notice_id)
);
"""


class OrderBook:
    """Orders, bookings and read receipts on the box: SQLite (WAL, synchronous=FULL), one
    connection used from worker threads one call at a time."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._open)
        except sqlite3.Error as exc:
            raise GatewayError(f"cannot open {self._path}: {exc}") from exc

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    async def run(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """One statement (its own transaction); the rows it returns."""
        conn = self._conn
        if conn is None:
            raise GatewayError("the order book is closed")

        def call() -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(sql, args).fetchall()]

        async with self._lock:
            try:
                return await asyncio.to_thread(call)
            except sqlite3.Error as exc:
                raise GatewayError(f"order book: {exc}") from exc


# -- HTTP bodies ---------------------------------------------------------------------------------


class LineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(max_length=64)
    quantity: int = Field(ge=1, le=MAX_QUANTITY)


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service_id: str = Field(max_length=64)
    lines: list[LineIn] = Field(min_length=1, max_length=50)


class LineView(BaseModel):
    item_id: str
    title: str
    title_en: str | None = None
    quantity: int
    price_fen: int


class OrderView(BaseModel):
    key: str = Field(description="idempotency key, made on the box")
    service_id: str
    service_title: str = ""
    service_title_en: str | None = None
    lines: list[LineView]
    total_fen: int
    state: OrderState
    order_id: str | None = None
    reason: str | None = None
    prices: dict[str, int] | None = Field(default=None, description="price_changed: item id → new price")
    new_total_fen: int | None = Field(default=None, description="price_changed: the total at the new prices")
    pay_url: str | None = None
    pay_qr: str | None = Field(default=None, description="confirmed: the payment URL as an SVG QR data URI")
    created_at: str
    updated_at: str


class Problem(BaseModel):
    detail: dict[str, Any] | str = Field(
        description='{"reason", "message"}; or a sentence when the body is not JSON'
    )


def qr_data_uri(text: str) -> str:
    return str(segno.make(text, error="m").svg_data_uri(scale=6, border=2, dark="#000", light="#fff"))


# -- the feature -------------------------------------------------------------------------------------


class OperatorServices:
    """Definitions and orders on the box; a `ServicesView` for the TV menu.

    `async with OperatorServices(state_dir, region=...) as services:`; `link(agent, ...)` when
    the box has a cloud link (without one, ordering answers 503)."""

    def __init__(self, state_dir: Path, *, region: str = "") -> None:
        self.catalog = Catalog(state_dir / SERVICES_FILE, region=region)
        self.book = OrderBook(state_dir / ORDERS_FILE)
        self._send: Send | None = None
        self.ignored_statuses = 0
        #: Set whenever an order changes (tests and the menu's waiting use it).
        self.changed = asyncio.Condition()

    async def __aenter__(self) -> OperatorServices:
        await asyncio.to_thread(self.catalog.load)
        await self.book.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.book.close()

    def link(self, agent: CloudAgent) -> None:
        """Take pushes and statuses from the cloud agent; send orders through its outbox."""
        from cloud_bridge.outbox import MessageClass  # noqa: PLC0415 - only with a cloud link

        async def send(message_type: str, payload: Mapping[str, Any]) -> Any:
            return await agent.send(message_type, payload, MessageClass.CRITICAL)

        self._send = send
        self.catalog.region = agent.region
        agent.on("service", self._on_service)
        agent.on("order.status", self._on_order_status)

    async def send(self, message_type: str, payload: Mapping[str, Any]) -> None:
        if self._send is None:
            raise ServicesUnavailable("this box has no link to the operator's cloud")
        try:
            await self._send(message_type, payload)
        except GatewayError:
            raise
        except Exception as exc:  # OutboxFull and disk errors: the order stays pending
            raise ServicesUnavailable(f"could not queue {message_type}: {exc}") from exc

    # -- ServicesView -----------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        return [summary(d) for d in self.catalog.visible()]

    # -- cloud → box ------------------------------------------------------------------------------

    async def _on_service(self, envelope: Envelope, topic: str) -> None:
        await self.catalog.accept(envelope.payload)

    async def _on_order_status(self, envelope: Envelope, topic: str) -> None:
        try:
            st = OrderStatus.model_validate(envelope.payload)
        except ValueError as exc:
            log.warning("services: malformed order.status %s dropped: %s", envelope.id, exc)
            return
        await self.apply_status(st)

    async def apply_status(self, st: OrderStatus) -> bool:
        """Apply a status from the cloud if it moves the order forward; False otherwise."""
        rows = await self.book.run("SELECT state FROM orders WHERE key = ?", st.key)
        if not rows:
            log.info("services: status for an order this box does not know; ignored")
            return False
        current = OrderState(rows[0]["state"])
        if st.state != current and not can_advance(current, st.state):
            self.ignored_statuses += 1
            log.warning("services: order %s is %s; status %s ignored", st.order_id, current, st.state)
            return False
        await self.book.run(
            "UPDATE orders SET state = ?, order_id = COALESCE(?, order_id), pay_url = ?, reason = ?,"
            " prices = COALESCE(?, prices), updated_at = ? WHERE key = ? AND state = ?",
            st.state.value, st.order_id, st.pay_url if st.state == OrderState.CONFIRMED else None, st.reason,
            json.dumps(st.prices) if st.prices else None, iso(utc_now()), st.key, current.value,
        )  # fmt: skip
        if st.state != current:
            log.info("services: order %s %s → %s", st.order_id, current, st.state)
        async with self.changed:
            self.changed.notify_all()
        return True

    # -- household → cloud ------------------------------------------------------------------------

    async def place(self, body: OrderIn, caller: str) -> OrderView:
        """Store the order (pending), then queue it for the cloud."""
        shop = self.catalog.get(body.service_id)
        if not isinstance(shop, Shop):
            raise LookupError(f"no shop {body.service_id!r} here")  # noqa: TRY004 - a lookup
        lines = []
        for line in body.lines:
            item = shop.item(line.item_id)
            if item is None:
                raise LookupError(f"no item {line.item_id!r} in {shop.service_id}")
            if line.quantity > shop.max_quantity:
                raise ValueError(f"at most {shop.max_quantity} of {item.id}")
            lines.append(OrderLine(item_id=item.id, quantity=line.quantity, price_fen=item.price_fen))
        if self._send is None:  # a shop is here, so the box was linked once: it is not now
            raise ServicesUnavailable("this box has no link to the operator's cloud")
        return await self._store_and_send(shop, lines, caller)

    async def reorder(self, key: str, caller: str) -> OrderView:
        """After `price_changed`: the same lines at the prices the cloud gave; a new order."""
        rows = await self.book.run("SELECT * FROM orders WHERE key = ?", key)
        if not rows:
            raise LookupError("no such order")
        row = rows[0]
        if row["state"] != OrderState.PRICE_CHANGED or not row["prices"]:
            raise ValueError("only an order whose price changed is ordered again")
        shop = self.catalog.get(row["service_id"])
        if not isinstance(shop, Shop):
            raise LookupError(f"the shop {row['service_id']!r} is gone")  # noqa: TRY004 - a lookup
        prices = json.loads(row["prices"])
        lines = [
            OrderLine(
                item_id=line["item_id"], quantity=line["quantity"], price_fen=int(prices[line["item_id"]])
            )
            for line in json.loads(row["lines"])
        ]
        return await self._store_and_send(shop, lines, caller)

    async def _store_and_send(self, shop: Shop, lines: Sequence[OrderLine], caller: str) -> OrderView:
        key = secrets.token_urlsafe(18)
        total = sum(line.quantity * line.price_fen for line in lines)
        req = OrderRequest(
            key=key, service_id=shop.service_id, version=shop.version, lines=lines, total_fen=total
        )
        now = iso(utc_now())
        await self.book.run(
            "INSERT INTO orders (key, service_id, version, lines, total_fen, state, placed_by, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            key, shop.service_id, shop.version, json.dumps([line.model_dump() for line in lines]), total,
            OrderState.PENDING.value, caller[:128], now, now,
        )  # fmt: skip
        log.info(
            "services: order placed in %s (%d lines, %d fen), pending", shop.service_id, len(lines), total
        )
        try:
            await self.send("order", req.model_dump(mode="json"))
        except ServicesUnavailable as exc:
            log.warning("services: order kept pending, sent at the next start: %s", exc)
        view = await self.order(key)
        assert view is not None
        return view

    async def resume(self) -> None:
        """At start: pending orders go again (same key), unfinished ones are asked about."""
        if self._send is None:
            return
        for row in await self.book.run("SELECT * FROM orders WHERE state = ?", OrderState.PENDING.value):
            req = OrderRequest(
                key=row["key"], service_id=row["service_id"], version=row["version"],
                lines=[OrderLine.model_validate(x) for x in json.loads(row["lines"])],
                total_fen=row["total_fen"],
            )  # fmt: skip
            await self.send("order", req.model_dump(mode="json"))
        marks = ",".join("?" * len(_UNFINISHED))
        keys = [
            r["key"]
            for r in await self.book.run(
                f"SELECT key FROM orders WHERE state IN ({marks})",  # noqa: S608 - placeholders only
                *(s.value for s in _UNFINISHED),
            )
        ]
        for start in range(0, len(keys), _SYNC_CHUNK):
            sync = OrderSync(keys=keys[start : start + _SYNC_CHUNK])
            await self.send("order.sync", sync.model_dump())

    # -- reading ------------------------------------------------------------------------------------

    def _view(self, row: Mapping[str, Any]) -> OrderView:
        shop = self.catalog.get(row["service_id"])
        lines = []
        for raw in json.loads(row["lines"]):
            item = shop.item(raw["item_id"]) if isinstance(shop, Shop) else None
            lines.append(
                LineView(
                    item_id=raw["item_id"],
                    title=item.title if item else raw["item_id"],
                    title_en=item.title_en if item else None,
                    quantity=raw["quantity"],
                    price_fen=raw["price_fen"],
                )
            )
        prices = json.loads(row["prices"]) if row["prices"] else None
        state = OrderState(row["state"])
        pay_url = row["pay_url"] if state == OrderState.CONFIRMED else None
        return OrderView(
            key=row["key"],
            service_id=row["service_id"],
            service_title=shop.title if shop else "",
            service_title_en=shop.title_en if shop else None,
            lines=lines,
            total_fen=row["total_fen"],
            state=state,
            order_id=row["order_id"],
            reason=row["reason"],
            prices=prices,
            new_total_fen=sum(x.quantity * int(prices.get(x.item_id, x.price_fen)) for x in lines)
            if prices
            else None,
            pay_url=pay_url,
            pay_qr=qr_data_uri(pay_url) if pay_url else None,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    async def order(self, key: str) -> OrderView | None:
        rows = await self.book.run("SELECT * FROM orders WHERE key = ?", key)
        return self._view(rows[0]) if rows else None

    async def orders(self, limit: int = 50) -> builtins.list[OrderView]:
        rows = await self.book.run("SELECT * FROM orders ORDER BY created_at DESC, key LIMIT ?", limit)
        return [self._view(r) for r in rows]

    async def wait_for(self, key: str, predicate: Callable[[OrderView], bool], timeout_s: float) -> OrderView:
        """Wait (TimeoutError) until the order satisfies `predicate`."""
        async with asyncio.timeout(timeout_s), self.changed:
            while True:
                view = await self.order(key)
                if view is not None and predicate(view):
                    return view
                await self.changed.wait()


# -- HTTP ------------------------------------------------------------------------------------------


def _problem(code: int, reason: str, message: str) -> HTTPException:
    return HTTPException(code, detail={"reason": reason, "message": message})


def commerce_router(services: OperatorServices) -> APIRouter:
    """`/api/v1/services/{id}` (a full definition) and the order endpoints."""
    r = APIRouter(prefix="/api/v1", tags=["services"])

    @r.get("/services/{service_id}", responses={404: {"model": Problem}})
    async def definition(service_id: str) -> dict[str, Any]:
        """The full definition of a service the menu lists (shop, gov or info)."""
        found = services.catalog.get(service_id)
        if found is None:
            raise _problem(404, "unknown_service", f"no service {service_id!r} here")
        return found.model_dump(mode="json", exclude_none=True)

    @r.post(
        "/orders",
        status_code=status.HTTP_202_ACCEPTED,
        responses={400: {"model": Problem}, 401: {}, 404: {"model": Problem}, 503: {"model": Problem}},
    )
    async def place(body: OrderIn, caller: Writer) -> OrderView:
        """Place an order (household or admin token): stored as `pending`, then sent to the cloud.
        Follow it at `GET /api/v1/orders/{key}`."""
        try:
            return await services.place(body, caller)
        except LookupError as exc:
            raise _problem(404, "unknown_item", str(exc)) from exc
        except ValueError as exc:
            raise _problem(400, "bad_order", str(exc)) from exc
        except ServicesUnavailable as exc:
            raise _problem(503, "service_unavailable", str(exc)) from exc

    @r.post(
        "/orders/{key}/reorder",
        status_code=status.HTTP_202_ACCEPTED,
        responses={400: {"model": Problem}, 401: {}, 404: {"model": Problem}, 503: {"model": Problem}},
    )
    async def reorder(key: str, caller: Writer) -> OrderView:
        """Order again at the new prices after `price_changed` (a new order with a new key)."""
        try:
            return await services.reorder(key, caller)
        except LookupError as exc:
            raise _problem(404, "unknown_order", str(exc)) from exc
        except ValueError as exc:
            raise _problem(400, "bad_order", str(exc)) from exc
        except ServicesUnavailable as exc:
            raise _problem(503, "service_unavailable", str(exc)) from exc

    @r.get("/orders")
    async def orders(limit: int = 50) -> list[OrderView]:
        return await services.orders(max(1, min(limit, 500)))

    @r.get("/orders/{key}", responses={404: {"model": Problem}})
    async def order(key: str) -> OrderView:
        found = await services.order(key)
        if found is None:
            raise _problem(404, "unknown_order", "no such order")
        return found

    return r
