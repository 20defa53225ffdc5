"""Segment one case or a batch of cases: prompts from a label, a prompt file or a key slice; NIfTI out.

A batch never stops at a bad case: each failure is recorded with its reason and the others still run.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..data.readers import is_dicom_folder
from ..metrics import case_metrics
from ..networks import SliceCache
from ..stopwatch import count, mark, stage
from ..utils import check_overwrite
from .automatic import AutoConfig, segment_automatic
from .prompts import (
    PromptSpec,
    VolumePrompts,
    add_points,
    check_label_value,
    load_prompt_file,
    prompts_from_label,
    prompts_from_spec,
    spec_from_boxes,
    spec_from_entries,
)
from .propagation import PropagationConfig, propagate
from .slicewise import SliceResult, SliceWiseInferer
from .volume import (
    IMAGE_SUFFIXES,
    Preprocess,
    SliceGeometry,
    case_name,
    load_volume,
    prepare_volume,
    save_label_map,
    source_name,
)

__all__ = [
    "Case",
    "CaseResult",
    "KeyPrompt",
    "VolumeSegmentation",
    "check_label",
    "find_cases",
    "list_images",
    "report",
    "segment_case",
    "segment_cases",
    "segment_volume",
]


@dataclass
class KeyPrompt:
    """Boxes to propagate for one class, in stored voxel indices (as a viewer shows them).

    ``box``: one box (i0, j0, k0, i1, j1, k1) or a list of them, at most one per slice (several keys of one
    object, e.g. its top, middle and bottom). A flat box (k0 = k1) is drawn on its slice; a thick one (k0 < k1)
    is a 3D box whose slices bound the propagation, which starts on ``key_slice`` (default its middle slice).
    ``points``: [[i, j, k, l], ...] correction points, ``l`` 1 foreground / 0 background (a background point where
    the mask leaks). ``label`` is the class written. With ``bounded``, a box's slices always bound the
    propagation, a flat box's too: it is segmented on its one slice only (a viewer's one-slice ROI).

    No ``box``: the first foreground point starts the object on its slice (a click key: segmented from the
    clicks, then from the tight box of what they found) and the object is propagated from there, open.
    """

    box: Sequence[float] | Sequence[Sequence[float]] | None = None
    label: int = 1
    key_slice: int | None = None
    points: Sequence[Sequence[float]] | None = None
    bounded: bool = False

    def __post_init__(self) -> None:
        check_label_value(self.label, "the key box's class")
        for point in self.points or []:
            if len(point) != 4 or point[3] not in (0, 1):
                raise ValueError(f"a point is i, j, k, label with label 1 (foreground) or 0 (background), got {point}")
        if self.box is None:
            if not any(point[3] == 1 for point in self.points or []):
                raise ValueError("an object needs a key box or a foreground point (label 1) to start from")
            if self.key_slice is not None:
                raise ValueError("key_slice goes with a 3D box; without a box the object starts at its first click")

    def spec(self, geometry: SliceGeometry, where: str) -> PromptSpec:
        """This prompt in the sliced view of ``geometry``."""
        if self.box is None:
            spec = PromptSpec()
            start = next(p for p in self.points if p[3] == 1)
            probe = PromptSpec()  # the view slice of the first foreground click: the object's key slice
            add_points(probe, self.label, [start[:3]], [1], "voxel", np.eye(4), geometry, where)
            spec.key_boxes[self.label] = [(next(iter(probe.points[self.label])), None, None)]
        else:
            spec = spec_from_boxes(
                {self.label: self.box}, geometry, key=True, where=where, key_slice=self.key_slice, bounded=self.bounded
            )
        if self.points:
            pts = np.asarray(self.points, dtype=np.float64)
            add_points(spec, self.label, pts[:, :3], pts[:, 3].astype(int), "voxel", np.eye(4), geometry, where)
        return spec


@dataclass
class Case:
    """One volume to segment and where its prompts come from (exactly one source).

    With ``label`` and ``classes``, label values outside ``classes`` are ignored (not segmented, not scored),
    and a class of ``classes`` absent from the label gets no prompt, so it is absent from the written mask
    (an empty mask for it) and from the scores. Without ``classes`` every non-zero value present is segmented.

    With ``auto`` (an :class:`AutoConfig`) there is no prompt: the model's learned class prompts segment every
    slice, and a ``label``, if given, only scores the result.
    """

    image: str | Path | list[str | Path]
    label: str | Path | None = None  # ground-truth boxes per slice (benchmark protocol); also scores Dice
    prompt_file: str | Path | None = None
    key: KeyPrompt | None = None
    name: str | None = None
    classes: Sequence[int] | None = None  # with ``label``: the label values to segment (default: all present)
    auto: AutoConfig | None = None

    def __post_init__(self) -> None:
        sources = ("prompt_file", "key") if self.auto is not None else ("label", "prompt_file", "key")
        given = [s for s in sources if getattr(self, s) is not None]
        if self.auto is not None and given:
            raise ValueError(f"automatic segmentation takes no prompt; got {given} as well")
        if self.auto is None and len(given) != 1:
            raise ValueError(
                f"give exactly one prompt source (label, prompt file or key slice) or automatic mode, got "
                f"{given or 'none'}"
            )
        for c in self.classes or []:
            check_label_value(c, "classes")
        if self.name is None:
            first = self.image[0] if isinstance(self.image, list) else self.image
            self.name = case_name(first)


@dataclass
class CaseResult:
    name: str
    output: Path | None = None
    error: str | None = None
    metrics: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    slices: int = 0


MAX_LABEL_CLASSES = 1000  # more distinct values than this in a label map: it is an image, not a label map


def _reoriented(label, image):
    """``label`` [1, X, Y, Z] moved onto the image's axis order and directions (permutations and flips only) when
    both lie on the same voxel grid stored in different orientations (a DICOM series and the NIfTI mask a tool
    wrote for it); the label as it is otherwise."""
    lab_affine, img_affine = label.affine.numpy(), image.affine.numpy()
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(lab_affine), nib.orientations.io_orientation(img_affine)
    )
    if (transform == [[0, 1], [1, 1], [2, 1]]).all():
        return label.numpy()[0], lab_affine
    array = nib.orientations.apply_orientation(label.numpy()[0], transform)
    affine = lab_affine @ nib.orientations.inv_ornt_aff(transform, label.shape[1:])
    return array, affine


def check_label(label, image, classes: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """The label map of ``image`` as int64 ``[X, Y, Z]`` in the image's stored orientation (only ``classes`` kept,
    if given) and the classes present, after checking that it fits the image and holds class values.

    ``label`` and ``image`` are loaded volumes (:func:`load_volume`). A label stored in another orientation of the
    same voxel grid is reoriented onto the image; any other difference of grid is refused.

    Raises:
        ValueError: naming both files and the fix, for a label with several channels, another voxel grid,
            NaN / Inf values, negative values or more distinct values than a label map has.
    """
    lab_name, img_name = source_name(label), source_name(image)
    if label.shape[0] != 1:
        raise ValueError(
            f"label {lab_name} has {label.shape[0]} channels (one-hot or several maps?); give one label map "
            "with an integer class value per voxel"
        )
    values, affine = _reoriented(label, image)
    if tuple(values.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"label {lab_name} has shape {tuple(label.shape[1:])} but image {img_name} has "
            f"{tuple(image.shape[1:])}; they must be on the same voxel grid: resample the label onto the image "
            "or pass the label made for this image"
        )
    if not np.allclose(affine, image.affine.numpy(), atol=1e-3):
        raise ValueError(
            f"label {lab_name} and image {img_name} have different affines (orientation / spacing / origin); "
            "resample the label onto the image grid"
        )
    if not np.isfinite(values).all():
        raise ValueError(
            f"label {lab_name} holds NaN / Inf values; re-export it as a label map of integer class values"
        )
    gt = np.rint(values).astype(np.int64)
    if classes is not None:  # other values, negative ones included, are ignored (see Case)
        gt = np.where(np.isin(gt, list(classes)), gt, 0)
    present = np.unique(gt)
    if present[0] < 0:
        raise ValueError(
            f"label {lab_name} holds negative values {present[present < 0][:5].tolist()}; is it an image? Give "
            "a label map, or choose the classes to segment with --classes"
        )
    if len(present) > MAX_LABEL_CLASSES:
        raise ValueError(
            f"label {lab_name} has {len(present)} distinct values; is it an image? Give a label map, or choose "
            "the classes to segment with --classes"
        )
    return gt, [int(c) for c in present if c != 0]


@dataclass
class VolumeSegmentation:
    """What :func:`segment_volume` returns: per-class slice ``results`` and the label map ``sliced_labels``
    ``[H, W, D]`` in the sliced view, the label map ``labels`` ``[X, Y, Z]`` in the stored orientation, and the
    number of slices that were segmented."""

    results: dict[int, dict[int, SliceResult]]
    sliced_labels: np.ndarray
    labels: np.ndarray
    slices: int


def segment_volume(
    inferer: SliceWiseInferer,
    volume: torch.Tensor,
    geometry: SliceGeometry,
    prompts: VolumePrompts | dict[int, dict] | None = None,
    propagation: PropagationConfig | None = None,
    cache: SliceCache | None = None,
    auto: AutoConfig | None = None,
) -> VolumeSegmentation:
    """Segment a prepared volume (:func:`prepare_volume`) from its prompts: the core every entry point shares.

    Per-slice prompts and every class's propagation draw on one :class:`~monai_cbo.networks.SliceCache`
    (``cache``, or a new one when there is something to propagate), so each slice is encoded once per volume
    however many classes and key boxes there are. Overlaps go to the most probable class. ``prompts`` may be a plain
    ``{class: {slice: Prompt2D}}``.

    Without prompts, ``auto`` (default :class:`AutoConfig`) segments every slice with the model's learned class
    prompts (:func:`~monai_cbo.inferers.automatic.segment_automatic`); the label map follows the class prompts'
    label values and their ``exclusive`` flag (nested regions are painted in order).
    """
    if prompts is None:
        if cache is None and auto is not None and auto.refine:
            cache = SliceCache()
        results, slices = segment_automatic(inferer, volume, auto, cache)
        exclusive = inferer.model.class_prompts.exclusive
        with stage("postprocess"):
            sliced = inferer.label_map(results, tuple(volume.shape[1:]), exclusive=exclusive)
            stored = geometry.to_stored(sliced)
        return VolumeSegmentation(results, sliced, stored, slices)
    if auto is not None:
        raise ValueError("give prompts or ask for automatic segmentation (auto), not both")
    if not isinstance(prompts, VolumePrompts):
        prompts = VolumePrompts(slices=dict(prompts))
    if cache is None and prompts.objects:  # per-slice prompts alone stream: nothing to share, nothing kept
        cache = SliceCache()
    results = inferer.predict(volume, prompts.slices, cache=cache)
    class_masks: dict[int, list] = {}  # the learned stop's automatic masks per slice, shared by every object
    for cls, obj in prompts.objects.items():
        results[cls] = {**results.get(cls, {}), **propagate(inferer, volume, obj, propagation, cache, class_masks)}
    with stage("postprocess"):
        sliced = inferer.label_map(results, tuple(volume.shape[1:]))
        stored = geometry.to_stored(sliced)
    return VolumeSegmentation(results, sliced, stored, len({z for per in results.values() for z in per}))


def segment_case(
    inferer: SliceWiseInferer,
    case: Case,
    output: str | Path,
    pre: Preprocess | None = None,
    overwrite: bool = False,
    propagation: PropagationConfig | None = None,
    score: bool = True,
    cache: SliceCache | None = None,
) -> CaseResult:
    """Segment ``case`` and write its label map to ``output`` (NIfTI, input geometry). Raises on bad input
    (ValueError / FileNotFoundError / FileExistsError naming the file and what to do), before writing anything.

    With a label, ``score`` adds Dice / HD95 / NSD per class to the result. ``cache``: the slice embeddings of
    this case's volume as this inferer's model encodes it with ``pre`` (the caller keys it so: the label server
    keeps one per study, so a correction does not encode again); None: a new one as needed."""
    start = time.perf_counter()
    output = check_overwrite(output, overwrite)  # fail before any work
    with stage("read"):
        entries = None if case.prompt_file is None else load_prompt_file(case.prompt_file)  # checked before reading
        image = load_volume(case.image)
        label = None if case.label is None else load_volume(case.label)
    with stage("preprocess"):
        volume, geometry = prepare_volume(image, pre or Preprocess())
        count("slices_in_volume", int(volume.shape[-1]))
        gt = None
        if case.auto is not None:
            prompts = None
            if label is not None:
                gt, present = check_label(label, image, case.classes)
        elif label is not None:
            gt, present = check_label(label, image, case.classes)
            prompts = VolumePrompts(prompts_from_label(geometry.to_sliced(gt), present))
        elif entries is not None:
            where = f"prompt file {case.prompt_file}"
            prompts = prompts_from_spec(spec_from_entries(*entries, image.affine.numpy(), geometry, where))
        else:
            prompts = prompts_from_spec(case.key.spec(geometry, where=f"key box of {case.image}"))
    seg = segment_volume(inferer, volume, geometry, prompts, propagation, cache=cache, auto=case.auto)
    with stage("write"):
        written = save_label_map(seg.labels, image, output, overwrite)
    mark("mask_written")
    metrics = []
    if gt is not None and score:
        spacing = np.linalg.norm(image.affine.numpy()[:3, :3], axis=0)
        classes = {c: str(c) for c in present}
        if case.auto is not None:  # every class the model segments, present in the label or not
            spec = inferer.model.class_prompts
            wanted = set(case.classes) if case.classes is not None else set(spec.class_values)
            named = zip(spec.class_values, spec.class_names, strict=True)
            classes = {v: n for v, n in named if v in wanted}
        with stage("score"):
            metrics = case_metrics(seg.labels, gt, classes, spacing) if classes else []
    return CaseResult(case.name, written, None, metrics, time.perf_counter() - start, seg.slices)


def segment_cases(
    inferer: SliceWiseInferer,
    cases: Sequence[Case],
    out_dir: str | Path,
    pre: Preprocess | None = None,
    overwrite: bool = False,
    suffix: str = "_seg.nii.gz",
    propagation: PropagationConfig | None = None,
    verbose: bool = False,
) -> list[CaseResult]:
    """Segment every case into ``out_dir/<name><suffix>``; a failing case is recorded and skipped."""
    results = []
    for case in cases:
        try:
            res = segment_case(inferer, case, Path(out_dir) / f"{case.name}{suffix}", pre, overwrite, propagation)
        except (ValueError, FileNotFoundError, FileExistsError, OSError) as err:
            res = CaseResult(case.name, error=f"{type(err).__name__}: {err}")
        except Exception as err:  # an unexpected failure in one case must not stop the others
            res = CaseResult(case.name, error=f"unexpected {type(err).__name__}: {err}\n{traceback.format_exc()}")
        results.append(res)
        if verbose:
            status = f"failed: {res.error.splitlines()[0]}" if res.error else f"-> {res.output} ({res.seconds:.1f} s)"
            print(f"[{len(results)}/{len(cases)}] {case.name}: {status}", flush=True)
    return results


def list_images(folder: str | Path) -> list[Path]:
    """The volumes of a folder, sorted: image files (:data:`IMAGE_SUFFIXES`, not hidden) and DICOM series folders.

    Raises:
        ValueError: it holds none (the message names the folder and what counts).
    """
    folder = Path(folder)
    images = sorted(
        p
        for p in folder.iterdir()
        if (p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith("."))
        or (p.is_dir() and is_dicom_folder(p))
    )
    if not images:
        raise ValueError(
            f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)} files or DICOM series folders); point at "
            "an image file or a folder holding them"
        )
    return images


def find_cases(
    source: str | Path,
    label: str | Path | None = None,
    prompts: str | Path | None = None,
    key: KeyPrompt | None = None,
    classes: Sequence[int] | None = None,
    auto: AutoConfig | None = None,
) -> list[Case]:
    """Cases of an image file, a DICOM series folder, or a folder of them, with their prompt source (or ``auto``:
    none, the model's class prompts; a ``label`` then only scores).

    For a folder of cases, ``label`` / ``prompts`` are folders holding, per case, a file with the image's
    name or ``<case>.nii.gz`` / ``<case>.json``; a case whose companion is missing fails on its own later.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(
            f"{source} does not exist; check the path (an image file, a DICOM series folder or a folder of them)"
        )
    images = list_images(source) if source.is_dir() and not is_dicom_folder(source) else [source]

    def companion(option: str | Path | None, image: Path, suffixes: tuple[str, ...]) -> Path | None:
        if option is None:
            return None
        path = Path(option)
        if len(images) == 1 and not path.is_dir():
            return path
        if not path.is_dir():
            raise ValueError(f"{source} is a folder of cases, so {path} must be a folder with one file per case")
        for suffix in suffixes:
            for candidate in (path / image.name, path / f"{case_name(image)}{suffix}"):
                if candidate.exists():
                    return candidate
        return path / f"{case_name(image)}{suffixes[0]}"

    return [
        Case(
            image=image,
            label=companion(label, image, IMAGE_SUFFIXES),
            prompt_file=companion(prompts, image, (".json",)),
            key=key,
            classes=classes,
            auto=auto,
        )
        for image in images
    ]


def report(results: Sequence[CaseResult], out_dir: str | Path | None = None, raise_on_failure: bool = False) -> int:
    """Print what was segmented, the scores where a label was given, and every failure with its reason.

    Returns 1 if any case failed (0 otherwise); with ``raise_on_failure`` raises RuntimeError instead, so a
    bundle run ends with a non-zero status.
    """
    failed = [r for r in results if r.error]
    where = f"; masks in {out_dir}" if out_dir is not None else ""
    print(f"\n{len(results) - len(failed)} of {len(results)} case(s) segmented{where}")
    rows = [(r.name, m) for r in results for m in r.metrics]
    if rows:
        print("Dice per case and class against the label:")
        for name, m in rows:
            print(f"  {name}  class {m['class']}: Dice {m['dice']:.3f}  HD95 {m['hd95']:.1f} mm  NSD {m['nsd']:.3f}")
    for r in failed:
        print(f"FAILED {r.name}: {r.error}", file=sys.stderr)
    if failed and raise_on_failure:
        raise RuntimeError(f"{len(failed)} of {len(results)} case(s) failed: {', '.join(r.name for r in failed)}")
    return 1 if failed else 0
