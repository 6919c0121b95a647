"""sd_notify(3) without libsystemd: READY=1, STOPPING=1, STATUS= and watchdog pings.

Does nothing when the process was not started by systemd (no NOTIFY_SOCKET).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self._path = socket_path
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """Read systemd's variables. WATCHDOG_PID, when set, must name this process."""
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            usec = None
        return cls(environ.get("NOTIFY_SOCKET"), int(usec) if usec and usec.isdigit() else None)

    @property
    def enabled(self) -> bool:
        return bool(self._path)

    def notify(self, state: str) -> bool:
        if not self._path:
            return False
        address = self._path
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._path, exc)
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    async def watchdog(self, fraction: float = 0.5) -> None:
        """Ping the watchdog forever (a task); returns at once if there is no watchdog."""
        if not self._path or not self.watchdog_s:
            return
        interval = self.watchdog_s * fraction
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
