"""Slice-wise prompted inference over a volume with a 2D SAM-family model.

Axis convention: the volume is ``[3, H, W, D]`` (channels first, intensities in [0, 1]) with the slicing axis
last; slice ``z`` is the 2D array ``volume[:, :, :, z]`` of H rows and W columns. 2D prompts use SAM's order
in that slice: a box is XYXY = (col_min, row_min, col_max, row_max), a point is (col, row).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..networks import SamSegmenter, SliceCache, cached_front, class_prompts_of, frozen_prefix
from ..precision import Precision, resolve_precision
from ..stopwatch import count, stage
from ..transforms.resize import ResizeLongestSidePad, restore_slice, scale_coords

__all__ = ["Prompt2D", "SliceResult", "SliceWiseInferer", "mask_box"]


@dataclass
class Prompt2D:
    """Prompt for one class on one slice, in slice pixels (SAM order: x = column, y = row).

    ``box``: XYXY; ``points``: [N, 2] (x, y) with ``point_labels`` [N] (1 foreground, 0 background);
    ``mask_logits``: [L, L] low-resolution logits in model-input space (propagation feeds these back);
    ``walk``: the box is a propagation walk's (its neighbour's mask box, grown), not one the user drew: a model with
    a walk prompt (:class:`~monai_cbo.networks.WalkPrompt`) reads it so; any other ignores it.
    """

    box: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    mask_logits: torch.Tensor | None = None
    walk: bool = False

    def __post_init__(self) -> None:
        if self.box is None and self.points is None and self.mask_logits is None:
            raise ValueError("a prompt needs a box, points or a mask")
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
            if self.box[2] < self.box[0] or self.box[3] < self.box[1]:
                raise ValueError(f"box {self.box.tolist()} is inverted; give (x_min, y_min, x_max, y_max)")
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
            labels = np.ones(len(self.points)) if self.point_labels is None else self.point_labels
            self.point_labels = np.asarray(labels, dtype=np.int64).reshape(-1)
            if len(self.point_labels) != len(self.points):
                raise ValueError(f"{len(self.points)} points but {len(self.point_labels)} point labels")


@dataclass
class SliceResult:
    """Model output for one prompt on one slice: ``prob`` [H, W] in [0, 1], SAM's ``iou`` estimate, and the
    ``low_res`` [L, L] logits (a mask prompt for the next slice)."""

    prob: torch.Tensor
    iou: float
    low_res: torch.Tensor


def mask_box(mask: np.ndarray | torch.Tensor) -> np.ndarray | None:
    """Tight XYXY box (x = column, inclusive max) of a 2D mask, or None if it is empty."""
    m = torch.as_tensor(mask).bool()
    rows, cols = torch.nonzero(m.any(dim=1)).flatten(), torch.nonzero(m.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


class SliceWiseInferer:
    """Run a :class:`~monai_cbo.networks.SamSegmenter` over the prompted slices of a volume.

    Slices are encoded in batches of ``batch_size`` (each encoded slice serves every prompt on it; slices
    without prompts are never encoded) under ``torch.inference_mode`` and the autocast of ``precision``.

    Args:
        model: the segmenter (PEFT-adapted or not).
        batch_size: slices per encoder pass. Default: 1 on the CPU (larger batches were slower per slice
            on a 2-core machine), 8 on CUDA.
        device: where the model runs; default the model's device.
        amp: False: fp32 everywhere, whatever ``precision`` says (the bundles' switch). Default True.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``, or a resolved
            :class:`~monai_cbo.precision.Precision`: what the encoder and the decoder compute in (see
            :mod:`monai_cbo.precision`; ``auto``: fp16 autocast on CUDA, fp32 on the CPU). Default ``auto``.
        threshold: probability above which a pixel is foreground. Default 0.5.
        front_cache: the frozen front of the encoder (:func:`~monai_cbo.networks.frozen_prefix`, decided here)
            of every slice encoded with a named per-volume cache (see :meth:`encode`), shared with the other
            models of the same base weights (the bench's presets and seeds, whose embeddings differ). Default
            None: encode from the image.
        decode_memo: decoded results by embedding content and prompts, for a caller that decodes the same
            prompts on the same slices again (the prompts bench's sweep); the caller clears it. Default None.
        encoder: computes the embeddings instead of ``model.encode`` (model input images ``[N, 3, S, S]`` ->
            ``[N, C, h, w]``), e.g. :func:`~monai_cbo.networks.runtime.openvino_encoder` of the same model; it
            runs in its own number format (``precision`` then applies to the decoder). Default None.
    """

    def __init__(
        self,
        model: SamSegmenter,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        amp: bool = True,
        precision: str | Precision = "auto",
        threshold: float = 0.5,
        front_cache: SliceCache | None = None,
        decode_memo: SliceCache | None = None,
        encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if batch_size is None:
            batch_size = 8 if self.device.type == "cuda" else 1
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        if not amp:
            precision = "fp32"
        if isinstance(precision, str):
            precision = resolve_precision(precision, self.device)
        self.precision = precision
        self.threshold = threshold
        self.resize = ResizeLongestSidePad(model.img_size)
        self.front_cache, self.decode_memo = front_cache, decode_memo
        #: prompt decodes computed (one per slice and call; a decode memo's hits do not count): what a correction
        #: round re-decodes (the interactive protocol's ``slices_decoded``)
        self.decoded = 0
        self.front_depth = frozen_prefix(model.image_encoder) if front_cache is not None else 0
        if encoder is not None and front_cache is not None:
            raise ValueError("an encoder runtime replaces the whole encoder: it cannot keep a front_cache")
        self.encoder = encoder

    def _autocast(self, part: str = "decoder") -> contextlib.AbstractContextManager:
        """The autocast of ``precision`` for the ``encoder`` or the ``decoder``."""
        if part == "encoder":
            return self.precision.encoder_autocast()
        return self.precision.decoder_autocast()

    def _model_input(self, volume: torch.Tensor, z: int) -> torch.Tensor:
        return self.resize(volume[..., z].float())

    def encode(
        self, volume: torch.Tensor, slices: Iterable[int], cache: SliceCache | dict | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(z, embedding [1, C, h, w])`` for ``slices`` in the order given, encoding ``batch_size`` at a time.

        ``cache`` (a :class:`~monai_cbo.networks.SliceCache` or a dict, one per volume, owned by the caller) keeps
        embeddings so that several calls on the same volume (every class, every prompt source) encode each slice
        once. Without it each embedding is handed out once and forgotten. With the inferer's ``front_cache`` and a
        ``SliceCache`` named after its volume, each encoded slice's frozen front is kept under ``(name, z)``.
        """
        name = getattr(cache, "name", None)  # a dict has none
        front = self.front_depth > 0 and name is not None
        order = list(slices)
        todo = [z for z in dict.fromkeys(order) if cache is None or z not in cache]
        held: dict[int, torch.Tensor] = {}  # encoded in this call and not yet handed out
        next_todo = 0
        for z in order:
            emb = held.pop(z, None)
            if emb is None and cache is not None:
                emb = cache.get(z)
            if emb is None:
                if next_todo < len(todo) and todo[next_todo] == z:
                    chunk = todo[next_todo : next_todo + self.batch_size]
                    next_todo += len(chunk)
                else:  # asked for twice without a cache, or dropped from a bounded cache: encode it again
                    chunk = [z]
                with stage("preprocess"):  # the model's input: each slice resized and padded
                    batch = torch.stack([self._model_input(volume, t) for t in chunk]).to(self.device)
                count("slices_encoded", len(chunk))
                with stage("encoder"), torch.inference_mode(), self._autocast("encoder"):
                    if front:
                        keys = [(name, t) for t in chunk]
                        features = cached_front(self.model, batch, keys, self.front_cache, self.front_depth)
                        out = self.model.encode_stages(features, self.front_depth)
                    elif self.encoder is not None:
                        out = self.encoder(batch).to(self.device)
                    else:
                        out = self.model.encode(batch)
                if self.precision.decoder is None:  # a reduced-precision embedding for an fp32 decoder
                    out = out.float()
                for i, t in enumerate(chunk):
                    held[t] = out[i : i + 1]
                    if cache is not None:
                        cache[t] = held[t]
                emb = held.pop(z)
            yield z, emb

    def decode(self, embedding: torch.Tensor, prompts: list[Prompt2D], size: tuple[int, int]) -> list[SliceResult]:
        """Decode each prompt on one slice of ``size`` (H, W) from its embedding (one decoder call per kind).

        With a ``decode_memo``, a call with the same embedding (by content), prompts and size as an earlier one
        returns that call's results (the same objects: do not change them)."""
        return self._remembered(None, embedding, prompts, size, lambda: self._decode(embedding, prompts, size))

    def _remembered(
        self,
        kind: str | None,
        embedding: torch.Tensor,
        prompts: list[Prompt2D],
        size: tuple[int, int],
        compute: Callable[[], list[SliceResult]],
    ) -> list[SliceResult]:
        """``compute()``, or with a ``decode_memo`` the results it gave for the same ``kind`` of decode, embedding
        (by content), prompts and size."""
        if self.decode_memo is None:
            return compute()
        key = (kind, *_decode_key(embedding, prompts, size))
        results = self.decode_memo.get(key)
        if results is None:
            results = compute()
            self.decode_memo[key] = results
        return list(results)

    def _decode(self, embedding: torch.Tensor, prompts: list[Prompt2D], size: tuple[int, int]) -> list[SliceResult]:
        s = self.model.img_size
        self.decoded += 1
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            kind = (p.box is not None, None if p.points is None else len(p.points), p.mask_logits is not None)
            groups.setdefault(kind, []).append(i)
        results: list[SliceResult | None] = [None] * len(prompts)
        for (box, points, mask), index in groups.items():
            group = [prompts[i] for i in index]
            parts = [part for part, given in (("box", box), ("points", points is not None), ("mask", mask)) if given]
            with stage("decoder." + "+".join(parts)):  # one decoder call per kind of prompt
                kw: dict = {}
                if group[0].box is not None:
                    boxes = np.stack([p.box for p in group])
                    kw["boxes"] = torch.as_tensor(scale_coords(boxes, size, s))[None].to(self.device)
                    if any(p.walk for p in group):
                        kw["walk"] = torch.tensor([[p.walk for p in group]], device=self.device)
                if group[0].points is not None:
                    pts = np.stack([p.points for p in group])
                    kw["points"] = torch.as_tensor(scale_coords(pts, size, s))[None].to(self.device)
                    labels = np.stack([p.point_labels for p in group])
                    kw["point_labels"] = torch.as_tensor(labels)[None].to(self.device)
                if group[0].mask_logits is not None:
                    kw["mask_inputs"] = torch.stack([p.mask_logits for p in group])[:, None][None].to(self.device)
                with torch.inference_mode(), self._autocast():
                    out = self.model.decode(embedding, output_size=self.model.low_res_size, **kw)
                low = out.masks[0, :, 0].float()
                prob = restore_slice(torch.sigmoid(low), size)
                for j, i in enumerate(index):
                    results[i] = SliceResult(prob[j].cpu(), float(out.iou[0, j, 0]), low[j].cpu())
        return results

    def decode_classes(self, embedding: torch.Tensor, size: tuple[int, int]) -> list[SliceResult]:
        """Decode every learned class prompt of the model on one slice of ``size`` (H, W): one decoder call,
        one result per class in the class prompts' order (see :mod:`~monai_cbo.inferers.automatic`). With a
        ``decode_memo``, remembered as :meth:`decode` is (a correction round's learned stop asks again)."""
        return self._remembered("classes", embedding, [], size, lambda: self._decode_classes(embedding, size))

    def _decode_classes(self, embedding: torch.Tensor, size: tuple[int, int]) -> list[SliceResult]:
        prompts = class_prompts_of(self.model)
        n = 0 if prompts is None else len(prompts)
        classes = torch.arange(n, device=self.device)[None]
        with stage("decoder.classes"):
            with torch.inference_mode(), self._autocast():
                out = self.model.decode(embedding, output_size=self.model.low_res_size, classes=classes)
            low = out.masks[0, :, 0].float()
            prob = restore_slice(torch.sigmoid(low), size)
            return [SliceResult(prob[j].cpu(), float(out.iou[0, j, 0]), low[j].cpu()) for j in range(n)]

    def predict(
        self,
        volume: torch.Tensor,
        prompts: Mapping[int, Mapping[int, Prompt2D]],
        cache: SliceCache | dict | None = None,
    ) -> dict[int, dict[int, SliceResult]]:
        """Segment the prompted slices. ``prompts[class_id][z]`` -> ``results[class_id][z]``."""
        size = tuple(volume.shape[1:3])
        by_slice: dict[int, list[tuple[int, Prompt2D]]] = {}
        for cls, per_slice in prompts.items():
            for z, prompt in per_slice.items():
                if not 0 <= z < volume.shape[-1]:
                    raise ValueError(f"class {cls}: slice {z} outside the volume's 0..{volume.shape[-1] - 1}")
                by_slice.setdefault(int(z), []).append((cls, prompt))
        results: dict[int, dict[int, SliceResult]] = {cls: {} for cls in prompts}
        for z, emb in self.encode(volume, sorted(by_slice), cache):
            items = by_slice[z]
            for (cls, _), res in zip(items, self.decode(emb, [p for _, p in items], size), strict=True):
                results[cls][z] = res
        return results

    def label_map(
        self, results: Mapping[int, Mapping[int, SliceResult]], shape: tuple[int, int, int], exclusive: bool = True
    ) -> np.ndarray:
        """Combine per-class results into one label map [H, W, D]. ``exclusive`` (default): overlaps go to the most
        probable class; otherwise (nested regions) each class is painted over the ones before it, in the order of
        ``results``."""
        top = max(results, default=0)
        labels = np.zeros(shape, dtype=np.uint8 if top < 2**8 else np.int16 if top < 2**15 else np.int32)
        best = np.zeros(shape, dtype=np.float32)
        for cls, per_slice in results.items():
            for z, res in per_slice.items():
                prob = res.prob.numpy()
                win = prob > self.threshold
                if exclusive:
                    win &= prob > best[..., z]
                    best[..., z][win] = prob[win]
                labels[..., z][win] = cls
        return labels


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().contiguous().view(torch.uint8).cpu().numpy().data).hexdigest()


def _decode_key(embedding: torch.Tensor, prompts: list[Prompt2D], size: tuple[int, int]) -> Hashable:
    """What :meth:`SliceWiseInferer.decode` computes from: the embedding and the mask prompts by content (SHA-1:
    a different tensor of the same values gives the same key, and a key never passes to other values)."""
    parts: list = [tuple(embedding.shape), str(embedding.dtype), _digest(embedding), tuple(size)]
    for p in prompts:
        parts += [None if v is None else (v.shape, v.tobytes()) for v in (p.box, p.points, p.point_labels)]
        parts.append(None if p.mask_logits is None else (tuple(p.mask_logits.shape), _digest(p.mask_logits)))
        parts.append(p.walk)
    return tuple(parts)
