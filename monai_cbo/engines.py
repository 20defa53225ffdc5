"""Factories the bundles call, so that their JSON holds wiring and hyperparameters only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .networks import SamSegmenter, build_model
from .peft import PeftConfig, apply_peft, load_adapter, optimizer_param_groups
from .utils import check_option

__all__ = ["build_optimizer", "build_segmenter"]


def build_segmenter(
    name: str = "litemedsam",
    checkpoint: str | Path | None = None,
    preset: str = "lora_cbo",
    rank: int | None = None,
    adapter: str | Path | None = None,
    seed: int = 0,
    **peft_overrides: Any,
) -> SamSegmenter:
    """Build model ``name`` (weights from ``checkpoint``, or LiteMedSAM's packaged ones), apply ``preset`` and
    optionally load an ``adapter`` checkpoint (``None`` or ``""``: none, e.g. to evaluate ``freeze``). Returns it in
    train mode; PEFT init draws from ``seed``."""
    model = build_model(name, checkpoint=checkpoint, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        apply_peft(model, PeftConfig.from_preset(preset, rank=rank, **peft_overrides))
    if adapter:
        load_adapter(model, adapter)
    return model.train()


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
