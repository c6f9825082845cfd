"""Modal dialogs that return their answer through dismiss()."""

from sft_tui.screens.dialogs.basic import ConfirmDialog, ErrorDialog, PathDialog
from sft_tui.screens.dialogs.freeze_rule import RuleDialog
from sft_tui.screens.dialogs.quit import QuitDialog

__all__ = ["ConfirmDialog", "ErrorDialog", "PathDialog", "QuitDialog", "RuleDialog"]
