"""The durable outbox on real SQLite files, including kill -9 of the writing process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cloud_bridge.outbox import MessageClass, Outbox, OutboxFull
from cloud_bridge.protocol import new_envelope

C, E, T = MessageClass.CRITICAL, MessageClass.EVENT, MessageClass.TELEMETRY


def env(i: int, kind: str = "event") -> object:
    return new_envelope(kind, {"seq": i}, gateway_id="gw-1", id_=f"msg-{i:06d}")


async def test_wal_full_and_everything_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox(path) as box:
        assert await box.pragmas() == ("wal", 2)  # synchronous=FULL
        for i in range(50):
            await box.put(env(i), E)  # type: ignore[arg-type]
    async with Outbox(path) as box:
        assert len(box) == 50
        sent = await box.take(20)
        assert [p.id for p in sent] == [f"msg-{i:06d}" for i in range(20)]
        assert await box.ack(p.id for p in sent[:10]) == 10
    async with Outbox(path) as box:
        assert len(box) == 40
        first = await box.take(1)
        assert first[0].id == "msg-000010"  # unacked ones come back, in order


async def test_critical_first_then_events_then_telemetry(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.sqlite3") as box:
        await box.put(env(1, "telemetry"), T)  # type: ignore[arg-type]
        await box.put(env(2), E)  # type: ignore[arg-type]
        await box.put(env(3, "receipt"), C)  # type: ignore[arg-type]
        await box.put(env(4), E)  # type: ignore[arg-type]
        assert [p.id[-1] for p in await box.take(10)] == ["3", "2", "4", "1"]


async def test_in_flight_messages_are_sent_again_until_acked(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.sqlite3") as box:
        for i in range(5):
            await box.put(env(i), E)  # type: ignore[arg-type]
        batch = await box.take(5)
        assert await box.take(5) == []
        await box.ack([batch[1].id])
        assert box.requeue_in_flight() == 4
        again = await box.take(10)
        assert [p.id for p in again] == [batch[i].id for i in (0, 2, 3, 4)]


async def test_overflow_drops_telemetry_then_events_never_critical(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.sqlite3", max_messages=10) as box:
        for i in range(5):
            await box.put(env(i, "telemetry"), T)  # type: ignore[arg-type]
        for i in range(5, 10):
            await box.put(env(i), E)  # type: ignore[arg-type]
        # Full: a receipt pushes out the oldest telemetry.
        assert await box.put(env(100, "receipt"), C)  # type: ignore[arg-type]
        ids = [p.id for p in await box.take(20)]
        assert "msg-000000" not in ids and "msg-000100" in ids
        box.requeue_in_flight()
        # New telemetry when only events and critical are left is refused, not stored.
        for i in range(1, 5):
            await box.ack([f"msg-{i:06d}"])
        for i in range(200, 205):
            assert await box.put(env(i, "receipt"), C)  # type: ignore[arg-type]
        assert not await box.put(env(300, "telemetry"), T)  # type: ignore[arg-type]
        # Critical pushes out events, and when only critical is left it is refused loudly.
        for i in range(400, 404):
            await box.put(env(i, "receipt"), C)  # type: ignore[arg-type]
        with pytest.raises(OutboxFull):
            await box.put(env(404, "receipt"), C)  # type: ignore[arg-type]
        box.requeue_in_flight()
        kinds = {p.cls for p in await box.take(20)}
        assert kinds == {C}
        assert len(box) == 10


async def test_downlink_ids_are_remembered_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    async with Outbox(path) as box:
        assert not await box.seen_before("cmd-1")
        assert await box.seen_before("cmd-1")
    async with Outbox(path) as box:
        assert await box.seen_before("cmd-1")
        assert not await box.seen_before("cmd-2")


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from cloud_bridge.outbox import MessageClass, Outbox
    from cloud_bridge.protocol import new_envelope

    async def main():
        async with Outbox(Path(sys.argv[1])) as box:
            async def one(i):
                await box.put(new_envelope("event", {"i": i}, id_=f"k-{i:07d}"), MessageClass.EVENT)
                sys.stdout.write(f"{i}\\n")  # accepted: on disk
            i = 0
            while True:
                await asyncio.gather(*(one(i + j) for j in range(50)))
                sys.stdout.flush()
                i += 50

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("run", range(3))
async def test_nothing_accepted_is_lost_on_kill_9(tmp_path: Path, run: int) -> None:
    path = tmp_path / "o.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    accepted: list[int] = []
    target = 300 + run * 700
    while len(accepted) < target:
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        accepted.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = await proc.communicate()
    accepted += [int(x) for x in rest.split()]
    async with Outbox(path) as box:
        stored = {p.id for p in await box.take(1_000_000)}
    missing = [i for i in accepted if f"k-{i:07d}" not in stored]
    assert not missing, f"{len(missing)} accepted messages lost"
