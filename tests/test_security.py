"""Run folders travel between machines and users (issue 7, SECURITY.md): nothing in one may execute
code when it is resumed, a run name never leads outside runs_dir, and no secret from the
environment is written into one."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from core.config import RunConfig, parse_config
from core.engine import train
from core.errors import UserError
from core.manifest import MANIFEST
from core.runs import create_run
from sft_tui.cli import main
from helpers import StopAt, settle, tiny_lm_config, write_jsonl


class _RunsCode:
    """Unpickling this runs a shell command that leaves a file behind: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def lm(tmp_path, tiny_model_factory) -> dict:
    rows = [{"prompt": f"Echo {w}:", "completion": f" {w}"} for w in "abc def ghi jkl mno pqr".split() * 6]
    config = tiny_lm_config(tiny_model_factory("llama"), write_jsonl(tmp_path / "train.jsonl", rows),
                            tmp_path / "runs", schedule={"max_steps": 6}, eval={"every_steps": 100, "num_samples": 0},
                            checkpoint={"every_steps": 2, "keep_last": 3})
    config["model"]["name_or_path"], config["data"]["train"] = str(config["model"]["name_or_path"]), \
        str(config["data"]["train"])
    return config


def _payloads(marker: Path) -> dict[str, bytes]:
    torch_file = marker.with_suffix(".pt")
    torch.save({"state": _RunsCode(marker)}, torch_file)
    return {"pickle": pickle.dumps(_RunsCode(marker)), "torch.save": torch_file.read_bytes()}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("file", ["optimizer.pt", "scheduler.pt", "model.safetensors", "rng.safetensors",
                                  "state.json", MANIFEST])
