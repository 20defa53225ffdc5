"""Adapter-only checkpoints: exactly the trained parameters, with the config that made them.

A checkpoint is a ``torch.save`` dict that loads with ``weights_only=True``::

    {"format": "monai_cbo.adapter", "format_version": 1, "model_name": "litemedsam",
     "peft_config": {...PeftConfig fields...}, "state_dict": {name: tensor}, "metadata": {...}}

An adapter trained for automatic segmentation also holds ``"class_prompts": {"names": [...], "values": [...],
"exclusive": bool}`` and the learned prompts (``class_prompts.tokens`` in its state dict); it is written as
``format_version`` 2 so that an older monai_cbo refuses it by name instead of failing on an unknown tensor.
Adapters without class prompts stay version 1.

An adapter trained with simulated clicks (:mod:`monai_cbo.training.interaction`) also holds ``"interaction":
{"share": ..., "max_clicks": ..., "click_start": ..., "mask_prompt": ...}``: how it learned to read points
(``monai-cbo segment`` warns when a click alone starts an object on a model without it; correction clicks after
a box edit the box for every model, :attr:`monai_cbo.inferers.PropagationConfig.click_boxes`). An older
monai_cbo ignores the field.

It goes onto a freshly built pretrained model of the same name with the same config
(:func:`monai_cbo.models.load_segmenter` builds that model from the checkpoint alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..networks.class_prompts import class_prompts_of
from ..networks.segmenter import TRAINED_INTERACTION, trained_with_clicks
from ..networks.walk_prompt import add_walk_prompt, walk_prompt_of
from ..utils import load_weights_only, write_atomic
from .config import PeftConfig

__all__ = [
    "adapter_class_prompts",
    "adapter_walk_prompt",
    "adapter_interaction",
    "adapter_state_dict",
    "load_adapter",
    "read_adapter",
    "save_adapter",
]

FORMAT = "monai_cbo.adapter"
#: the state-dict entry of a walk prompt (an adapter trained with ``Recipe.walk_prompt``)
WALK_PROMPT_KEY = "walk_prompt.offset"
FORMAT_VERSION = 2  # the newest this code reads; 1 is written when there are no class prompts


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters (those with ``requires_grad``), detached, on the CPU."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(
    model: nn.Module, path: str | Path, overwrite: bool = False, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s trained parameters and PEFT config to ``path`` atomically.

    Raises:
        ValueError: the model has no PEFT config (call :func:`~monai_cbo.peft.apply_peft` first).
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    config: PeftConfig | None = getattr(model, "peft_config", None)
    if config is None:
        raise ValueError("the model has no peft_config; apply a preset with monai_cbo.peft.apply_peft first")
    prompts = class_prompts_of(model)
    payload = {
        "format": FORMAT,
        "format_version": 1 if prompts is None else 2,
        "monai_cbo_version": __version__,
        "model_name": model.model_name,
        "peft_config": config.to_dict(),
        "state_dict": adapter_state_dict(model),
        "metadata": dict(metadata or {}),
    }
    if prompts is not None:
        payload["class_prompts"] = prompts.spec()
    if trained_with_clicks(model):
        payload["interaction"] = dict(getattr(model, TRAINED_INTERACTION))
    return write_atomic(path, lambda tmp: torch.save(payload, tmp), overwrite)


def read_adapter(path: str | Path) -> dict[str, Any]:
    """Read and validate an adapter checkpoint (``weights_only=True``: no code in the file can run)."""
    payload = load_weights_only(path, "adapter checkpoint", "pass a checkpoint written by training (save_adapter)")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a monai_cbo adapter checkpoint (no format={FORMAT!r} field); pass an adapter written by "
            "training (save_adapter) as the adapter, and base model weights as --checkpoint"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {payload['format_version']}; upgrade monai_cbo to read it")
    return payload


def adapter_class_prompts(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The class prompts' spec (names, values, exclusive) of a read adapter checkpoint; None for a prompted-only one."""
    return payload.get("class_prompts") or None


def adapter_walk_prompt(payload: dict[str, Any]) -> bool:
    """Whether a read adapter checkpoint holds a trained walk prompt (:class:`~monai_cbo.networks.WalkPrompt`):
    the model it loads into needs one (:func:`~monai_cbo.networks.add_walk_prompt`)."""
    return WALK_PROMPT_KEY in payload.get("state_dict", {})


