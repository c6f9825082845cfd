"""The training loop: setup in named steps, then a plain loop that reads top to bottom.

accelerate handles device placement, mixed precision and distribution (torchrun / accelerate launch);
the loop itself is ours so that the freeze map's parameter groups, loss masking, throttled reporting,
cooperative control and exact resume stay visible in one place.

`train` claims the run folder and turns failures into a RunFailed event (core.failures tells them). `_set_up` calls the steps
of core.setup in order (data, the model with its freeze map, the optimizer, the step plan and its
learning-rate schedule, the state to start from), each returning what it builds. `_Training.run` is
the loop: an optimizer step, a throttled report (core.step_reports), then evaluation, checkpoints
and the Control (core.milestones).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from core import setup
from core.checkpoint import TrainState
from core.config import RunConfig
from core.control import Control
from core.disk import disk_problem
from core.events import Broadcast, EventSink, JsonlSink, MicroBatchHalved, RunFailed, RunFinished, RunStarted
from core.errors import ABORTED, UserError
from core.failures import after_abort, close_events, path_text, report_bug
from core.eta import Eta
from core.l2sp import L2SP
from core.launch import accelerator_options
from core.logs import logs_to_events
from core.milestones import Milestones
from core.oom import host_out_of_memory, out_of_memory, step_advice, why_not_halved
from core.rank_failure import share_failure
from core.runs import RunPaths, anchored, config_digest, discard_stub, folder_identity, how_to_go_on, open_run
from core.step_reports import StepReports
from core.trackers import close_trackers, tracker_sinks
from core.unfreezing import Unfreezer
from core.unpadded import groups_by_length

@dataclass
class RunResult:
    """Where a run is and how it ended; the run's events hold everything else."""

    run_dir: Path
    reason: str
    step: int
    output_path: Path | None
    last_checkpoint: Path | None


def train(
    config: RunConfig,
    sinks: list[EventSink] = (),
    control: Control | None = None,
    *,
    resume_dir: str | Path | None = None,
    report_interval_s: float = 0.25,
    keep_failed_start: bool = False,
) -> RunResult:
    """Run (or with `resume_dir`, continue) a fine-tune. Raises UserError after a RunFailed event.

    A start that fails on its input leaves no run folder behind, unless `keep_failed_start`: a detached engine's
    clients learn of the failure from the folder's events.jsonl (a new start under the same name takes it over)."""
    from accelerate import Accelerator

    control = control or Control()
    resumed = None
    if resume_dir is not None:
        resumed, config = open_run(resume_dir)
    else:
        config = anchored(config)
    accelerator = Accelerator(mixed_precision=setup.mixed_precision(config.precision),
                              step_scheduler_with_optimizer=False, **accelerator_options(config))
    paths, lock = setup.claim_run_folder(config, accelerator, resumed)
    main = accelerator.is_main_process
    jsonl = JsonlSink(paths.events) if main else None
    out = Broadcast([jsonl, *sinks] if jsonl else [])
    training = None
    try:
        out.sinks += tracker_sinks(config, paths) if main else []  # output.report_to: TensorBoard, W&B
        with logs_to_events(out):
            training = _set_up(config, paths, accelerator, out, control, report_interval_s, resume=resumed is not None)
            return training.run()
    except Exception as caught:
        step, last_checkpoint = (training.state.step, training.last_checkpoint) if training else (0, None)
        # a full or read-only disk (events, final/, a tracker's files) is the user's to fix, not a bug
        err = caught if isinstance(caught, UserError) else disk_problem(caught, paths.root,
                                                                         how_to_go_on(paths, last_checkpoint is not None))
        if err is None:
            report_bug(caught, paths, accelerator, out, step, last_checkpoint)
            raise
        share_failure(paths.root, accelerator.process_index, accelerator.num_processes, err)
        out.emit_failure(RunFailed(message=err.message, hint=err.hint, last_checkpoint=path_text(last_checkpoint),
                                   step=step))
        if main and resumed is None and step == 0 and not keep_failed_start:
            close_events(jsonl)
            discard_stub(paths)  # a start that failed on its input must not block its run name
        if err is caught:
            raise
        raise err from caught
    except KeyboardInterrupt:  # a second Ctrl+C: the person wants out now, without the checkpoint
        step, last_checkpoint = (training.state.step, training.last_checkpoint) if training else (0, None)
        out.emit_failure(RunFailed(message=f"aborted at step {step} {ABORTED}",
                                   hint=after_abort(paths, last_checkpoint), last_checkpoint=path_text(last_checkpoint),
                                   step=step))
        raise
    finally:
        close_trackers(out.sinks)
        if jsonl:
            close_events(jsonl)
        if lock:
            lock.release()


