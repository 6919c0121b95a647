from tortoise import migrations
from tortoise.migrations import operations as ops
from orjson import loads
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [("registry", "0001_initial")]

    initial = False

    operations = [
        ops.CreateModel(
            name="AlertRecord",
            fields=[
                ("id", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ("alert", fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ("level", fields.IntField()),
                ("state", fields.CharField(db_index=True, max_length=16)),
                ("local", fields.BooleanField(default=False)),
                ("expires_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("received_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("acknowledged_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("acknowledged_by", fields.CharField(default="", max_length=128)),
                ("ended_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "alerts",
                "app": "registry",
                "pk_attr": "id",
                "table_description": "An emergency alert the gateway accepted (or raised locally), and where it stands.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="AlertTombstone",
            fields=[
                ("alert_id", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ("reason", fields.CharField(max_length=16)),
                ("until", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "alert_tombstones",
                "app": "registry",
                "pk_attr": "alert_id",
                "table_description": "An alert named by an Update or Cancel: never presented, even if it arrives later.",
            },
            bases=["Model"],
        ),
    ]
