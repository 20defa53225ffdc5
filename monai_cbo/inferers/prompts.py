"""Prompt sources for slice-wise inference, all per class.

Volumes here are ``[H, W, D]`` with the slicing axis last (see :mod:`monai_cbo.inferers.slicewise`).

* :func:`prompts_from_label`: a box per slice from a label map (the benchmark protocol).
* :func:`correction_click`: the click a simulated user gives where a 3D mask is most wrong (the interactive
  protocol).
* :func:`read_prompt_file` + :func:`prompts_from_spec`: a JSON file of per-class 3D boxes, key-slice boxes
  and points, in voxel indices or world millimetres (RAS).

Prompt file format (``coordinates`` is ``"voxel"`` (default) or ``"world"``; voxel triples index the
image array's axes (i, j, k) as stored, i.e. as a viewer shows them; world triples are RAS mm)::

    {"coordinates": "voxel",
     "prompts": [
        {"label": 1, "box3d": [i0, j0, k0, i1, j1, k1]},          # a box on every slice it spans
        {"label": 2, "key_box": [i0, j0, k0, i1, j1, k1]},        # a box on one slice (k0 = k1), propagated
        {"label": 2, "key_box": [[...], [...]]},                  # several key boxes of one class (top, bottom)
        {"label": 4, "key_box": [i0, j0, k0, i1, j1, k1], "key_slice": k},  # k0 < k1: a 3D box; its slices bound
                                                                  # the propagation, which starts on key_slice
                                                                  # (default: the middle slice)
        {"label": 3, "points": [[i, j, k], ...], "point_labels": [1, 0, ...]}
     ]}

Entries of one label add up: several ``key_box`` entries are several keys of one object (one per slice); the
points of a label that has key boxes correct its propagation (a background point where it leaks) and prompt
the slices near theirs (:class:`~monai_cbo.inferers.propagation.PropagationConfig`.point_reach); the points of
a label without key boxes prompt their own slices. ``point_labels`` is required: 1 foreground, 0 background.

A file is checked whole before any image is read (:func:`load_prompt_file`): every number finite, labels
1 .. :data:`MAX_LABEL`, at most :data:`MAX_ENTRIES` entries, :data:`MAX_KEY_BOXES` key boxes and
:data:`MAX_POINTS` points in all; a file past a limit is refused with the count and the limit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import torch

from .propagation import KeyBox, ObjectPrompt
from .slicewise import Prompt2D, mask_box
from .volume import SliceGeometry

__all__ = [
    "Click",
    "MAX_ENTRIES",
    "MAX_KEY_BOXES",
    "MAX_LABEL",
    "MAX_POINTS",
    "PromptSpec",
    "VolumePrompts",
    "check_label_value",
    "correction_click",
    "largest_error",
    "load_prompt_file",
    "prompts_from_label",
    "prompts_from_mask",
    "prompts_from_spec",
    "read_prompt_file",
    "spec_from_boxes",
    "spec_from_entries",
]


@dataclass(frozen=True)
class Click:
    """A simulated user's correction: on slice ``slice`` at pixel ``point`` (x, y), foreground (``label`` 1,
    where the mask misses) or background (0, where it leaks); ``region``: voxels of the error region it fixes."""

    slice: int
    point: tuple[int, int]
    label: int
    region: int


def correction_click(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> Click | None:
    """The next click of the interactive challenge protocol for ``pred`` against ``truth`` (``[H, W, D]``, sliced
    view): in the largest 3D connected region of error (missed foreground or leaked background, 26-connected),
    the voxel farthest from the region's border (the volume's edge counts as border; distances in ``spacing``,
    default voxels; of several, the one nearest the region's centroid); foreground on a miss, background on a
    leak. None when ``pred`` equals ``truth``."""
    from scipy import ndimage

    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"correction_click: prediction {pred.shape} and truth {truth.shape} differ in shape")
    found = largest_error(pred, truth)
    if found is None:
        return None
    region, label = found
    size = int(region.sum())
    inside = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    deepest = np.argwhere(inside >= inside.max() - 1e-6)  # ties (an elongated region): the one nearest its centre
    centre = np.argwhere(region).mean(axis=0)
    y, x, z = deepest[int(np.argmin(((deepest - centre) ** 2).sum(axis=1)))]
    return Click(int(z), (int(x), int(y)), label, size)


def largest_error(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The largest connected region of error of the boolean mask ``pred`` against ``truth`` (any dimension, fully
    connected: 8 neighbours in 2D, 26 in 3D), missed foreground or leaked background, whichever is larger, with
    the click that fixes it: ``(region, 1)`` for a miss, ``(region, 0)`` for a leak; None where they are equal."""
    from scipy import ndimage

    structure = np.ones((3,) * pred.ndim, dtype=bool)
    best: tuple[int, np.ndarray, int] | None = None
    for error, label in ((truth & ~pred, 1), (pred & ~truth, 0)):
        regions, count = ndimage.label(error, structure=structure)
        if not count:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), regions == k + 1, label)
    return None if best is None else best[1:]


