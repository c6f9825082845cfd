"""`sft-tui serve` (issue 9.6): the app in a browser, listening on loopback only."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
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


def test_serve_listens_on_loopback_only_and_answers_the_page():
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", f"from sft_tui.serve import serve; serve({port})"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while not _listening(server.pid):
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the server did not start listening within 15 s"
            time.sleep(0.1)
        assert {(c.laddr.ip, c.laddr.port) for c in _listening(server.pid)} == {(HOST, port)}, \
            "listens on another interface too"
        with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=5) as page:
            html = page.read().decode()
        assert page.status == 200 and f"ws://{HOST}:{port}/ws" in html and "<div>sft-tui</div>" in html
    finally:
        server.terminate()
        try:
            out, _ = server.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    assert f"http://{HOST}:{port}" in out and f"ssh -L {port}:{HOST}:{port}" in out, out


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
