"""The web listener (dashboard, portal, /metrics) run by uvicorn inside the service's loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the service owns SIGINT/SIGTERM/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @property
    def port(self) -> int | None:
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None


async def _serve(server: EmbeddedUvicorn, where: str) -> None:
    try:
        await server.serve()
    except SystemExit:
        # uvicorn reports a failed bind by logging it and calling sys.exit(3); inside a task
        # that would escape the whole event loop.
        raise OSError(f"web listener {where} could not bind (see the log above)") from None


async def start_web_listener(
    app: FastAPI, host: str, port: int, *, cert: str | None, key: str | None
) -> tuple[EmbeddedUvicorn, asyncio.Task[None]]:
    """Serve `app` until `server.should_exit`; returns once it listens (or raises)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        # Only --trust-proxy decides whose X-Forwarded-For is believed.
        proxy_headers=False,
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    server = EmbeddedUvicorn(config)
    task = asyncio.create_task(_serve(server, f"{host}:{port}"))
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"web listener {host}:{port} did not start")
        await asyncio.sleep(0.01)
    return server, task
