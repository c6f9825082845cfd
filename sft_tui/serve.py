"""`sft-tui serve`: the app in a browser, for users who forward one port over SSH.

textual-serve starts the ordinary app (the command `app_command` builds) as a subprocess for each
browser tab and relays its screen over a websocket. The server listens on 127.0.0.1 only: the app
starts training and reads and writes files as the user who runs it, so it must never be reachable
from the network. A remote user forwards the port instead: `ssh -L 8000:127.0.0.1:8000 host`.

Loopback is not private on a shared GPU server (every local user reaches 127.0.0.1), nor on the
laptop end of the tunnel (any web page may open a websocket to it). So the address printed at the
start carries a secret token: the page opened with it sets a cookie that only same-site requests
carry, and the websocket that drives the app needs that cookie and an Origin of the page's own
(`guard`). textual-serve itself checks neither.
"""

from __future__ import annotations

import secrets
import shlex
import sys
from pathlib import Path

from core.config import TASKS
from core.errors import UserError

HOST = "127.0.0.1"
"""Loopback only, never 0.0.0.0 (see the module docstring); tests/test_serve.py checks the socket."""


def app_command(config: str | None, task: str) -> str:
    """The shell command textual-serve runs per browser tab: this Python running `sft-tui [CONFIG]
    --task TASK`. The config path is made absolute (so it can never read as a subcommand such as
    `train`) and quoted for the shell."""
    parts = [sys.executable, "-m", "sft_tui.cli"]
    if config is not None:
        parts.append(str(Path(config).resolve()))
    return shlex.join([*parts, "--task", task])


def serve(port: int = 8000, config: str | None = None, task: str = "classification") -> int:
    """Serve the app on http://127.0.0.1:PORT until Ctrl+C; the exit status (0). Raises UserError for
    a missing textual-serve, a bad port or config path, or a port already in use."""
    try:
        from textual_serve.server import Server
    except ImportError:
        raise UserError("sft-tui serve needs the textual-serve package, which is not installed",
                        "pip install 'textual-serve' (or pip install 'sft-tui[serve]')") from None
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port", "choose a port from 1024 to 65535, e.g. --port 8000")
    if config is not None and not Path(config).is_file():
        raise UserError(f"{config} is not a file", "pass a YAML config (see `sft-tui init`), or none for the demo")
    if task not in TASKS:
        raise UserError(f"--task {task!r} is not a task", f"use one of: {', '.join(TASKS)}")

    _check_port_free(port)
    token = secrets.token_urlsafe(24)

    class _Server(Server):
        async def _make_app(self):
            app = await super()._make_app()
            app.middlewares.append(guard(token, f"sft-tui-{port}"))
            return app

        async def on_startup(self, app) -> None:
            """Say where to point the browser and how to get there over SSH, not textual-serve's
            banner with the full command line."""
            url = f"{self.public_url}/?token={token}"
            self.console.print(f"sft-tui is served on [bold]{url}[/] (this machine only; the token keeps "
                               "other users out: do not share the address).\n"
                               f"From another machine: ssh -L {port}:{HOST}:{port} <this host>, then open that "
                               "address there (the same port on both ends).\nCtrl+C stops the server.",
                               highlight=False)

    _Server(app_command(config, task), host=HOST, port=port, title="sft-tui").serve()
    return 0


def guard(token: str, cookie: str):
    """aiohttp middleware: the page opened with `?token=` gets the token as a same-site, HTTP-only
    cookie (named per port: cookies ignore ports); everything but the static files then needs that
    cookie, and a browser request from another origin (a web page aiming at the tunnel) is refused."""
    from aiohttp import web

    @web.middleware
    async def check(request, handler):
        if request.path.startswith("/static/"):  # textual-serve's scripts and fonts: nothing private
            return await handler(request)
        if request.path == "/" and secrets.compare_digest(request.query.get("token", ""), token):
            response = await handler(request)
            response.set_cookie(cookie, token, httponly=True, samesite="Strict")
            return response
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            raise web.HTTPForbidden(text=f"sft-tui serve: requests from {origin} are refused")
        if not secrets.compare_digest(request.cookies.get(cookie, ""), token):
            raise web.HTTPForbidden(text="sft-tui serve: open the address that `sft-tui serve` printed, "
                                         "with its ?token=")
        return await handler(request)

    return check


def _check_port_free(port: int) -> None:
    """Fail with a clear message before textual-serve prints where it serves (it prints that before it
    binds, so a taken port would show an address that belongs to another program)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is free
        try:
            probe.bind((HOST, port))
        except OSError as err:
            raise UserError(f"cannot listen on {HOST}:{port}: {err.strerror or err}",
                            "another program uses that port: choose another with --port") from None
