from tortoise import migrations
from tortoise.migrations import operations as ops
from orjson import loads
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [("cloud", "0001_initial")]

    initial = False

    operations = [
        ops.CreateModel(
            name="AlertReceipt",
            fields=[
                ("n", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("alert_id", fields.CharField(db_index=True, max_length=64)),
                ("gateway_id", fields.CharField(max_length=48)),
                ("stage", fields.CharField(max_length=16)),
                ("device", fields.CharField(null=True, max_length=128)),
                ("ts", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("received_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("detail", fields.JSONField(default=dict, encoder=JSON_DUMPS, decoder=loads)),
            ],
            options={
                "table": "alert_receipts",
                "app": "cloud",
                "pk_attr": "n",
                "table_description": "One stage of one alert at one gateway (and device): received, displayed, spoken, ...",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="CloudAlert",
            fields=[
                ("id", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ("envelope_id", fields.CharField(max_length=64)),
                ("alert", fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ("priority", fields.IntField()),
                ("msg_type", fields.CharField(max_length=16)),
                ("status", fields.CharField(max_length=16)),
                ("targets", fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ("expected", fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("expires_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("state", fields.CharField(default="active", max_length=16)),
                ("accepted_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "alerts",
                "app": "cloud",
                "pk_attr": "id",
                "table_description": "An emergency alert the operator sent, with the gateways it was meant for.",
            },
            bases=["Model"],
        ),
    ]
