"""When the data screen may start tokenizing: after the warm-up and any model load, so that the
data worker reuses the model's tokenizer instead of loading a second one at the same time.
(Concurrent imports of transformers are made safe by sft_tui.worker.warm_up's lock.)
"""

from __future__ import annotations

import asyncio

POLL_SECONDS = 0.05


async def model_settled(app) -> None:
    """Return once the app's warm-up worker has imported torch and transformers and no model load
    is running."""
    while app.model_state == "loading" or any(
        worker.group == "warm-up" and not worker.is_finished for worker in app.workers
    ):
        await asyncio.sleep(POLL_SECONDS)
