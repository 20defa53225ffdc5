"""The trainable prompt-driven segmenter: image batch + prompts in, mask logits per prompt out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CPU_CHANNELS_LAST",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "TRAINED_INTERACTION",
    "SamSegmenter",
    "SegmenterOutput",
    "trained_with_clicks",
]

# segment-anything's ImageNet statistics, for images on a 0..255 scale.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

Prompt = torch.Tensor | Sequence[torch.Tensor] | None

#: the image encoder's convolutions channels-last on the CPU (:meth:`SamSegmenter._encoder_memory_format`);
#: False keeps every device's weights and images contiguous (read when a model is built or moved, and per encode)
CPU_CHANNELS_LAST = True

#: the attribute of a segmenter that says how it learned to read correction clicks (the trainer's
#: ``Interaction`` as a dict): set by the trainer for an interactive run, written into the adapter file by
#: ``peft.save_adapter`` and set again by ``peft.load_adapter``; absent or None: never trained with a click
TRAINED_INTERACTION = "trained_interaction"


def trained_with_clicks(model: nn.Module) -> bool:
    """Whether ``model`` was trained with simulated correction clicks: it holds a record (only an interactive run,
    ``training.record_interaction``, or an adapter file with one, ``peft.adapter_interaction``, leaves it)."""
    return getattr(model, TRAINED_INTERACTION, None) is not None


class SegmenterOutput(NamedTuple):
    """``masks``: logits [B, P, M, H, W] (M = 1, or 3 with ``multimask_output``), at the model input size
    unless ``output_size`` says otherwise; ``iou``: SAM's IoU prediction [B, P, M]. With prompts given as
    lists (a different number per image), both are lists of [P_b, ...] tensors."""

    masks: torch.Tensor | list[torch.Tensor]
    iou: torch.Tensor | list[torch.Tensor]


def _per_image(prompt: Prompt, batch: int, what: str) -> list[torch.Tensor | None]:
    if prompt is None:
        return [None] * batch
    if len(prompt) != batch:
        raise ValueError(f"{what} has {len(prompt)} entries for a batch of {batch} images")
    return list(prompt)


class SamSegmenter(nn.Module):
    """SAM's image encoder, prompt encoder and mask decoder as one trainable module.

    Unlike ``segment_anything.Sam.forward`` there is no ``no_grad`` anywhere, so gradients reach the
    encoder's PEFT modules. The image embedding is computed once per image, however many prompts it has.

    Conventions: images are [B, 3, S, S] with S = ``img_size`` (1024 for SAM ViT, 256 for LiteMedSAM),
    intensities in [0, 1]. Prompts are in input-pixel coordinates with SAM's order: boxes XYXY =
    (x_min, y_min, x_max, y_max), points (x, y) = (column, row), labels 1 foreground / 0 background.

    Args:
        image_encoder, prompt_encoder, mask_decoder: SAM-family modules.
        img_size: the square input size S the encoder expects.
        model_name: registry name, recorded in adapter checkpoints.
        pixel_mean, pixel_std: if given, images are scaled to 0..255 and normalised with these (SAM
            ViT weights); otherwise the [0, 1] image goes in as is (LiteMedSAM, MedSAM).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        img_size: int,
        model_name: str,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if (pixel_mean is None) != (pixel_std is None):
            raise ValueError("give both pixel_mean and pixel_std, or neither")
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.img_size = int(img_size)
        self.model_name = model_name
        self.peft_config = None
        self.class_prompts = None  # ClassPrompts: see monai_cbo.networks.add_class_prompts
        self.walk_prompt = None  # WalkPrompt: see monai_cbo.networks.add_walk_prompt
        self.normalize = pixel_mean is not None
        if self.normalize:
            self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1) / 255.0, False)
            self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1) / 255.0, False)
        self._encoder_memory_format()

    def _apply(self, fn, recurse=True):
        """After ``.to()``, ``.cpu()``, ``.cuda()``: the encoder's convolutions in the memory format of its device
        (:meth:`_encoder_memory_format`)."""
        super()._apply(fn, recurse)
        self._encoder_memory_format()
        return self

    def _encoder_memory_format(self) -> None:
        """The image encoder's convolution weights channels-last on the CPU, contiguous elsewhere.

        With the images channels-last too (:meth:`encode`), oneDNN runs the convolutions channels-last and keeps
        the activations in that format, where bf16 autocast otherwise spends much of the encoder's time copying
        the first stage's large activations (256 channels at 256x256 in LiteMedSAM). On a 2-core Xeon with AMX
        that made the bf16 encoder 1.5-1.7x and a bf16 training step 1.5x faster, fp32 1.0-1.1x, with the same
        fp32 embedding to ~3e-6 (docs/benchmarks/cpu_speed.md). GPUs keep the format they were measured with."""
        weights = [p for p in self.image_encoder.parameters() if p.ndim == 4]
        if not weights:
            return
        cpu = weights[0].device.type == "cpu" and CPU_CHANNELS_LAST
        fmt = torch.channels_last if cpu else torch.contiguous_format
        if not all(w.is_contiguous(memory_format=fmt) for w in weights):  # a 1x1 weight can be in both
            self.image_encoder.to(memory_format=fmt)

    def train(self, mode: bool = True) -> SamSegmenter:
        """Set training mode, except that frozen layers whose output training mode would change stay in
        evaluation mode: batch norms without trainable parameters (TinyViT's), and dropout inside a module with no
        trainable parameter.

        A PEFT preset freezes the pretrained encoder; letting its batch norms use batch statistics (and drift
        their running statistics, which an adapter checkpoint does not save) would train the adapter on
        features that evaluation never sees. Batch norms with trainable parameters (``full``) train normally.
        Dropout regularises the module it sits in while that module trains (an adapter's); once the module is
        frozen (the bench's decoder stage freezes the whole encoder) it would only add noise, and would keep
        the module's output from being cached (:func:`~monai_cbo.networks.frozen_prefix`).
        """
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters(recurse=False)
                ):
                    module.eval()
                dropouts = [c for c in module.children() if isinstance(c, nn.Dropout)]
                if dropouts and not any(p.requires_grad for p in module.parameters()):
                    for dropout in dropouts:
                        dropout.eval()
        return self

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution masks (and of mask prompts): 4 x the embedding grid."""
        return 4 * self.prompt_encoder.image_embedding_size[0]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, C, h, w] of images [B, 3, S, S] in [0, 1]."""
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"model {self.model_name!r} takes images of shape [B, 3, {self.img_size}, {self.img_size}], got "
                f"{list(image.shape)}; resize the longest side to {self.img_size} and pad (see "
                "monai_cbo.transforms)"
            )
        if self.normalize:
            image = (image - self.pixel_mean) / self.pixel_std
        image = _in_encoder_format(image)
        return self.image_encoder(image).contiguous()  # channels-last on the CPU: the decoder's layout as before

    def encode_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run encoder stages ``start:stop`` (see :func:`~monai_cbo.networks.encoder_stages`): from images when
        ``start`` is 0 (checked and normalised as in :meth:`encode`), else from the features stage ``start``
        takes. ``encode_stages(encode_stages(x, 0, k), k)`` equals ``encode(x)``."""
        from .stages import run_stages

        if start == 0:
            if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (self.img_size, self.img_size):
                return self.encode(x)  # raises the shape error
            if self.normalize:
                x = (x - self.pixel_mean) / self.pixel_std
            x = _in_encoder_format(x)
        out = run_stages(self.image_encoder, x, start, stop)
        return out.contiguous() if stop is None else out

    def decode(
        self,
        embeddings: torch.Tensor,
        boxes: Prompt = None,
        points: Prompt = None,
        point_labels: Prompt = None,
        mask_inputs: Prompt = None,
        multimask_output: bool = False,
        output_size: int | tuple[int, int] | None = None,
        classes: Prompt = None,
        walk: Prompt = None,
    ) -> SegmenterOutput:
        """Decode masks for each image's prompts from precomputed ``embeddings`` [B, C, h, w].

        Prompts per image b: ``boxes[b]`` [P, 4]; ``points[b]`` [P, N, 2] with ``point_labels[b]`` [P, N];
        ``mask_inputs[b]`` [P, 1, L, L] low-resolution mask logits (L = :attr:`low_res_size`). Give them as
        batched tensors (same P for every image) or as lists. Every given prompt type must have the same P
        for an image; boxes and points combine into one prompt.

        ``classes[b]`` [P] (long, indices into :attr:`class_prompts`) asks for those classes' masks with no other
        prompt: the automatic mode. It cannot be combined with boxes, points or masks.

        ``walk[b]`` [P] (bool) flags the boxes a propagation walk drew (the neighbouring slice's mask box, grown):
        a model with a :class:`~monai_cbo.networks.WalkPrompt` adds its offset to those boxes' tokens; any other
        model, and prompts without a box, ignore it.
        """
        if classes is not None:
            if boxes is not None or points is not None or mask_inputs is not None:
                raise ValueError("classes (automatic mode) cannot be combined with boxes, points or mask_inputs")
            as_list = isinstance(classes, (list, tuple))
            prompts = self._class_prompt_embeddings(embeddings, classes)
        else:
            as_list = any(isinstance(p, (list, tuple)) for p in (boxes, points, point_labels, mask_inputs))
            prompts = self._prompt_embeddings(embeddings, boxes, points, point_labels, mask_inputs, walk)
        size = self.img_size if output_size is None else output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        dense_pe = self.prompt_encoder.get_dense_pe()
        n_out = 3 if multimask_output else 1
        masks, ious = [], []
        for b, pair in enumerate(prompts):
            if pair is None:  # no prompt on this image
                masks.append(embeddings.new_zeros(0, n_out, *size))
                ious.append(embeddings.new_zeros(0, n_out))
                continue
            low_res, iou = self.mask_decoder(
                image_embeddings=embeddings[b : b + 1],
                image_pe=dense_pe,
                sparse_prompt_embeddings=pair[0],
                dense_prompt_embeddings=pair[1],
                multimask_output=multimask_output,
            )
            if tuple(low_res.shape[-2:]) != size:
                low_res = F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
            masks.append(low_res)
            ious.append(iou)
        if as_list:
            return SegmenterOutput(masks, ious)
        return SegmenterOutput(torch.stack(masks), torch.stack(ious))

    def _prompt_embeddings(
        self,
        embeddings: torch.Tensor,
        boxes: Prompt,
        points: Prompt,
        point_labels: Prompt,
        mask_inputs: Prompt,
        walk: Prompt = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per image, the prompt encoder's (sparse, dense) embeddings of its boxes / points / masks (None: none)."""
        if boxes is None and points is None and mask_inputs is None:
            raise ValueError("give at least one prompt: boxes, points (with point_labels), mask_inputs or classes")
        if (points is None) != (point_labels is None):
            raise ValueError("points and point_labels go together")
        batch = embeddings.shape[0]
        per = [
            _per_image(p, batch, n)
            for p, n in (
                (boxes, "boxes"),
                (points, "points"),
                (point_labels, "point_labels"),
                (mask_inputs, "mask_inputs"),
            )
        ]
        walks = _per_image(walk if boxes is not None and self.walk_prompt is not None else None, batch, "walk")
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for b, (box, pts, lab, msk) in enumerate(zip(*per, strict=True)):
            counts = {t.shape[0] for t in (box, pts, lab, msk) if t is not None}
            if len(counts) != 1:
                raise ValueError(f"image {b}: prompt types disagree on the number of prompts ({sorted(counts)})")
            if next(iter(counts)) == 0:
                out.append(None)
                continue
            if box is not None:
                if box.ndim != 2 or box.shape[-1] != 4:
                    raise ValueError(f"image {b}: boxes must be [P, 4] XYXY, got {list(box.shape)}")
                box = box.to(embeddings.device, torch.float32)
            point_pair = None
            if pts is not None:
                point_pair = (pts.to(embeddings.device, torch.float32), lab.to(embeddings.device))
            if msk is not None:
                msk = msk.to(embeddings.device, embeddings.dtype)
            sparse, dense = self.prompt_encoder(points=point_pair, boxes=box, masks=msk)
            if walks[b] is not None and box is not None:
                if walks[b].shape != (box.shape[0],):
                    raise ValueError(
                        f"image {b}: walk must flag each of its {box.shape[0]} boxes, got {list(walks[b].shape)}"
                    )
                sparse = self.walk_prompt.add_to(sparse, walks[b])
            out.append((sparse, dense))
        return out

    def _class_prompt_embeddings(
        self, embeddings: torch.Tensor, classes: Prompt
    ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per image, the learned class prompts of ``classes`` (:mod:`~monai_cbo.networks.class_prompts`) with the
        prompt encoder's "no mask" dense embedding (None: no class asked)."""
        if self.class_prompts is None:
            raise ValueError(
                f"model {self.model_name!r} has no class prompts, so it cannot segment without a prompt: load an "
                "adapter trained with automatic steps (auto share > 0), or give boxes / points"
            )
        h, w = embeddings.shape[-2:]
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for index in _per_image(classes, embeddings.shape[0], "classes"):
            sparse = self.class_prompts(index)
            out.append((sparse, no_mask.expand(sparse.shape[0], -1, h, w)) if sparse.shape[0] else None)
        return out

    def forward(
        self,
        image: torch.Tensor,
        boxes: Prompt = None,
        points: Prompt = None,
        point_labels: Prompt = None,
        mask_inputs: Prompt = None,
        multimask_output: bool = False,
        output_size: int | tuple[int, int] | None = None,
        classes: Prompt = None,
        walk: Prompt = None,
    ) -> SegmenterOutput:
        """Encode ``image`` [B, 3, S, S] once and decode every prompt; see :meth:`decode`."""
        return self.decode(
            self.encode(image), boxes, points, point_labels, mask_inputs, multimask_output, output_size, classes, walk
        )


def _in_encoder_format(images: torch.Tensor) -> torch.Tensor:
    """Images for the encoder: channels-last on the CPU (:meth:`SamSegmenter._encoder_memory_format`; oneDNN keeps
    a convolution's input format, so the weights' format alone does not carry), as they are elsewhere."""
    if CPU_CHANNELS_LAST and images.device.type == "cpu" and images.ndim == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images
