"""Out-of-memory recovery (issue 11.3): a step that runs out of device memory is taken again with
half the micro-batch and twice the accumulation, on the same rows, so the loss curve is the one a
run that started with the smaller micro-batch draws; at one row, or with compute.oom_recovery off,
the run fails with advice and its last checkpoint still resumes it.

No GPU is needed: `torch.OutOfMemoryError` is raised from the loss (core.loss.batch_loss_sum, which
the engine looks up per step) when a training micro-batch holds more rows than a simulated device
takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.config import parse_config
from core.data.batching import batch_plan, process_share
from core.engine import train
from core.errors import UserError
from core.events import ListSink, MicroBatchHalved, RunFailed, RunStarted, StepMetrics, read_events
from core.plan import plan_steps
from core.runs import RunPaths, resume_problem
from helpers import WORDS, StopAt, tiny_lm_config, write_jsonl


@pytest.fixture
def sft_file(tmp_path):
    rows = [{"prompt": f"Say {w} {i % 3}:", "completion": f" {w} {w}"} for i, w in enumerate(WORDS * 8)]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


def config(model_dir, data, tmp_path, name, batch, accum, **sections):
    """Eight steps of a dropout-free tiny llama (dropout would draw other masks for other batch
    shapes), one evaluation at the end, a checkpoint every 2 steps."""
    base = {"optim": {"batch_size": batch, "grad_accum": accum}, "schedule": {"max_steps": 8},
            "eval": {"every_steps": 0, "num_samples": 0}, "checkpoint": {"every_steps": 2, "keep_last": 5},
            "output": {"run_name": name}}
    for section, fields in sections.items():
        base.setdefault(section, {}).update(fields)
    return parse_config(tiny_lm_config(model_dir, data, tmp_path / "runs", **base))


class Device:
    """A simulated device: from the `from_call`-th training forward on, a micro-batch of more than
    `max_rows` rows runs out of memory. Records the rows of every training micro-batch."""

    def __init__(self, monkeypatch, max_rows: int, from_call: int = 1) -> None:
        import core.loss

        self.max_rows, self.from_call, self.calls, self.rows = max_rows, from_call, 0, []
        real = core.loss.batch_loss_sum

        def batch_loss_sum(model, batch, task, **kw):
            if model.training:
                self.calls += 1
                rows = batch["input_ids"].shape[0]
                if self.calls >= self.from_call and rows > self.max_rows:
                    raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows} rows' worth")
                self.rows.append(rows)
            return real(model, batch, task, **kw)

        monkeypatch.setattr(core.loss, "batch_loss_sum", batch_loss_sum)


def run(cfg, control=None, **kw):
    sink = ListSink()
    result = train(cfg, [sink], control, report_interval_s=0, **kw)
    return result, sink


def losses(sink) -> list[float]:
    return [e.loss for e in sink.of_type(StepMetrics)]


def saved_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


def test_an_oom_halves_the_micro_batch_and_the_losses_match_a_run_started_smaller(tiny_model_factory, sft_file,
                                                                                  tmp_path, monkeypatch):
    model_dir = tiny_model_factory("llama")
    _, smaller = run(config(model_dir, sft_file, tmp_path, "smaller", batch=4, accum=2))
    _, unharmed = run(config(model_dir, sft_file, tmp_path, "unharmed", batch=8, accum=1))

    device = Device(monkeypatch, max_rows=4, from_call=3)  # steps 1 and 2 fit 8 rows, step 3 does not
    result, recovered = run(config(model_dir, sft_file, tmp_path, "recovered", batch=8, accum=1))

    assert result.reason == "completed" and result.step == 8
    [halved] = recovered.of_type(MicroBatchHalved)
    assert (halved.step, halved.batch_size, halved.grad_accum) == (3, 4, 2)
    assert halved.reason.startswith("CUDA out of memory")
    assert device.rows == [8, 8] + [4] * 12  # steps 3 to 8 trained two micro-batches of 4 rows each
    assert len(losses(recovered)) == 8
    torch.testing.assert_close(torch.tensor(losses(recovered)), torch.tensor(losses(smaller)))
    torch.testing.assert_close(torch.tensor(losses(recovered)[:2]), torch.tensor(losses(unharmed)[:2]),
                               rtol=0, atol=0)  # before the failure it was the run it started as
    assert [saved_state(p)["micro_batch_size"] for p in sorted((result.run_dir / "checkpoints").iterdir())] == \
        [0, 4, 4, 4]  # steps 2, 4, 6 and 8: the halving is part of the train state
    assert any(e.type == "micro_batch_halved" for e in read_events(result.run_dir / "events.jsonl"))


def test_a_resumed_run_keeps_the_halved_micro_batch(tiny_model_factory, sft_file, tmp_path, monkeypatch):
    model_dir = tiny_model_factory("llama")
    _, smaller = run(config(model_dir, sft_file, tmp_path, "smaller", batch=4, accum=2))
    device = Device(monkeypatch, max_rows=4, from_call=3)
    first, part1 = run(config(model_dir, sft_file, tmp_path, "cut", batch=8, accum=1), StopAt(5))
    assert first.reason == "stopped" and saved_state(first.last_checkpoint)["micro_batch_size"] == 4

    device.rows, device.max_rows = [], 8  # the device would take 8 rows again: the resumed run does not try
    resumed, part2 = run(None, resume_dir=first.run_dir)
    assert resumed.step == 8 and not part2.of_type(MicroBatchHalved)
    assert device.rows == [4] * 6
    torch.testing.assert_close(torch.tensor(losses(part1) + losses(part2)), torch.tensor(losses(smaller)))


def test_running_out_at_one_row_fails_with_advice_and_the_last_checkpoint_resumes(tiny_model_factory, sft_file,
                                                                                   tmp_path, monkeypatch):
    model_dir = tiny_model_factory("llama")
    device = Device(monkeypatch, max_rows=0, from_call=3)  # from step 3 on, nothing fits
    cfg = config(model_dir, sft_file, tmp_path, "hopeless", batch=4, accum=1)
    with pytest.raises(UserError, match="out of device memory at step 3 with micro-batches of 1 row"):
        run(cfg)
    root = Path(cfg.output.runs_dir) / "hopeless"
    events = read_events(root / "events.jsonl")
    assert [(e.batch_size, e.grad_accum) for e in events if isinstance(e, MicroBatchHalved)] == [(2, 2), (1, 4)]
    failed = events[-1]
    assert isinstance(failed, RunFailed) and failed.step == 2 and failed.last_checkpoint.endswith("step-2")
    for advice in ("lora.enabled", "compute.gradient_checkpointing", "data.max_length (now 32)",
                   f"sft-tui train --resume {root}"):
        assert advice in failed.hint
    assert "optim.batch_size" not in failed.hint  # at one row a smaller batch does not help

    assert resume_problem(RunPaths(root)) is None
    device.max_rows = 4  # the device has room again
    resumed, sink = run(None, resume_dir=root)
    assert resumed.reason == "completed" and resumed.step == 8
    assert sink.of_type(RunStarted)[0].resumed_from_step == 2 and not sink.of_type(MicroBatchHalved)


def test_with_recovery_off_an_oom_fails_at_once_with_the_advice(tiny_model_factory, sft_file, tmp_path,
                                                                monkeypatch):
    Device(monkeypatch, max_rows=4, from_call=3)
    cfg = config(tiny_model_factory("llama"), sft_file, tmp_path, "off", batch=8, accum=1,
                 compute={"oom_recovery": False})
    with pytest.raises(UserError, match=r"with micro-batches of 8 rows \(compute.oom_recovery is off\)"):
        run(cfg)
    events = read_events(Path(cfg.output.runs_dir) / "off" / "events.jsonl")
    assert not [e for e in events if isinstance(e, MicroBatchHalved)]
    assert "lower optim.batch_size (now 8)" in events[-1].hint and "lora.enabled" in events[-1].hint


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize(("rows", "processes", "batch", "accum"), [
    (100, 1, 8, 2), (100, 2, 8, 2), (100, 4, 16, 2), (37, 3, 4, 3), (5, 2, 4, 1), (100, 8, 16, 2),
    (1350, 2, 16, 1), (2000, 3, 8, 1),
])
def test_the_rows_of_a_step_depend_on_the_effective_batch_and_match_the_plans_counts(rows, processes, batch, accum,
                                                                                    grouped):
    """core.plan counts what process_share deals out; halving the micro-batch (half the batch, twice
    the accumulation) deals the same rows to the steps of a single process. The engine takes an
    epoch's first steps_per_epoch steps: each gives every process rows (length grouping once shuffled
    the short step among them, where it gave none: `--nproc 2` crashed, and a full step went untrained)."""
    lengths = [(i * 7) % 23 + 1 for i in range(rows)]
    cfg = config(Path("m"), Path("d.jsonl"), Path("."), "x", batch=batch, accum=accum)
    plan = plan_steps(cfg, rows, processes)
    steps = batch_plan(lengths, plan.effective_batch, 3, 0, grouped)
    shares = [[process_share(step, batch, processes, rank) for step in steps] for rank in range(processes)]
    for mine in shares:
        assert all(mine[:plan.steps_per_epoch]) and not any(mine[plan.steps_per_epoch:])
        assert sum(-(-len(share) // batch) for share in mine) == plan.micro_batches_per_epoch
    for index in range(plan.steps_per_epoch - 1):  # every full step: its rows, whole, once
        assert sorted(row for mine in shares for row in mine[index]) == sorted(steps[index])
    if processes == 1:
        assert [process_share(step, batch // 2, 1, 0) for step in steps] == shares[0]


def test_the_cpus_allocator_running_out_is_a_message_with_advice_not_a_bug(tiny_model_factory, sft_file, tmp_path,
                                                                           monkeypatch):
    """torch's CPU allocator raises a plain RuntimeError: the run failed as "this looks like a bug",
    with a traceback on the terminal."""
    import core.loss

    real = core.loss.batch_loss_sum

    def batch_loss_sum(model, batch, task, **kw):
        if model.training:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 3221225472 bytes. Error code 12")
        return real(model, batch, task, **kw)

    monkeypatch.setattr(core.loss, "batch_loss_sum", batch_loss_sum)
    cfg = config(tiny_model_factory("llama"), sft_file, tmp_path, "ram", batch=8, accum=1)
    with pytest.raises(UserError, match=r"out of memory \(RAM\) at step 1 with micro-batches of 8 rows") as err:
        run(cfg)
    assert "lower optim.batch_size (now 8)" in err.value.hint and "data.max_length" in err.value.hint
    assert not (Path(cfg.output.runs_dir) / "ram").exists()  # a start that failed on its input leaves no folder


def test_headless_prints_the_halving_on_its_console():
    import io

    from rich.console import Console

    from sft_tui.headless import ProgressDisplay

    err, out = io.StringIO(), io.StringIO()
    display = ProgressDisplay(Console(file=err, width=200), Console(file=out, width=200))
    display.emit(MicroBatchHalved(step=7, batch_size=2, grad_accum=8, reason="CUDA out of memory. Tried to allocate"))
    assert "step 7 ran out of memory (CUDA out of memory. Tried to allocate): retrying with micro-batches of 2 rows " \
           "x 8 accumulated, the same effective batch" in err.getvalue()
    assert out.getvalue() == ""  # stdout keeps the run's result only


@pytest.mark.parametrize(("where", "said", "advice"), [
    ("optimizer", "out of device memory at step 1 in the optimizer step", "train fewer blocks with the freeze map"),
    ("evaluation", "out of device memory evaluating before training (16 rows a batch)", "set eval.batch_size lower"),
])
def test_running_out_outside_the_micro_batches_fails_with_its_own_advice(where, said, advice, tiny_model_factory,
                                                                         sft_file, tmp_path, monkeypatch):
    """Halving cannot help the optimizer's state or an evaluation: these say what would."""
    import core.evaluate

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    if where == "optimizer":
        monkeypatch.setattr(torch.optim.AdamW, "step", out_of_memory)
    else:
        monkeypatch.setattr(core.evaluate, "evaluate", out_of_memory)
    cfg = config(tiny_model_factory("llama"), sft_file, tmp_path, where, batch=8, accum=1,
                 schedule={"max_steps": 2})
    sink = ListSink()
    with pytest.raises(UserError, match=said.replace("(", r"\(").replace(")", r"\)")):
        train(cfg, [sink], report_interval_s=0)
    assert advice in sink.of_type(RunFailed)[0].hint


