"""The step screens by name (sft_tui.app.STEPS). Imported when the first screen is shown."""

from sft_tui.screens.data import DataScreen
from sft_tui.screens.freeze import FreezeScreen
from sft_tui.screens.hyper import HyperScreen
from sft_tui.screens.model import ModelScreen
from sft_tui.screens.runs import RunsScreen
from sft_tui.screens.train import TrainScreen

SCREENS = {"model": ModelScreen, "data": DataScreen, "freeze": FreezeScreen, "hyper": HyperScreen,
           "train": TrainScreen, "runs": RunsScreen}
