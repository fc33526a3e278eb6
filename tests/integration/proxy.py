"""A TCP proxy on loopback that can cut every connection through it, for fault injection."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class Proxy:
    """Forwards 127.0.0.1:<port> to *target*; `cut()` drops every open connection at once,
    `stall()` holds everything back (a broker that stops answering) until `resume()`."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()

    @classmethod
    def to(cls, url: str) -> Proxy:
        """A proxy in front of the broker at AMQP *url* (the shared broker of this run, whichever
        version it is)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5672)

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, base: str) -> str:
        """*base* (an AMQP URL of the target) pointed at this proxy instead."""
        parts = urlsplit(base)
        auth = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{auth}@127.0.0.1:{self.port}"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            self._open.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @property
    def connections(self) -> int:
        return len(self._open) // 2

    def cut(self) -> int:
        """Close every connection through the proxy (both directions); returns how many."""
        self.cuts += 1
        victims = list(self._open)
        for w in victims:
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._open.clear()
        return len(victims)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
