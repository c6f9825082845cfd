"""How the app starts and follows a run: `launch_run` starts one (in an engine process of its own,
or with `in_process` in a thread worker) and `attach_run` follows one that exists; either way the
train screen gets the run's whole history first, then what its engine adds. Mixed into SftApp,
whose state (session, followed run, workers) it works on; kept apart so that app.py keeps the
steps, keys and loads.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from textual.message_pump import MessagePump

from core.config import RunConfig
from core.control import Control
from core.errors import UserError
from core.runs import RunPaths, open_run
from sft_tui.messages import RunFollowed, RunState, RunStateChanged
from sft_tui.run_client import InProcessClient, RunClient
from sft_tui.worker import RunSink, follow_run, run_ended, run_training


class RunFollowing:
    def launch_run(self, config: RunConfig | None = None, resume_dir: Path | None = None,
                   approved: bool = False) -> None:
        """Switch to step 5 and start a new run of `config` (the draft by default), or continue the
        run in `resume_dir`; the train screen follows it. Refused while the followed run trains.
        A run of a config from a file (resumed, continued) that trusts its model's code is started
        once the user confirms that (`approved`); the draft has it only where the box was ticked."""
        if self.run_state.live:
            self.notify("a run is training here: stop it, or quit and detach from it, first",
                        title="Cannot start", severity="warning")
            return
        run_config = _run_config(resume_dir) if resume_dir else config or self.session.config
        trusts = run_config is not None and run_config.model.trust_remote_code
        if trusts and not approved and (config is not None or resume_dir is not None):
            self._confirm_code(run_config, lambda: self.launch_run(config, resume_dir, approved=True))
            return
        screen = self._train_screen()
        config = config or self.session.config
        self.followed_config = run_config
        if self.in_process:
            client = InProcessClient(Control(), resume_dir)
            self._sink = sink = RunSink(screen, client)
            self._follow(client, screen, RunFollowed(str(resume_dir) if resume_dir else None))
            self.run_worker(lambda: run_training(config, sink, client.control, resume_dir=resume_dir),
                            name="training", thread=True, exclusive=True, group="train", exit_on_error=False)
        else:
            from sft_tui.detach import start_detached

            try:
                started = start_detached(None if resume_dir else config, resume_dir, trusted=trusts)
            except UserError as err:
                from sft_tui.screens.dialogs import ErrorDialog

                self.push_screen(ErrorDialog("Cannot start the run", err.message, err.hint))
                return
            client = RunClient(started.paths, started.process, fresh=resume_dir is None)
            client.claim()
            self._follow(client, screen, RunFollowed(str(started.paths.root), controller=client.controller))
        if resume_dir is None and config is self.session.config:
            self.session.keep()  # its run folder keeps it (step 6, l)
        self.post_message(RunStateChanged(RunState.RUNNING))

    def _confirm_code(self, config: RunConfig, start) -> None:
        from sft_tui.screens.dialogs import ConfirmDialog

        question = (f"This run sets model.trust_remote_code: it imports and runs the Python code that "
                    f"{config.model.name_or_path} ships, with your rights. Start it only if you have read that "
                    "code or trust its author.")
        self.push_screen(ConfirmDialog(question, yes="Run its code", no="Cancel"),
                         lambda yes: start() if yes else None)

    def attach_run(self, run_dir: Path) -> None:
        """Switch to step 5 and follow the run in `run_dir`: its whole history, then what its engine
        adds while it trains. This app controls it unless another live client does."""
        if self.run_state.live and self.followed is not None and self.followed.in_process:
            self.notify("a run trains inside this app: it cannot be left while it trains",
                        title="Cannot attach", severity="warning")
            return
        client = RunClient(RunPaths(Path(run_dir)))
        self.followed_config = _run_config(client.paths.root)
        training = client.engine_alive()
        if training:
            client.claim()
        message = RunFollowed(str(client.paths.root), attached=True, training=training, controller=client.controller)
        self._follow(client, self._train_screen(), message)
        self.post_message(RunStateChanged(RunState.IDLE))  # until its history says how it stands

    def announce_live_runs(self) -> None:
        """A thread worker at the start: name the runs that train under the draft's runs folder (the
        user detached, or the connection dropped, and opened the app anew), so that nobody starts a
        second run beside one that goes on unseen, and say how to follow it."""
        from core.run_info import list_runs
        from sft_tui.keymap import first_key_label

        try:
            live = [info for info in list_runs(self.session.config.output.runs_dir) if info.live]
        except OSError:  # an unreadable runs folder: step 6 says so when visited; this is only a hint
            return
        if not live:
            return
        binding = next(b for b in self.BINDINGS if b.id == "go-runs")
        key = first_key_label(binding, self.keymap)
        newest = live[0]
        more = f" (and {len(live) - 1} more)" if len(live) > 1 else ""
        where = f"{newest.state}, step {newest.step}/{newest.planned_steps}" if newest.planned_steps else "starting"
        self.call_from_thread(self.notify, f"{newest.name} is {where}{more}: {key} lists the runs, and Enter on "
                              "one follows it", title="A run trains", timeout=10, markup=False)

    def _train_screen(self) -> MessagePump:
        self.switch_mode("train")
        return self.screen_stack[0]

    def _follow(self, client: RunClient, screen: MessagePump, message: RunFollowed) -> None:
        """Make `client` the followed run: the screen starts over with its history, read here so that
        it is drawn with the screen's next frame (a thread would hand it over after a frame of empty
        panes), and a detached run's new events are read in a thread worker (replacing the reader of
        the run followed before)."""
        self._leave_run()
        self.clear_notifications()  # what they said was about the app before it followed this run
        self.followed = client
        message.history = client.read_history()
        screen.post_message(message)
        if not client.in_process:
            self.run_worker(partial(follow_run, client, screen, run_ended(message.history)), name="follow",
                            thread=True, exclusive=True, group="follow", exit_on_error=False)

    def _leave_run(self) -> None:
        """Stop following the run (a detached one trains on) and give up its control."""
        self.workers.cancel_group(self, "follow")
        if self.followed is not None:
            self.followed.leave()


def _run_config(run_dir: Path) -> RunConfig | None:
    """The config a run folder keeps, for the status line; None when it cannot be read (the follow
    itself says what is wrong with the folder)."""
    try:
        return open_run(run_dir)[1]
    except UserError:
        return None