# ---- setup ------------------------------------------------------------------------------------------


def _set_up(config: RunConfig, paths: RunPaths, acc, out: Broadcast, control: Control, report_interval_s: float,
            resume: bool) -> _Training:
    """Everything the loop works on, built in this order (the seed covers the new head's weights)."""
    from transformers import set_seed

    from core.compact_vocab import compact_vocab

    set_seed(config.seed)
    tokenizer, data = setup.setup_data(config)
    if resume and (problem := setup.changed_data(paths, data)):
        raise problem
    model, rules, freeze = setup.setup_model(config, tokenizer, data, resumed=resume)
    compact = compact_vocab(config, model, data.token_ids, acc.num_processes)
    optimizer = setup.setup_optimizer(config, model, rules, acc.device, compact)
    model, optimizer = acc.prepare(model, optimizer)
    l2sp = L2SP.for_run(config, acc.unwrap_model(model), optimizer)  # its reference: the weights before a resume loads
    plan = setup.setup_plan(config, len(data.train), acc.num_processes)
    scheduler = setup.setup_scheduler(plan, optimizer)
    state, checkpoint = (setup.restore_state(paths, acc.unwrap_model(model), optimizer, scheduler) if resume
                         else (TrainState(), None))
    return _Training(config, paths, acc, out, control, report_interval_s, tokenizer=tokenizer, data=data,
                     model=model, freeze=freeze, optimizer=optimizer, plan=plan, scheduler=scheduler, state=state,
                     last_checkpoint=checkpoint, l2sp=l2sp)


# ---- the loop ---------------------------------------------------------------------------------------