def prompts_from_mask(mask: np.ndarray | torch.Tensor, min_pixels: int = 1) -> dict[int, Prompt2D]:
    """Tight box of a binary volume ``[H, W, D]`` on every slice with at least ``min_pixels`` pixels."""
    mask = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask).bool()
    counts = mask.flatten(0, 1).sum(0)
    return {int(z): Prompt2D(box=mask_box(mask[..., z])) for z in torch.nonzero(counts >= min_pixels).flatten()}


def prompts_from_label(
    label: np.ndarray, classes: Sequence[int] | None = None, min_pixels: int = 1
) -> dict[int, dict[int, Prompt2D]]:
    """Tight box of each class on every slice where it has at least ``min_pixels`` pixels.

    ``label`` is an integer map [H, W, D]; ``classes`` defaults to every non-zero value present.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be a 3D map [H, W, D], got shape {label.shape}")
    label = np.rint(label).astype(np.int64)
    if classes is None:
        classes = [int(c) for c in np.unique(label) if c != 0]
    return {int(cls): prompts_from_mask(label == cls, min_pixels) for cls in classes}


@dataclass
class VolumePrompts:
    """Every prompt of one volume in its sliced view: ``slices`` class -> slice -> :class:`Prompt2D` (segmented where
    they are) and ``objects`` class -> :class:`ObjectPrompt` (grown in 3D from key boxes)."""

    slices: dict[int, dict[int, Prompt2D]] = field(default_factory=dict)
    objects: dict[int, ObjectPrompt] = field(default_factory=dict)

    @property
    def classes(self) -> list[int]:
        return sorted(set(self.slices) | set(self.objects))


@dataclass
class PromptSpec:
    """Prompts of a prompt file, in voxel indices of the sliced view (RAS, slicing axis last).

    ``boxes3d``: class -> [6] (i0, j0, k0, i1, j1, k1), inclusive; ``key_boxes``: class -> list of
    (k, box XYXY, z range (k0, k1) or None); ``points``: class -> {k: (points [N, 2] (x, y), labels [N])}.
    """

    boxes3d: dict[int, np.ndarray] = field(default_factory=dict)
    key_boxes: dict[int, list[tuple[int, np.ndarray, tuple[int, int] | None]]] = field(default_factory=dict)
    points: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


_VOXELS = "voxel indices (i, j, k) of this image as stored, 0 <= index < shape"
_HOW = {  # what to do about a prompt outside the volume, per coordinate system of a prompt file
    "voxel": f'{_VOXELS}, or set "coordinates": "world" for RAS millimetres',
    "world": 'RAS millimetres inside this image (LPS coordinates need x and y negated), or set "coordinates": '
    '"voxel" for voxel indices',
}


MAX_LABEL = 2**31 - 1  #: the largest label value a mask can hold (int32)
MAX_ENTRIES = 1000  #: prompt entries in one file
MAX_KEY_BOXES = 1000  #: key boxes in one file (at most one per slice and class is used)
MAX_POINTS = 1000  #: points in one file: each slice's points are decoded together, so they cost memory squared


def check_label_value(value: object, where: str) -> int:
    """``value`` as a class label (1 .. :data:`MAX_LABEL`), else ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: label must be an integer class value, got {value!r}")
    if not 1 <= int(value) <= MAX_LABEL:
        shown = str(value) if len(str(value)) <= 20 else f"{str(value)[:20]}..."
        raise ValueError(f"{where}: label must be 1 .. {MAX_LABEL} (0 is background), got {shown}")
    return int(value)


