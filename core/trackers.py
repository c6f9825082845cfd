"""Copies of a run's metrics for the trackers people already use, chosen by `output.report_to`.

events.jsonl stays the run's one history; a tracker is one more sink of the same events, so there is
no second metrics path through the training loop. TensorBoard writes through torch's SummaryWriter
into `<run>/tensorboard/`, so `tensorboard --logdir runs` shows every run; W&B is an optional extra
that runs offline unless the user sets WANDB_MODE. Each sink is cheap per event (the events carry
plain floats: no device sync), opens its writer at the run's first metric and flushes on the run's
last event or close().
Only the main process gets these sinks (the engine builds them where it builds events.jsonl's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.config import RunConfig, config_to_dict
from core.errors import UserError
from core.events import EvalResult, Event, EventSink, RunFailed, RunFinished, RunStarted, SampleGenerated, StepMetrics
from core.runs import RunPaths

TENSORBOARD_DIR = "tensorboard"
"""The run folder's subfolder for TensorBoard event files."""


def tracker_sinks(config: RunConfig, paths: RunPaths) -> list[EventSink]:
    """One sink per name in `config.output.report_to`. Raises UserError, naming the field and the pip
    command, when a tracker's package is missing: at the start of the run, not after an hour."""
    makers = {"tensorboard": TensorBoardSink, "wandb": WandbSink}
    return [makers[name](config, paths) for name in config.output.report_to]


def close_trackers(sinks: list[EventSink]) -> None:
    """Flush and close every tracker sink among `sinks` (the engine's `finally`: a run that raised
    past its RunFailed event still leaves readable files)."""
    for sink in sinks:
        if isinstance(sink, _Tracker):
            sink.close()


def step_scalars(event: StepMetrics) -> dict[str, float]:
    """The scalars of one StepMetrics, by tracker tag (the same tags for every tracker)."""
    scalars = {"train/loss": event.loss, "train/lr": event.lr, "train/epoch": event.epoch,
               "perf/tokens_per_s": event.tokens_per_s, "perf/samples_per_s": event.samples_per_s}
    if event.grad_norm is not None:
        scalars["train/grad_norm"] = event.grad_norm
    scalars.update({f"memory/{name}": value for name, value in event.memory.items()})
    return scalars


def _missing(package: str, extra: str) -> UserError:
    return UserError(f"output.report_to includes {extra}, but the {package} package is not installed",
                     f"pip install '{package}' (or pip install 'sft-tui[{extra}]'), "
                     f"or remove {extra} from output.report_to")


class _Tracker:
    """What both trackers share: the writer opens at the run's first metric, so a start that fails in
    setup leaves no folder behind in the run folder, and closes on the run's last event."""

    def __init__(self) -> None:
        self._started: RunStarted | None = None
        self._open_now = False

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.close()
            self._started = event
        elif isinstance(event, (RunFinished, RunFailed)):
            self.close(failed=isinstance(event, RunFailed))
        elif isinstance(event, (StepMetrics, EvalResult, SampleGenerated)) and self._started is not None:
            if not self._open_now:
                self._open(self._started)
                self._open_now = True
            self._write(event)

    def close(self, failed: bool = False) -> None:
        if self._open_now:
            self._open_now = False
            self._close(failed)

    def _open(self, started: RunStarted) -> None: ...
    def _write(self, event: Event) -> None: ...
    def _close(self, failed: bool) -> None: ...


class TensorBoardSink(_Tracker):
    """StepMetrics, EvalResult (as eval/<metric>) and samples (as text) into TensorBoard event files."""

    def __init__(self, config: RunConfig, paths: RunPaths) -> None:
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self._make_writer = SummaryWriter
        self.log_dir: Path = paths.root / TENSORBOARD_DIR
        self._config = config
        self._writer: Any = None
        self._sample_step, self._sample_index = -1, 0

    def _open(self, started: RunStarted) -> None:
        """A resume purges what the crashed attempt logged after its checkpoint (purge_step), so the
        curves show each step once."""
        import yaml

        start = started.resumed_from_step
        self._writer = self._make_writer(str(self.log_dir), purge_step=start + 1 if start else None, flush_secs=10)
        self._writer.add_text("config", _code(yaml.safe_dump(config_to_dict(self._config), sort_keys=False)), start)

    def _write(self, event: Event) -> None:
        if isinstance(event, StepMetrics):
            for tag, value in step_scalars(event).items():
                self._writer.add_scalar(tag, value, event.step)
        elif isinstance(event, EvalResult):
            for name, value in event.metrics.items():
                self._writer.add_scalar(f"eval/{name}", value, event.step)
        elif isinstance(event, SampleGenerated):
            # samples/0, samples/1, ...: the same validation prompt keeps its tag from one eval to the next
            self._sample_index = self._sample_index + 1 if event.step == self._sample_step else 0
            self._sample_step = event.step
            self._writer.add_text(f"samples/{self._sample_index}", _sample_markdown(event), event.step)

    def _close(self, failed: bool) -> None:
        self._writer.close()  # flushes
        self._writer = None


def _code(text: str) -> str:
    """Markdown that shows `text` as it is (an indented block: no backtick in the text can end it)."""
    return "\n".join("    " + line for line in (text or " ").splitlines())


def _sample_markdown(event: SampleGenerated) -> str:
    return "\n\n".join(f"**{name}**\n\n{_code(text)}" for name, text in
                       (("prompt", event.prompt), ("output", event.output), ("reference", event.reference)))


class WandbSink(_Tracker):
    """The same tags into a Weights & Biases run, offline unless WANDB_MODE says otherwise: sft-tui
    never needs the network, and `wandb sync <run>/wandb/offline-run-*` uploads later."""

    def __init__(self, config: RunConfig, paths: RunPaths) -> None:
        super().__init__()
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        self._wandb, self._config, self._root = wandb, config, paths.root
        self._run: Any = None
        self._samples: list[list[Any]] = []

    def _open(self, started: RunStarted) -> None:
        mode = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
        # console="off": wandb must not wrap stdout/stderr, which the app and the progress bar own
        settings = self._wandb.Settings(console="off", silent=True)
        self._run = self._wandb.init(project=os.environ.get("WANDB_PROJECT", "sft-tui"), name=started.run_id,
                                     dir=str(self._root), config=config_to_dict(self._config), settings=settings,
                                     **mode)

    def _write(self, event: Event) -> None:
        if isinstance(event, StepMetrics):
            self._run.log(step_scalars(event), step=event.step)
        elif isinstance(event, EvalResult):
            self._run.log({f"eval/{name}": value for name, value in event.metrics.items()}, step=event.step)
        elif isinstance(event, SampleGenerated):
            self._samples.append([event.step, event.prompt, event.output, event.reference])
            table = self._wandb.Table(columns=["step", "prompt", "output", "reference"], data=self._samples)
            self._run.log({"samples": table}, step=event.step)

    def _close(self, failed: bool) -> None:
        self._run.finish(exit_code=1 if failed else 0)
        self._run = None
