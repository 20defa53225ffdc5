"""Find the attention blocks of a SAM-family encoder, wrap them, and freeze by structure."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..networks.class_prompts import class_prompts_of
from ..networks.walk_prompt import walk_prompt_of
from .config import PeftConfig
from .layers import AdapterMLP, LoraQKV, PeftLayer
from .orchestration import CBOSlot, CrossBlockOrchestrator

__all__ = [
    "AttentionBlock",
    "apply_peft",
    "count_parameters",
    "find_attention_blocks",
    "optimizer_param_groups",
    "set_trainable",
]


@dataclass(frozen=True)
class AttentionBlock:
    """One transformer block of an image encoder: where its qkv and MLP live, and the qkv layout."""

    name: str  # e.g. "blocks.3" (SAM ViT) or "layers.2.blocks.1" (TinyViT)
    module: nn.Module
    dim: int
    q_index: torch.Tensor
    v_index: torch.Tensor


def _qkv_layout(attn: nn.Module, qkv: nn.Linear, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Output positions of q and v inside a fused qkv projection."""
    if all(hasattr(attn, a) for a in ("key_dim", "d", "num_heads")):  # TinyViT: per head [q | k | v]
        kd, d, heads = attn.key_dim, attn.d, attn.num_heads
        per_head = 2 * kd + d
        if per_head * heads != qkv.out_features:
            raise ValueError(f"{name}.attn.qkv: {qkv.out_features} outputs do not match {heads} heads of {per_head}")
        starts = torch.arange(heads).unsqueeze(1) * per_head
        return (starts + torch.arange(kd)).flatten(), (starts + 2 * kd + torch.arange(d)).flatten()
    dim = qkv.in_features
    if qkv.out_features != 3 * dim:  # SAM ViT: [q | k | v], each of width dim
        raise ValueError(
            f"{name}.attn.qkv has {qkv.out_features} outputs for {dim} inputs; expected 3 x {dim} "
            "(segment-anything ViT layout) or a TinyViT attention with key_dim / d / num_heads"
        )
    return torch.arange(dim), torch.arange(2 * dim, 3 * dim)


def find_attention_blocks(encoder: nn.Module) -> list[AttentionBlock]:
    """Attention blocks in forward order: modules with an ``attn.qkv`` linear and an ``mlp``.

    Matches segment-anything's ViT (``blocks.i``) and LiteMedSAM's TinyViT (``layers.k.blocks.i``; its
    first stage is convolutional and has no attention).
    """
    found = []
    for name, module in encoder.named_modules():
        attn = getattr(module, "attn", None)
        qkv = getattr(attn, "qkv", None)
        if isinstance(qkv, PeftLayer):
            raise ValueError(f"encoder block {name} is already wrapped; apply PEFT to a fresh model")
        if isinstance(qkv, nn.Linear) and isinstance(getattr(module, "mlp", None), nn.Module):
            q_index, v_index = _qkv_layout(attn, qkv, name)
            found.append(AttentionBlock(name, module, qkv.in_features, q_index, v_index))
    return found


def set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def apply_peft(model: nn.Module, config: PeftConfig) -> nn.Module:
    """Wrap ``model.image_encoder`` per ``config`` and freeze everything that should not train.

    ``model`` is a :class:`~monai_cbo.networks.SamSegmenter` (anything with ``image_encoder``,
    ``prompt_encoder`` and ``mask_decoder``). It is modified in place and returned with
    ``model.peft_config`` set.
    """
    if getattr(model, "peft_config", None) is not None:
        raise ValueError("PEFT is already applied to this model; build a fresh model for another preset")
    encoder = model.image_encoder
    blocks = find_attention_blocks(encoder)
    if config.method is not None and not blocks:
        raise ValueError(f"no attention blocks (attn.qkv + mlp) found in {type(encoder).__name__}")
    if config.blocks is not None:
        bad = [b for b in config.blocks if not 0 <= b < len(blocks)]
        if bad:
            raise ValueError(
                f"blocks {bad} out of range: the encoder has {len(blocks)} attention blocks (0..{len(blocks) - 1})"
            )
        blocks = [blocks[b] for b in config.blocks]

    if config.method is not None:
        slots_per_block = 2 if config.method == "lora" else 1
        orchestrator = None
        if config.cbo:
            orchestrator = CrossBlockOrchestrator(slots_per_block * len(blocks), config.rank)
            encoder.cbo = orchestrator
            encoder.register_forward_pre_hook(orchestrator.begin)
            encoder.register_forward_hook(orchestrator.end)

        def slot(t: int) -> CBOSlot | None:
            return None if orchestrator is None else CBOSlot(orchestrator, t, config.head_init)

        for b, block in enumerate(blocks):
            if config.method == "lora":
                attn = block.module.attn
                attn.qkv = LoraQKV(
                    attn.qkv,
                    block.q_index,
                    block.v_index,
                    config.rank,
                    slot(2 * b),
                    slot(2 * b + 1),
                    config.lora_b_init,
                )
            else:
                block.module.mlp = AdapterMLP(
                    block.module.mlp,
                    block.dim,
                    config.rank,
                    slot(b),
                    config.adapter_scale,
                    config.adapter_dropout,
                    config.lora_b_init,
                )
        device = next(encoder.parameters()).device
        encoder.to(device)

    set_trainable(model, False)
    set_trainable(model.image_encoder, config.train_encoder)
    set_trainable(model.prompt_encoder, config.train_prompt_encoder)
    set_trainable(model.mask_decoder, config.train_decoder)
    for module in encoder.modules():
        if isinstance(module, PeftLayer):
            for p in module.adapter_parameters():
                p.requires_grad_(True)
        elif isinstance(module, CrossBlockOrchestrator):
            set_trainable(module, True)
    model.peft_config = config
    return model


