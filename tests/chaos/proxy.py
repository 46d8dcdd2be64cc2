"""A TCP proxy on 127.0.0.1 in front of PostgreSQL that can black-hole the network.

Forwarding, it is a plain proxy. Black-holed (:meth:`Proxy.blackhole`), it behaves like a
partition that closes nothing, as a dropped route or a dead NAT entry does: every socket stays
open, nothing is answered, bytes sent are held (as TCP keeps retransmitting them) and new
connections are accepted but reach no server. :meth:`Proxy.heal` lets everything held through,
as TCP does once the route is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

CHUNK = 65536  # bytes read at a time


class Proxy:
    """``async with Proxy(dsn) as proxy:``; ``proxy.dsn`` goes through it."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        assert parts.hostname and parts.port, f"the DSN needs a host and a port: {dsn}"
        self._upstream = (parts.hostname, parts.port)
        self._parts = parts
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self.dsn = ""

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        user = f"{self._parts.username}@" if self._parts.username else ""
        self.dsn = urlunsplit(self._parts._replace(netloc=f"{user}127.0.0.1:{port}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        self.heal()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def blackhole(self) -> None:
        """Stop forwarding anything, in both directions, on every connection."""
        self._flowing.clear()

    def heal(self) -> None:
        """Forward again, the bytes held first."""
        self._flowing.set()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(client_w)
        try:
            await self._flowing.wait()  # a connection made during a partition reaches nothing
            server_r, server_w = await asyncio.open_connection(*self._upstream)
            self._writers.add(server_w)
            await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Cancelled by __aexit__: end quietly. (Python 3.11's StreamReaderProtocol asks a
            # cancelled handler task for its exception and logs the CancelledError it gets.)
            if not self._closing:
                raise
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            client_w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                # Held while black-holed: this pump stops reading too, so the kernel buffers
                # fill and the sender's writes stall, as over a dead route.
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()
