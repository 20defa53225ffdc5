"""Model + preset + seed: the one place that builds a trainable segmenter, and loads a trained one back.

Above both :mod:`monai_cbo.networks` (the SAM-family models) and :mod:`monai_cbo.peft` (the method), which
do not import each other. Every caller goes through here: the bundles (``network_def``), ``monai-cbo bench``,
``monai-cbo speed`` and ``params``, and whatever loads an adapter for inference (``monai-cbo segment
--adapter``, ``inference.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .networks import SamSegmenter, SegmenterEnsemble, add_class_prompts, add_walk_prompt, build_model
from .peft import PeftConfig, adapter_class_prompts, apply_peft, load_adapter, read_adapter

__all__ = ["build_segmenter", "load_ensemble", "load_segmenter"]


def build_segmenter(
    name: str = "litemedsam",
    checkpoint: str | Path | None = None,
    preset: str = "lora_cbo",
    rank: int | None = None,
    adapter: str | Path | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    class_values: Sequence[int] | None = None,
    exclusive: bool = True,
    walk_prompt: bool = False,
    **peft_overrides: Any,
) -> SamSegmenter:
    """Build model ``name`` (weights from ``checkpoint``, or LiteMedSAM's packaged ones), apply ``preset`` and
    optionally load an ``adapter`` checkpoint (``None`` or ``""``: none, e.g. to evaluate ``freeze``).

    ``class_names`` adds trainable class prompts (:func:`~monai_cbo.networks.add_class_prompts`), one per name,
    for automatic segmentation, writing ``class_values`` (default 1..C) into label maps, ``exclusive`` or nested;
    None (default) or empty: a prompted model only. ``walk_prompt`` adds a trainable
    :class:`~monai_cbo.networks.WalkPrompt` (the boxes of a propagation walk told apart from the user's); an
    ``adapter`` that holds one adds it too (a bundle's train.json starting from a user bundle's adapter).

    Returns it in train mode. Model and PEFT initialisation draw from ``seed`` only (the global torch RNG is
    left as it was), so the same arguments give the same weights in every caller.
    """
    model = build_model(name, checkpoint=checkpoint, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        apply_peft(model, PeftConfig.from_preset(preset, rank=rank, **peft_overrides))
    if class_names:
        add_class_prompts(model, class_names, seed, class_values, exclusive)
    if walk_prompt:
        add_walk_prompt(model)
    if adapter:
        load_adapter(model, adapter)  # adds the adapter's walk prompt where the model has none
    return model.train()


def load_segmenter(path: str | Path, checkpoint: str | Path | None = None, payload: dict | None = None) -> SamSegmenter:
    """Build the pretrained model named in adapter checkpoint ``path``, apply its saved PEFT config, load it.

    ``checkpoint`` is the base model's weights file (needed for SAM ViT models; LiteMedSAM's are packaged).
    Unlike :func:`build_segmenter` it needs no preset or rank: the checkpoint says how it was built.
    ``payload``: the file's contents (:func:`~monai_cbo.peft.read_adapter`) when the caller has read it already.
    """
    payload = payload if payload is not None else read_adapter(path)
    model = build_model(payload["model_name"], checkpoint=checkpoint)
    apply_peft(model, PeftConfig.from_dict(payload["peft_config"]))
    spec = adapter_class_prompts(payload)
    if spec:
        add_class_prompts(model, spec["names"], class_values=spec.get("values"), exclusive=spec.get("exclusive", True))
    return load_adapter(model, path, payload=payload)  # with its walk prompt, if it has one


def load_ensemble(
    paths: Sequence[str | Path], checkpoint: str | Path | None = None, payloads: Sequence[dict] | None = None
) -> SamSegmenter | SegmenterEnsemble:
    """Load each adapter of ``paths`` (:func:`load_segmenter`); one path gives that model, several a
    :class:`~monai_cbo.networks.SegmenterEnsemble` that averages their probabilities (members named by file).
    ``payloads``: the files' contents, one per path, when the caller has read them already.

    Raises:
        ValueError: no path, or adapters that cannot be ensembled (different input sizes or classes; the
            message names both files).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("give at least one adapter file")
    if payloads is not None and len(payloads) != len(paths):
        raise ValueError(f"{len(payloads)} adapter payloads for {len(paths)} files")
    models = [load_segmenter(p, checkpoint, payloads[i] if payloads else None) for i, p in enumerate(paths)]
    if len(models) == 1:
        return models[0]
    return SegmenterEnsemble(models, names=[str(p) for p in paths])
