"""Operator services (Contract 3 `service` pushes): the definitions, the messages about orders,
bookings and queries, and the order state machine. Shared by the cloud and the gateway.

A definition is a shop, a government service or an information card, identified by
`service_id` and versioned (`version`, an int: a newer one replaces an older one, an older or
equal one is ignored); `{"service_id", "version", "withdrawn": true}` removes a service.
Both ends validate with the same models: the cloud before it signs (the operator gets the
reasons), the gateway again before it caches. Money is in fen (分, ints), never floats.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from cloud_bridge.protocol import BridgeError, parse_ts, region_prefixes

__all__ = [
    "MAX_DEFINITION_BYTES",
    "MAX_IMAGE_BYTES",
    "MAX_QUANTITY",
    "Appointment",
    "AppointmentRequest",
    "Booking",
    "BookingState",
    "BookingStatus",
    "Category",
    "Definition",
    "DefinitionError",
    "FormField",
    "GovQuery",
    "GovReply",
    "GovService",
    "InfoCard",
    "Item",
    "Notice",
    "NoticeRead",
    "OrderLine",
    "OrderRequest",
    "OrderState",
    "OrderStatus",
    "OrderSync",
    "Query",
    "Shop",
    "Slot",
    "Withdrawal",
    "can_advance",
    "can_step",
    "id_card_valid",
    "parse_definition",
    "summary",
]

#: A definition travels in one envelope (MAX_ENVELOPE_BYTES = 256 KiB) with room to spare.
MAX_DEFINITION_BYTES = 192 * 1024
#: One inline image (decoded bytes): an icon or a small product photo; bigger ones are refused.
MAX_IMAGE_BYTES = 16 * 1024
MAX_QUANTITY = 99
MAX_PRICE_FEN = 10_000_000_00  # ¥10 million: far above anything sold on a TV
_IMAGE = re.compile(r"^data:image/(png|jpeg|webp|gif);base64,([A-Za-z0-9+/]+={0,2})$")
# GB 11643-1999: weights of the first 17 digits; the check character is _CHECK[sum mod 11].
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

Ident = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Title = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=4000)]
Region = Annotated[str, StringConstraints(pattern=r"^\d{2,12}$")]


class DefinitionError(BridgeError):
    """A service definition that must not be used; `reasons`: one line per problem."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons[:5]) or "invalid service definition")
        self.reasons = reasons


def id_card_valid(number: str) -> bool:
    """A PRC resident ID number (GB 11643-1999): 17 digits with a valid birth date, then the
    ISO 7064 MOD 11-2 check character (0-9 or X)."""
    if len(number) != 18 or not number[:17].isascii() or not number[:17].isdigit():
        return False
    try:
        date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return number[17].upper() == _ID_CHECK[total % 11]