def _finite(values: object, count: int | None, where: str, what: str) -> np.ndarray:
    """``values`` as a float array (``count`` numbers when given), every one finite; else ValueError."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: {what} must hold numbers, got {str(values)[:80]}") from None
    if count is not None and array.shape != (count,):
        raise ValueError(f"{where}: {what} needs {count} numbers, got {str(values)[:80]}")
    if not np.isfinite(array).all() or (np.abs(array) > 1e9).any():
        raise ValueError(f"{where}: {what} holds a value that is not a finite coordinate: {str(values)[:80]}")
    return array


def _no_constant(name: str) -> object:
    raise ValueError(f"holds {name}; every number must be finite (JSON has no NaN or Infinity)")


def load_prompt_file(path: str | Path) -> tuple[list[dict], str]:
    """The checked entries and the ``coordinates`` of a prompt file, read before any image (see the module
    docstring for the format and the limits). Raises FileNotFoundError / ValueError naming the file, the
    entry and the fix."""
    path = Path(path)
    fmt = "see monai_cbo.inferers.prompts for the format"
    if path.is_dir():
        raise ValueError(f"prompt file {path} is a folder; give a JSON file ({fmt})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt file {path} does not exist; check the path or write one ({fmt})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        empty = "is empty (0 bytes)" if not path.stat().st_size else f"is not valid JSON: {err}"
        raise ValueError(f"prompt file {path} {empty}; fix or rewrite it ({fmt})") from err
    except ValueError as err:  # NaN / Infinity
        raise ValueError(f"prompt file {path} {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise ValueError(f"prompt file {path} needs a 'prompts' list; {fmt}")
    coordinates = data.get("coordinates", "voxel")
    if coordinates not in ("voxel", "world"):
        raise ValueError(f"prompt file {path}: coordinates must be 'voxel' or 'world', got {coordinates!r}")
    entries = data["prompts"]
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"prompt file {path} has {len(entries)} entries; give at most {MAX_ENTRIES}")
    boxes = points = 0
    for n, entry in enumerate(entries):
        where = f"prompt file {path}, entry {n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: each prompt is an object with a 'label'; {fmt}")
        if "label" not in entry:
            raise ValueError(f"{where}: needs an integer 'label'")
        check_label_value(entry["label"], where)
        kinds = [k for k in ("box3d", "key_box", "points") if k in entry]
        if len(kinds) != 1:
            raise ValueError(f"{where}: give exactly one of 'box3d', 'key_box', 'points', got {kinds}")
        kind = kinds[0]
        if "key_slice" in entry:
            if kind != "key_box":
                raise ValueError(f"{where}: key_slice goes with a key_box")
            _finite([entry["key_slice"]], 1, where, "key_slice")
        if kind == "box3d":
            _finite(entry[kind], 6, where, "box3d (i0, j0, k0, i1, j1, k1)")
        elif kind == "key_box":
            keys = _key_boxes(entry[kind])
            boxes += len(keys)
            if boxes > MAX_KEY_BOXES:
                raise ValueError(f"prompt file {path} has more than {MAX_KEY_BOXES} key boxes; give at most that")
            for box in keys:
                _finite(box, 6, where, "key_box (i0, j0, k0, i1, j1, k1)")
        else:
            value = entry["points"]
            count = len(value) if isinstance(value, list) else 0
            points += count
            if points > MAX_POINTS:
                raise ValueError(
                    f"prompt file {path} has more than {MAX_POINTS} points (entry {n} brings {count}); give at most "
                    f"{MAX_POINTS}: each slice's points are decoded together"
                )
            if not isinstance(value, list) or not value:
                raise ValueError(f"{where}: points must be a non-empty list of [i, j, k] triples")
            array = _finite(value, None, where, "points")
            if array.ndim != 2 or array.shape[1] != 3:
                raise ValueError(f"{where}: points must be a list of [i, j, k] triples, got {str(value)[:80]}")
    return entries, coordinates


def _to_voxels(coords: np.ndarray, coordinates: str, affine: np.ndarray) -> np.ndarray:
    """[N, 3] coordinates -> voxel indices of the stored array (float)."""
    if coordinates == "voxel":
        return np.asarray(coords, dtype=np.float64)
    inv = np.linalg.inv(affine)
    return np.asarray(coords, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


def _add_box(
    spec: PromptSpec,
    cls: int,
    box: Sequence[float],
    kind: str,
    coordinates: str,
    affine: np.ndarray,
    geometry: SliceGeometry,
    where: str,
    key_slice: float | None = None,
    bounded: bool = False,
) -> None:
    """Map a 3D box (6 numbers) into the sliced view, clip it, and add it to ``spec`` as ``box3d`` or key box.

    A key box thick along the slicing direction (k0 < k1) is a 3D box: its slices bound the propagation, which
    starts on ``key_slice`` (in the box's own coordinates) or on its middle slice. With ``bounded`` a flat key
    box bounds it too: it is segmented on its one slice and does not propagate."""
    if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 6:
        raise ValueError(f"{where}: {kind} needs 6 numbers (i0, j0, k0, i1, j1, k1), got {box!r}")
    numbers = _finite(box, 6, where, kind)
    lo, hi = numbers[:3], numbers[3:]
    corners = np.array([np.where(np.array(p) == 1, hi, lo) for p in product((0, 1), repeat=3)])
    sliced = geometry.voxels_to_sliced(_to_voxels(corners, coordinates, affine))
    shape = np.asarray(geometry.sliced_shape)
    first = np.maximum(np.floor(sliced.min(axis=0) + 0.5), 0)
    last = np.minimum(np.floor(sliced.max(axis=0) + 0.5), shape - 1)
    if np.any(first > last):
        extent = tuple(int(v) for v in geometry.stored_shape)
        raise ValueError(
            f"{where}: {kind} {list(box)} ({coordinates}) lies outside the volume of shape {extent}; give "
            f"{_HOW[coordinates] if where.startswith('prompt file') else _VOXELS}"
        )
    if kind == "box3d":
        spec.boxes3d[cls] = np.concatenate([first, last]).astype(int)
        return
    z_range = (int(first[2]), int(last[2])) if last[2] > first[2] or bounded else None
    if key_slice is None:
        k = int(round((first[2] + last[2]) / 2))
    else:  # a voxel index along the stored axis that becomes the slicing direction
        if coordinates != "voxel":
            raise ValueError(f"{where}: key_slice is a voxel index; give the box in voxel coordinates to use it")
        axis = next(a for a, (target, _) in enumerate(geometry.transform) if int(target) == 2)
        centre = (lo + hi) / 2
        centre[axis] = float(key_slice)
        k = int(np.floor(geometry.voxels_to_sliced(centre[None])[0, 2] + 0.5))
        if z_range is None or not z_range[0] <= k <= z_range[1]:
            raise ValueError(
                f"{where}: key slice {key_slice} is not inside the key box {list(box)}; a key slice chooses where a "
                "3D box (k0 < k1) starts: give one between k0 and k1, or leave it out"
            )
    # 2D box in SAM order on slice k: x = column (sliced axis 1), y = row (sliced axis 0)
    flat = np.array([first[1], first[0], last[1], last[0]], dtype=np.float32)
    keys = spec.key_boxes.setdefault(cls, [])
    if any(old_k == k for old_k, _, _ in keys):
        raise ValueError(
            f"{where}: class {cls} already has a key box on slice {k}; give one key box per slice and class (boxes "
            "on different slices of one object are several keys)"
        )
    keys.append((k, flat, z_range))


def _key_boxes(value: object) -> list:
    """A ``key_box`` value: one box (6 numbers) or a list of them."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return list(value)
    return [value]


def spec_from_boxes(
    boxes: dict[int, Sequence],
    geometry: SliceGeometry,
    key: bool = False,
    where: str = "box",
    key_slice: float | None = None,
    bounded: bool = False,
) -> PromptSpec:
    """Prompts from per-class stored-voxel 3D boxes: on every slice they span, or (``key``) propagated. With
    ``key``, a class may have a list of boxes (several keys), ``key_slice`` chooses where a thick one starts and
    ``bounded`` keeps a flat one on its slice."""
    spec = PromptSpec()
    kind = "key_box" if key else "box3d"
    for cls, value in boxes.items():
        for box in _key_boxes(value) if key else [value]:
            _add_box(spec, int(cls), box, kind, "voxel", np.eye(4), geometry, where, key_slice, bounded)
    return spec


def add_points(
    spec: PromptSpec,
    cls: int,
    points: Sequence,
    labels: Sequence | None,
    coordinates: str,
    affine: np.ndarray,
    geometry: SliceGeometry,
    where: str,
) -> None:
    """Add points ``[N, 3]`` with their ``labels`` (1 foreground, 0 background) of class ``cls`` to ``spec``."""
    try:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: points must be a list of [i, j, k] triples, got {str(points)[:80]}") from None
    if not np.isfinite(pts).all():
        raise ValueError(f"{where}: points hold a value that is not a finite coordinate: {str(points)[:80]}")
    if labels is None:
        raise ValueError(
            f"{where}: points need 'point_labels', one per point: 1 foreground (include), 0 background (exclude)"
        )
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(pts):
        raise ValueError(f"{where}: {len(pts)} points but {len(labels)} point_labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{where}: point_labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
    shape = np.asarray(geometry.sliced_shape)
    vox = np.floor(geometry.voxels_to_sliced(_to_voxels(pts, coordinates, affine)) + 0.5)
    inside = np.all((vox >= 0) & (vox < shape), axis=1)
    if not inside.all():
        extent = tuple(int(v) for v in geometry.stored_shape)
        raise ValueError(
            f"{where}: points {pts[~inside].tolist()} lie outside the volume of shape {extent}; give "
            f"{_HOW[coordinates]}"
        )
    per_slice = spec.points.setdefault(cls, {})
    for k in np.unique(vox[:, 2]).astype(int):
        sel = vox[:, 2] == k
        xy, lab = vox[sel][:, [1, 0]].astype(np.float32), labels[sel].astype(np.int64)
        if int(k) in per_slice:  # several entries of one class on one slice add up
            xy, lab = np.concatenate([per_slice[int(k)][0], xy]), np.concatenate([per_slice[int(k)][1], lab])
        per_slice[int(k)] = (xy, lab)


def read_prompt_file(path: str | Path, affine: np.ndarray, geometry: SliceGeometry) -> PromptSpec:
    """Read a prompt JSON (see the module docstring) into prompts in the sliced view of ``geometry``.

    Boxes are clipped to the volume (a box partly outside it keeps its inside part); a box or point wholly
    outside it is a ValueError naming the file, the entry and the volume's extent.
    """
    entries, coordinates = load_prompt_file(path)
    return spec_from_entries(entries, coordinates, affine, geometry, f"prompt file {path}")


def spec_from_entries(
    entries: list[dict], coordinates: str, affine: np.ndarray, geometry: SliceGeometry, source: str
) -> PromptSpec:
    """The prompts of checked prompt-file ``entries`` (:func:`load_prompt_file`) in the sliced view."""
    spec = PromptSpec()
    for n, entry in enumerate(entries):
        where = f"{source}, entry {n}"
        cls = int(entry["label"])
        kind = next(k for k in ("box3d", "key_box", "points") if k in entry)
        if kind == "box3d":
            _add_box(spec, cls, entry[kind], kind, coordinates, affine, geometry, where)
        elif kind == "key_box":
            boxes = _key_boxes(entry[kind])
            if "key_slice" in entry and len(boxes) > 1:
                raise ValueError(f"{where}: key_slice goes with one key box; give each thick box its own entry")
            for box in boxes:
                _add_box(spec, cls, box, kind, coordinates, affine, geometry, where, entry.get("key_slice"))
        else:
            add_points(spec, cls, entry["points"], entry.get("point_labels"), coordinates, affine, geometry, where)
    return spec


def prompts_from_spec(spec: PromptSpec) -> VolumePrompts:
    """The volume's prompts: 3D boxes on every slice they span; key boxes as objects to propagate (with their
    class's points as corrections); the points of classes without key boxes on their own slices."""
    prompts = VolumePrompts()
    for cls, box in spec.boxes3d.items():
        i0, j0, k0, i1, j1, k1 = box.tolist()
        prompts.slices.setdefault(cls, {}).update(
            {k: Prompt2D(box=np.array([j0, i0, j1, i1], dtype=np.float32)) for k in range(k0, k1 + 1)}
        )
    for cls, keys in spec.key_boxes.items():
        ranges = [r for _, _, r in keys if r is not None]
        z_range = None
        if ranges:  # a 3D box bounds the object; flat keys beside it widen the bound to their own slices
            z_range = (
                min([r[0] for r in ranges] + [k for k, _, _ in keys]),
                max([r[1] for r in ranges] + [k for k, _, _ in keys]),
            )
        prompts.objects[cls] = ObjectPrompt([KeyBox(k, box) for k, box, _ in keys], z_range, spec.points.get(cls, {}))
    for cls, per_slice in spec.points.items():
        if cls in prompts.objects:
            continue
        for k, (pts, labels) in per_slice.items():
            old = prompts.slices.setdefault(cls, {}).get(k)
            prompts.slices[cls][k] = Prompt2D(box=None if old is None else old.box, points=pts, point_labels=labels)
    return prompts
