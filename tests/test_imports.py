"""The layers stay apart: core/ (the engine) imports no terminal UI library, and the app's UI thread
imports no training library (ARCHITECTURE.md)."""

import pkgutil
import subprocess
import sys
from pathlib import Path

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


def test_the_layering_contracts_hold():
    """pyproject.toml's import-linter contracts (ARCHITECTURE.md): core knows no terminal, and the
    app and its screens import no training library themselves."""
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint)], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_app_and_its_screens_import_no_training_library_at_module_level():
    """The first screen draws before torch (3 s) or transformers (11 s) is imported: what the app
    and its screens import at module level, core modules included, must not pull them in."""
    import sft_tui.screens

    screens = sorted(f"sft_tui.screens.{m.name}" for m in pkgutil.walk_packages(sft_tui.screens.__path__))
    code = (f"import sys, sft_tui.app, {', '.join(screens)}\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
