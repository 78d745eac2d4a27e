"""`serve`'s connection limits against clients that trickle bytes or sit idle on a public port."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog.testing

from payflow import server
from payflow.settings import Settings

LIMITS = server.ConnectionLimits(keepalive=0.5, body=0.5, lingering=0.1)
SLACK = 0.5  # scheduling on a busy machine; far below aiohttp's defaults (an hour idle, no body deadline)


@pytest.fixture
async def address(settings: Settings) -> AsyncIterator[tuple[str, int]]:
    """`serve` itself on 127.0.0.1, a port the OS picks, with small limits; stopped however the test ends."""
    stop, listening = asyncio.Event(), asyncio.Event()
    settings = dataclasses.replace(settings, host="127.0.0.1", port=0, sweep_interval=0)

    def spot(logger: Any, method: str, event: Any) -> Any:
        if event["event"] == "serve.listening":
            listening.set()
        return event

    with structlog.testing.capture_logs(processors=[spot]) as logged:
        task = asyncio.create_task(server.serve(settings, stop, limits=LIMITS))
        started = asyncio.create_task(listening.wait())
        try:
            async with asyncio.timeout(10):
                await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
            assert listening.is_set(), task.result()
            address = next(e for e in logged if e["event"] == "serve.listening")["addresses"][0]
            host, _, port = address.rpartition(":")
            yield host, int(port)
        finally:
            started.cancel()
            stop.set()
            await task


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """One byte every 50 ms, until the server hangs up."""
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
    except ConnectionError:
        pass


async def _until_closed(address: tuple[str, int], head: bytes, trickled: bytes) -> tuple[bytes, float]:
    """Send `head` at once and `trickled` slowly; what the server answered and when it closed, in seconds."""
    reader, writer = await asyncio.open_connection(*address)
    started = time.monotonic()
    writer.write(head)
    slow = asyncio.create_task(_trickle(writer, trickled))
    try:
        async with asyncio.timeout(3):
            answer = await reader.read()  # b"" or what was answered, then EOF
        return answer, time.monotonic() - started
    except ConnectionError:
        return b"", time.monotonic() - started
    finally:
        slow.cancel()
        writer.close()
        await asyncio.gather(slow, writer.wait_closed(), return_exceptions=True)


async def test_a_request_head_trickled_in_is_cut_off(address: tuple[str, int]) -> None:
    answer, elapsed = await _until_closed(address, b"POST /v1/wechat/notify HTTP/1.1\r\n",
                                          b"Host: payflow\r\nX-Slow: " + b"x" * 200)
    assert answer == b"" and elapsed < LIMITS.keepalive + SLACK


async def test_a_body_trickled_in_gets_408_and_the_connection_closes(address: tuple[str, int]) -> None:
    head = b"POST /v1/wechat/notify HTTP/1.1\r\nHost: payflow\r\nContent-Type: application/json\r\n" \
           b"Content-Length: 200\r\n\r\n"
    answer, elapsed = await _until_closed(address, head, b"{" + b" " * 199)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in answer and b'"code": "FAIL"' in answer
    assert elapsed < LIMITS.body + LIMITS.lingering + SLACK


async def test_an_idle_connection_is_closed(address: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: payflow\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in head
        length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
        await reader.readexactly(length)
        answered = time.monotonic()
        async with asyncio.timeout(3):
            assert await reader.read() == b""  # then nothing more: the server hung up on the idle connection
        assert time.monotonic() - answered < LIMITS.keepalive + SLACK
    finally:
        writer.close()
        await writer.wait_closed()
