"""A small fault-injecting TCP proxy for link tests: pass, cut, stall or slow a connection.

`async with FaultProxy(upstream_host, upstream_port) as proxy:` listens on `proxy.port`;
`proxy.cut()` closes every connection and refuses new ones until `proxy.heal()`;
`proxy.stall()` keeps connections open but forwards nothing; `proxy.slow(delay_s)` delays every
chunk. Bytes are forwarded unchanged (TLS passes through end to end).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = asyncio.Event()
        self._open.set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._delay_s = 0.0
        self._refusing = False
        self.connections = 0

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        self._kill_all()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every connection (RST-like) and refuse new ones."""
        self._refusing = True
        self._kill_all()

    def heal(self) -> None:
        self._refusing = False
        self._delay_s = 0.0
        self._flowing.set()

    def stall(self) -> None:
        """Connections stay up, bytes stop moving (a black hole)."""
        self._flowing.clear()

    def slow(self, delay_s: float) -> None:
        self._delay_s = delay_s

    def _kill_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(task)
            for w in (writer, up_writer):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            await self._flowing.wait()
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            writer.write(chunk)
            await writer.drain()
        writer.transport.abort()
