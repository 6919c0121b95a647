"""Child processes for the demo and the tests: started, watched for their ready line, stopped.

Children get PR_SET_PDEATHSIG, so even a `kill -9` of the parent leaves nothing running.
Their stderr goes to a log file (and is scanned for the ready line).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from gateway.errors import GatewayError

__all__ = ["Child", "die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when its parent dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Child:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: str,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._ready_re = re.compile(ready)
        self._env = dict(env) if env is not None else None
        self._pass_fds = tuple(pass_fds)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self, timeout_s: float = 15.0) -> None:
        self._ready.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            pass_fds=self._pass_fds,
            preexec_fn=die_with_parent,
        )
        self._reader = asyncio.create_task(self._read(self._proc), name=f"{self.name}-stderr")
        waiter = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self._proc.wait())
        done, _ = await asyncio.wait({waiter, exited}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        exited.cancel()
        if waiter in done and self._ready.is_set():
            return
        tail = self.log_tail()
        await self.kill()
        reason = "exited" if exited in done else f"was not ready within {timeout_s:g} s"
        raise GatewayError(f"{self.name} {reason}; its log ({self.log_path}) ends:\n{tail}")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        with self.log_path.open("ab") as log:
            while line := await proc.stderr.readline():
                log.write(line)
                log.flush()
                if not self._ready.is_set() and self._ready_re.search(line.decode("utf-8", "replace")):
                    self._ready.set()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`. Returns the exit code."""
        return await self._end(signal.SIGTERM, timeout_s)

    async def kill(self) -> int | None:
        return await self._end(signal.SIGKILL, 5.0)

    async def _end(self, sig: int, timeout_s: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._reader
            self._reader = None
        return proc.returncode

    async def __aenter__(self) -> Child:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
