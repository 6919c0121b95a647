"""What every adapter does with what a LAN peer sends: bound it, parse it strictly, and drop
what does not fit.

A peer (a device, a bridge, anything on the home network) can send anything. Adapters read
it through the helpers here, so that

- nothing a peer sends grows without a bound (`read_bounded`, `bounded_lines`, `loads_json`
  with a size and a nesting limit);
- a bad message is a `PeerDataError` with a stable reason code, and nothing else;
- every drop is counted per adapter and reason (`Drops`, shown on the admin health view, in
  `gateway doctor` and in the cloud's diagnostics) and logged at most once a minute per peer;
- an unexpected failure in one device's session stays with that device (`isolated`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from gateway.errors import GatewayError

__all__ = [
    "Drops",
    "PeerDataError",
    "bounded_lines",
    "check_depth",
    "isolated",
    "json_or_drop",
    "loads_json",
    "read_bounded",
    "topic_level_ok",
]

_WARN_INTERVAL_S = 60.0
_MAX_WARNED_PEERS = 1000


class PeerDataError(GatewayError, ValueError):
    """A peer sent something unusable. `reason` is a stable code (too_large, too_deep,
    invalid_json, ...); `detail` says what was wrong, for the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Drops:
    """Counted, rate-limited drops for one adapter.

    `drop(peer, reason, detail)` counts the reason and logs at most once per peer a minute (a
    misbehaving peer at WARNING, our own failure at ERROR); the counts never reset while the
    daemon runs."""

    def __init__(self, adapter: str, logger: logging.Logger | None = None) -> None:
        self.adapter = adapter
        self.counts: Counter[str] = Counter()
        self._log = logger or logging.getLogger(f"gateway.devices.{adapter}")
        self._warned: dict[str, float] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def drop(
        self,
        peer: str,
        reason: str,
        detail: str = "",
        *,
        level: int = logging.WARNING,
        count: int = 1,
        exc_info: bool = False,
    ) -> None:
        if count:
            self.counts[reason] += count
        now = time.monotonic()
        if now - self._warned.get(peer, -1e9) <= _WARN_INTERVAL_S:
            return
        if len(self._warned) >= _MAX_WARNED_PEERS:
            self._warned.clear()
        self._warned[peer] = now
        self._log.log(
            level,
            "%s %s: dropped (%s)%s",
            self.adapter,
            peer[:200],
            reason,
            f": {detail[:300]}" if detail else "",
            exc_info=exc_info,
        )

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


async def isolated(drops: Drops, peer: str, work: Awaitable[None]) -> None:
    """Run one peer's task: whatever goes wrong in it is that peer's problem, logged (with the
    traceback: it is our bug or an error type we did not expect) and counted, never raised to
    the task group that owns it. Cancellation passes through."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point of this function: nothing escapes one device
        detail = f"{type(exc).__name__}: {exc}"
        drops.drop(peer, "internal_error", detail, level=logging.ERROR, exc_info=True)


def check_depth(value: Any, max_depth: int) -> None:
    """PeerDataError if arrays/objects nest deeper than `max_depth` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > max_depth:
            raise PeerDataError("too_deep", f"nested deeper than {max_depth} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def loads_json(data: bytes | str, *, max_bytes: int, max_depth: int) -> Any:
    """Parse a peer's JSON within bounds; PeerDataError (only) otherwise. NaN and Infinity are
    not JSON and are refused, as are numbers too large for a double."""
    if len(data) > max_bytes:
        raise PeerDataError("too_large", f"{len(data)} bytes, at most {max_bytes}")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = "too_deep" if "depth" in str(exc) else "invalid_json"
        raise PeerDataError(reason, str(exc)[:120]) from exc
    check_depth(value, max_depth)
    return value


def json_or_drop(
    drops: Drops, peer: str, data: bytes | str, *, max_bytes: int, max_depth: int, object_only: bool = True
) -> Any:
    """A peer's JSON message within bounds, or None after counting and logging the drop.
    `object_only`: anything but a JSON object is dropped too (device messages are objects)."""
    try:
        value = loads_json(data, max_bytes=max_bytes, max_depth=max_depth)
    except PeerDataError as exc:
        drops.drop(peer, exc.reason, exc.detail)
        return None
    if object_only and not isinstance(value, dict):
        drops.drop(peer, "not_an_object")
        return None
    return value


async def read_bounded(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """A whole body, or PeerDataError("too_large") as soon as it passes `max_bytes`."""
    out = bytearray()
    async for chunk in chunks:
        out += chunk
        if len(out) > max_bytes:
            raise PeerDataError("too_large", f"body larger than {max_bytes} bytes")
    return bytes(out)


async def bounded_lines(
    chunks: AsyncIterator[bytes], *, max_line_bytes: int, on_overlong: Callable[[], None]
) -> AsyncIterator[str]:
    """Text lines (UTF-8, CR, LF or CRLF ended, HTML §9.2.6) from a byte stream, holding at most
    `max_line_bytes` of one line: a longer line is skipped to its end and reported once through
    `on_overlong`, so a peer cannot make us buffer an endless line."""
    buf = bytearray()
    skipping = False
    after_cr = False
    async for chunk in chunks:
        start = 0
        if after_cr and chunk[:1] == b"\n":
            start = 1  # the LF of a CRLF split across chunks
        after_cr = False
        while start < len(chunk):
            cr, lf = chunk.find(b"\r", start), chunk.find(b"\n", start)
            end = min((i for i in (cr, lf) if i >= 0), default=-1)
            if end < 0:
                if not skipping:
                    buf += chunk[start:]
                    if len(buf) > max_line_bytes:
                        skipping = True
                        buf.clear()
                        on_overlong()
                break
            if skipping:
                skipping = False
            else:
                buf += chunk[start:end]
                if len(buf) > max_line_bytes:
                    on_overlong()
                else:
                    yield buf.decode("utf-8", "replace")
            buf.clear()
            if chunk[end : end + 2] == b"\r\n":
                start = end + 2
            else:
                start = end + 1
                after_cr = end == len(chunk) - 1 and chunk[end : end + 1] == b"\r"


def topic_level_ok(text: str, *, allow_slash: bool = False, max_len: int = 128) -> bool:
    """Whether device-supplied text may become part of an MQTT topic or filter: not empty, no
    wildcard (`+`, `#`), no NUL, no leading `$` (MQTT 3.1.1 §4.7), bounded, and one level
    unless `allow_slash`."""
    if not text or len(text) > max_len or text.startswith("$"):
        return False
    if any(c in text for c in "+#\x00"):
        return False
    if not allow_slash and "/" in text:
        return False
    return not (allow_slash and ("//" in text or text.startswith("/") or text.endswith("/")))
