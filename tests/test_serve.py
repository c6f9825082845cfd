"""`sft-tui serve` (issue 9.6): the app in a browser, listening on loopback only."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from core.errors import UserError
from sft_tui.serve import HOST, app_command, serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _listening(pid: int) -> list:
    return [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


@pytest.fixture
def server():
    """`serve` in a process of its own; yields (its pid, port, the address it printed, with its token)."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-c", f"from sft_tui.serve import serve; serve({port})"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 15
        while not _listening(process.pid):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not start listening within 15 s"
            time.sleep(0.1)
        printed = ""
        while "Ctrl+C stops" not in printed:
            printed += process.stdout.readline()
        assert f"ssh -L {port}:{HOST}:{port}" in printed, printed
        yield process.pid, port, re.search(rf"http://{HOST}:{port}/\?token=\S+", printed).group()
    finally:
        process.terminate()
        try:
            process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_serve_listens_on_loopback_only_and_answers_the_page_with_its_token(server):
    pid, port, url = server
    assert {(c.laddr.ip, c.laddr.port) for c in _listening(pid)} == {(HOST, port)}, "listens on another interface too"
    with urllib.request.urlopen(url, timeout=5) as page:
        html = page.read().decode()
        cookie = page.headers["Set-Cookie"]
    assert page.status == 200 and f"ws://{HOST}:{port}/ws" in html and "<div>sft-tui</div>" in html
    assert cookie.startswith(f"sft-tui-{port}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_another_local_user_or_a_web_page_cannot_drive_the_app(server):
    """127.0.0.1 is reachable by every user of a shared server, and by any web page on the laptop
    end of the tunnel: a review drove the app (and ran code as its user) through the bare websocket."""
    import aiohttp

    _, port, url = server
    base = f"http://{HOST}:{port}"
    for refused in (f"{base}/", f"{base}/?token=guess", f"{base}/ws", f"{base}/download/x"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(refused, timeout=5)
        assert err.value.code == 403, refused

    async def handshake(origin: str) -> int:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # as browsers, for an IP
            async with session.get(url) as page:  # the token's page: the session keeps its cookie
                assert page.status == 200
            try:
                async with session.ws_connect(f"ws://{HOST}:{port}/ws", origin=origin) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as err:
                return err.status

    assert asyncio.run(handshake("http://evil.example")) == 403  # a cross-site page, even with the cookie
    assert asyncio.run(handshake(base)) == 101  # the page itself


def test_the_app_command_quotes_paths_and_makes_them_absolute(tmp_path):
    config = tmp_path / "my runs" / "it's.yaml"
    assert shlex.split(app_command(str(config), "causal-lm")) == [
        sys.executable, "-m", "sft_tui.cli", str(config), "--task", "causal-lm"]
    assert shlex.split(app_command(None, "classification"))[-2:] == ["--task", "classification"]


def test_bad_input_is_a_clear_error(tmp_path, monkeypatch):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        with pytest.raises(UserError, match="cannot listen") as err:
            serve(taken.getsockname()[1])
        assert "--port" in err.value.hint
    with pytest.raises(UserError, match="is not a file"):
        serve(_free_port(), str(tmp_path / "missing.yaml"))
    monkeypatch.setitem(sys.modules, "textual_serve.server", None)  # as if not installed
    with pytest.raises(UserError, match="textual-serve") as err:
        serve(_free_port())
    assert "pip install 'textual-serve'" in err.value.hint