def _cbo_parameters(model: nn.Module) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, (CBOSlot, CrossBlockOrchestrator)):
            for p in module.parameters():
                seen[id(p)] = p
    return list(seen.values())


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts by part, as reported in the benchmark table.

    Keys: ``peft`` (base PEFT in the encoder), ``cbo`` (the CBO extra), ``decoder`` (trainable mask
    decoder), ``encoder`` (trainable pretrained encoder weights, full fine-tuning), ``prompt_encoder``,
    ``class_prompts`` (the learned prompts of automatic segmentation, if any), ``total_trainable`` and ``total``
    (every parameter of the model).
    """
    cbo = {id(p) for p in _cbo_parameters(model)}
    peft: set[int] = set()
    for module in model.image_encoder.modules():
        if isinstance(module, PeftLayer):
            peft |= {id(p) for p in module.adapter_parameters()} - cbo
    base_encoder = {id(p) for p in model.image_encoder.parameters()} - peft - cbo
    params = {id(p): p for p in model.parameters()}
    prompts = class_prompts_of(model)

    def trainable(ids: set[int]) -> int:
        return sum(params[i].numel() for i in ids if params[i].requires_grad)

    return {
        "peft": trainable(peft),
        "cbo": trainable(cbo),
        "decoder": trainable({id(p) for p in model.mask_decoder.parameters()}),
        "encoder": trainable(base_encoder),
        "prompt_encoder": trainable({id(p) for p in model.prompt_encoder.parameters()}),
        "class_prompts": trainable({id(p) for p in prompts.parameters()}) if prompts is not None else 0,
        "total_trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "total": sum(p.numel() for p in params.values()),
    }


def optimizer_param_groups(
    model: nn.Module, lr: float, weight_decay: float = 0.0, cbo_lr_mult: float | None = None
) -> list[dict]:
    """Optimizer groups over trainable parameters only: the CBO group at ``lr * cbo_lr_mult`` (None: the model's PEFT
    config's, 100 for every preset), a walk prompt's offset (:class:`~monai_cbo.networks.WalkPrompt`) at
    ``lr * WalkPrompt.lr_mult``."""
    config: PeftConfig | None = getattr(model, "peft_config", None)
    mult = cbo_lr_mult if cbo_lr_mult is not None else (config.cbo_lr_mult if config is not None else 1.0)
    if not mult > 0:
        raise ValueError(f"cbo_lr_mult must be > 0, got {mult}")
    cbo = [p for p in _cbo_parameters(model) if p.requires_grad]
    walk = walk_prompt_of(model)
    walk_params = [p for p in walk.parameters() if p.requires_grad] if walk is not None else []
    special = {id(p) for p in cbo + walk_params}
    base = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    groups = [{"params": base, "lr": lr, "weight_decay": weight_decay, "name": "base"}]
    if cbo:
        groups.append({"params": cbo, "lr": lr * mult, "weight_decay": weight_decay, "name": "cbo"})
    if walk_params:
        groups.append({"params": walk_params, "lr": lr * walk.lr_mult, "weight_decay": 0.0, "name": "walk_prompt"})
    return [g for g in groups if g["params"]]