def test_a_crafted_pickle_in_a_checkpoint_never_runs(file, kind, lm, tmp_path, capsys):
    """Issue 7.1: a crafted rng.pt ran a shell command on `sft-tui train --resume RUN`."""
    marker = tmp_path / "code-ran"
    payload = _payloads(marker)[kind]
    pickle.loads(payload) if kind == "pickle" else torch.load(marker.with_suffix(".pt"), weights_only=False)
    assert marker.exists(), "the payload must be live, or this test proves nothing"
    marker.unlink()

    first = train(parse_config(lm), control=StopAt(4))
    step_4 = first.run_dir / "checkpoints" / "step-4"
    (step_4 / file).write_bytes(payload)
    if file != MANIFEST:  # the sizes agree, so only loading the file can catch it
        manifest = json.loads((step_4 / MANIFEST).read_text())
        manifest["files"][file] = len(payload)
        (step_4 / MANIFEST).write_text(json.dumps(manifest))

    assert main(["train", "--resume", str(first.run_dir)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert not marker.exists()
    assert f"checkpoint step-4 is unusable: {step_4}" in err and "resumed at step 2" in err
    if file.endswith(".pt"):
        assert "it holds Python objects, which sft-tui never unpickles" in err


def test_a_python_tag_in_a_run_config_never_runs(lm, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    run_dir = train(parse_config(lm)).run_dir
    (run_dir / "config.yaml").write_text(f"task: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert not marker.exists()
    assert str(run_dir / "config.yaml") in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("name", ["..", ".", "../outside", "a/b", "/tmp/elsewhere", "a\\b", ""])
def test_run_name_cannot_leave_runs_dir(name, lm, tmp_path, capsys):
    """Issue 7.2: `run_name: ..` overwrote config.yaml beside runs_dir and replaced a final/ there."""
    (tmp_path / "runs").mkdir()
    beside = {tmp_path / "config.yaml": "mine", tmp_path / "final" / "keep.txt": "mine too"}
    for path, text in beside.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    lm["output"]["run_name"] = name
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(lm))
    assert main(["train", str(tmp_path / "run.yaml")]) == 2
    assert "output.run_name" in " ".join(capsys.readouterr().err.split())
    assert all(path.read_text() == text for path, text in beside.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "final", "run.yaml", "runs", "train.jsonl"]
    assert not any((tmp_path / "runs").iterdir())


def test_the_run_folder_refuses_an_escaping_name_even_past_validation(lm, tmp_path):
    """Defence in depth: the module that creates and deletes run folders checks the name itself."""
    config = parse_config(lm)
    config.output.__dict__["run_name"] = ".."  # bypasses pydantic, as a future caller might
    with pytest.raises(UserError, match="output.run_name '..' is not a plain folder name"):
        create_run(RunConfig.model_construct(**dict(config)), "..")


def test_no_environment_secret_is_written_into_a_run_folder(lm, tmp_path, monkeypatch):
    secrets = {"HF_TOKEN": "hf_s3cretTokenValue0123456789", "WANDB_API_KEY": "wandb-secret-4242",
               "MY_PASSWORD": "hunter2-but-longer"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    done = train(parse_config(lm))
    lm["output"]["run_name"] = "crashed"
    import core.evaluate

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(core.evaluate, "evaluate", crash)
    lm["eval"]["every_steps"] = 2
    with pytest.raises(RuntimeError):
        train(parse_config(lm))
    crashed = tmp_path / "runs" / "crashed"
    assert (crashed / "error.log").exists()
    files = [p for root in (done.run_dir, crashed) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        for key, value in secrets.items():
            assert value.encode() not in data, f"{key} leaked into {path}"
    shutil.rmtree(tmp_path / "runs")


# ---- run folders handed over with links in them, or owned by someone else ----------------------
@pytest.mark.parametrize("name", ["events.jsonl", "engine.log", ".lock", "commands", "error.log",
                                  ".engine.json.4242.tmp", "checkpoints/.tmp-step-6"])
@pytest.mark.parametrize("detached", [False, True], ids=["foreground", "detached"])
def test_a_link_where_the_engine_writes_is_refused_and_its_target_left_alone(name, detached, lm, tmp_path, capsys):
    """A review handed over a run folder whose engine.log was a link to ~/.bashrc: the resume appended
    a command to it; a `.lock` link truncated a file, a `commands` link had every *.json of its target
    folder deleted."""
    run_dir = train(parse_config(lm), control=StopAt(4)).run_dir
    target = tmp_path / "victim"
    target.mkdir()
    (target / "settings.json").write_text("{}")
    (target / "notes.txt").write_text("precious")
    link = run_dir / name
    if link.is_dir():
        shutil.rmtree(link)
    link.unlink(missing_ok=True)
    link.symlink_to(target if name == "commands" else target / "notes.txt")

    assert main(["train", "--resume", str(run_dir), *(["--detach"] if detached else [])]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"run folder {run_dir} has symbolic links in it: {name}" in err and "cp -rL" in err
    assert (target / "notes.txt").read_text() == "precious" and (target / "settings.json").exists()


def test_a_run_folder_of_another_user_is_not_written(lm, tmp_path, capsys, monkeypatch):
    run_dir = train(parse_config(lm), control=StopAt(4)).run_dir
    monkeypatch.setattr(os, "getuid", lambda: os.stat(run_dir).st_uid + 1)  # as another user sees it
    before = (run_dir / "events.jsonl").read_bytes()
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert f"run folder {run_dir} belongs to another user" in " ".join(capsys.readouterr().err.split())
    assert (run_dir / "events.jsonl").read_bytes() == before


def test_the_engine_reads_and_deletes_only_its_own_command_files(tmp_path):
    from core.commands import FolderControl, send_command

    folder = tmp_path / "commands"
    send_command(folder, "pause")
    (folder / "dataset.json").write_text("{}")  # not a command: a file of someone's
    control = FolderControl(folder)
    control.poll()
    assert control.paused and [p.name for p in folder.iterdir()] == ["dataset.json"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    send_command(elsewhere, "stop")
    linked = tmp_path / "linked"
    linked.symlink_to(elsewhere)
    control = FolderControl(linked)
    control.poll()
    assert not control.stop_requested and len(list(elsewhere.iterdir())) == 1  # neither obeyed nor deleted


def test_a_run_name_that_is_a_folder_of_something_else_is_refused_and_left_alone(lm, tmp_path, capsys):
    """`output.run_name: proj` over a project folder overwrote its config.yaml and deleted its event log
    and its checkpoints/."""
    project = tmp_path / "runs" / "proj"
    (project / "checkpoints").mkdir(parents=True)
    files = {project / "config.yaml": "trainer: {epochs: 3}\n", project / "events.jsonl": "not ours\n",
             project / "checkpoints" / "epoch=3.ckpt": "weights"}
    for path, text in files.items():
        path.write_text(text)
    lm["output"]["run_name"] = "proj"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(lm))
    for detached in ([], ["--detach"]):
        assert main(["train", str(tmp_path / "run.yaml"), *detached]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"{project} exists and is not an sft-tui run folder: it holds config.yaml, events.jsonl, " \
               "checkpoints/epoch=3.ckpt" in err
        assert all(path.read_text() == text for path, text in files.items())


# ---- trust_remote_code: approved by the person starting the run, never by a file ---------------
@pytest.fixture
def code_model(tmp_path, tiny_model_factory) -> tuple[Path, Path]:
    """A model folder whose config.json names code of its own, which leaves a marker when imported."""
    folder, marker = tmp_path / "code-model", tmp_path / "code-ran"
    shutil.copytree(tiny_model_factory("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_mine.MineConfig",
                          "AutoModelForCausalLM": "configuration_mine.MineForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_mine.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\nclass MineConfig(LlamaConfig):\n"
        "    model_type = 'llama'\n\n\nclass MineForCausalLM(LlamaForCausalLM):\n    config_class = MineConfig\n")
    return folder, marker


def _trusting(lm: dict, folder: Path, path: Path) -> Path:
    lm["model"].update(name_or_path=str(folder), trust_remote_code=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(lm))
    return path


def test_a_config_or_run_folder_cannot_approve_its_models_code(lm, code_model, tmp_path, capsys):
    """A review's shared run folder held `trust_remote_code: true`: `sft-tui train --resume` ran its
    model's code, with no question asked."""
    folder, marker = code_model
    config = _trusting(lm, folder, tmp_path / "theirs.yaml")
    run = tmp_path / "runs" / "theirs"
    _trusting(lm, folder, run / "config.yaml")
    for argv in (["train", str(config)], ["train", str(config), "--dry-run"], ["train", "--resume", str(run)],
                 ["train", "--resume", str(run), "--detach"]):
        assert main(argv) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        assert f"model.trust_remote_code is true: the run would import and run the Python code that {folder} " \
               "ships" in err and "--trust-remote-code" in err
        assert not marker.exists(), argv
    sneaked = ["--set", "model.trust_remote_code=false", "--set",  # a --set is no approval, whatever it names
               f'model={{"name_or_path": "{folder}", "trust_remote_code": true}}']
    assert main(["train", str(tmp_path / "theirs.yaml"), "--dry-run", *sneaked]) == 2 and not marker.exists()
    main(["train", str(config), "--dry-run", "--trust-remote-code"])  # approved now: the code is live
    assert marker.exists(), "the model's code must be live, or this test proves nothing"


async def test_the_app_opens_a_trusting_config_untrusted_and_asks_before_resuming_one(lm, code_model, tmp_path):
    from sft_tui.app import create_app
    from sft_tui.screens.dialogs import ConfirmDialog

    folder, marker = code_model
    app = create_app(_trusting(lm, folder, tmp_path / "theirs.yaml"), in_process=True)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await settle(pilot)  # the model loads at once (llama's own classes serve), without its code
        assert app.model_state == "ready" and not app.session.config.model.trust_remote_code
        assert not marker.exists()
        assert any("asks to run the Python code" in n.message and "tick 'trust remote code'" in n.message
                   for n in app._notifications)
        run = tmp_path / "runs" / "theirs"
        _trusting(lm, folder, run / "config.yaml")
        app.launch_run(resume_dir=run)
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog) and str(folder) in app.screen.question
        await pilot.press("escape")
        assert app.run_state == "idle" and not marker.exists()


def test_the_apps_approval_reaches_its_detached_engine_and_only_for_that_model(lm, code_model, tmp_path):
    """The app starts every run as `sft-tui train - --engine`: the box ticked in the app (or its
    confirmation) must reach that process, and nothing else may."""
    from core.run_info import run_info
    from sft_tui.detach import start_detached

    folder, marker = code_model
    config = parse_config(yaml.safe_load(_trusting(lm, folder, tmp_path / "mine.yaml").read_text()))
    refused = start_detached(config)
    assert refused.process.wait(timeout=120) == 2 and not marker.exists()
    assert "model.trust_remote_code is true" in " ".join(refused.paths.engine_log.read_text().split())
    approved = start_detached(config.model_copy(update={"output": config.output.model_copy(
        update={"run_name": "approved"})}), trusted=True)
    assert approved.process.wait(timeout=300) == 0
    assert marker.exists() and run_info(approved.paths.root).state == "finished"


def test_an_app_traceback_that_cannot_go_to_runs_dir_goes_to_the_users_cache_never_through_a_link(tmp_path,
                                                                                                   monkeypatch):
    """It went to the shared temp folder, where another user could have put a link under its name."""
    from sft_tui.error_log import write_traceback

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "a-file").write_text("not a folder")
    unwritable = tmp_path / "a-file" / "sft-tui-error.log"
    try:
        raise RuntimeError("boom")
    except RuntimeError as err:
        written = write_traceback(err, unwritable, "a test")
        assert written == tmp_path / "cache" / "sft-tui" / "sft-tui-error.log"
        assert "RuntimeError: boom" in written.read_text()
        written.unlink()
        (tmp_path / "victim").write_text("precious")
        written.symlink_to(tmp_path / "victim")
        assert write_traceback(err, unwritable, "a test") is None
    assert (tmp_path / "victim").read_text() == "precious"
