"""An always-200 business backend on loopback, served from the bench's own (otherwise idle) event loop.

A bare asyncio protocol rather than an aiohttp app, so the forward after each `pay` costs the machine as
little as possible outside payflow; it counts what it answered.
"""

from __future__ import annotations

import asyncio

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Connection(asyncio.Protocol):
    def __init__(self, stub: BackendStub) -> None:
        self.stub = stub
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stub.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stub.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[:end + 4 + length]
            self.stub.hits += 1
            assert self.transport is not None
            self.transport.write(_OK)


class BackendStub:
    def __init__(self) -> None:
        self.hits = 0
        self.connections: set[_Connection] = set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> BackendStub:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/events"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        await self.server.wait_closed()
