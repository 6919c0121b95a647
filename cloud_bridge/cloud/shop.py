"""The reference cloud's shop back end (and the store of pushed service definitions).

Catalogs come from the pushed definitions: pushing a newer version of a shop sets its items'
prices and stock; an operator may change one item's price or stock afterwards
(`set_item`). Orders arrive as `order` uplinks and are handled inside the uplink writer's group
commit: an order is stored, and its stock taken, in the same transaction as the uplink, so the
ack the box receives means the order is kept. Orders are keyed by (gateway, idempotency key):
a redelivery, a replay or a resend after a crash finds the order again and gets its current
status, never a second order. Statuses go down as signed `order.status` on `gw/<id>/down`;
a box that is unsure of some orders asks with `order.sync`.

Payment is simulated: the status `confirmed` carries a payment URL (shown as a QR code on the
TV); `payment_callback` is what the payment provider's callback does (marks it paid).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cloud_bridge.cloud.db import Batch, CloudDB, CloudDBError, DefinitionRow, ShopItemRow, ShopOrderRow
from cloud_bridge.protocol import BridgeError, Envelope, canonical_json, iso, new_envelope, topics, utc_now
from cloud_bridge.services import (
    MAX_DEFINITION_BYTES,
    DefinitionError,
    GovService,
    InfoCard,
    OrderRequest,
    OrderState,
    OrderStatus,
    OrderSync,
    Shop,
    Withdrawal,
    can_step,
    parse_definition,
)

if TYPE_CHECKING:
    from cloud_bridge.cloud.service import CloudService

__all__ = ["Downlinks", "ShopDesk", "ShopError", "UplinkHandler"]

log = logging.getLogger(__name__)

#: Downlinks to sign and publish once the group commit holding their cause is stored.
Downlinks = list[tuple[str, Envelope]]
UplinkHandler = Callable[[Batch, str, Envelope, Downlinks], Awaitable[None]]

_S = OrderState
_OPERATOR_STATES = frozenset({_S.SHIPPED, _S.DELIVERED, _S.CANCELLED})


class ShopError(BridgeError):
    """An operator request the shop refuses; `reason` is a stable code, `status` an HTTP code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def validate_definition(data: dict[str, Any]) -> Shop | GovService | InfoCard | Withdrawal:
    """Parse a definition as the gateway will, and bound its size (DefinitionError)."""
    definition = parse_definition(data)
    size = len(canonical_json(data))
    if size > MAX_DEFINITION_BYTES:
        raise DefinitionError([f"the definition is {size} bytes; the limit is {MAX_DEFINITION_BYTES}"])
    return definition


def new_order_id() -> str:
    return "SO" + secrets.token_hex(6).upper()


