"""Government services on the box: notices with read receipts, queries, appointment bookings.

Queries are request/reply through the bridge: a `gov.query` goes straight to the cloud (QoS 1,
not through the durable outbox: it carries personal data such as an ID-card number) and the
answer comes back as `gov.reply` naming its `request_id`. No link, or no answer within the
timeout, is "service unavailable" — a query is never queued for later. The fields entered are
checked here (GB 11643 for ID numbers), never logged, never written to disk, and dropped with
the request (GB/T 41387, EN 303 645 provision 6).

Bookings are idempotent like orders: stored first with a key made on the box, sent through
the outbox, answered with `appointment.status`. Read receipts go up as `notice.read`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_bridge.protocol import Envelope, iso, new_envelope, topics, utc_now
from cloud_bridge.services import (
    AppointmentRequest,
    BookingState,
    BookingStatus,
    GovQuery,
    GovReply,
    GovService,
    NoticeRead,
)
from gateway.errors import GatewayError
from gateway.services.commerce import OperatorServices, Problem, ServicesUnavailable
from gateway.web import require_writer

if TYPE_CHECKING:
    from cloud_bridge.agent import CloudAgent

__all__ = ["DEFAULT_QUERY_TIMEOUT_S", "GovDesk", "govservice_router"]

log = logging.getLogger(__name__)

#: Writes need a household (or the admin) token.
Writer = Annotated[str, Depends(require_writer)]

DEFAULT_QUERY_TIMEOUT_S = 6.0  # under the menu's 8 s fetch timeout: the box answers first
_MAX_WAITING = 32  # queries in flight at once; a household asks one at a time


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fields: dict[str, Annotated[str, Field(max_length=32)]] = Field(max_length=4)


class QueryOut(BaseModel):
    ok: bool
    result: dict[str, Any] | None = None
    reason: str | None = None


class BookingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slot_id: str = Field(max_length=64)


class BookingView(BaseModel):
    key: str
    service_id: str
    appointment_id: str
    slot_id: str
    state: BookingState
    booking_id: str | None = None
    reason: str | None = None
    created_at: str
    updated_at: str


class GovDesk:
    """The box's side of government services. Shares the catalog and the order book with
    `OperatorServices`."""

    def __init__(
        self, services: OperatorServices, *, query_timeout_s: float = DEFAULT_QUERY_TIMEOUT_S
    ) -> None:
        self._services = services
        self._timeout_s = query_timeout_s
        self._publish: Callable[[Envelope], None] | None = None
        self._connected: Callable[[], bool] = lambda: False
        self._gateway_id = ""
        self._waiting: dict[str, asyncio.Future[GovReply]] = {}

    def link(self, agent: CloudAgent) -> None:
        self._gateway_id = gateway_id = agent.gateway_id
        up = topics.up(gateway_id)

        def publish(envelope: Envelope) -> None:
            agent.mqtt.publish(up, envelope.to_bytes(), qos=1)

        self._publish = publish
        self._connected = agent.connected.is_set
        agent.on("gov.reply", self._on_reply)
        agent.on("appointment.status", self._on_booking_status)

    def _gov(self, service_id: str) -> GovService:
        found = self._services.catalog.get(service_id)
        if not isinstance(found, GovService):
            raise LookupError(f"no government service {service_id!r} here")  # noqa: TRY004 - a lookup
        return found

    # -- queries ----------------------------------------------------------------------------------

    async def query(self, service_id: str, query_id: str, fields: dict[str, str]) -> GovReply:
        """Ask the cloud; ServicesUnavailable when it cannot be asked or does not answer in time.
        LookupError/ValueError for an unknown query or fields that do not fit (the reason
        names the field, never its value)."""
        query = self._gov(service_id).query(query_id)
        if query is None:
            raise LookupError(f"no query {query_id!r} in {service_id}")
        names = {f.name for f in query.fields}
        if set(fields) - names:
            raise ValueError("unknown fields: " + ", ".join(sorted(set(fields) - names)))
        problems = [f"{f.name}: {why}" for f in query.fields if (why := f.check(fields.get(f.name, "")))]
        if problems:
            raise ValueError("; ".join(problems))
        if self._publish is None or not self._connected():
            raise ServicesUnavailable("the operator's cloud cannot be reached now")
        if len(self._waiting) >= _MAX_WAITING:
            raise ServicesUnavailable("too many queries in flight; try again shortly")
        request_id = secrets.token_urlsafe(12)
        req = GovQuery(request_id=request_id, service_id=service_id, query_id=query_id, fields=fields)
        fut: asyncio.Future[GovReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        try:
            self._publish(new_envelope("gov.query", req.model_dump(), gateway_id=self._gateway_id))
            async with asyncio.timeout(self._timeout_s):
                reply = await fut
        except TimeoutError as exc:
            log.info("services: query %s/%s not answered in %g s", service_id, query_id, self._timeout_s)
            raise ServicesUnavailable("the service did not answer in time") from exc
        except GatewayError as exc:  # the broker refused the publish
            raise ServicesUnavailable(f"the query could not be sent: {exc}") from exc
        finally:
            self._waiting.pop(request_id, None)
        log.info("services: query %s/%s answered (ok=%s)", service_id, query_id, reply.ok)
        return reply

    async def _on_reply(self, envelope: Envelope, topic: str) -> None:
        try:
            reply = GovReply.model_validate(envelope.payload)
        except ValueError:
            log.warning("services: malformed gov.reply %s dropped", envelope.id)
            return
        fut = self._waiting.get(reply.request_id)
        if fut is not None and not fut.done():
            fut.set_result(reply)
        else:
            log.debug("services: late or unknown gov.reply %s", envelope.id)

    # -- notices ----------------------------------------------------------------------------------

    async def read_notice(self, service_id: str, notice_id: str, by: str) -> bool:
        """Record the receipt (once) and send it up; False if it was read before."""
        gov = self._gov(service_id)
        if gov.notice(notice_id) is None:
            raise LookupError(f"no notice {notice_id!r} in {service_id}")
        rows = await self._services.book.run(
            "INSERT INTO notice_reads (service_id, notice_id, version, read_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING notice_id",
            service_id, notice_id, gov.version, iso(utc_now()),
        )  # fmt: skip
        if not rows:
            return False
        receipt = NoticeRead(service_id=service_id, notice_id=notice_id, version=gov.version, by=by[:128])
        await self._services.send("notice.read", receipt.model_dump())
        return True

    async def read_notices(self, service_id: str) -> list[str]:
        rows = await self._services.book.run(
            "SELECT notice_id FROM notice_reads WHERE service_id = ?", service_id
        )
        return [r["notice_id"] for r in rows]

    # -- bookings ---------------------------------------------------------------------------------

    async def book(self, service_id: str, appointment_id: str, slot_id: str) -> BookingView:
        appointment = self._gov(service_id).appointment(appointment_id)
        if appointment is None or appointment.slot(slot_id) is None:
            raise LookupError(f"no slot {slot_id!r} in {service_id}/{appointment_id}")
        key = secrets.token_urlsafe(18)
        now = iso(utc_now())
        await self._services.book.run(
            "INSERT INTO bookings (key, service_id, appointment_id, slot_id, state, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            key, service_id, appointment_id, slot_id, BookingState.PENDING.value, now, now,
        )  # fmt: skip
        req = AppointmentRequest(
            key=key, service_id=service_id, appointment_id=appointment_id, slot_id=slot_id
        )
        try:
            await self._services.send("appointment", req.model_dump())
        except ServicesUnavailable as exc:
            log.warning("services: booking kept pending: %s", exc)
        found = await self.booking(key)
        assert found is not None
        return found

    async def resume(self) -> None:
        """At start: bookings still pending go again (same key: the cloud books once)."""
        for row in await self._services.book.run("SELECT * FROM bookings WHERE state = 'pending'"):
            req = AppointmentRequest(
                key=row["key"], service_id=row["service_id"], appointment_id=row["appointment_id"],
                slot_id=row["slot_id"],
            )  # fmt: skip
            await self._services.send("appointment", req.model_dump())

    async def _on_booking_status(self, envelope: Envelope, topic: str) -> None:
        try:
            st = BookingStatus.model_validate(envelope.payload)
        except ValueError:
            log.warning("services: malformed appointment.status %s dropped", envelope.id)
            return
        # Only a pending booking takes the cloud's verdict; a verdict never changes afterwards.
        await self._services.book.run(
            "UPDATE bookings SET state = ?, booking_id = ?, reason = ?, updated_at = ?"
            " WHERE key = ? AND state = 'pending'",
            st.state.value, st.booking_id, st.reason, iso(utc_now()), st.key,
        )  # fmt: skip
        async with self._services.changed:
            self._services.changed.notify_all()

    async def booking(self, key: str) -> BookingView | None:
        rows = await self._services.book.run("SELECT * FROM bookings WHERE key = ?", key)
        if not rows:
            return None
        r = rows[0]
        return BookingView(
            key=r["key"], service_id=r["service_id"], appointment_id=r["appointment_id"],
            slot_id=r["slot_id"], state=BookingState(r["state"]), booking_id=r["booking_id"],
            reason=r["reason"], created_at=r["created_at"], updated_at=r["updated_at"],
        )  # fmt: skip


def _problem(code: int, reason: str, message: str) -> HTTPException:
    return HTTPException(code, detail={"reason": reason, "message": message})


def _refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem} for code in codes}


def govservice_router(desk: GovDesk) -> APIRouter:
    r = APIRouter(prefix="/api/v1/services/{service_id}", tags=["services"])

    @r.post("/queries/{query_id}", responses=_refusals(400, 401, 404, 503))
    async def query(service_id: str, query_id: str, body: QueryIn, caller: Writer) -> QueryOut:
        """Ask a government back end (household or admin token). 503 `service_unavailable` when
        the cloud cannot be reached or does not answer in time."""
        try:
            reply = await desk.query(service_id, query_id, body.fields)
        except LookupError as exc:
            raise _problem(404, "unknown_query", str(exc)) from exc
        except ValueError as exc:
            raise _problem(400, "invalid_fields", str(exc)) from exc
        except ServicesUnavailable as exc:
            raise _problem(503, "service_unavailable", str(exc)) from exc
        return QueryOut(ok=reply.ok, result=reply.result, reason=reply.reason)

    @r.get("/notices/read")
    async def notices_read(service_id: str) -> list[str]:
        """Ids of the notices the household has confirmed reading."""
        return await desk.read_notices(service_id)

    @r.post(
        "/notices/{notice_id}/read",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=_refusals(401, 404, 503),
    )
    async def read(service_id: str, notice_id: str, caller: Writer) -> None:
        """The household has read a notice: a read receipt goes to the operator (once)."""
        try:
            await desk.read_notice(service_id, notice_id, caller)
        except LookupError as exc:
            raise _problem(404, "unknown_notice", str(exc)) from exc
        except ServicesUnavailable as exc:
            raise _problem(503, "service_unavailable", str(exc)) from exc

    @r.post(
        "/appointments/{appointment_id}",
        status_code=status.HTTP_202_ACCEPTED,
        responses=_refusals(400, 401, 404, 503),
    )
    async def book(service_id: str, appointment_id: str, body: BookingIn, caller: Writer) -> BookingView:
        """Book a slot: stored as pending, sent through the outbox, answered by the cloud."""
        try:
            return await desk.book(service_id, appointment_id, body.slot_id)
        except LookupError as exc:
            raise _problem(404, "unknown_slot", str(exc)) from exc
        except ServicesUnavailable as exc:
            raise _problem(503, "service_unavailable", str(exc)) from exc

    @r.get("/bookings/{key}", responses=_refusals(404))
    async def booking(service_id: str, key: str) -> BookingView:
        found = await desk.booking(key)
        if found is None or found.service_id != service_id:
            raise _problem(404, "unknown_booking", "no such booking")
        return found

    return r