def test_weights_more_than_the_machine_holds_are_refused_before_they_load(tiny_model_factory, sft_file, tmp_path,
                                                                         monkeypatch):
    """Every process loads the float32 weights into RAM first: a model bigger than RAM and swap was
    ended by the kernel's out-of-memory killer minutes into the loading, with no word (a crashed run).
    Now the engine counts the parameters on the meta skeleton and refuses, naming the field, before
    it loads anything. Where one process's copy fits and two do not, only the two-process run is."""
    import types

    import psutil

    import core.models
    from core.memory_fit import load_problem
    from core.models import build_skeleton

    model_dir = tiny_model_factory("llama")
    cfg = config(model_dir, sft_file, tmp_path, "big", 4, 1, compute={"nproc": 1})
    params = sum(p.numel() for p in build_skeleton(cfg.model, "causal-lm").parameters())
    memory = 6 * params  # a machine with room for one float32 copy of the weights, not two
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(total=memory - 1000, available=0))
    monkeypatch.setattr(psutil, "swap_memory", lambda: types.SimpleNamespace(total=1000))
    two = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"nproc": 2})})
    problem = load_problem(two, params)
    assert problem.message.startswith(f"model.name_or_path: its {params:,} parameters take ")
    assert "as the float32 weights a run loads in each of its 2 processes" in problem.message
    assert "on fewer processes (compute.nproc)" in problem.hint and "lora.quantize: 4bit" in problem.hint
    qlora = two.model_copy(update={"lora": two.lora.model_copy(update={"enabled": True, "quantize": "4bit"})})
    assert load_problem(qlora, params) is None  # loaded in 4 bits, onto the GPU
    assert load_problem(cfg, params) is None

    small = memory // 12  # not even one copy: the engine refuses before it loads anything
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(total=small, available=0))
    monkeypatch.setattr(psutil, "swap_memory", lambda: types.SimpleNamespace(total=0))
    loaded = []
    real = core.models.load_model
    monkeypatch.setattr(core.models, "load_model", lambda *a, **k: loaded.append(1) or real(*a, **k))
    with pytest.raises(UserError) as refused:
        train(cfg)
    assert refused.value.message.startswith("model.name_or_path: its") and not loaded
    assert not (tmp_path / "runs" / "big").exists()  # a start that failed on its input leaves no run behind
