"""Tortoise models of the device registry. Only gateway/registry.py uses them.

Schema changes ship as migrations in gateway/migrations (made with `tortoise makemigrations`)
and are applied at start-up; see docs/architecture.md, "Registry schema upgrades".
"""

from __future__ import annotations

# Field comments are plain `#` on purpose: tortoise turns `#:` comments into SQL comments, and
# a semicolon inside one breaks its SQLite migration runner.
from typing import Any

from tortoise import fields
from tortoise.models import Model


class Room(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=64, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "rooms"


class Device(Model):
    id = fields.CharField(max_length=64, primary_key=True)
    protocol = fields.CharField(max_length=32, db_index=True)
    # The protocol's own handle for the device (MAC, IEEE address, friendly name, ...).
    native_id = fields.CharField(max_length=256)
    kind = fields.CharField(max_length=16)
    # Name given by the household or installer; empty means "use native_name".
    name = fields.CharField(max_length=128, default="")
    native_name = fields.CharField(max_length=128, default="")
    room: fields.ForeignKeyNullableRelation[Room] = fields.ForeignKeyField(
        "registry.Room", related_name="devices", null=True, on_delete=fields.SET_NULL
    )
    model = fields.CharField(max_length=128, default="")
    manufacturer = fields.CharField(max_length=128, default="")
    address = fields.CharField(max_length=256, default="")
    capabilities: fields.JSONField[list[str]] = fields.JSONField(default=list)
    settable: fields.JSONField[list[str]] = fields.JSONField(default=list)
    ranges: fields.JSONField[dict[str, list[float]]] = fields.JSONField(default=dict)
    controllable = fields.BooleanField(default=False)
    # Adapter-private data needed to reach the device again (topics, endpoints).
    meta: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)
    last_state: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)
    last_seen = fields.DatetimeField(null=True)
    approved = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "devices"


class AlertRecord(Model):
    """An emergency alert the gateway accepted (or raised locally), and where it stands."""

    id = fields.CharField(max_length=64, primary_key=True)  # CAP identity: sender, identifier, sent
    alert: fields.JSONField[dict[str, Any]] = fields.JSONField()  # the normalized alert as received
    level = fields.IntField()  # 1 (特别重大/红) .. 4 (一般/蓝)
    state = fields.CharField(max_length=16, db_index=True)  # active, acknowledged, expired, cancelled
    local = fields.BooleanField(default=False)  # raised by a detector in this home
    expires_at = fields.DatetimeField()
    received_at = fields.DatetimeField()
    acknowledged_at = fields.DatetimeField(null=True)
    acknowledged_by = fields.CharField(max_length=128, default="")
    ended_at = fields.DatetimeField(null=True)

    class Meta:
        table = "alerts"


class AlertTombstone(Model):
    """An alert named by an Update or Cancel: never presented, even if it arrives later."""

    alert_id = fields.CharField(max_length=64, primary_key=True)
    reason = fields.CharField(max_length=16)  # cancelled, updated
    until = fields.DatetimeField()

    class Meta:
        table = "alert_tombstones"
