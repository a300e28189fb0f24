"""The HTTP stage: every request of a connection is bounded in head bytes and in time, idle
keep-alive connections are closed, and the stage holds a bounded number of connections
(issue 13, item 1). Both transports."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from tests.helpers import running_server

FAST = {"http_head_timeout_s": 1.0, "http_body_timeout_s": 1.0,
        "http_keepalive_timeout_s": 0.5}


async def _status(reader: asyncio.StreamReader, timeout: float = 5) -> int:
    line = await asyncio.wait_for(reader.readline(), timeout)
    return int(line.split(b" ")[1]) if line else 0


async def _first_request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that made one good request and read its answer (keep-alive)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await _status(reader) == 200
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return reader, writer


async def _until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            data += chunk
    return data


async def test_endless_header_on_a_later_request_is_cut_431(transport: str) -> None:
    """After a first good request, a second head that never ends: 431 and closed once it
    passes http_max_head_bytes (plus one read), never 160 MB accepted."""
    async with running_server(transport, **FAST) as srv:
        reader, writer = await _first_request(srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: ")
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < 50 << 20 and not reader.at_eof():
                writer.write(b"a" * 65536)
                await asyncio.wait_for(writer.drain(), 5)
                sent += 65536
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), 0.001):
                        break
        assert sent < 4 << 20, f"{sent} bytes accepted"
        writer.close()


async def test_head_in_one_read_is_counted_431(transport: str) -> None:
    """10,000 headers (119 KB) in one write: 431, on the first request and on a later one."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: v\r\n" % index for index in range(10_000)) + b"\r\n"
    async with running_server(transport, **FAST) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(head)
        assert await _status(reader) == 431
        writer.close()
        reader, writer = await _first_request(srv.port)
        writer.write(head)
        assert await _status(reader) == 431
        writer.close()


async def test_trickled_later_request_is_cut_408(transport: str) -> None:
    """A second request trickled one byte at a time: closed (408) within the head timeout."""
    async with running_server(transport, **FAST) as srv:
        reader, writer = await _first_request(srv.port)
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                writer.write(bytes((byte,)))
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1 << 16), 0.2) is not None:
                        break
        held = time.monotonic() - started
        assert held < 4, f"held {held:.1f} s"
        writer.close()


async def test_slow_body_is_cut_408(transport: str) -> None:
    """A request body that does not arrive within http_body_timeout_s: 408, closed."""
    async with running_server(transport, api_key="k", **FAST) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"POST /api/v1/documents/slow/updates HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer k\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"\x00" * 10)
        started = time.monotonic()
        assert await _status(reader, timeout=10) == 408
        assert time.monotonic() - started < 5
        await _until_closed(reader, 5)
        writer.close()


async def test_idle_keepalive_connection_is_closed(transport: str) -> None:
    """A keep-alive connection that sends nothing after its answer is closed."""
    async with running_server(transport, **FAST) as srv:
        reader, writer = await _first_request(srv.port)
        started = time.monotonic()
        assert await _until_closed(reader, 5) == b""
        assert time.monotonic() - started < 3
        writer.close()


async def test_connections_in_the_http_stage_are_bounded(transport: str) -> None:
    """Past http_max_connections connections that send nothing, a new one gets 503; once the
    head timeout drops them, /healthz is served again."""
    async with running_server(transport, http_max_connections=5, **FAST) as srv:
        held = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(5)]
        await asyncio.sleep(0)  # the server accepts them
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _status(reader) == 503
        writer.close()
        deadline = time.monotonic() + 5
        async with httpx.AsyncClient(base_url=srv.http) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "the stage never freed up"
                await asyncio.sleep(0.1)
        for _, held_writer in held:
            held_writer.close()
