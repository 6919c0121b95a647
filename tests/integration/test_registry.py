"""The registry on a real SQLite file: pragmas hold, data survives reopening."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.errors import RegistryError
from gateway.registry import DB_FILENAME, DeviceRow, Registry


@pytest.mark.parametrize("sync", ["NORMAL", "FULL"])
async def test_wal_and_synchronous_are_set_explicitly(tmp_path: Path, sync: str) -> None:
    async with Registry(tmp_path, synchronous=sync) as reg:  # type: ignore[arg-type]
        assert await reg.pragmas() == ("wal", sync)
    # WAL is persistent in the file itself: a plain sqlite3 connection sees it too.
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


async def test_devices_and_rooms_survive_reopening(tmp_path: Path) -> None:
    row = DeviceRow(
        id="zigbee-00158d0001a2b3c4",
        protocol="zigbee2mqtt",
        native_id="0x00158d0001a2b3c4",
        kind="light",
        name="落地灯",
        native_name="floor_lamp",
        room="客厅",
        capabilities=["on", "brightness"],
        settable=["on", "brightness"],
        ranges={"color_temp": [2200.0, 6500.0]},
        controllable=True,
        meta={"friendly_name": "客厅/落地灯"},
        approved=True,
    )
    async with Registry(tmp_path) as reg:
        await reg.upsert(row)
        seen = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
        await reg.save_states({row.id: ({"on": True, "brightness": 40}, seen)})
    async with Registry(tmp_path) as reg:
        got = await reg.get(row.id)
        assert got is not None
        assert got.name == "落地灯" and got.room == "客厅"
        assert got.last_state == {"on": True, "brightness": 40}
        assert got.last_seen == seen
        assert got.meta == {"friendly_name": "客厅/落地灯"}
        assert await reg.rooms() == ["客厅"]
        assert await reg.remove(row.id)
        assert await reg.get(row.id) is None


async def test_schema_is_created_by_migrations(tmp_path: Path) -> None:
    async with Registry(tmp_path):
        pass
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert {"devices", "rooms"} <= tables
    assert any("migration" in t for t in tables), tables


async def test_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RegistryError, match="state"):
        await Registry(blocker / "sub").open()


async def test_closed_registry_cannot_be_reused(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    await reg.open()
    await reg.close()
    await reg.close()  # idempotent
    with pytest.raises(RegistryError):
        await reg.open()
