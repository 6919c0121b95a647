"""In-process event bus: the hub tells everyone what changed.

Synchronous listeners (the MQTT contract) run inline and must be quick. Asynchronous
consumers (HTTP live updates, the cloud bridge) get a bounded queue each; when a consumer
falls behind, the oldest events are dropped and counted (state is re-readable from the hub,
so a slow reader loses history, never the current value).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Bus", "Event", "EventKind"]

log = logging.getLogger(__name__)

EventKind = Literal["info", "state", "availability", "removed", "event"]


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    device_id: str
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]


class Bus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._queues: list[asyncio.Queue[Event]] = []
        self.dropped = 0

    def listen(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # one listener's bug must not stop the others
                log.exception("bus listener %r failed on %s", listener, event.kind)
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self, maxsize: int = 1000) -> AsyncIterator[asyncio.Queue[Event]]:
        """`async with bus.subscribe() as q:` → events until the block ends (drop-oldest)."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._queues.append(queue)
        try:
            yield queue
        finally:
            self._queues.remove(queue)
