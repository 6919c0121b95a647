"""The durable outbox: what the gateway has accepted for the cloud, on disk until the cloud
has it.

SQLite in WAL mode with `synchronous=FULL`, written by one thread. Writes that arrive while a
transaction is being written share the next one (group commit, no fixed delay): a message
counts as accepted only once its transaction is on disk, and one fsync serves a whole batch.
A message leaves the outbox when the cloud acknowledges it end to end (a signed `ack` naming
its id, sent after the cloud committed it) — a broker's PUBACK alone is not enough, because a
broker that crashes loses what it had queued. Unacknowledged messages are sent again after a
reconnect or a timeout; the cloud de-duplicates by id.

Classes, in sending order: 0 critical (receipts, orders, replies, security events), 1 events,
2 telemetry. Within a class, messages go in the order they were accepted, which keeps each
device's messages in order. The outbox is bounded: when full, the oldest telemetry goes first,
then the oldest events; critical messages are never dropped before their lifetime ends — when
only they fill the outbox, new critical messages are refused with OutboxFull.

The same database remembers downlink ids already acted on, so a redelivered command never
runs twice, across restarts too.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import TracebackType

from cloud_bridge.protocol import BridgeError, Envelope

__all__ = ["DEFAULT_LIFETIMES_S", "MessageClass", "Outbox", "OutboxFull", "OutboxStats", "Pending"]

log = logging.getLogger(__name__)


class MessageClass(IntEnum):
    CRITICAL = 0  # receipts, orders, replies, security events
    EVENT = 1
    TELEMETRY = 2


DEFAULT_LIFETIMES_S: Mapping[MessageClass, float] = {
    MessageClass.CRITICAL: 7 * 86400,
    MessageClass.EVENT: 86400,
    MessageClass.TELEMETRY: 3600,
}
_MAX_BATCH = 2000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    cls INTEGER NOT NULL,
    body BLOB NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_cls_seq ON outbox (cls, seq);
CREATE TABLE IF NOT EXISTS seen (
    id TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
"""


class OutboxFull(BridgeError):
    """Only critical messages fill the outbox; a new one cannot be accepted."""


@dataclass(slots=True)
class OutboxStats:
    accepted: int = 0
    acked: int = 0
    dropped_overflow: int = 0
    expired: int = 0
    resent: int = 0
    transactions: int = 0


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    id: str
    cls: MessageClass
    body: bytes


