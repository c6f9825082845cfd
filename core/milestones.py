"""What a run does between its optimizer steps: evaluations (with sample generations) and
checkpoints as planned or asked, pause and resume, and a stop that every process agrees on.

A mixin of core.engine's _Training, which holds the state these read (config, plan, state, model,
optimizer, control, the event sink and the throughput window): the loop stays one screen in
core/engine.py, and these, each timed out of the throughput the report shows, live here.
"""

from __future__ import annotations

import logging
import time

from core.checkpoint import load_weights, save_checkpoint
from core.errors import UserError
from core.events import CheckpointSaved, EvalResult, Paused, Resumed, SampleGenerated
from core.l2sp import NEW_WEIGHTS_ATTR
from core.manifest import list_checkpoints, step_of
from core.runs import moved_problem

log = logging.getLogger("core.engine")


class Milestones:
    def _between_steps(self, final: bool) -> str:
        """Evaluate and checkpoint as planned or asked, then obey pause and stop; the reason to end
        the run, or 'completed' to go on."""
        control, step = self.control, self.state.step
        if self._checkpoint_due():  # rank 0's clock decides, and every process saves with it (AgreedControl)
            getattr(control, "local", control).save_now()
        control.poll()
        reason = "completed"
        planned = self.plan.evaluates_after(step)
        if (control.take_eval_request() or planned) and self._evaluate(requested=not planned):
            reason = "early-stopped"
        if control.take_save_request() or self.plan.checkpoints_after(step):
            self._checkpoint()
        if control.paused:
            self.out.emit(Paused(step=step))
            waited = time.perf_counter()
            while control.wait_while_paused():  # a save or an evaluation asked while paused is done now
                self.started += time.perf_counter() - waited  # paused time is not training time
                if control.take_eval_request():
                    self._evaluate(requested=True)
                if control.take_save_request():
                    self._checkpoint()
                waited = time.perf_counter()
            self.started += time.perf_counter() - waited
            self.out.emit(Resumed(step=step))
            self._reset_window()
        if not final and self._agreed(control.should_stop(step)):
            self._checkpoint()
            return "stopped"
        return reason

    def _check_folder(self) -> None:
        """Before a save: the run folder is where it was (core.runs.moved_problem), on rank 0."""
        if self.acc.is_main_process and (problem := moved_problem(self.paths, self.folder)):
            raise problem

    def _checkpoint_due(self) -> bool:
        """checkpoint.every_minutes of the run's time (pauses left out) have passed since the last
        checkpoint or the start, on rank 0."""
        minutes = self.config.checkpoint.every_minutes
        return (minutes > 0 and self.acc.is_main_process
                and time.perf_counter() - self.started - self.saved_at_s >= minutes * 60)

    def _agreed(self, flag: bool) -> bool:
        """Every process must stop at the same step: any rank's stop request stops all of them."""
        if self.acc.num_processes == 1:
            return flag
        import torch

        t = torch.tensor(float(flag), device=self.acc.device)
        return bool(self.acc.reduce(t, "sum") > 0)

    def _evaluate(self, before_training: bool = False, requested: bool = False) -> bool:
        """Run an evaluation; True when early stopping says the run should end. `before_training`:
        the step-0 evaluation (eval.before_training), kept as the results' "before", never the best.
        `requested`: one a client asked for (evaluate now), between the planned ones. It shows where
        the run stands and changes nothing: neither the best step nor early stopping's count, which
        three looks at a paused run once used up and so ended the run without a checkpoint."""
        import torch

        from core.evaluate import default_batch_size, evaluate, generate_samples  # looked up per call: tests substitute them
        from core.metrics import is_better

        cfg, state, acc, data = self.config, self.state, self.acc, self.data
        if not data.validation:
            return False
        started = time.perf_counter()
        batch_size = cfg.eval.batch_size or default_batch_size(acc.unwrap_model(self.model), cfg.task, self.micro_batch)
        try:
            metrics = evaluate(self.model, data.validation, task=cfg.task, num_labels=len(data.labels or []),
                               batch_size=batch_size, pad_token_id=self.tokenizer.pad_token_id, accelerator=acc,
                               labelled_only=cfg.compute.labelled_logits_only,
                               cls_only=cfg.compute.last_block_cls_only, unpadded=cfg.compute.unpadded_encoder,
                               prefix=self.prefix)
        except torch.OutOfMemoryError:
            when = "before training" if before_training else f"after step {state.step}"
            raise UserError(f"out of device memory evaluating {when} ({batch_size} rows a batch)",
                            "set eval.batch_size lower") from None
        value = metrics[cfg.eval.metric]
        best = not (before_training or requested) and is_better(cfg.eval.metric, value, state.best)
        untrained = before_training and bool(getattr(acc.unwrap_model(self.model), NEW_WEIGHTS_ATTR, None))
        if before_training:
            state.before_metrics, state.before_untrained_head = metrics, untrained
        elif requested:
            self.final_metrics = metrics
        elif best:
            state.best, state.best_step, state.best_metrics, state.bad_evals = value, state.step, metrics, 0
            self.final_metrics = metrics
        else:
            state.bad_evals += 1
            self.final_metrics = metrics
        eval_s = time.perf_counter() - started
        self.out.emit(EvalResult(step=state.step, epoch=round(state.epoch_progress, 4), metrics=metrics,
                                 is_best=best, seconds=eval_s,
                                 tokens_per_s=sum(len(ex.input_ids) for ex in data.validation) / eval_s,
                                 before_training=before_training, untrained_head=untrained))
        samples_started = time.perf_counter()
        if self.sample_prompts:
            for prompt, output, reference in generate_samples(
                acc.unwrap_model(self.model), self.tokenizer, self.sample_prompts,
                max_new_tokens=cfg.eval.max_new_tokens, device=acc.device,
            ):
                self.out.emit(SampleGenerated(step=state.step, prompt=prompt, output=output, reference=reference))
        acc.wait_for_everyone()
        done = time.perf_counter()
        self.eta.evaluated(eval_s, done - samples_started if self.sample_prompts else None)
        self.window.excluded_s += done - started
        return not (before_training or requested) and bool(cfg.eval.patience) and state.bad_evals >= cfg.eval.patience

    def _weights_for_final(self) -> int:
        """The step whose weights final/ gets, loaded into the model. With early stopping on
        (eval.patience) the best evaluated step's, from its checkpoint (save_checkpoint keeps it), as
        transformers' EarlyStoppingCallback has Trainer load the best model at the end: the evaluations
        after it were worse, and the last of them stopped the run. Otherwise the last step's."""
        state = self.state
        if not self.config.eval.patience or state.best_step is None or state.best_step == state.step:
            return state.step
        best = next((p for p in list_checkpoints(self.paths.checkpoints) if step_of(p) == state.best_step), None)
        if best is None:  # checkpoint.every_steps saved none at that step
            log.warning("final/ holds the model of the last step %d: no checkpoint was saved at step %d, the "
                        "best %s", state.step, state.best_step, self.config.eval.metric)
            return state.step
        load_weights(best, self.acc.unwrap_model(self.model))
        log.info("final/ holds the model of step %d, the best %s (checkpoint %s)", state.best_step,
                 self.config.eval.metric, best.name)
        return state.best_step

    def _checkpoint(self) -> None:
        acc = self.acc
        if self.last_checkpoint is not None and step_of(self.last_checkpoint) == self.state.step:
            return  # e.g. a stop right after a scheduled save: that checkpoint is this step's
        self._check_folder()
        self._report()  # the divergence check, before weights are saved
        acc.wait_for_everyone()
        started = time.perf_counter()  # every process saves: FSDP gathers a sharded model's state onto rank 0
        self.state.elapsed_s = started - self.started
        self.last_checkpoint = save_checkpoint(self.paths.checkpoints, acc.unwrap_model(self.model), self.optimizer,
                                               self.scheduler, self.state, self.config.checkpoint.keep_last)
        seconds = time.perf_counter() - started
        self.eta.checkpointed(seconds)
        self.window.excluded_s += seconds
        self.out.emit(CheckpointSaved(step=self.state.step, path=str(self.last_checkpoint), seconds=seconds))
        self.saved_at_s = time.perf_counter() - self.started
        acc.wait_for_everyone()
