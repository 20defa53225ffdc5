"""Factories the bundles call, so that their JSON holds wiring and hyperparameters only."""

from __future__ import annotations

import torch

from .peft import optimizer_param_groups
from .utils import check_option

__all__ = ["build_optimizer"]


def build_optimizer(
    network: torch.nn.Module, lr: float, weight_decay: float = 0.0, name: str = "adamw"
) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over the trainable parameters, the CBO group at its LR multiplier.

    Raises:
        ValueError: nothing trains (the ``freeze`` preset): evaluate it instead of training it.
    """
    model = getattr(network, "module", network)
    groups = optimizer_param_groups(model, lr, weight_decay)
    if not groups:
        preset = getattr(getattr(model, "peft_config", None), "preset", "?")
        raise ValueError(f"preset {preset!r} trains no parameters; evaluate it with evaluate.json and --adapter ''")
    optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    check_option("optimizer", name, optimizers)
    return optimizers[name](groups, lr=lr)
