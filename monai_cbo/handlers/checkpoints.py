"""Ignite handlers that save and restore training: the best adapter, and a resumable training state."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from ..peft import adapter_state_dict, save_adapter
from ..utils import load_weights_only, write_atomic

__all__ = ["BestAdapterSaver", "TrainingStateCheckpoint"]

logger = logging.getLogger(__name__)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return getattr(network, "module", network)  # DistributedDataParallel


def _is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


class BestAdapterSaver:
    """After each evaluation, save the adapter-only checkpoint when ``metric_name`` improves.

    Attach to the evaluator. Writes ``path`` atomically on rank 0 with the epoch and metric as metadata (MONAI's
    ``ValidationHandler`` runs the evaluator with the trainer's epoch, so that is the epoch recorded).
    """

    def __init__(self, path: str | Path, network: torch.nn.Module, metric_name: str):
        self.path, self.network, self.metric_name = Path(path), network, metric_name
        self.best = -float("inf")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric_name])
        if value <= self.best or not _is_main_process():
            return
        self.best = value
        epoch = engine.state.epoch
        save_adapter(
            _unwrap(self.network), self.path, overwrite=True, metadata={"epoch": int(epoch), self.metric_name: value}
        )
        logger.info(f"saved best adapter ({self.metric_name}={value:.4f}, epoch {epoch}) to {self.path}")


class TrainingStateCheckpoint:
    """Save everything needed to resume at each epoch end; restore it when a run starts with ``resume``.

    The file holds the trained parameters (not the frozen pretrained weights), the optimizer, the LR scheduler
    and the trainer's state (epoch, iteration), is written atomically (a kill while saving leaves the previous
    file intact) on rank 0, and is read with ``weights_only=True``. A resumed run continues from the saved
    epoch: iteration numbers carry on and the run ends at the same ``max_epochs`` as an uninterrupted one.
    """

    def __init__(
        self,
        path: str | Path,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler=None,
        resume: bool = False,
        save_every: int = 1,
    ) -> None:
        self.path, self.network, self.optimizer, self.lr_scheduler = Path(path), network, optimizer, lr_scheduler
        self.resume, self.save_every = bool(resume), int(save_every)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_every), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def save(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        state = {
            "trainer": {
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "max_epochs": engine.state.max_epochs,
                "epoch_length": engine.state.epoch_length,
            },
            "network": adapter_state_dict(_unwrap(self.network)),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
        }
        write_atomic(self.path, lambda tmp: torch.save(state, tmp), overwrite=True)

    def load(self, engine: Engine) -> None:
        if not self.resume:
            return
        if not self.path.is_file():
            logger.warning(f"resume requested but {self.path} does not exist: starting from epoch 0")
            return
        state = load_weights_only(self.path, "training state", "delete it to start the run over")
        network = _unwrap(self.network)
        params = dict(network.named_parameters())
        missing = sorted(n for n, p in params.items() if p.requires_grad and n not in state["network"])
        if missing:
            raise ValueError(
                f"training state {self.path} does not match the network (e.g. {missing[:3]}); "
                "was it saved with another model or preset?"
            )
        with torch.no_grad():
            for name, value in state["network"].items():
                params[name].copy_(value)
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        saved = state["trainer"]
        if saved["epoch"] >= engine.state.max_epochs:
            logger.warning(f"{self.path} is from epoch {saved['epoch']}: nothing left of {engine.state.max_epochs}")
        engine.state.epoch = saved["epoch"]
        engine.state.iteration = saved["iteration"]
        logger.info(f"resumed from {self.path} at epoch {saved['epoch']}, iteration {saved['iteration']}")
