"""core/ is the engine: usable without the terminal UI, so it must never import textual or rich."""

import pkgutil
import subprocess
import sys

import pytest

import core

CORE_MODULES = sorted(f"core.{m.name}" for m in pkgutil.iter_modules(core.__path__))


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_ui_library(module):
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


def test_cli_help_does_not_import_torch():
    """`sft-tui --help` must be instant: torch and transformers load only inside the commands."""
    code = "import sys; from sft_tui import cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize("module", ["core.runs", "core.manifest", "core.atomic"])
def test_run_folder_queries_import_no_torch(module):
    """The app lists runs and resumable checkpoints on the UI thread: no 3-second torch import."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
