"""`model.trust_remote_code` is approved by the person starting the run, never by a file.

With it, transformers imports and runs the Python modules a model folder ships, with the user's
rights. A config file or a run folder can come from anyone (SECURITY.md), and a review showed one
with `trust_remote_code: true` running its model's code on `sft-tui train --resume` and on merely
opening the config in the app. So the setting in a file counts only with an approval given now:
`--trust-remote-code` on the command line (not a `--set`: `--set model=...` sets it too), the box ticked
in the app, or the app's confirmation before it starts such a run. An approving process hands the
approval to the engine processes it starts (a detached engine, torchrun's) in TRUSTED_ENV, bound to
the one model it was given for.
"""

from __future__ import annotations

import os

from core.config import RunConfig
from core.errors import UserError

TRUSTED_ENV = "SFT_TUI_TRUSTED_CODE"
"""The model (model.name_or_path) whose code the process that started this one approved."""


def approved_for(config: RunConfig) -> bool:
    """Whether an approval handed down in TRUSTED_ENV covers `config`'s model."""
    return os.environ.get(TRUSTED_ENV) == config.model.name_or_path


def trust_problem(config: RunConfig, approved: bool) -> UserError | None:
    """Why `config` must not run: it trusts its model's code, and nobody approved that now."""
    if not config.model.trust_remote_code or approved or approved_for(config):
        return None
    return UserError(f"model.trust_remote_code is true: the run would import and run the Python code that "
                     f"{config.model.name_or_path} ships, with your rights, and a config file or run folder "
                     "cannot allow that by itself",
                     "read that code, then allow it for this run with --trust-remote-code")


def trusted_env(config: RunConfig) -> dict[str, str]:
    """The environment entry that hands an approval of `config`'s model to the processes it starts."""
    return {TRUSTED_ENV: config.model.name_or_path} if config.model.trust_remote_code else {}
