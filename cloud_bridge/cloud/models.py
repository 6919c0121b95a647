"""Tortoise models of the reference cloud. Only cloud_bridge/cloud/db.py uses them.

Schema changes ship as migrations in cloud_bridge/cloud/migrations (made with `tortoise
makemigrations`, app label `cloud`) and are applied at start-up, on SQLite and PostgreSQL alike.
Tables name gateways by id without foreign keys on purpose: uplinks from a gateway the registry
does not know (an external broker, a deleted gateway) are still evidence worth keeping.
"""

from __future__ import annotations

# Field comments are plain `#` on purpose: tortoise turns `#:` comments into SQL comments, and
# a semicolon inside one breaks its SQLite migration runner.
from typing import Any

from tortoise import fields
from tortoise.models import Model


class Gateway(Model):
    id = fields.CharField(max_length=48, primary_key=True)
    household = fields.CharField(max_length=128)
    # 行政区划代码 (2, 4, 6, 9 or 12 digits); the ACL and region filters use its prefixes.
    region = fields.CharField(max_length=12, db_index=True)
    cert_fingerprint = fields.CharField(max_length=64)
    cert_not_after = fields.DatetimeField()
    provisioned_at = fields.DatetimeField()
    online = fields.BooleanField(default=False)
    last_seen = fields.DatetimeField(null=True)
    version = fields.CharField(max_length=64, default="")
    # The newest signing key this gateway has been told about (provisioning or trust.update).
    trust_n = fields.IntField(default=0)

    class Meta:
        table = "gateways"


class DeviceShadow(Model):
    n = fields.BigIntField(primary_key=True)
    gateway_id = fields.CharField(max_length=48)
    device_id = fields.CharField(max_length=128)
    info: fields.JSONField[dict[str, Any] | None] = fields.JSONField(null=True)
    state: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)
    online = fields.BooleanField(null=True)
    updated_at = fields.DatetimeField()

    class Meta:
        table = "device_shadows"
        unique_together = (("gateway_id", "device_id"),)


class Uplink(Model):
    # Storage order: "in order per device" is the order of `n`.
    n = fields.BigIntField(primary_key=True)
    envelope_id = fields.CharField(max_length=64, unique=True)
    gateway_id = fields.CharField(max_length=48, db_index=True)
    type = fields.CharField(max_length=48)
    ts = fields.DatetimeField()
    received_at = fields.DatetimeField()
    device = fields.CharField(max_length=128, null=True)
    seq = fields.BigIntField(null=True)
    payload: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)

    class Meta:
        table = "uplinks"
        indexes = (("gateway_id", "type"),)


class WorkOrder(Model):
    n = fields.IntField(primary_key=True)
    # SHA-256 of the normalized code; the code itself is shown once and never stored.
    code_hash = fields.CharField(max_length=64, unique=True)
    household = fields.CharField(max_length=128)
    region = fields.CharField(max_length=12)
    created_by = fields.CharField(max_length=16)
    created_at = fields.DatetimeField()
    expires_at = fields.DatetimeField()
    used_at = fields.DatetimeField(null=True)
    gateway_id = fields.CharField(max_length=48, null=True)

    class Meta:
        table = "work_orders"


class Command(Model):
    # The id of the signed `command` envelope; replies name it as `command_id`.
    id = fields.CharField(max_length=64, primary_key=True)
    gateway_id = fields.CharField(max_length=48, db_index=True)
    name = fields.CharField(max_length=32)
    args: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)
    status = fields.CharField(max_length=16, default="sent")
    result: fields.JSONField[Any] = fields.JSONField(null=True)
    error: fields.JSONField[Any] = fields.JSONField(null=True)
    created_at = fields.DatetimeField()
    replied_at = fields.DatetimeField(null=True)

    class Meta:
        table = "commands"


class ServicePush(Model):
    id = fields.CharField(max_length=64, primary_key=True)
    target: fields.JSONField[dict[str, Any]] = fields.JSONField()
    service: fields.JSONField[dict[str, Any]] = fields.JSONField()
    topics: fields.JSONField[list[str]] = fields.JSONField()
    kid = fields.CharField(max_length=64)
    created_at = fields.DatetimeField()

    class Meta:
        table = "service_pushes"


class SecurityEvent(Model):
    n = fields.BigIntField(primary_key=True)
    at = fields.DatetimeField()
    gateway_id = fields.CharField(max_length=48, null=True, db_index=True)
    # `cloud` (seen by the cloud) or `gateway` (reported by the gateway in a `security` uplink).
    source = fields.CharField(max_length=16)
    reason = fields.CharField(max_length=64)
    detail = fields.TextField(default="")
    envelope_id = fields.CharField(max_length=64, null=True)

    class Meta:
        table = "security_events"


