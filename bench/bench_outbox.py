"""Durable outbox: messages/s accepted on disk (WAL, synchronous=FULL, group commit).

Baseline in the same run, on the same disk: plain sqlite3 with the same pragmas and one
transaction (one fsync) per message — what "on disk before it counts as accepted" costs
without group commit. Rows: one producer awaiting each message; 64 concurrent producers (as
many devices reporting at once); one producer with 1,000 messages in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, save, show

from cloud_bridge.outbox import MessageClass, Outbox
from cloud_bridge.protocol import new_envelope


def _baseline(path: Path, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE m (seq INTEGER PRIMARY KEY, id TEXT, body BLOB)")
    bodies = [new_envelope("event", {"device": f"d{i % 64}", "seq": i}).to_bytes() for i in range(n)]
    t0 = time.perf_counter()
    for i, body in enumerate(bodies):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO m (id, body) VALUES (?, ?)", (str(i), body))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return n / elapsed


async def _outbox(path: Path, n: int, producers: int, window: int) -> float:
    envelopes = [new_envelope("event", {"device": f"d{i % 64}", "seq": i}) for i in range(n)]
    async with Outbox(path, max_messages=n + 10) as outbox:
        t0 = time.perf_counter()

        async def producer(k: int) -> None:
            mine = envelopes[k::producers]
            for start in range(0, len(mine), window):
                await asyncio.gather(
                    *(outbox.put(e, MessageClass.EVENT) for e in mine[start : start + window])
                )

        await asyncio.gather(*(producer(k) for k in range(producers)))
        elapsed = time.perf_counter() - t0
        assert len(outbox) == n, "every message is kept"
    return n / elapsed


async def main(n: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = _baseline(Path(tmp) / "baseline.sqlite3", min(n, 2000))
        rows.append(["plain SQLite, one transaction per message (baseline)", f"{base:,.0f}", "1.0×"])
        for what, producers, window, count in (
            ("outbox, 1 producer awaiting each message", 1, 1, min(n, 2000)),
            ("outbox, 64 concurrent producers", 64, 1, n),
            ("outbox, 1 producer, 1,000 in flight", 1, 1000, n),
        ):
            rate = await _outbox(Path(tmp) / f"outbox-{producers}-{window}.sqlite3", count, producers, window)
            rows.append([what, f"{rate:,.0f}", f"{rate / base:.1f}×"])
    info = machine()
    show(
        "Durable outbox: messages/s on disk (WAL, synchronous=FULL)",
        ["writer", "msg/s", "vs baseline"],
        rows,
        info,
    )
    save("outbox", {"machine": info, "rows": rows})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().messages))