def _image(value: str | None) -> str | None:
    if value is None:
        return None
    match = _IMAGE.fullmatch(value)
    if match is None:
        raise ValueError("image must be a data: URI (png, jpeg, webp or gif, base64)")
    try:
        size = len(base64.b64decode(match.group(2), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("image is not valid base64") from exc
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"image is {size} bytes; the limit is {MAX_IMAGE_BYTES}")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Base(_Model):
    service_id: Ident
    version: int = Field(ge=1, le=2**53)
    title: Title
    title_en: Title | None = None
    description: Text = ""
    description_en: Text = ""
    withdrawn: Literal[False] = False


# -- shop ----------------------------------------------------------------------------------------


class Category(_Model):
    id: Ident
    title: Title
    title_en: Title | None = None


class Item(_Model):
    id: Ident
    category: Ident
    title: Title
    title_en: Title | None = None
    unit: Annotated[str, StringConstraints(max_length=16)] = ""
    unit_en: Annotated[str, StringConstraints(max_length=16)] = ""
    price_fen: int = Field(ge=0, le=MAX_PRICE_FEN)
    stock: int = Field(ge=0, le=10_000_000)
    image: str | None = Field(default=None, description="a data: URI, at most MAX_IMAGE_BYTES decoded")

    _check_image = field_validator("image")(_image)


class Shop(_Base):
    kind: Literal["shop"]
    currency: Literal["CNY"] = "CNY"
    categories: list[Category] = Field(min_length=1, max_length=50)
    items: list[Item] = Field(min_length=1, max_length=500)
    delivery_areas: list[Region] = Field(
        default_factory=list, max_length=1000, description="region-code prefixes; empty: everywhere"
    )
    max_quantity: int = Field(default=MAX_QUANTITY, ge=1, le=MAX_QUANTITY)

    @field_validator("delivery_areas")
    @classmethod
    def _areas(cls, value: list[str]) -> list[str]:
        for code in value:
            region_prefixes(code)
        return value

    @model_validator(mode="after")
    def _refs(self) -> Shop:
        cats = [c.id for c in self.categories]
        if len(set(cats)) != len(cats):
            raise ValueError("category ids must be unique")
        ids = [i.id for i in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError("item ids must be unique")
        for item in self.items:
            if item.category not in cats:
                raise ValueError(f"item {item.id} names an unknown category {item.category}")
        return self

    def item(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    def delivers_to(self, region: str) -> bool:
        if not self.delivery_areas:
            return True
        try:
            prefixes = set(region_prefixes(region))
        except ValueError:
            return False
        return any(code in prefixes for code in self.delivery_areas)


# -- government services ---------------------------------------------------------------------------


class Notice(_Model):
    id: Ident
    title: Title
    title_en: Title | None = None
    body: Text
    body_en: Text = ""
    published: date
    receipt: bool = Field(default=True, description="ask the household to confirm it has read it")


class FormField(_Model):
    """A field typed with the remote's number keys. `id_card` takes 18 characters, the last
    one may be X (the check character of GB 11643)."""

    name: Ident
    label: Title
    label_en: Title | None = None
    type: Literal["id_card", "digits"]
    min_length: int = Field(default=1, ge=1, le=32)
    max_length: int = Field(default=18, ge=1, le=32)

    @model_validator(mode="after")
    def _lengths(self) -> FormField:
        if self.min_length > self.max_length:
            raise ValueError("min_length is greater than max_length")
        return self

    def check(self, value: str) -> str | None:
        """None when `value` fits, else a reason (never the value itself)."""
        if self.type == "id_card":
            return None if id_card_valid(value) else "not a valid ID card number (GB 11643)"
        if not (value.isascii() and value.isdigit()):
            return "digits only"
        if not self.min_length <= len(value) <= self.max_length:
            return f"{self.min_length}-{self.max_length} digits"
        return None


class Query(_Model):
    id: Ident
    title: Title
    title_en: Title | None = None
    fields: list[FormField] = Field(min_length=1, max_length=4)

    @model_validator(mode="after")
    def _names(self) -> Query:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("field names must be unique")
        return self


class Slot(_Model):
    id: Ident
    start: str = Field(max_length=40, description="ISO-8601 with a zone")
    capacity: int = Field(ge=1, le=10_000)

    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        parse_ts(value)
        return value

    @property
    def starts_at(self) -> datetime:
        return parse_ts(self.start)


class Appointment(_Model):
    id: Ident
    title: Title
    title_en: Title | None = None
    location: Annotated[str, StringConstraints(max_length=200)] = ""
    location_en: Annotated[str, StringConstraints(max_length=200)] = ""
    slots: list[Slot] = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _ids(self) -> Appointment:
        ids = [s.id for s in self.slots]
        if len(set(ids)) != len(ids):
            raise ValueError("slot ids must be unique")
        return self

    def slot(self, slot_id: str) -> Slot | None:
        return next((s for s in self.slots if s.id == slot_id), None)


class GovService(_Base):
    kind: Literal["gov"]
    notices: list[Notice] = Field(default_factory=list, max_length=100)
    queries: list[Query] = Field(default_factory=list, max_length=20)
    appointments: list[Appointment] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _ids(self) -> GovService:
        for what, ids in (
            ("notice", [n.id for n in self.notices]),
            ("query", [q.id for q in self.queries]),
            ("appointment", [a.id for a in self.appointments]),
        ):
            if len(set(ids)) != len(ids):
                raise ValueError(f"{what} ids must be unique")
        if not (self.notices or self.queries or self.appointments):
            raise ValueError("a government service needs notices, queries or appointments")
        return self

    def query(self, query_id: str) -> Query | None:
        return next((q for q in self.queries if q.id == query_id), None)

    def appointment(self, appointment_id: str) -> Appointment | None:
        return next((a for a in self.appointments if a.id == appointment_id), None)

    def notice(self, notice_id: str) -> Notice | None:
        return next((n for n in self.notices if n.id == notice_id), None)


# -- information card ----------------------------------------------------------------------------


class InfoCard(_Base):
    kind: Literal["info"]
    body: Text = Field(min_length=1)
    body_en: Text = ""
    image: str | None = None

    _check_image = field_validator("image")(_image)


class Withdrawal(_Model):
    service_id: Ident
    version: int = Field(ge=1, le=2**53)
    withdrawn: Literal[True]
    kind: Literal["shop", "gov", "info"] | None = None


Definition = Annotated[Shop | GovService | InfoCard, Field(discriminator="kind")]
_DEFINITION: TypeAdapter[Shop | GovService | InfoCard] = TypeAdapter(Definition)


def _reasons(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"])
        out.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return out


def parse_definition(data: Any) -> Shop | GovService | InfoCard | Withdrawal:
    """A pushed `service` payload → its model; DefinitionError (with reasons) for anything else."""
    if not isinstance(data, dict):
        raise DefinitionError(["a service definition is a JSON object"])
    try:
        if data.get("withdrawn") is True:
            return Withdrawal.model_validate(data)
        return _DEFINITION.validate_python(data)
    except ValidationError as exc:
        raise DefinitionError(_reasons(exc)) from exc
    except ValueError as exc:  # a validator's own error outside pydantic's wrapping
        raise DefinitionError([str(exc)]) from exc


def summary(definition: Shop | GovService | InfoCard) -> dict[str, Any]:
    """What a services list shows: `{service_id, version, kind, title, title_en}`."""
    return {
        "service_id": definition.service_id,
        "version": definition.version,
        "kind": definition.kind,
        "title": definition.title,
        "title_en": definition.title_en,
    }


# -- orders --------------------------------------------------------------------------------------


class OrderState(StrEnum):
    """`pending`: stored on the box, not yet answered by the cloud. The cloud answers
    `confirmed` (placed, stock taken, waiting for payment), `price_changed` (not placed: a price
    differs; the household may order again at the new prices) or `rejected` (not placed)."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    PRICE_CHANGED = "price_changed"
    REJECTED = "rejected"
    PAID = "paid"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


_S = OrderState
#: The only steps an order takes. Terminal: price_changed, rejected, delivered, cancelled.
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    _S.PENDING: frozenset({_S.CONFIRMED, _S.PRICE_CHANGED, _S.REJECTED}),
    _S.CONFIRMED: frozenset({_S.PAID, _S.CANCELLED}),
    _S.PAID: frozenset({_S.SHIPPED, _S.CANCELLED}),
    _S.SHIPPED: frozenset({_S.DELIVERED}),
    _S.PRICE_CHANGED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.DELIVERED: frozenset(),
    _S.CANCELLED: frozenset(),
}


def can_step(current: OrderState, new: OrderState) -> bool:
    """One legal step (what the cloud allows an operator or the payment provider to do)."""
    return new in TRANSITIONS[current]


def can_advance(current: OrderState, new: OrderState) -> bool:
    """Whether `new` lies ahead of `current` along legal steps (what the box accepts from the
    cloud: a status that overtook an earlier one still moves the order forward, never back)."""
    seen: set[OrderState] = set()
    frontier = set(TRANSITIONS[current])
    while frontier:
        if new in frontier:
            return True
        seen |= frontier
        frontier = {n for s in frontier for n in TRANSITIONS[s]} - seen
    return False


class OrderLine(_Model):
    item_id: Ident
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    price_fen: int = Field(ge=0, le=MAX_PRICE_FEN, description="the unit price the household saw")


OrderKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]


class OrderRequest(_Model):
    """Uplink `order`: generated on the box; `key` is its idempotency key."""

    key: OrderKey
    service_id: Ident
    version: int = Field(ge=1)
    lines: list[OrderLine] = Field(min_length=1, max_length=50)
    total_fen: int = Field(ge=0)

    @model_validator(mode="after")
    def _total(self) -> OrderRequest:
        if sum(line.quantity * line.price_fen for line in self.lines) != self.total_fen:
            raise ValueError("total_fen is not the sum of the lines")
        ids = [line.item_id for line in self.lines]
        if len(set(ids)) != len(ids):
            raise ValueError("one line per item")
        return self


class OrderSync(_Model):
    """Uplink `order.sync`: the box asks for the current state of orders it is unsure of."""

    keys: list[OrderKey] = Field(min_length=1, max_length=200)


class OrderStatus(_Model):
    """Downlink `order.status` (on `gw/<id>/down`)."""

    key: OrderKey
    state: OrderState
    order_id: str | None = Field(default=None, max_length=64)
    total_fen: int | None = None
    pay_url: str | None = Field(default=None, max_length=500)
    reason: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, max_length=500)
    prices: dict[str, int] | None = Field(default=None, description="item id → the current price")
    at: str | None = None


# -- government requests ----------------------------------------------------------------------------


class GovQuery(_Model):
    """Uplink `gov.query` (sent directly, never through the durable outbox: it carries personal
    data). The cloud answers with `gov.reply` naming `request_id`."""

    request_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
    service_id: Ident
    query_id: Ident
    fields: dict[str, Annotated[str, StringConstraints(max_length=32)]] = Field(max_length=4)


class GovReply(_Model):
    request_id: str = Field(max_length=64)
    ok: bool
    result: dict[str, Any] | None = None
    reason: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, max_length=500)


class BookingState(StrEnum):
    PENDING = "pending"
    BOOKED = "booked"
    FULL = "full"
    REJECTED = "rejected"


class AppointmentRequest(_Model):
    """Uplink `appointment`: idempotent by `key`, like orders."""

    key: OrderKey
    service_id: Ident
    appointment_id: Ident
    slot_id: Ident


class BookingStatus(_Model):
    """Downlink `appointment.status`."""

    key: OrderKey
    state: BookingState
    booking_id: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, max_length=64)


class Booking(_Model):
    key: OrderKey
    service_id: Ident
    appointment_id: Ident
    slot_id: Ident
    state: BookingState
    booking_id: str | None = None


class NoticeRead(_Model):
    """Uplink `notice.read`: the household confirmed it has read a notice (a read receipt)."""

    service_id: Ident
    notice_id: Ident
    version: int = Field(ge=1)
    by: Annotated[str, StringConstraints(max_length=128)] = ""
