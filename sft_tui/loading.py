"""How the app loads the model's structure and the data: in thread workers, whose outcome
(ModelLoaded, DataLoaded, LoadFailed) lands here; an outcome for settings changed meanwhile is
dropped. Mixed into SftApp, whose session and load states it sets.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from functools import partial

from textual.message import Message

from core.config import RunConfig
from sft_tui.messages import DataLoaded, LoadFailed, ModelLoaded
from sft_tui.worker import load_data, load_model_info, report_load

SETTLE_POLL_S = 0.05


class Loading:
    def load_model(self) -> None:
        """(Re)load the configured model's structure and tokenizer; ModelLoaded or LoadFailed."""
        self.model_state = "loading"
        config = self.session.config
        labels = self.session.data.labels if self.session.data is not None else None
        self._load("model", config, lambda: ModelLoaded(load_model_info(config, labels), config))

    def load_what_changed(self) -> None:
        """After the draft was replaced (a config loaded, a run's config taken on step 6): load its
        model, and its data after it, as at start-up, so that steps 3-5 show them without a visit
        to steps 1 and 2 (they said "load the data (step 2) to see steps")."""
        if self.session.model is None and self.model_state in ("none", "ready"):
            self.load_model()
        elif self.session.data is None and self.data_state in ("none", "ready"):
            self.load_data()

    def load_data(self) -> None:
        """(Re)tokenize the configured data, loading the model's tokenizer first when there is none
        for this task; DataLoaded or LoadFailed."""
        self.data_state = "loading"
        config, model = self.session.config, self.session.model

        def work() -> DataLoaded:
            info = model if model is not None and model.task == config.task else load_model_info(config)
            return DataLoaded(info, load_data(config, info), config)

        self._load("data", config, work)

    def _load(self, kind: str, config: RunConfig, work: Callable[[], Message]) -> None:
        self._loading[kind] = config
        self.run_worker(partial(report_load, self, kind, config, work), thread=True, exclusive=True, group=kind,
                        exit_on_error=False)

    async def model_settled(self) -> None:
        """Return once the warm-up has imported torch and transformers and no model load is
        running: a data load started then reuses the model's tokenizer instead of loading a
        second one at the same time."""
        while self.model_state == "loading" or any(
            worker.group == "warm-up" and not worker.is_finished for worker in self.workers
        ):
            await asyncio.sleep(SETTLE_POLL_S)

    def on_model_loaded(self, message: ModelLoaded) -> None:
        """Take the model; the configured data follows when nothing loaded it for these settings
        yet, so that the steps after it show the run's steps, a memory estimate for the real rows
        and any problem of the data without a visit to step 2 first. A new model can change the
        task: the data loaded for the old one was dropped (Session.replace_config), and Start said
        "ready" for rows the new task cannot read until step 2 loaded them again."""
        if self.session.is_current("model", message.config):
            self._take_model(message.info)
            if self.session.data is None and self.data_state != "loading" and "data" not in self.session.load_errors:
                self.load_data()
            self.changed()

    def _take_model(self, info) -> None:
        self.session.load_succeeded("model")
        self.session.model = info
        self.model_state = "ready"
        self.freeze_heap()

    def on_data_loaded(self, message: DataLoaded) -> None:
        if not self.session.is_current("data", message.config):
            return
        info, data = message.info, message.data
        self.session.load_succeeded("data")
        self.session.data = data
        self.data_state = "ready"
        self.freeze_heap()
        if info.labels != data.labels:
            self.load_model()  # the classification head is sized from the data's labels
        elif self.session.model is not info:
            self._take_model(info)
        self.changed()

    def on_load_failed(self, message: LoadFailed) -> None:
        """The error becomes one of the session's problems; one about settings changed meanwhile
        leaves nothing loaded for the current ones."""
        failed = self.session.load_failed(message.kind, message.config, message.message, message.hint)
        setattr(self, f"{message.kind}_state", "failed" if failed else "none")
        self.changed()

    def freeze_heap(self) -> None:
        """What the warm-up, a load and the steps built ahead leave behind lives as long as the app:
        the libraries, the model's structure, the tokenized data, the widgets. Python's full
        collections scan every object, 0.1-0.3 s with the GIL held, which a user saw as a key
        answered late; gc.freeze() takes the objects there are now out of those scans. The price:
        a reference cycle among them that later becomes garbage is freed only at exit (what a
        reload replaces is mostly freed by reference counting)."""
        gc.freeze()
