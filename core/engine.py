"""The training loop: setup, then a plain loop that reads top to bottom.

accelerate handles device placement, mixed precision and distribution (torchrun / accelerate launch);
the loop itself is ours so that the freeze map's parameter groups, loss masking, throttled reporting,
cooperative control and exact resume stay visible in one place.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from core.config import RunConfig
from core.control import Control
from core.errors import UserError
from core.events import (CheckpointSaved, EvalResult, Event, EventSink, JsonlSink, Paused, Resumed, RunFailed,
                         RunFinished, RunStarted, SampleGenerated, StepMetrics)
from core.logs import logs_to_events
from core.runs import (RunLock, RunPaths, config_digest, create_run, discard_stub, new_run_id, open_run,
                       resume_problem)

log = logging.getLogger("core.engine")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the weights since the last checkpoint are not trustworthy."""


@dataclass
class RunResult:
    run_dir: Path
    reason: str
    step: int
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    output_path: Path | None
    last_checkpoint: Path | None


class _Broadcast:
    """Fans events out to every sink, on the main process only."""

    def __init__(self, sinks: list[EventSink], active: bool) -> None:
        self.sinks = sinks if active else []

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def emit_failure(self, event: RunFailed) -> None:
        """Tell every sink that can still hear it: on a full disk the event log cannot take the
        failure, and that must not hide the message from the terminal or the app."""
        for sink in self.sinks:
            try:
                sink.emit(event)
            except OSError:
                continue


def train(
    config: RunConfig,
    sinks: list[EventSink] = (),
    control: Control | None = None,
    *,
    resume_dir: str | Path | None = None,
    report_interval_s: float = 0.25,
) -> RunResult:
    """Run (or with `resume_dir`, continue) a fine-tune. Raises UserError after a RunFailed event."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    control = control or Control()
    if resume_dir is not None:
        paths, config = open_run(resume_dir)
    accelerator = Accelerator(mixed_precision=_mixed_precision(config.precision), step_scheduler_with_optimizer=False)
    main = accelerator.is_main_process
    lock = None
    if resume_dir is not None:
        if main:
            lock = RunLock(paths)
            problem = resume_problem(paths)
            if problem:
                lock.release()
                raise problem
    else:
        holder = [new_run_id(config) if main else None]
        broadcast_object_list(holder)
        if main:
            paths, lock = create_run(config, holder[0])
        else:
            paths = RunPaths(Path(config.output.runs_dir) / holder[0])
    accelerator.wait_for_everyone()
    jsonl = JsonlSink(paths.events) if main else None
    out = _Broadcast([jsonl, *sinks] if jsonl else [], main)
    loop = _Loop(config, paths, accelerator, out, control, report_interval_s)
    try:
        with logs_to_events(out):
            return loop.run(resume=resume_dir is not None)
    except UserError as err:
        out.emit_failure(RunFailed(message=err.message, hint=err.hint, last_checkpoint=_str(loop.last_checkpoint),
                                   step=loop.step))
        if main and resume_dir is None and loop.step == 0:
            jsonl.close()
            discard_stub(paths)  # a start that failed on its input must not block its run name
        raise
    except Exception as err:
        log_file = _write_traceback(paths) if main else None
        out.emit_failure(RunFailed(message=f"{type(err).__name__}: {err}",
                                   hint=f"this looks like a bug in sft-tui or a library; the traceback is in {log_file}",
                                   last_checkpoint=_str(loop.last_checkpoint), step=loop.step,
                                   log_file=_str(log_file)))
        raise
    finally:
        if jsonl:
            jsonl.close()
        if lock:
            lock.release()


def _write_traceback(paths: RunPaths) -> Path:
    """Append the exception being handled to the run's error log, so a front end can name a file."""
    import traceback

    with open(paths.error_log, "a", encoding="utf-8") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} step failure\n{traceback.format_exc()}\n")
    return paths.error_log


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


def _mixed_precision(precision: str) -> str:
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp16" and not cuda:
        raise UserError("precision fp16 needs a CUDA GPU", "use precision: bf16 or fp32 on this machine")
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


