"""A tiny HTTP endpoint on the event loop: /metrics (Prometheus), /healthz, /readyz."""

from __future__ import annotations

import asyncio
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def serve_http(host: str, port: int, alive: Callable[[], bool], ready: Callable[[], bool]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest()
            elif path == "/healthz":
                ok = alive()
                status, ctype, body = (200 if ok else 503), "text/plain", b"ok\n" if ok else b"not alive\n"
            elif path == "/readyz":
                ok = ready()
                status, ctype, body = (200 if ok else 503), "text/plain", b"ready\n" if ok else b"not ready\n"
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
