"""MONAI inferers for evaluators: whole volumes in, per-class binary channels out - prompted with boxes from the
label (:class:`PromptedVolumeInferer`, the benchmark protocol) or with no prompt at all (:class:`AutoVolumeInferer`,
the model's learned class prompts). :func:`volume_inferer` picks one by name, for bundle configs."""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from ..networks import class_prompts_of
from .automatic import AutoConfig
from .prompts import prompts_from_mask
from .segment import segment_volume
from .slicewise import SliceWiseInferer
from .volume import SliceGeometry

__all__ = ["AutoVolumeInferer", "PromptedVolumeInferer", "volume_inferer"]


class PromptedVolumeInferer(Inferer):
    """Segment ``[B, 3, H, W, D]`` volumes (axial slices last, intensities in [0, 1]) slice by slice.

    Called by MONAI's ``SupervisedEvaluator`` as ``inferer(inputs, network, prompt_label=...)`` (wire the label
    with ``PrepareBatchExtraInput({"prompt_label": "label"})``): ``prompt_label`` ``[B, K, H, W, D]`` holds one
    binary channel per class; each slice where channel k has foreground gets its tight box as prompt k (the
    benchmark protocol). Returns ``[B, K, H, W, D]`` binary predictions. With ``exclusive`` (organ classes), a
    voxel claimed by several classes goes to the most probable; without it (nested BraTS regions) channels are
    independent.

    Args:
        exclusive: classes are mutually exclusive. Default True.
        batch_size: slices per encoder pass (default: 1 on CPU, 8 on CUDA).
        threshold: foreground probability. Default 0.5.
    """

    def __init__(self, exclusive: bool = True, batch_size: int | None = None, threshold: float = 0.5) -> None:
        super().__init__()
        self.exclusive, self.batch_size, self.threshold = exclusive, batch_size, threshold

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, prompt_label: torch.Tensor | None = None):
        if prompt_label is None:
            raise ValueError("PromptedVolumeInferer needs prompt_label (wire the label with PrepareBatchExtraInput)")
        model = getattr(network, "module", network)  # DistributedDataParallel
        was_training = model.training
        inferer = SliceWiseInferer(model, self.batch_size, device=inputs.device, threshold=self.threshold)
        out = torch.zeros(prompt_label.shape, dtype=torch.float32, device=inputs.device)
        try:
            identity = SliceGeometry(tuple(prompt_label.shape[2:]), np.array([[0, 1], [1, 1], [2, 1]]))
            for b in range(inputs.shape[0]):
                label = prompt_label[b].cpu() > 0.5
                prompts = {k + 1: prompts_from_mask(label[k]) for k in range(label.shape[0])}
                seg = segment_volume(inferer, inputs[b], identity, prompts)
                if self.exclusive:
                    labels = torch.as_tensor(seg.sliced_labels)
                    out[b] = torch.stack([labels == k + 1 for k in range(label.shape[0])]).float().to(out.device)
                else:
                    for k, per_slice in seg.results.items():
                        for z, res in per_slice.items():
                            out[b, k - 1, ..., z] = (res.prob > self.threshold).float().to(out.device)
        finally:
            model.train(was_training)
        return convert_to_dst_type(out, dst=inputs)[0]  # a MetaTensor keeps the input's geometry for Invertd


class AutoVolumeInferer(Inferer):
    """Segment ``[B, 3, H, W, D]`` volumes with no prompt: every slice, every class of the network's class prompts
    (:mod:`~monai_cbo.inferers.automatic`). Returns ``[B, K, H, W, D]`` binary channels in the class prompts'
    order (the same order as the label channels a bundle trains on); exclusive classes go to the most probable,
    nested regions are independent channels. A ``prompt_label`` keyword (wired for the prompted evaluator) is
    accepted and ignored, so both evaluators share one ``prepare_batch``.

    Args:
        auto: refinement / clean-up options (:class:`AutoConfig`); default none.
        batch_size: slices per encoder pass (default: 1 on CPU, 8 on CUDA).
        threshold: foreground probability. Default 0.5.
    """

    def __init__(self, auto: AutoConfig | None = None, batch_size: int | None = None, threshold: float = 0.5) -> None:
        super().__init__()
        self.auto, self.batch_size, self.threshold = auto or AutoConfig(), batch_size, threshold

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, prompt_label: torch.Tensor | None = None):
        model = getattr(network, "module", network)  # DistributedDataParallel
        prompts = class_prompts_of(model)
        if prompts is None:
            raise ValueError(
                "automatic evaluation needs a network with class prompts: train with auto_share > 0 (and load its "
                "adapter), or evaluate prompted (auto_share 0)"
            )
        was_training = model.training
        inferer = SliceWiseInferer(model, self.batch_size, device=inputs.device, threshold=self.threshold)
        out = torch.zeros((inputs.shape[0], len(prompts), *inputs.shape[2:]), dtype=torch.float32, device=inputs.device)
        try:
            identity = SliceGeometry(tuple(inputs.shape[2:]), np.array([[0, 1], [1, 1], [2, 1]]))
            for b in range(inputs.shape[0]):
                seg = segment_volume(inferer, inputs[b], identity, auto=self.auto)
                for k, value in enumerate(prompts.class_values):
                    if prompts.exclusive:
                        out[b, k] = torch.as_tensor(seg.sliced_labels == value).float().to(out.device)
                    else:
                        for z, res in seg.results[value].items():
                            out[b, k, ..., z] = (res.prob > self.threshold).float().to(out.device)
        finally:
            model.train(was_training)
        return convert_to_dst_type(out, dst=inputs)[0]


def volume_inferer(mode: str, exclusive: bool = True, auto: AutoConfig | None = None) -> Inferer:
    """The evaluator's inferer by name: ``"prompted"`` (:class:`PromptedVolumeInferer`, boxes from the label, with
    ``exclusive``) or ``"auto"`` (:class:`AutoVolumeInferer`; exclusivity comes from the class prompts)."""
    from ..utils import check_option

    check_option("mode", mode, ("prompted", "auto"))
    return PromptedVolumeInferer(exclusive) if mode == "prompted" else AutoVolumeInferer(auto)
