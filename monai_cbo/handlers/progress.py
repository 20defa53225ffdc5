"""A per-epoch progress bar for trainers."""

from __future__ import annotations

from ignite.contrib.handlers import ProgressBar
from ignite.engine import Engine

__all__ = ["EpochProgressBar"]


class EpochProgressBar:
    """tqdm progress bar over each epoch's iterations, showing the running loss (``output["loss"]``)."""

    def __init__(self, loss_key: str = "loss", persist: bool = False) -> None:
        self.loss_key, self.persist = loss_key, persist

    def attach(self, engine: Engine) -> None:
        def loss(output) -> dict:
            item = output[0] if isinstance(output, list) else output
            if not isinstance(item, dict) or self.loss_key not in item:
                return {}
            return {"loss": float(item[self.loss_key].detach())}

        ProgressBar(persist=self.persist).attach(engine, output_transform=loss)
