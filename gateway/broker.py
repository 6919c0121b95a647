"""A private Mosquitto for the demo and the tests: generated config, free port, always stopped.

Nothing here touches the system broker or its configuration. With `dynsec_file` the broker is
secured as the box's is: no anonymous clients, logins and ACLs from the dynamic-security plugin
(gateway/logins.py), client ids bound to user names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType

from gateway.errors import BrokerError
from gateway.logins import plugin_path

__all__ = ["PrivateBroker", "free_port", "mosquitto_binary"]

_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    """Path of the mosquitto binary; BrokerError saying how to install it if missing."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(
        "mosquitto is not installed: run `sudo apt-get install -y mosquitto mosquitto-clients` "
        "(or ./scripts/setup as root)"
    )


class PrivateBroker:
    """`async with PrivateBroker() as broker:` → a Mosquitto on `broker.port`.

    `stop()`/`start()` (or `kill()`) restart it on the same port for fault tests. With
    `persistence=True` the broker keeps retained messages and sessions in its own directory
    and saves on every change (so a restart keeps them); by default it keeps nothing, like a
    broker that crashed and lost its memory.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        persistence: bool = False,
        extra_config: str = "",
        workdir: Path | None = None,
        dynsec_file: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._persistence = persistence
        self._extra = extra_config
        self._dynsec = dynsec_file
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="gw-mosquitto-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._proc: asyncio.subprocess.Process | None = None
        self._log_task: asyncio.Task[None] | None = None
        self.log_lines: list[str] = []

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def config_text(self) -> str:
        lines = [f"listener {self.port} {self.host}"]
        if self._dynsec is not None:
            # As on the box: no anonymous clients, a login per device (gateway/logins.py), and
            # every client id is its user name, so no login can take over another's session.
            lines += [
                "allow_anonymous false",
                f"plugin {plugin_path()}",
                f"plugin_opt_config_file {self._dynsec}",
                "use_username_as_clientid true",
            ]
        else:
            lines.append("allow_anonymous true")
        lines += [
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages false",
            "max_queued_messages 100000",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            # Started as (namespace-)root, mosquitto tries to drop to user `mosquitto`,
            # which fails inside a user namespace (NOTES.md).
            lines.append("user root")
        if self._persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.dir}/",
                "autosave_interval 1",
                "autosave_on_changes true",
            ]
        else:
            lines.append("persistence false")
        if self._extra:
            lines.append(self._extra)
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        if self.running:
            return
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.config_text())
        self._proc = await asyncio.create_subprocess_exec(
            mosquitto_binary(),
            "-c",
            str(conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Ready when the listener accepts a TCP connection (mosquitto logs nothing we can
        rely on across versions); fail with its own log if it exits first."""
        assert self._proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT_S
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                err = b""
                if self._proc.stderr is not None:
                    err = await self._proc.stderr.read()
                raise BrokerError(f"mosquitto exited at start: {err.decode(errors='replace').strip()}")
            try:
                async with asyncio.timeout(1.0):
                    _, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._log_task = asyncio.create_task(self._collect_log(self._proc), name="mosquitto-log")
            return
        await self.kill()
        raise BrokerError(
            f"mosquitto did not listen on {self.host}:{self.port} within {_READY_TIMEOUT_S:g} s"
        )

    async def _collect_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            self.log_lines.append(line.decode(errors="replace").rstrip())
            del self.log_lines[:-200]

    async def stop(self) -> None:
        """SIGTERM and wait (mosquitto saves persistence on a clean stop)."""
        await self._end(kill=False)

    async def kill(self) -> None:
        """SIGKILL: the broker loses whatever it had not saved."""
        await self._end(kill=True)

    async def _end(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill() if kill else proc.terminate()
            try:
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log_task is not None:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._log_task
            self._log_task = None

    async def __aenter__(self) -> PrivateBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
