"""What a finished run produced: best and final metrics, the exported model and how to load it, and
a "try it" box that runs the fine-tuned model on a typed prompt or text.

The model is loaded once per exported folder, in a thread worker, with `transformers.pipeline`, the
same way the snippet shown to the user loads it.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Static

from core.events import RunFinished
from core.final_layout import adapter_labels
from sft_tui.format.numbers import format_duration, format_metrics
from sft_tui.format.safe import safe_text
from sft_tui.format.train import before_after, best_weights_note, load_snippet
from sft_tui.worker import warm_up

MAX_NEW_TOKENS = 32


class ResultsPanel(Vertical):
    DEFAULT_CSS = """
    ResultsPanel { height: auto; overflow-y: auto; }
    ResultsPanel #results-text { height: auto; }
    ResultsPanel #try-answer { height: auto; min-height: 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.finished: RunFinished | None = None
        self.run_dir = ""
        self.run_task = ""
        self._pipeline = None
        self._pipeline_path: str | None = None
        self._chat: dict[str, tuple[bool, str | None]] = {}
        """run folder -> (whether it trained on chat data, the chat template to pass)"""

    def compose(self) -> ComposeResult:
        yield Static(id="results-text")
        yield Input(placeholder="try it: type a prompt and press Enter", id="try-input")
        yield Static(id="try-answer", markup=False)

    def reset(self) -> None:
        """No results while the next run trains: nothing to copy or to try."""
        self.finished = None

    def show_run(self, finished: RunFinished, run_dir: str, task: str, last_eval_step: int | None) -> None:
        """`last_eval_step`: the step of the evaluation that gave the run's final metrics (a stopped
        run's are an earlier step's, and were once shown as "final" as if measured at its end). What an
        attached run's events.jsonl says (its folder, reason, metric names, paths) is shown escaped."""
        self.finished, self.run_dir, self.run_task = finished, run_dir, task
        text = Text()
        text.append(safe_text(f"{finished.reason} at step {finished.step} in {format_duration(finished.elapsed_s)}"),
                    style="bold")
        text.append(" · run folder ", style="dim")
        text.append(safe_text(run_dir))
        if finished.best_metrics:
            text.append(f"\nbest eval @ step {finished.best_step}: ", style="dim")
            text.append(safe_text(format_metrics(finished.best_metrics)), style="green")
        if finished.final_metrics and last_eval_step != finished.best_step:
            text.append(f"\nlast eval @ step {last_eval_step}: " if last_eval_step is not None else "\nlast eval: ",
                        style="dim")
            text.append(safe_text(format_metrics(finished.final_metrics)))
        for label, parts in before_after(finished.before_metrics, finished.output_metrics, task,
                                         finished.before_untrained_head):
            text.append(f"\n{label}: ", style="dim")
            # a metric a line, aligned: none cut in two
            text.append(f"\n{' ' * (len(label) + 2)}".join(map(safe_text, parts)))
        if finished.output_path:
            text.append("\nmodel ", style="dim")
            text.append(safe_text(finished.output_path))
            text.append(best_weights_note(finished), style="dim")
            text.append("\nload  ", style="dim")
            text.append(safe_text(load_snippet(task, finished.output_path).splitlines()[-1]), style="cyan")
            text.append("  y copies", style="dim")
        else:
            text.append("\nno final model was saved", style="yellow")
            if finished.last_checkpoint:
                text.append(safe_text(f"; R resumes from the last checkpoint {finished.last_checkpoint}"))
        self.query_one("#results-text", Static).update(text)
        box = self.query_one("#try-input", Input)
        box.display = finished.output_path is not None
        box.placeholder = ("try it: type a text to classify and press Enter" if task == "classification"
                           else "try it: type a prompt and press Enter")
        self.query_one("#try-answer", Static).update("")

    @property
    def snippet(self) -> str | None:
        if self.finished is None or not self.finished.output_path:
            return None
        return load_snippet(self.run_task, self.finished.output_path)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.finished is None or not self.finished.output_path or not event.value.strip():
            return
        self._show_answer("running the model…")
        self._try(event.value, self.finished.output_path, self.run_dir, self.run_task)

    @work(thread=True, exclusive=True, group="try-it", exit_on_error=False)
    def _try(self, text: str, model_path: str, run_dir: str, task: str) -> None:
        try:
            answer = self._answer(text, model_path, run_dir, task)
        except Exception as err:  # shown in place: a broken export must not cost the session
            answer = f"could not run the model: {type(err).__name__}: {err}"
        self.app.call_from_thread(self._show_answer, answer)

    def _show_answer(self, answer: str) -> None:
        """In a short terminal the panel scrolls: the answer is what the user waits to see."""
        shown = self.query_one("#try-answer", Static)
        shown.update(answer)
        self.call_after_refresh(shown.scroll_visible, animate=False)

    def _answer(self, text: str, model_path: str, run_dir: str, task: str) -> str:
        pipe = self._load_pipeline(model_path, task)
        if task == "classification":
            best = pipe(text)[0]
            return f"{best['label']} (score {best['score']:.3f})"
        if run_dir not in self._chat:
            self._chat[run_dir] = _chat_settings(run_dir)
        chat, template = self._chat[run_dir]
        if chat:  # framed as in training; the rendered template holds its own special tokens
            text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                      chat_template=None if pipe.tokenizer.chat_template else template,
                                                      tokenize=False, add_generation_prompt=True)
        out = pipe(text, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, return_full_text=False,
                   add_special_tokens=not chat)
        return out[0]["generated_text"].strip() or "(the model generated nothing)"

    def _load_pipeline(self, model_path: str, task: str):
        if self._pipeline_path != model_path:
            warm_up()  # imports torch and transformers under the lock every worker shares
            import torch
            from transformers import pipeline

            kind = "text-classification" if task == "classification" else "text-generation"
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if task == "classification" and (labels := adapter_labels(model_path)) is not None:
                from transformers import AutoModelForSequenceClassification, AutoTokenizer

                model = AutoModelForSequenceClassification.from_pretrained(model_path, id2label=dict(enumerate(labels)))
                self._pipeline = pipeline(kind, model=model, tokenizer=AutoTokenizer.from_pretrained(model_path),
                                          device=device)
            else:
                self._pipeline = pipeline(kind, model=model_path, device=device)
            self._pipeline_path = model_path
        return self._pipeline


def _chat_settings(run_dir: str) -> tuple[bool, str | None]:
    """Whether the run trained on chat data (then prompts go through the chat template, else they are
    the raw text with the tokenizer's framing, e.g. BOS), and the template the config names."""
    from core.data import detect_format, load_raw
    from core.runs import open_run

    _, config = open_run(run_dir)
    fmt = config.data.format
    if fmt == "auto":
        train, _ = load_raw(config.data)
        fmt, _ = detect_format(train.column_names, config.task, config.data)
    return fmt == "chat", config.data.chat_template
