from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields


class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name="Room",
            fields=[
                (
                    "id",
                    fields.IntField(generated=True, primary_key=True, unique=True, db_index=True),
                ),
                ("name", fields.CharField(unique=True, max_length=64)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "rooms", "app": "registry", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Device",
            fields=[
                (
                    "id",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64),
                ),
                ("protocol", fields.CharField(db_index=True, max_length=32)),
                ("native_id", fields.CharField(max_length=256)),
                ("kind", fields.CharField(max_length=16)),
                ("name", fields.CharField(default="", max_length=128)),
                ("native_name", fields.CharField(default="", max_length=128)),
                (
                    "room",
                    fields.ForeignKeyField(
                        "registry.Room",
                        source_field="room_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="devices",
                        on_delete=OnDelete.SET_NULL,
                    ),
                ),
                ("model", fields.CharField(default="", max_length=128)),
                ("manufacturer", fields.CharField(default="", max_length=128)),
                ("address", fields.CharField(default="", max_length=256)),
                (
                    "capabilities",
                    fields.JSONField(
                        default=list,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                (
                    "settable",
                    fields.JSONField(
                        default=list,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                (
                    "ranges",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("controllable", fields.BooleanField(default=False)),
                (
                    "meta",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                (
                    "last_state",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("last_seen", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("approved", fields.BooleanField(default=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={"table": "devices", "app": "registry", "pk_attr": "id"},
            bases=["Model"],
        ),
    ]