class _Loop:
    """One run's state. `run()` is the whole training procedure, in order."""

    def __init__(self, config, paths, accelerator, out, control, report_interval_s) -> None:
        self.config, self.paths, self.acc, self.out, self.control = config, paths, accelerator, out, control
        self.report_interval_s = report_interval_s
        self.step = 0
        self.last_checkpoint: Path | None = None

    # ---- setup -------------------------------------------------------------------------------
    def run(self, resume: bool) -> RunResult:
        import torch
        from transformers import get_scheduler, set_seed

        from core.checkpoint import load_latest
        from core.data import batch_plan, prepare_data
        from core.freeze import apply_freeze_map, effective_rules, param_groups
        from core.describe import describe_model
        from core.models import load_model, load_tokenizer, usable_positions
        from core.plan import plan_steps

        cfg, acc = self.config, self.acc
        set_seed(cfg.seed)
        tokenizer = load_tokenizer(cfg.model)
        data = prepare_data(cfg, tokenizer, usable_positions(cfg.model, tokenizer))
        for warning in data.warnings:
            log.warning(warning)
        if not data.validation:
            log.warning("no validation rows: evaluation, early stopping and samples are skipped")
        model = load_model(cfg.model, cfg.task, data.labels, dtype=torch.float32,  # fp32 master weights; autocast does the rest
                           pad_token_id=tokenizer.pad_token_id)
        desc = describe_model(model)
        rules = effective_rules(cfg.freeze, desc)
        summary = apply_freeze_map(model, rules)
        for warning in summary.warnings:
            log.warning(warning)
        groups = param_groups(model, rules, cfg.optim.weight_decay)
        for group in groups:
            group["lr"] = cfg.optim.lr * group["lr_scale"]
        # torch picks its per-tensor Python loop on CPU unless asked; the fused kernel made MiniLM's
        # optimizer step 5x faster (BENCHMARKS.md), and it is what Trainer uses by default too.
        optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                      eps=cfg.optim.eps, fused=acc.device.type in ("cpu", "cuda") or None)
        model, optimizer = acc.prepare(model, optimizer)
        self.model, self.optimizer, self.tokenizer, self.data = model, optimizer, tokenizer, data
        self.trainable = [p for p in model.parameters() if p.requires_grad]

        lengths = [len(ex.input_ids) for ex in data.train]
        world, rank = acc.num_processes, acc.process_index
        plan = lambda epoch: batch_plan(lengths, cfg.optim.batch_size, cfg.seed, epoch,  # noqa: E731
                                        cfg.data.group_by_length)
        steps = plan_steps(cfg, len(data.train), world)
        micro_per_epoch = steps.micro_batches_per_epoch
        if micro_per_epoch == 0:
            raise UserError(f"{len(data.train)} training rows make no full batch per process "
                            f"(optim.batch_size {cfg.optim.batch_size}, {world} processes)",
                            "lower optim.batch_size or add data")
        steps_per_epoch, total_steps = steps.steps_per_epoch, steps.total_steps
        scheduler = get_scheduler(steps.scheduler, optimizer, num_warmup_steps=steps.warmup_steps,
                                  num_training_steps=total_steps)
        self.scheduler, self.total_steps, self.steps = scheduler, total_steps, steps

        state = {"epoch": 0, "step_in_epoch": 0, "tokens_seen": 0, "best": None, "best_step": None,
                 "best_metrics": {}, "bad_evals": 0, "elapsed_s": 0.0}
        if resume:
            ckpt, saved = load_latest(self.paths.checkpoints, acc.unwrap_model(model), optimizer, scheduler,
                                      warn=log.warning)
            state.update(saved)
            self.step, self.last_checkpoint = state["step"], ckpt
            log.info("resumed from %s", ckpt)
        self.state = state

        self.out.emit(RunStarted(
            run_id=self.paths.root.name, run_dir=str(self.paths.root), task=cfg.task, model=cfg.model.name_or_path,
            config_digest=config_digest(cfg), total_params=summary.total_params,
            trainable_params=summary.trainable_params, planned_steps=total_steps, steps_per_epoch=steps_per_epoch,
            train_rows=len(data.train), validation_rows=len(data.validation), device=str(acc.device),
            precision={"no": "fp32"}.get(acc.mixed_precision, acc.mixed_precision), world_size=world, resumed_from_step=self.step,
        ))
        return self._loop(plan, micro_per_epoch, steps_per_epoch, rank, world)

    # ---- the loop ----------------------------------------------------------------------------
    def _loop(self, plan, micro_per_epoch, steps_per_epoch, rank, world) -> RunResult:

        from core.data import collate
        from core.loss import batch_loss_sum, count_items

        cfg, acc, model, optimizer, scheduler = self.config, self.acc, self.model, self.optimizer, self.scheduler
        state, task, accum = self.state, cfg.task, cfg.optim.grad_accum
        pad_id = self.tokenizer.pad_token_id
        model.train()
        self.started = time.perf_counter() - state["elapsed_s"]
        self._reset_window()
        self.eval_seconds: list[float] = []
        reason = "completed"
        epoch = state["epoch"]
        while self.step < self.total_steps and reason == "completed":
            mine = plan(epoch)[rank::world][:micro_per_epoch]
            chunks = [mine[i : i + accum] for i in range(0, len(mine), accum)]
            for index in range(state["step_in_epoch"], len(chunks)):
                examples = [[self.data.train[i] for i in b] for b in chunks[index]]
                items = max(count_items([ex for b in examples for ex in b], task), 1)
                for k, batch_examples in enumerate(examples):
                    batch = {key: t.to(acc.device) for key, t in collate(batch_examples, pad_id, task).items()}
                    last = k == len(examples) - 1
                    with (nullcontext() if last else acc.no_sync(model)), acc.autocast():
                        loss_sum, _ = batch_loss_sum(model, batch, task)
                        acc.backward(loss_sum / items)
                    self.window_loss += loss_sum.detach().float() / items
                    self.window_tokens += sum(len(ex.input_ids) for ex in batch_examples)  # no device sync
                    self.window_rows += len(batch_examples)
                grad_norm = None
                if cfg.optim.max_grad_norm > 0:
                    grad_norm = acc.clip_grad_norm_(self.trainable, cfg.optim.max_grad_norm)
                    self.window_grad += grad_norm.detach().float()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.window_steps += 1
                state["step_in_epoch"] = index + 1
                state["epoch"] = epoch
                state["epoch_progress"] = epoch + (index + 1) / len(chunks)

                final_step = self.step >= self.total_steps
                if time.perf_counter() - self.window_start >= self.report_interval_s or final_step:
                    self._report(grad_norm is not None)
                reason = self._after_step(final_step)
                if reason != "completed" or final_step:
                    break
            else:
                epoch += 1
                state["epoch"], state["step_in_epoch"] = epoch, 0
                continue
            break
        return self._finish(reason)

    # ---- reporting ---------------------------------------------------------------------------
    def _reset_window(self) -> None:
        import torch

        self.window_start = time.perf_counter()
        self.window_loss = torch.zeros((), device=self.acc.device)
        self.window_grad = torch.zeros((), device=self.acc.device)
        self.window_steps = self.window_tokens = self.window_rows = 0

    def _report(self, has_grad: bool) -> None:
        """One device sync per report (a few a second), never per step; also the NaN/inf guard."""
        from core.memory import process_memory

        if self.window_steps == 0:
            return
        loss = float(self.window_loss) / self.window_steps
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} by step {self.step}; the run was stopped",
                "lower optim.lr, keep optim.max_grad_norm > 0, or use precision fp32; "
                "the last checkpoint (if any) holds the last good weights",
            )
        seconds = max(time.perf_counter() - self.window_start, 1e-9)
        self.state["tokens_seen"] += self.window_tokens * self.acc.num_processes
        elapsed = time.perf_counter() - self.started
        self.out.emit(StepMetrics(
            step=self.step, epoch=round(self.state["epoch_progress"], 4), loss=loss,
            lr=self.scheduler.get_last_lr()[0] / self.optimizer.param_groups[0]["lr_scale"],
            grad_norm=float(self.window_grad) / self.window_steps if has_grad else None,
            tokens_per_s=self.window_tokens * self.acc.num_processes / seconds,
            samples_per_s=self.window_rows * self.acc.num_processes / seconds,
            tokens_seen=self.state["tokens_seen"], elapsed_s=elapsed, eta_s=self._eta(elapsed),
            memory=process_memory(),
        ))
        self._reset_window()

    def _eta(self, elapsed: float) -> float | None:
        """Remaining steps at the mean step time, plus the evaluations still to come."""
        if self.step <= 0:
            return None
        train_time = elapsed - sum(self.eval_seconds)
        remaining = self.total_steps - self.step
        every = self.config.eval.every_steps
        evals_left = (remaining // every if every else 0) + 1 if self.data.validation else 0
        mean_eval = sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds else 0.0
        return remaining * train_time / max(self.step, 1) + evals_left * mean_eval

    # ---- between optimizer steps --------------------------------------------------------------
    def _after_step(self, final_step: bool) -> str:
        """Evaluate, checkpoint and obey the Control; returns the reason to end, or 'completed'."""
        control = self.control
        reason = "completed"
        if control.take_eval_request() or self.steps.evaluates_after(self.step):
            if self._evaluate():
                reason = "early-stopped"
        if control.take_save_request() or self.steps.checkpoints_after(self.step):
            self._checkpoint()
        if control.paused:
            self.out.emit(Paused(step=self.step))
            pause_started = time.perf_counter()
            control.wait_while_paused()
            self.started += time.perf_counter() - pause_started  # paused time is not training time
            self.out.emit(Resumed(step=self.step))
            self._reset_window()
        if not final_step and self._agreed(control.should_stop(self.step)):
            self._checkpoint()
            return "stopped"
        return reason

    def _agreed(self, flag: bool) -> bool:
        """Every process must stop at the same step: any rank's stop request stops all of them."""
        if self.acc.num_processes == 1:
            return flag
        import torch

        t = torch.tensor(float(flag), device=self.acc.device)
        return bool(self.acc.reduce(t, "sum") > 0)

    def _evaluate(self) -> bool:
        """Run an evaluation; True when early stopping says the run should end."""
        from core.evaluate import evaluate, generate_samples
        from core.metrics import is_better

        cfg, state = self.config, self.state
        if not self.data.validation:
            return False
        started = time.perf_counter()
        metrics = evaluate(self.model, self.data.validation, task=cfg.task, num_labels=len(self.data.labels or []),
                           batch_size=cfg.eval.batch_size or 2 * cfg.optim.batch_size,
                           pad_token_id=self.tokenizer.pad_token_id, accelerator=self.acc)
        value = metrics[cfg.eval.metric]
        best = is_better(cfg.eval.metric, value, state["best"])
        if best:
            state.update(best=value, best_step=self.step, best_metrics=metrics, bad_evals=0)
        else:
            state["bad_evals"] += 1
        self.final_metrics = metrics
        seconds = time.perf_counter() - started
        self.out.emit(EvalResult(step=self.step, epoch=round(state["epoch_progress"], 4), metrics=metrics,
                                 is_best=best, seconds=seconds))
        if cfg.task == "causal-lm" and cfg.eval.num_samples and self.acc.is_main_process:
            with_prompts = [ex for ex in self.data.validation if getattr(ex, "prompt_ids", None)][: cfg.eval.num_samples]
            for prompt, output, reference in generate_samples(
                self.acc.unwrap_model(self.model), self.tokenizer, with_prompts,
                max_new_tokens=cfg.eval.max_new_tokens, device=self.acc.device,
            ):
                self.out.emit(SampleGenerated(step=self.step, prompt=prompt, output=output, reference=reference))
        self.acc.wait_for_everyone()
        self.eval_seconds.append(time.perf_counter() - started)
        return bool(cfg.eval.patience) and state["bad_evals"] >= cfg.eval.patience

    def _checkpoint(self) -> None:
        from core.checkpoint import save_checkpoint

        if self.last_checkpoint is not None and self.last_checkpoint.name == f"step-{self.step}":
            return  # e.g. a stop right after a scheduled save: that checkpoint is this step's
        if self.window_steps:
            self._report(has_grad=self.config.optim.max_grad_norm > 0)  # NaN guard before saving weights
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            started = time.perf_counter()
            self.state["elapsed_s"] = time.perf_counter() - self.started
            saved = {k: v for k, v in self.state.items() if k != "step"}
            self.last_checkpoint = save_checkpoint(
                self.paths.checkpoints, self.step, self.acc.unwrap_model(self.model), self.optimizer,
                self.scheduler, saved, self.config.checkpoint.keep_last,
            )
            self.out.emit(CheckpointSaved(step=self.step, path=str(self.last_checkpoint),
                                          seconds=time.perf_counter() - started))
        self.acc.wait_for_everyone()

    # ---- the end -----------------------------------------------------------------------------
    def _finish(self, reason: str) -> RunResult:
        from core.export import save_final

        output = None
        if reason != "stopped" and self.config.output.save_final:
            if self.acc.is_main_process:
                save_final(self.acc.unwrap_model(self.model), self.tokenizer, self.paths.final)
            output = self.paths.final
        self.acc.wait_for_everyone()
        final_metrics = getattr(self, "final_metrics", {})
        self.out.emit(RunFinished(
            step=self.step, reason=reason, final_metrics=final_metrics, best_metrics=self.state["best_metrics"],
            best_step=self.state["best_step"], output_path=_str(output), last_checkpoint=_str(self.last_checkpoint),
            elapsed_s=time.perf_counter() - self.started,
        ))
        return RunResult(self.paths.root, reason, self.step, final_metrics, self.state["best_metrics"], output,
                         self.last_checkpoint)