class _Training(Milestones, StepReports):
    """One run's loop and everything it works on; `run()` is the whole procedure after setup."""

    def __init__(self, config: RunConfig, paths: RunPaths, acc, out: Broadcast, control: Control,
                 report_interval_s: float, *, tokenizer, data, model, freeze, optimizer, plan, scheduler,
                 state: TrainState, last_checkpoint: Path | None, l2sp: L2SP | None) -> None:
        self.config, self.paths, self.acc, self.out, self.control = config, paths, acc, out, control
        self.report_interval_s = report_interval_s
        self.tokenizer, self.data, self.model, self.freeze = tokenizer, data, model, freeze
        self.optimizer, self.plan, self.scheduler, self.l2sp = optimizer, plan, scheduler, l2sp
        self.trainable = [p for p in model.parameters() if p.requires_grad]  # the whole map's: clipping skips
        # those of a later unfreezing stage, which have no gradient yet
        self.unfreezer = Unfreezer.for_run(config, model, plan.steps_per_epoch)  # None without freeze.unfreezing
        self.grouped = groups_by_length(config, model)  # before the prefix cache stands in for blocks
        self.prefix = None  # the frozen-prefix cache, built once the run has announced itself
        self.state, self.last_checkpoint = state, last_checkpoint
        self.started = time.perf_counter() - state.elapsed_s  # the clock continues a resumed run's; pauses move it
        self.saved_at_s = state.elapsed_s  # the run's time at its last checkpoint (checkpoint.every_minutes)
        self.folder = folder_identity(paths.root)  # a save checks that the folder was not moved (moved_problem)
        self._reset_window()
        self.final_metrics: dict[str, float] = {}
        self.sample_prompts = ([ex for ex in data.validation if getattr(ex, "prompt_ids", None)][: config.eval.num_samples]
                               if config.task == "causal-lm" and acc.is_main_process else [])
        from core.compact_vocab import saved_weight_bytes
        model_bytes = saved_weight_bytes(model)
        self.eta = Eta(plan, validation_rows=len(data.validation), samples_per_eval=len(self.sample_prompts),
                       max_new_tokens=config.eval.max_new_tokens, model_bytes=model_bytes,
                       checkpoint_bytes=model_bytes + 8 * sum(p.numel() for p in self.trainable),  # + AdamW's 2 fp32
                       save_final=config.output.save_final, clock_s=config.checkpoint.every_minutes * 60)

    def run(self) -> RunResult:
        from core.dropout_masks import fast_dropout
        from core.prefix_cache import PrefixCache

        self._announce()
        self.control.poll()  # a stop asked while the run was set up (a scheduler's SIGTERM): nothing to save
        if self._agreed(self.control.should_stop(self.state.step)):  # yet, and an evaluation, a step and a
            return self._finish("stopped")  # save first can outlast the scheduler's grace before its SIGKILL
        self.prefix = PrefixCache.for_run(self.config, self.acc, self.model, self.data.train,
                                           self.data.validation)  # frozen blocks once per row, by the whole map
        self._unfreeze()
        if self.state.step == 0 and self.config.eval.before_training:
            self._evaluate(before_training=True)
        patience = self.config.eval.patience
        if self.state.step and patience and self.state.bad_evals >= patience:  # it had stopped early, then
            return self._finish("early-stopped")  # failed before its end (final/): it ends there again
        with fast_dropout(self.config, self.acc.device):  # its log line follows run_started
            self.model.train()
            reason = "completed"
            for epoch, index, step_rows in self._remaining_steps():
                self._unfreeze()
                self._optimizer_step(step_rows)
                self.state.step += 1
                self.state.epoch, self.state.step_in_epoch = epoch, index + 1
                self.state.epoch_progress = epoch + (index + 1) / self.plan.steps_per_epoch
                final = self.state.step == self.plan.total_steps
                if final or time.perf_counter() - self.window.started >= self.report_interval_s:
                    self._report()
                reason = self._between_steps(final)
                if reason != "completed":
                    break
        return self._finish(reason)

    def _announce(self) -> None:
        cfg, acc, plan = self.config, self.acc, self.plan
        self.out.emit(RunStarted(
            run_id=self.paths.root.name, run_dir=str(self.paths.root), task=cfg.task, model=cfg.model.name_or_path,
            config_digest=config_digest(cfg), total_params=self.freeze.total_params,
            trainable_params=self.freeze.trainable_params, planned_steps=plan.total_steps,
            steps_per_epoch=plan.steps_per_epoch, train_rows=len(self.data.train),
            validation_rows=len(self.data.validation), device=str(acc.device),
            precision={"no": "fp32"}.get(acc.mixed_precision, acc.mixed_precision), world_size=acc.num_processes,
            resumed_from_step=self.state.step, data_digest=self.data.digest,
        ))

    def _unfreeze(self) -> None:
        """Under freeze.unfreezing, train what the stage of the next step trains, and say when it changed."""
        started = self.unfreezer.enter(self.state.step) if self.unfreezer else None
        if started:
            schedule = self.unfreezer.schedule
            setup.log.info("unfreezing stage %d of %d from step %d: now training %s", self.unfreezer.stage + 1,
                           len(schedule.stages), self.state.step, started)

    @property
    def micro_batch(self) -> int:
        """Rows per micro-batch now: optim.batch_size until running out of memory halves it."""
        return self.state.micro_batch_size or self.plan.batch_size

    def _remaining_steps(self) -> Iterator[tuple[int, int, list[int]]]:
        """(epoch, index in the epoch, the rows of all processes) of each optimizer step still to take.
        Each epoch is planned as steps of the effective batch, each process taking its share of a
        step (core.data.batching), so the rows of a step do not depend on the micro-batch. A resumed
        run starts where its checkpoint's state says, on the same plan, so it takes the same rows."""
        from core.data.batching import batch_plan

        cfg, plan, state = self.config, self.plan, self.state
        lengths = [len(ex.input_ids) for ex in self.data.train]
        first_epoch, first_index = state.epoch, state.step_in_epoch
        for epoch in range(first_epoch, plan.epochs):
            steps = batch_plan(lengths, plan.effective_batch, cfg.seed, epoch, self.grouped)
            for index in range(first_index if epoch == first_epoch else 0, plan.steps_per_epoch):
                if state.step >= plan.total_steps:
                    return
                yield epoch, index, steps[index]

    def _optimizer_step(self, step_rows: list[int]) -> None:
        """Forward and backward over this process's share of the step's rows, then clip and step. A
        step that runs out of device memory is taken again from the start with micro-batches half as
        large: the same rows, so the same gradient and the same loss curve (compute.oom_recovery)."""
        import torch

        from core.data.batching import process_share
        from core.loss import count_items  # looked up per step: tests substitute the loss

        acc = self.acc
        rows = process_share(step_rows, self.plan.batch_size, acc.num_processes, acc.process_index)
        # every process plans the same steps, so each counts the whole step's items without communicating
        items = max(count_items([self.data.train[i] for i in step_rows], self.config.task), 1)
        while True:
            try:
                loss = self._accumulate(rows, items)
                break
            except torch.OutOfMemoryError as err:
                reason = str(err).split("\n")[0]
            except RuntimeError as err:
                if not host_out_of_memory(err):
                    raise
                raise self._out_of_memory(f"with micro-batches of {self.micro_batch} rows",
                                          step_advice(self.config, self.micro_batch), memory="memory (RAM)") from None
            self._halve_micro_batch(reason)  # outside the handler, whose traceback held the step's tensors
        window = self.window
        window.loss += loss
        window.tokens += sum(len(self.data.train[i].input_ids) for i in rows)  # no device sync
        window.rows += len(rows)
        try:
            if self.config.optim.max_grad_norm > 0:
                window.grad += self.acc.clip_grad_norm_(self.trainable, self.config.optim.max_grad_norm).detach().float()
            if self.l2sp:
                self.l2sp.apply()
            self.optimizer.step()
        except torch.OutOfMemoryError:
            raise self._out_of_memory("in the optimizer step, whose state grows with the trained parameters",
                                      ["train LoRA adapters (lora.enabled: true)",
                                       "or train fewer blocks with the freeze map"]) from None
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        window.steps += 1

    def _accumulate(self, rows: list[int], step_items: int):
        """Forward and backward over `rows` in micro-batches of `micro_batch` rows (processes sync
        gradients on the last one only); the step's loss, left on the device. Each loss is divided by
        the items (tokens or rows) of the whole step over all processes, so accumulating averages over
        all its items, not over micro-batches, and the size of the micro-batches does not change the
        gradient; DDP's averaging of the processes' gradients is undone by the factor of processes."""
        from core.data import collate
        from core.loss import batch_loss_sum  # looked up per step: tests substitute the loss

        acc, model, task, size = self.acc, self.model, self.config.task, self.micro_batch
        examples = [self.data.train[i] for i in rows]
        items = step_items / acc.num_processes
        chunks = [examples[i : i + size] for i in range(0, len(examples), size)]
        loss = 0
        for k, chunk in enumerate(chunks):
            batch = {key: t.to(acc.device) for key, t in collate(chunk, self.tokenizer.pad_token_id, task).items()}
            with (nullcontext() if k == len(chunks) - 1 else acc.no_sync(model)), acc.autocast(), \
                    self.prefix.serving(rows[k * size : (k + 1) * size], batch):
                loss_sum, _ = batch_loss_sum(model, batch, task, labelled_only=self.config.compute.labelled_logits_only,
                                             cls_only=self.config.compute.last_block_cls_only,
                                             unpadded=self.config.compute.unpadded_encoder)
                acc.backward(loss_sum / items)
            loss = loss + loss_sum.detach().float() / items
        return (acc.reduce(loss, "sum") if acc.num_processes > 1 else loss) / acc.num_processes  # the step's mean

    def _halve_micro_batch(self, reason: str) -> None:
        """After a step ran out of device memory: drop its partial gradients and halve the
        micro-batch, or end the run with advice where halving cannot help (one row already), is off
        (compute.oom_recovery), or would need every process to agree in the middle of a step."""
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cfg, plan, size, processes = self.config, self.plan, self.micro_batch, self.acc.num_processes
        if size > 1 and cfg.compute.oom_recovery and processes == 1:
            size = self.state.micro_batch_size = (size + 1) // 2
            self.out.emit(MicroBatchHalved(step=self.state.step + 1, batch_size=size, reason=reason,
                                           grad_accum=math.ceil(plan.batch_size * plan.grad_accum / size)))
            return
        raise self._out_of_memory(why_not_halved(size, cfg.compute.oom_recovery, processes),
                                  step_advice(cfg, size))

    def _out_of_memory(self, why: str, advice: list[str], memory: str = "device memory") -> UserError:
        return out_of_memory(self.state.step + 1, why, advice, self.last_checkpoint, self.paths.root, memory)

    # ---- the end --------------------------------------------------------------------------------

    def _finish(self, reason: str) -> RunResult:
        from core.export import save_final

        output = output_step = None
        if reason != "stopped" and self.config.output.save_final:
            self._check_folder()
            output_step = self._weights_for_final()
            save_final(self.acc.unwrap_model(self.model), self.tokenizer, self.paths.final)  # every process, as a save
            output = self.paths.final
        self.acc.wait_for_everyone()
        self.out.emit(RunFinished(
            step=self.state.step, reason=reason, final_metrics=self.final_metrics,
            best_metrics=self.state.best_metrics, best_step=self.state.best_step, output_path=path_text(output),
            last_checkpoint=path_text(self.last_checkpoint), elapsed_s=time.perf_counter() - self.started,
            before_metrics=self.state.before_metrics, before_untrained_head=self.state.before_untrained_head,
            output_step=output_step,
        ))
        return RunResult(self.paths.root, reason, self.state.step, output, self.last_checkpoint)