@dataclass(slots=True)
class _Write:
    rows: list[tuple[str, int, bytes, float]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    seen: list[tuple[str, float]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class _Db:
    """The SQLite connection, used only from the outbox's own thread."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BridgeError(f"{path}: cannot use WAL (journal_mode is {mode})")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(_SCHEMA)

    def pragmas(self) -> tuple[str, int]:
        return (
            str(self.conn.execute("PRAGMA journal_mode").fetchone()[0]),
            int(self.conn.execute("PRAGMA synchronous").fetchone()[0]),
        )

    def load(self) -> list[tuple[int, str, int]]:
        return [
            (int(s), str(i), int(c))
            for s, i, c in self.conn.execute("SELECT seq, id, cls FROM outbox ORDER BY seq")
        ]

    def write(self, batch: _Write) -> list[int]:
        """One transaction; returns the seqs of the inserted rows (in order)."""
        seqs: list[int] = []
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for row in batch.rows:
                cur.execute("INSERT OR IGNORE INTO outbox (id, cls, body, expires) VALUES (?, ?, ?, ?)", row)
                seqs.append(int(cur.lastrowid or 0) if cur.rowcount else 0)
            if batch.deletes:
                cur.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in batch.deletes])
            if batch.seen:
                cur.executemany("INSERT OR IGNORE INTO seen (id, expires) VALUES (?, ?)", batch.seen)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return seqs

    def bodies(self, seqs: list[int]) -> dict[int, tuple[str, bytes]]:
        marks = ",".join("?" * len(seqs))
        rows = self.conn.execute(f"SELECT seq, id, body FROM outbox WHERE seq IN ({marks})", seqs)  # noqa: S608 - placeholders only
        return {int(s): (str(i), bytes(b)) for s, i, b in rows}

    def seen(self, ident: str) -> bool:
        return self.conn.execute("SELECT 1 FROM seen WHERE id = ?", (ident,)).fetchone() is not None

    def purge(self, now: float) -> tuple[list[str], int]:
        expired = [str(r[0]) for r in self.conn.execute("SELECT id FROM outbox WHERE expires < ?", (now,))]
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("DELETE FROM outbox WHERE expires < ?", (now,))
        gone = self.conn.execute("DELETE FROM seen WHERE expires < ?", (now,)).rowcount
        self.conn.execute("COMMIT")
        return expired, gone

    def delete_oldest(self, cls: int, n: int) -> list[str]:
        rows = [
            str(r[0])
            for r in self.conn.execute("SELECT id FROM outbox WHERE cls = ? ORDER BY seq LIMIT ?", (cls, n))
        ]
        self.conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in rows])
        return rows


class Outbox:
    """`async with Outbox(path) as outbox:`; `await outbox.put(envelope, cls)` returns once on disk."""

    def __init__(
        self,
        path: Path,
        *,
        max_messages: int = 50_000,
        lifetimes_s: Mapping[MessageClass, float] = DEFAULT_LIFETIMES_S,
        synchronous: str = "FULL",
    ) -> None:
        self.path = Path(path)
        self._max = max_messages
        self._lifetimes = dict(lifetimes_s)
        self._synchronous = synchronous
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: _Db | None = None
        self._queue: collections.deque[_Write] = collections.deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        # What waits to be sent, per class, by seq; and what was sent and waits for the ack.
        self._ready: dict[int, list[int]] = {c: [] for c in MessageClass}
        self._ids: dict[int, str] = {}
        self._cls: dict[int, int] = {}
        self._in_flight: dict[str, tuple[int, float]] = {}  # id → (seq, sent at)
        self._by_id: dict[str, int] = {}
        self._has_ready = asyncio.Event()
        self._closed = False
        self.stats = OutboxStats()

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        if self._closed:
            raise BridgeError("outbox was closed")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        loop = asyncio.get_running_loop()
        try:
            self._db = await loop.run_in_executor(self._executor, _Db, self.path, self._synchronous)
            rows = await loop.run_in_executor(self._executor, self._db.load)
        except sqlite3.Error as exc:
            self._executor.shutdown(wait=True)
            raise BridgeError(f"cannot open outbox {self.path}: {exc}") from exc
        for seq, ident, cls in rows:
            self._index(seq, ident, cls)
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        if rows:
            log.info("outbox: %d messages waiting from before", len(rows))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._wake.set()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            await self._flush()  # whatever was queued when we were told to stop
        if self._executor is not None:
            db = self._db
            if db is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, db.conn.close)
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def pragmas(self) -> tuple[str, int]:
        assert self._db is not None and self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._db.pragmas)

    # -- accepting ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def waiting(self) -> int:
        """Messages not yet sent (not counting those sent and waiting for their ack)."""
        return sum(len(v) for v in self._ready.values())

    async def put(self, envelope: Envelope, cls: MessageClass) -> bool:
        """Accept a message; returns True once it is durably stored, False if the overflow
        policy dropped it (telemetry/events when the outbox is full). OutboxFull for a
        critical message when only critical messages fill the outbox."""
        if self._closed:
            raise BridgeError("outbox is closed")
        if envelope.id in self._by_id:
            return True  # already accepted (a caller retrying)
        if len(self._ids) + self._queued_rows >= self._max and not await self._make_room(cls):
            self.stats.dropped_overflow += 1
            if cls is MessageClass.CRITICAL:
                raise OutboxFull(f"outbox holds {self._max} critical messages; cannot accept {envelope.type}")
            return False
        expires = time.time() + self._lifetimes[cls]
        fut = self._enqueue(rows=[(envelope.id, int(cls), envelope.to_bytes(), expires)])
        await fut
        return True

    async def _make_room(self, cls: MessageClass) -> bool:
        """Drop the oldest of the least important class that is below `cls` or equal to it."""
        assert self._db is not None and self._executor is not None
        for victim in (MessageClass.TELEMETRY, MessageClass.EVENT):
            if victim < cls:
                break
            if self._ready[victim] or any(self._cls.get(s) == victim for s, _ in self._in_flight.values()):
                n = max(1, self._max // 100)
                ids = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._db.delete_oldest, int(victim), n
                )
                for ident in ids:
                    self._forget(ident)
                self.stats.dropped_overflow += len(ids)
                log.warning("outbox full: dropped the %d oldest %s messages", len(ids), victim.name.lower())
                return True
        return False

    async def has_seen(self, ident: str) -> bool:
        """Whether downlink `ident` was recorded with `mark_seen`."""
        assert self._db is not None and self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._db.seen, ident)

    async def mark_seen(self, ident: str, *, lifetime_s: float = 30 * 86400) -> None:
        """Remember downlink `ident` durably (returns once on disk)."""
        await self._enqueue(seen=[(ident, time.time() + lifetime_s)])

    async def seen_before(self, ident: str, *, lifetime_s: float = 30 * 86400) -> bool:
        """True if downlink `ident` was already recorded; otherwise record it durably first."""
        if await self.has_seen(ident):
            return True
        await self.mark_seen(ident, lifetime_s=lifetime_s)
        return False

    # -- sending --------------------------------------------------------------------------

    async def wait_ready(self) -> None:
        """Until at least one message waits to be sent."""
        while not any(self._ready.values()):
            self._has_ready.clear()
            await self._has_ready.wait()

    async def take(self, limit: int) -> list[Pending]:
        """Up to `limit` messages to send now (critical first, in order), marked in flight."""
        assert self._db is not None and self._executor is not None
        seqs: list[int] = []
        for cls in MessageClass:
            queue = self._ready[cls]
            n = min(limit - len(seqs), len(queue))
            seqs += queue[:n]
            del queue[:n]
            if len(seqs) >= limit:
                break
        if not seqs:
            return []
        bodies = await asyncio.get_running_loop().run_in_executor(self._executor, self._db.bodies, seqs)
        now = time.monotonic()
        out = []
        for seq in seqs:
            if seq not in bodies:  # acked or dropped meanwhile
                continue
            ident, body = bodies[seq]
            self._in_flight[ident] = (seq, now)
            out.append(Pending(seq, ident, MessageClass(self._cls[seq]), body))
        return out

    def requeue_in_flight(self, *, older_than_s: float = 0.0) -> int:
        """Put messages that were sent but not acknowledged back in line (after a reconnect,
        or when their ack is overdue). Returns how many."""
        now = time.monotonic()
        back = [i for i, (_, t) in self._in_flight.items() if now - t >= older_than_s]
        self._back_in_line(back)
        self.stats.resent += len(back)
        return len(back)

    def put_back(self, unsent: Iterable[Pending]) -> None:
        """Messages taken but never handed to the broker go back in line, in their place."""
        self._back_in_line([p.id for p in unsent if p.id in self._in_flight])

    def _back_in_line(self, idents: list[str]) -> None:
        for ident in idents:
            seq, _ = self._in_flight.pop(ident)
            bisect.insort(self._ready[self._cls[seq]], seq)
        if idents:
            self._has_ready.set()

    async def ack(self, ids: Iterable[str]) -> int:
        """The cloud has these; remove them (one transaction). Returns how many were ours."""
        known = [i for i in ids if i in self._by_id]
        if not known:
            return 0
        for ident in known:
            self._forget(ident)
        self.stats.acked += len(known)
        await self._enqueue(deletes=known)
        return len(known)

    async def purge_expired(self) -> int:
        assert self._db is not None and self._executor is not None
        expired, _ = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._db.purge, time.time()
        )
        for ident in expired:
            self._forget(ident)
        self.stats.expired += len(expired)
        if expired:
            log.warning("outbox: %d messages expired unsent", len(expired))
        return len(expired)

    # -- internals ------------------------------------------------------------------------

    def _index(self, seq: int, ident: str, cls: int) -> None:
        self._ids[seq] = ident
        self._cls[seq] = cls
        self._by_id[ident] = seq
        self._ready[cls].append(seq)  # seqs grow, so appending keeps order
        self._has_ready.set()

    def _forget(self, ident: str) -> None:
        seq = self._by_id.pop(ident, None)
        if seq is None:
            return
        self._in_flight.pop(ident, None)
        cls = self._cls.pop(seq)
        self._ids.pop(seq, None)
        queue = self._ready[cls]
        i = bisect.bisect_left(queue, seq)
        if i < len(queue) and queue[i] == seq:
            del queue[i]

    def _enqueue(
        self,
        *,
        rows: list[tuple[str, int, bytes, float]] | None = None,
        deletes: list[str] | None = None,
        seen: list[tuple[str, float]] | None = None,
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(rows or [], deletes or [], seen or [], [fut]))
        self._queued_rows += len(rows or ())
        self._wake.set()
        return fut

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            # Group commit without a fixed delay: what is queued in this turn of the event loop
            # forms the first transaction, and whatever arrives while it is being fsynced
            # forms the next. An idle outbox commits a lone message at once.
            await asyncio.sleep(0)
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        while self._queue:
            batch = _Write()
            taken = 0
            while self._queue and taken < _MAX_BATCH:
                w = self._queue.popleft()
                self._queued_rows -= len(w.rows)
                batch.rows += w.rows
                batch.deletes += w.deletes
                batch.seen += w.seen
                batch.waiters += w.waiters
                taken += len(w.rows) + len(w.deletes) + len(w.seen)
            assert self._db is not None and self._executor is not None
            try:
                seqs = await asyncio.get_running_loop().run_in_executor(self._executor, self._db.write, batch)
            except sqlite3.Error as exc:
                error = BridgeError(f"outbox write failed: {exc}")
                for waiter in batch.waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                log.error("outbox write failed: %s", exc)
                continue
            self.stats.transactions += 1
            for (ident, cls, _, _), seq in zip(batch.rows, seqs, strict=True):
                if seq:
                    self._index(seq, ident, cls)
                    self.stats.accepted += 1
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