def adapter_interaction(payload: dict[str, Any]) -> dict[str, Any] | None:
    """How a read adapter checkpoint was trained with simulated clicks (its ``"interaction"`` record); None for
    one trained on boxes only, or whose field is not a record."""
    record = payload.get("interaction")
    return record if isinstance(record, dict) and record.get("share", 0) > 0 else None


def _config_mismatch(saved: PeftConfig, current: PeftConfig) -> list[str]:
    a, b = saved.to_dict(), current.to_dict()
    return [f"{k}: checkpoint has {a[k]!r}, model has {b[k]!r}" for k in a if a[k] != b[k]]


def _check_class_prompts(model: nn.Module, path: str | Path, saved: list[str] | None) -> None:
    prompts = class_prompts_of(model)
    built = None if prompts is None else list(prompts.class_names)
    if saved is None and built is None:
        return
    if saved is None:
        raise ValueError(
            f"adapter {path} has no class prompts but the model was built with {len(built)} ({built}); build it "
            "without class names, or load an adapter trained with automatic steps"
        )
    if built is None:
        raise ValueError(
            f"adapter {path} holds class prompts for {len(saved)} classes ({saved}) but the model was built without "
            "class prompts; load it with load_segmenter (or monai-cbo segment --adapter), which adds them, or build "
            "the model with its class names (a bundle's training: auto_share > 0)"
        )
    if len(saved) != len(built):
        raise ValueError(
            f"adapter {path} has class prompts for {len(saved)} classes ({saved}) but the model was built for "
            f"{len(built)} ({built}); build the model with the adapter's classes (load_segmenter does)"
        )
    if list(saved) != built:  # the same count in another order or meaning: each prompt would segment another class
        raise ValueError(
            f"adapter {path} has class prompts for {list(saved)} but the model was built for {built}; build the "
            "model with the adapter's class names, in its order (load_segmenter does)"
        )


def load_adapter(model: nn.Module, path: str | Path, payload: dict[str, Any] | None = None) -> nn.Module:
    """Load an adapter checkpoint into ``model`` (already built and PEFT-wrapped with the same config).

    ``payload``: the checkpoint as :func:`read_adapter` returned it, to read ``path`` only once. A checkpoint
    holding a walk prompt (:class:`~monai_cbo.networks.WalkPrompt`) gives the model one where it has none, so every
    path that loads it (``load_segmenter``, ``build_segmenter(adapter=...)``, ``bench --init-adapter``) keeps it.

    Raises:
        ValueError: the checkpoint was made for another model or config (the message names each field
            that differs), or its tensors do not match the model's trained parameters.
    """
    if payload is None:
        payload = read_adapter(path)
    if payload["model_name"] != model.model_name:
        raise ValueError(
            f"adapter {path} was trained on model {payload['model_name']!r}, not {model.model_name!r}; "
            f"build the model with --model {payload['model_name']}"
        )
    current: PeftConfig | None = getattr(model, "peft_config", None)
    if current is None:
        raise ValueError(f"apply the checkpoint's PEFT config before loading {path} (or use load_segmenter)")
    saved = PeftConfig.from_dict(payload["peft_config"])
    _check_class_prompts(model, path, (payload.get("class_prompts") or {}).get("names"))
    diff = _config_mismatch(saved, current)
    if diff:
        raise ValueError(
            f"adapter {path} does not match the model's PEFT config: {'; '.join(diff)}. Load it with "
            "load_segmenter (or monai-cbo segment --adapter), which builds the model with the checkpoint's config, "
            "or apply that config before load_adapter"
        )
    if adapter_walk_prompt(payload) and walk_prompt_of(model) is None:  # the adapter's own: whoever loads it keeps it
        add_walk_prompt(model)
    state = payload["state_dict"]
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    wrong = sorted(n for n in expected & set(state) if state[n].shape != params[n].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"adapter {path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]}; it was saved from a differently built model: load it with load_segmenter, or "
            "build the model as in training"
        )
    with torch.no_grad():
        for name in expected:
            params[name].copy_(state[name])
    setattr(model, TRAINED_INTERACTION, adapter_interaction(payload))
    return model