class ShopDesk:
    """Shop back end: definitions, orders, payments. One per cloud (made by CloudService)."""

    def __init__(self, db: CloudDB, service: CloudService) -> None:
        self._db = db
        self._service = service
        #: Base of the payment URLs shown as QR codes (the cloud's API URL, set by create_app).
        self.pay_base = ""

    def handlers(self) -> dict[str, UplinkHandler]:
        return {"order": self._on_order, "order.sync": self._on_sync}

    # -- definitions ---------------------------------------------------------------------------

    async def define(self, definition: Shop | GovService | InfoCard | Withdrawal) -> None:
        """Store a definition about to be pushed. ShopError 409 for an older version than the
        one stored (re-pushing the same version is allowed: a push to more regions)."""
        current = await self._db.definition(definition.service_id)
        if current is not None and definition.version < current.version:
            raise ShopError(
                409,
                "stale_version",
                f"{definition.service_id} is at version {current.version}; push a newer version",
            )
        if isinstance(definition, Withdrawal):
            kind = definition.kind or (current.kind if current else "")
            body = definition.model_dump(mode="json", exclude_none=True)
        else:
            kind = definition.kind
            body = definition.model_dump(mode="json", exclude_none=True)
        items = None
        newer = current is None or definition.version > current.version
        if isinstance(definition, Shop) and newer:
            items = [
                ShopItemRow(definition.service_id, i.id, i.title, i.price_fen, i.stock)
                for i in definition.items
            ]
        row = DefinitionRow(
            definition.service_id,
            kind,
            definition.version,
            isinstance(definition, Withdrawal),
            body,
            utc_now(),
        )
        await self._db.save_definition(row, items)

    # -- orders (inside the uplink writer's transaction) ------------------------------------------

    async def _on_order(self, tx: Batch, gateway_id: str, env: Envelope, downs: Downlinks) -> None:
        try:
            req = OrderRequest.model_validate(env.payload)
        except ValidationError as exc:
            log.warning(
                "gateway %s: malformed order %s (%d errors); dropped", gateway_id, env.id, exc.error_count()
            )
            return
        existing = await tx.shop_order(gateway_id, req.key)
        if existing is not None:
            log.info(
                "gateway %s: order %s again (key seen before): state %s",
                gateway_id,
                existing.id,
                existing.state,
            )
            downs.append((gateway_id, self.status_envelope(existing)))
            return
        row, prices = await self._place(tx, gateway_id, req)
        await tx.add_shop_order(row)
        log.info(
            "gateway %s: order %s %s (%s, %d fen)",
            gateway_id,
            row.id,
            row.state,
            row.service_id,
            row.total_fen,
        )
        downs.append((gateway_id, self.status_envelope(row, prices=prices)))

    async def _place(
        self, tx: Batch, gateway_id: str, req: OrderRequest
    ) -> tuple[ShopOrderRow, dict[str, int] | None]:
        now = utc_now()
        lines = [line.model_dump() for line in req.lines]

        def attempt(state: OrderState, reason: str | None = None) -> ShopOrderRow:
            return ShopOrderRow(
                new_order_id(), gateway_id, req.key, req.service_id, lines, req.total_fen, state.value,
                reason, secrets.token_urlsafe(16), now, now,
            )  # fmt: skip

        found = await tx.definition(req.service_id)
        if found is None or found.withdrawn or found.kind != "shop":
            return attempt(_S.REJECTED, "unknown_service"), None
        shop = Shop.model_validate(found.definition)
        region = await tx.gateway_region(gateway_id)
        if region is None or not shop.delivers_to(region):
            return attempt(_S.REJECTED, "no_delivery"), None
        items = await tx.shop_items(req.service_id)
        if any(shop.item(line.item_id) is None or line.item_id not in items for line in req.lines):
            return attempt(_S.REJECTED, "unknown_item"), None
        if any(line.quantity > shop.max_quantity for line in req.lines):
            return attempt(_S.REJECTED, "too_many"), None
        current = {line.item_id: items[line.item_id].price_fen for line in req.lines}
        if any(current[line.item_id] != line.price_fen for line in req.lines):
            return attempt(_S.PRICE_CHANGED, "price_changed"), current
        if any(items[line.item_id].stock < line.quantity for line in req.lines):
            return attempt(_S.REJECTED, "out_of_stock"), None
        for line in req.lines:
            if not await tx.take_stock(req.service_id, line.item_id, line.quantity):
                # Someone else took it between the check and here (another cloud process):
                # fail the whole batch; the writer stores it again one by one.
                raise CloudDBError(f"stock of {line.item_id} changed while placing an order")
        return attempt(_S.CONFIRMED), None

    async def _on_sync(self, tx: Batch, gateway_id: str, env: Envelope, downs: Downlinks) -> None:
        try:
            req = OrderSync.model_validate(env.payload)
        except ValidationError:
            log.warning("gateway %s: malformed order.sync %s; dropped", gateway_id, env.id)
            return
        for key in req.keys:
            row = await tx.shop_order(gateway_id, key)
            if row is not None:
                downs.append((gateway_id, self.status_envelope(row)))

    def pay_url(self, row: ShopOrderRow) -> str:
        return f"{self.pay_base}/v1/shop/pay/{row.id}?t={row.pay_token}"

    def status_envelope(
        self, row: ShopOrderRow, *, prices: dict[str, int] | None = None, message: str | None = None
    ) -> Envelope:
        status = OrderStatus(
            key=row.order_key,
            state=OrderState(row.state),
            order_id=row.id,
            total_fen=row.total_fen,
            pay_url=self.pay_url(row) if row.state == _S.CONFIRMED else None,
            reason=row.reason,
            message=message,
            prices=prices,
            at=iso(row.updated_at),
        )
        return new_envelope(
            "order.status", status.model_dump(mode="json", exclude_none=True), gateway_id=row.gateway_id
        )

    # -- operator and payment provider -------------------------------------------------------------

    async def payment_callback(self, order_id: str) -> ShopOrderRow:
        """The payment provider says the order is paid. Idempotent: a second callback finds it paid."""
        return await self._move(order_id, _S.PAID, already_ok=True)

    async def set_status(self, order_id: str, state: OrderState) -> ShopOrderRow:
        if state not in _OPERATOR_STATES:
            raise ShopError(400, "bad_state", "an operator may set shipped, delivered or cancelled")
        return await self._move(order_id, state, already_ok=True)

    async def _move(self, order_id: str, state: OrderState, *, already_ok: bool) -> ShopOrderRow:
        row = await self._db.shop_order_by_id(order_id)
        if row is None:
            raise ShopError(404, "unknown_order", f"no order {order_id!r}")
        current = OrderState(row.state)
        if current == state and already_ok:
            return row
        if not can_step(current, state):
            raise ShopError(
                409, "illegal_transition", f"order {order_id} is {current}; it cannot become {state}"
            )
        now = utc_now()
        from_states = [s.value for s in OrderState if can_step(s, state)]
        if not await self._db.set_order_state(order_id, from_states=from_states, state=state.value, at=now):
            raise ShopError(409, "conflict", f"order {order_id} changed meanwhile; read it and try again")
        moved = await self._db.shop_order_by_id(order_id)
        assert moved is not None
        log.info("order %s: %s → %s", order_id, current, state)
        await self._tell(moved)
        return moved

    async def _tell(self, row: ShopOrderRow) -> None:
        """Push the status to the box. If the broker cannot take it now, the box learns it at its
        next `order.sync` (it asks for unfinished orders whenever it starts)."""
        try:
            await self._service.publish_signed(topics.down(row.gateway_id), self.status_envelope(row))
        except BridgeError as exc:
            log.warning("order %s: status %s not sent to %s now: %s", row.id, row.state, row.gateway_id, exc)
