"""The reference cloud's government-service back ends, with deterministic data.

- `gov.query` (request/reply): answered with `gov.reply` naming the request. The reference
  social-insurance lookup derives its figures from a hash of the query, so the same ID number
  always gets the same answer and no personal data is kept: the stored copy of the uplink has
  its field values masked (service.py `_record`). An operator can take a back end offline
  (`set_online`) to see what the household sees when a government system is down: no reply,
  and the box says the service is unavailable when its timeout expires.
- `appointment`: bookings keyed by (gateway, idempotency key) like orders, within each slot's
  capacity; answered with `appointment.status`.
- `notice.read`: read receipts; kept as uplinks (`GET /v1/uplinks?type=notice.read`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from pydantic import ValidationError

from cloud_bridge.cloud.db import Batch, BookingRow, CloudDB
from cloud_bridge.cloud.shop import Downlinks, UplinkHandler
from cloud_bridge.protocol import Envelope, new_envelope, utc_now
from cloud_bridge.services import (
    AppointmentRequest,
    BookingState,
    BookingStatus,
    GovQuery,
    GovReply,
    GovService,
)

__all__ = ["GovDesk", "mask_query"]

log = logging.getLogger(__name__)


def mask_query(payload: dict[str, object]) -> dict[str, object]:
    """A `gov.query` payload with every field value replaced (what the cloud stores)."""
    fields = payload.get("fields")
    if isinstance(fields, dict):
        return {**payload, "fields": dict.fromkeys(fields, "***")}
    return payload


class GovDesk:
    def __init__(self, db: CloudDB) -> None:
        self._db = db
        self._offline: set[str] = set()

    def handlers(self) -> dict[str, UplinkHandler]:
        return {"gov.query": self._on_query, "appointment": self._on_appointment}

    def set_online(self, service_id: str, online: bool) -> None:
        (self._offline.discard if online else self._offline.add)(service_id)

    def online(self, service_id: str) -> bool:
        return service_id not in self._offline

    async def _gov(self, tx: Batch, service_id: str) -> GovService | None:
        found = await tx.definition(service_id)
        if found is None or found.withdrawn or found.kind != "gov":
            return None
        return GovService.model_validate(found.definition)

    async def _on_query(self, tx: Batch, gateway_id: str, env: Envelope, downs: Downlinks) -> None:
        try:
            req = GovQuery.model_validate(env.payload)
        except ValidationError as exc:
            log.warning("gateway %s: malformed gov.query (%d errors); dropped", gateway_id, exc.error_count())
            return
        if not self.online(req.service_id):
            log.info(
                "gateway %s: query to %s, whose back end is offline: no reply", gateway_id, req.service_id
            )
            return
        gov = await self._gov(tx, req.service_id)
        query = gov.query(req.query_id) if gov is not None else None
        if query is None:
            reply = GovReply(request_id=req.request_id, ok=False, reason="unknown_query")
        else:
            bad = [f.name for f in query.fields if f.check(req.fields.get(f.name, "")) is not None]
            if bad or set(req.fields) - {f.name for f in query.fields}:
                reply = GovReply(request_id=req.request_id, ok=False, reason="invalid_fields")
            else:
                reply = GovReply(request_id=req.request_id, ok=True, result=_lookup(req))
        log.info(
            "gateway %s: query %s/%s answered (ok=%s)", gateway_id, req.service_id, req.query_id, reply.ok
        )
        downs.append(
            (
                gateway_id,
                new_envelope("gov.reply", reply.model_dump(exclude_none=True), gateway_id=gateway_id),
            )
        )

    async def _on_appointment(self, tx: Batch, gateway_id: str, env: Envelope, downs: Downlinks) -> None:
        try:
            req = AppointmentRequest.model_validate(env.payload)
        except ValidationError:
            log.warning("gateway %s: malformed appointment %s; dropped", gateway_id, env.id)
            return
        row = await tx.booking(gateway_id, req.key)
        if row is None:
            gov = await self._gov(tx, req.service_id)
            appointment = gov.appointment(req.appointment_id) if gov is not None else None
            slot = appointment.slot(req.slot_id) if appointment is not None else None
            if slot is None:
                state = BookingState.REJECTED
            elif await tx.booked(req.service_id, req.appointment_id, req.slot_id) >= slot.capacity:
                state = BookingState.FULL
            else:
                state = BookingState.BOOKED
            row = BookingRow(
                "BK" + secrets.token_hex(6).upper(), gateway_id, req.key, req.service_id, req.appointment_id,
                req.slot_id, state.value, utc_now(),
            )  # fmt: skip
            await tx.add_booking(row)
            log.info("gateway %s: booking %s %s", gateway_id, row.id, row.state)
        status = BookingStatus(
            key=row.booking_key,
            state=BookingState(row.state),
            booking_id=row.id,
            reason=None if row.state == BookingState.BOOKED else row.state,
        )
        downs.append(
            (
                gateway_id,
                new_envelope(
                    "appointment.status",
                    status.model_dump(mode="json", exclude_none=True),
                    gateway_id=gateway_id,
                ),
            )
        )


def _lookup(req: GovQuery) -> dict[str, object]:
    """Deterministic reference data: the same query always gets the same answer."""
    digest = hashlib.sha256(
        "\x1f".join(
            [req.service_id, req.query_id, *(f"{k}={v}" for k, v in sorted(req.fields.items()))]
        ).encode()
    ).digest()
    months = 12 + digest[0] % 240
    balance_fen = months * (38_000 + digest[1] * 100)
    # Labelled lines: the TV renders any back end's answer the same way.
    return {
        "lines": [
            {"label": "参保状态", "label_en": "Status", "value": "正常参保", "value_en": "Insured"},
            {"label": "累计缴费月数", "label_en": "Months paid", "value": f"{months}"},
            {
                "label": "个人账户余额",
                "label_en": "Account balance",
                "value": f"¥{balance_fen // 100}.{balance_fen % 100:02d}",
            },
            {"label": "最近缴费", "label_en": "Last payment", "value": "2024-10"},
        ]
    }
