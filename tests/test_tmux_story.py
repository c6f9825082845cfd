"""The whole story of issue 9 as a user lives it, in tmux: start a run in the app, lose the
terminal (the tmux session is killed, as a dropped SSH connection ends the shell), see the run
still training with `sft-tui runs`, and come back with `sft-tui attach` in a new terminal, which
shows the curves and follows the run to its planned step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.run_info import run_info
from helpers import tiny_lm_config, write_jsonl

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
STEPS = 1500
SFT = "env -u LINES -u COLUMNS " + str(Path(sys.executable).with_name("sft-tui"))
"""Under pytest, the tmux server hands its windows LINES=24 and COLUMNS=80, which the app would
believe over the window's real size."""


SOCKET = f"sft-tui-story-{os.getpid()}"
"""A tmux server of this test's own: another server's settings or clients could size its windows."""


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", SOCKET, "-f", "/dev/null", *args], capture_output=True, text=True).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for_screen(session: str, text: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        shown = screen(session)
        if text in shown:
            return shown
        time.sleep(0.25)
    raise AssertionError(f"{text!r} never appeared; the screen:\n{screen(session)}")


def test_a_run_started_in_the_app_outlives_its_terminal_and_is_attached_again(tmp_path, tiny_model_factory):
    rows = [{"prompt": f"Echo {w} {i % 4}:", "completion": f" {w}"} for i, w in enumerate("abc def ghi jkl".split() * 10)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    config = tiny_lm_config(tiny_model_factory("llama"), data, tmp_path / "runs", schedule={"max_steps": STEPS},
                            eval={"every_steps": 500, "num_samples": 1}, output={"run_name": "story"})
    (tmp_path / "story.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    first, second = f"story-{tmp_path.name}", f"story-back-{tmp_path.name}"
    run = tmp_path / "runs" / "story"
    try:
        tmux("new-session", "-d", "-s", first, "-x", "120", "-y", "40", f"cd {tmp_path} && {SFT} story.yaml")
        wait_for_screen(first, "sft-tui ready")  # the draft bar: model and data loaded
        wait_for_screen(first, "Leave the form")  # the model's path box has the focus
        tmux("send-keys", "-t", first, "Escape")  # out of it, so that 5 is a key
        wait_for_screen(first, "? Help")
        tmux("send-keys", "-t", first, "5")
        time.sleep(1)
        tmux("send-keys", "-t", first, "Enter")
        deadline = time.time() + 120
        while run_info(run).state != "running":
            assert time.time() < deadline, screen(first)
            time.sleep(0.2)

        tmux("kill-session", "-t", first)  # the terminal is gone, and the app with it
        listed = subprocess.run([*SFT.split(), "runs"], cwd=tmp_path, capture_output=True, text=True).stdout
        row = next(line.split() for line in listed.splitlines() if line.startswith("story"))
        assert row[1] == "running" and row[2] == "(pid", listed

        tmux("new-session", "-d", "-s", second, "-x", "120", "-y", "40", f"cd {tmp_path} && {SFT} attach")
        shown = wait_for_screen(second, "completed in", timeout=300)
        assert f"step {STEPS}/{STEPS}" in shown
        assert any("\u2801" <= ch <= "\u28ff" for ch in shown), shown  # the loss curve, drawn in braille
        info = run_info(run)
        assert info.state == "finished" and info.step == STEPS
        evals = [e.step for e in info.events if e.type == "eval"]
        assert evals == [0, 500, 1000, 1500]  # before training, then every 500 steps
        for step in evals[1:-1]:  # the history before the attach is on screen too: the eval table's rows
            assert str(step) in shown, shown
    finally:
        tmux("kill-server")