class CloudAlert(Model):
    """An emergency alert the operator sent, with the gateways it was meant for."""

    id = fields.CharField(max_length=64, primary_key=True)  # CAP identity (sender, identifier, sent)
    envelope_id = fields.CharField(max_length=64)
    alert: fields.JSONField[dict[str, Any]] = fields.JSONField()  # the normalized alert
    priority = fields.IntField()
    msg_type = fields.CharField(max_length=16)
    status = fields.CharField(max_length=16)
    targets: fields.JSONField[list[str]] = fields.JSONField()  # region codes, or ["all"]
    expected: fields.JSONField[list[str]] = fields.JSONField()  # gateways in those regions when sent
    created_at = fields.DatetimeField()
    expires_at = fields.DatetimeField()
    state = fields.CharField(max_length=16, default="active")  # active, cancelled, updated, expired
    accepted_at = fields.DatetimeField()  # when the operator API accepted it (latency stage 0)
    state_changed_at = fields.DatetimeField(null=True)  # when `state` last changed

    class Meta:
        table = "alerts"


class CloudAlertTombstone(Model):
    """An alert an Update or Cancel named: if it arrives afterwards it is kept, never sent."""

    alert_id = fields.CharField(max_length=64, primary_key=True)
    state = fields.CharField(max_length=16)  # cancelled, updated
    by = fields.CharField(max_length=64)  # the Update or Cancel that named it
    at = fields.DatetimeField()

    class Meta:
        table = "alert_tombstones"


class AlertReceipt(Model):
    """One stage of one alert at one gateway (and device): received, displayed, spoken, ..."""

    n = fields.BigIntField(primary_key=True)
    alert_id = fields.CharField(max_length=64, db_index=True)
    gateway_id = fields.CharField(max_length=48)
    stage = fields.CharField(max_length=16)
    device = fields.CharField(max_length=128, null=True)
    ts = fields.DatetimeField()
    received_at = fields.DatetimeField()
    detail: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)

    class Meta:
        table = "alert_receipts"


class ServiceDefinition(Model):
    """The newest definition the operator pushed for each service (shop catalogs come from here)."""

    service_id = fields.CharField(max_length=64, primary_key=True)
    kind = fields.CharField(max_length=8)
    version = fields.BigIntField()
    withdrawn = fields.BooleanField(default=False)
    definition: fields.JSONField[dict[str, Any]] = fields.JSONField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "service_definitions"


class ShopItem(Model):
    """Price and stock the shop back end checks orders against (stock is taken once per order)."""

    n = fields.BigIntField(primary_key=True)
    service_id = fields.CharField(max_length=64)
    item_id = fields.CharField(max_length=64)
    title = fields.CharField(max_length=64)
    price_fen = fields.BigIntField()
    stock = fields.BigIntField()

    class Meta:
        table = "shop_items"
        unique_together = (("service_id", "item_id"),)


class ShopOrder(Model):
    """One order attempt, keyed by the box's idempotency key: redeliveries find it again."""

    id = fields.CharField(max_length=32, primary_key=True)
    gateway_id = fields.CharField(max_length=48, db_index=True)
    order_key = fields.CharField(max_length=64)
    service_id = fields.CharField(max_length=64)
    lines: fields.JSONField[list[dict[str, Any]]] = fields.JSONField()
    total_fen = fields.BigIntField()
    # confirmed, price_changed, rejected, paid, shipped, delivered, cancelled
    state = fields.CharField(max_length=16)
    reason = fields.CharField(max_length=64, null=True)
    pay_token = fields.CharField(max_length=64)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "shop_orders"
        unique_together = (("gateway_id", "order_key"),)


class GovBooking(Model):
    """An appointment booking, keyed like orders by (gateway, idempotency key)."""

    id = fields.CharField(max_length=32, primary_key=True)
    gateway_id = fields.CharField(max_length=48)
    booking_key = fields.CharField(max_length=64)
    service_id = fields.CharField(max_length=64)
    appointment_id = fields.CharField(max_length=64)
    slot_id = fields.CharField(max_length=64, db_index=True)
    state = fields.CharField(max_length=16)
    created_at = fields.DatetimeField()

    class Meta:
        table = "gov_bookings"
        unique_together = (("gateway_id", "booking_key"),)
