"""Automatic segmentation: every slice, every class, no prompt - the learned class prompts of a trained adapter.

Steps for one volume (``[3, H, W, D]``, slicing axis last):

1. every slice is encoded once (through the volume's :class:`~monai_cbo.networks.SliceCache`, shared with any
   later step) and the mask decoder runs once per slice with all the class prompts
   (:meth:`SliceWiseInferer.decode_classes`);
   optionally (``z_smooth`` w > 0) each slice's probabilities are averaged with its two neighbours' at weight w
   (:func:`smooth_across_slices`), which fills a slice the model missed between two it found and trims specks
   that appear on one slice only;
2. optionally (``refine``) each non-empty automatic mask is re-prompted with its own tight box (decoder only,
   the embedding is reused); the box-prompted mask replaces the automatic one when the two agree (IoU at least
   ``refine_min_iou``), so a refinement that jumps to another structure is dropped;
3. optionally (``largest_component``) each class keeps only its largest 3D connected component (26-connected,
   ``scipy.ndimage.label``; MONAI's ``KeepLargestConnectedComponent`` does the same but needs scikit-image),
   which removes isolated false positives far from the structure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..networks import SliceCache, class_prompts_of
from .slicewise import Prompt2D, SliceResult, SliceWiseInferer, mask_box

__all__ = ["AutoConfig", "segment_automatic", "smooth_across_slices"]


@dataclass
class AutoConfig:
    """How automatic segmentation runs (see the module docstring).

    Args:
        refine: re-prompt each automatic mask with its box and keep the refined mask where the two agree.
        refine_min_iou: IoU between the refined and the automatic mask needed to keep the refined one.
        largest_component: keep only each class's largest 3D connected component.
        min_pixels: an automatic mask with fewer foreground pixels on a slice counts as empty there.
        z_smooth: weight of each neighbouring slice's probability in a slice's own (0: off). The hippocampus
            bundle uses 0.5, chosen on its validation split (``docs/benchmarks/automatic.md``); the library
            default stays off until other data sets are swept.
    """

    refine: bool = False
    refine_min_iou: float = 0.5
    largest_component: bool = False
    min_pixels: int = 1
    z_smooth: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.z_smooth <= 10.0:
            raise ValueError(f"z_smooth must be in [0, 10] (a neighbour's weight), got {self.z_smooth}")
        if not 0.0 <= self.refine_min_iou <= 1.0:
            raise ValueError(f"refine_min_iou must be in [0, 1], got {self.refine_min_iou}")
        if self.min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {self.min_pixels}")


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def segment_automatic(
    inferer: SliceWiseInferer,
    volume: torch.Tensor,
    config: AutoConfig | None = None,
    cache: SliceCache | None = None,
) -> tuple[dict[int, dict[int, SliceResult]], int]:
    """Segment every class of ``inferer.model``'s class prompts on every slice of ``volume``.

    Returns ``(results, slices)``: ``results[value][z]`` for each class's label value (from the class prompts)
    and each slice where its mask is not empty, and the number of slices segmented.

    Raises:
        ValueError: the model has no class prompts (an adapter trained without automatic steps).
    """
    config = config or AutoConfig()
    prompts = class_prompts_of(inferer.model)
    if prompts is None:
        raise ValueError(
            "this model has no class prompts, so it cannot segment without a prompt: use an adapter trained with "
            "automatic steps (auto share > 0), or give a prompt (--label, --prompts, --key-box, --point)"
        )
    values = list(prompts.class_values)
    size = tuple(volume.shape[1:3])
    results: dict[int, dict[int, SliceResult]] = {v: {} for v in values}
    depth = volume.shape[-1]

    def keep(z: int, per_class: list[SliceResult]) -> None:
        for value, res in zip(values, per_class, strict=True):
            if int((res.prob > inferer.threshold).sum()) >= config.min_pixels:
                results[value][z] = res

    def smoothed(cur, before, after) -> None:  # (z, per-class results) of a slice and its two neighbours
        w = config.z_smooth
        per_class = [
            replace(r, prob=smooth_across_slices(r.prob, b.prob, a.prob, w))
            for r, b, a in zip(cur[1], before[1], after[1], strict=True)
        ]
        keep(cur[0], per_class)

    prev = cur = None  # with z_smooth, a slice is kept once its next neighbour is decoded
    for z, emb in inferer.encode(volume, range(depth), cache):
        new = (z, inferer.decode_classes(emb, size))
        if not config.z_smooth:
            keep(*new)
            continue
        if cur is not None:
            smoothed(cur, prev or cur, new)
        prev, cur = cur, new
    if cur is not None and config.z_smooth:
        smoothed(cur, prev or cur, cur)
    if config.refine:
        _refine(inferer, volume, results, config, cache)
    if config.largest_component:
        _largest_component(results, inferer.threshold, tuple(volume.shape[1:]))
    return results, depth


def smooth_across_slices(prob: torch.Tensor, before: torch.Tensor, after: torch.Tensor, weight: float) -> torch.Tensor:
    """``(p + w * before + w * after) / (1 + 2 w)``: a slice's probability averaged with its neighbours'. At a
    volume end the missing neighbour is the slice itself."""
    return (prob + weight * before + weight * after) / (1 + 2 * weight)


def _refine(
    inferer: SliceWiseInferer,
    volume: torch.Tensor,
    results: dict[int, dict[int, SliceResult]],
    config: AutoConfig,
    cache: SliceCache | None,
) -> None:
    boxes = {
        value: {z: Prompt2D(box=mask_box(res.prob > inferer.threshold)) for z, res in per_slice.items()}
        for value, per_slice in results.items()
    }
    refined = inferer.predict(volume, boxes, cache=cache)
    for value, per_slice in refined.items():
        for z, res in per_slice.items():
            auto = results[value][z].prob > inferer.threshold
            if _iou(res.prob > inferer.threshold, auto) >= config.refine_min_iou:
                results[value][z] = res


def _largest_component(
    results: dict[int, dict[int, SliceResult]], threshold: float, shape: tuple[int, int, int]
) -> None:
    from scipy import ndimage

    for per_slice in results.values():
        if not per_slice:
            continue
        mask = np.zeros(shape, dtype=bool)
        for z, res in per_slice.items():
            mask[..., z] = (res.prob > threshold).numpy()
        components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())[1:]
        kept = torch.as_tensor(components == 1 + int(np.argmax(sizes)))
        for z in list(per_slice):
            res = per_slice[z]
            slice_kept = kept[..., z]
            if not slice_kept.any():
                del per_slice[z]
            else:
                res.prob = torch.where(slice_kept, res.prob, torch.zeros_like(res.prob))
