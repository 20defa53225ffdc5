"""Prompt sources for slice-wise inference, all per class.

Volumes here are ``[H, W, D]`` with the slicing axis last (see :mod:`monai_cbo.inferers.slicewise`).

* :func:`prompts_from_label`: a box per slice from a label map (the benchmark protocol).
* :func:`read_prompt_file` + :func:`prompts_from_spec`: a JSON file of per-class 3D boxes, key-slice boxes
  and points, in voxel indices or world millimetres (RAS).

Prompt file format (``coordinates`` is ``"voxel"`` (default) or ``"world"``; voxel triples index the
image array's axes (i, j, k) as stored, i.e. as a viewer shows them; world triples are RAS mm)::

    {"coordinates": "voxel",
     "prompts": [
        {"label": 1, "box3d": [i0, j0, k0, i1, j1, k1]},          # a box on every slice it spans
        {"label": 2, "key_box": [i0, j0, k0, i1, j1, k1]},        # a box on one slice, propagated outwards
        {"label": 3, "points": [[i, j, k], ...], "point_labels": [1, 0, ...]}
     ]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import torch

from .slicewise import Prompt2D, mask_box
from .volume import SliceGeometry

__all__ = [
    "PromptSpec",
    "prompts_from_label",
    "prompts_from_mask",
    "prompts_from_spec",
    "read_prompt_file",
    "spec_from_boxes",
]


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
class PromptSpec:
    """Prompts of a prompt file, in voxel indices of the sliced view (RAS, slicing axis last).

    ``boxes3d``: class -> [6] (i0, j0, k0, i1, j1, k1), inclusive; ``key_boxes``: class -> (k, box XYXY);
    ``points``: class -> {k: (points [N, 2] (x, y), labels [N])}.
    """

    boxes3d: dict[int, np.ndarray]
    key_boxes: dict[int, tuple[int, np.ndarray]]
    points: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]]


_VOXELS = "voxel indices (i, j, k) of this image as stored, 0 <= index < shape"
_HOW = {  # what to do about a prompt outside the volume, per coordinate system of a prompt file
    "voxel": f'{_VOXELS}, or set "coordinates": "world" for RAS millimetres',
    "world": 'RAS millimetres inside this image (LPS coordinates need x and y negated), or set "coordinates": '
    '"voxel" for voxel indices',
}


def _to_voxels(coords: np.ndarray, coordinates: str, affine: np.ndarray) -> np.ndarray:
    """[N, 3] coordinates -> voxel indices of the stored array (float)."""
    if coordinates == "voxel":
        return np.asarray(coords, dtype=np.float64)
    inv = np.linalg.inv(affine)
    return np.asarray(coords, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


def _add_box(spec: PromptSpec, cls: int, box: Sequence[float], kind: str, coordinates: str, affine: np.ndarray,
             geometry: SliceGeometry, where: str) -> None:
    """Map a 3D box (6 numbers) into the sliced view, clip it, and add it to ``spec`` as ``box3d`` or key box."""
    if len(box) != 6:
        raise ValueError(f"{where}: {kind} needs 6 numbers (i0, j0, k0, i1, j1, k1), got {list(box)}")
    lo, hi = np.asarray(box[:3], dtype=np.float64), np.asarray(box[3:], dtype=np.float64)
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
    else:
        k = int(round((first[2] + last[2]) / 2))  # a thick key box starts from its middle slice
        # 2D box in SAM order on slice k: x = column (sliced axis 1), y = row (sliced axis 0)
        spec.key_boxes[cls] = (k, np.array([first[1], first[0], last[1], last[0]], dtype=np.float32))


def spec_from_boxes(boxes: dict[int, Sequence[float]], geometry: SliceGeometry, key: bool = False,
                    where: str = "box") -> PromptSpec:
    """Prompts from per-class stored-voxel 3D boxes: on every slice they span, or (``key``) propagated."""
    spec = PromptSpec({}, {}, {})
    for cls, box in boxes.items():
        _add_box(spec, int(cls), box, "key_box" if key else "box3d", "voxel", np.eye(4), geometry, where)
    return spec


def read_prompt_file(path: str | Path, affine: np.ndarray, geometry: SliceGeometry) -> PromptSpec:
    """Read a prompt JSON (see the module docstring) into prompts in the sliced view of ``geometry``.

    Boxes are clipped to the volume (a box partly outside it keeps its inside part); a box or point wholly
    outside it is a ValueError naming the file, the entry and the volume's extent.
    """
    path = Path(path)
    fmt = "see monai_cbo.inferers.prompts for the format"
    if path.is_dir():
        raise ValueError(f"prompt file {path} is a folder; give a JSON file ({fmt})")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt file {path} does not exist; check the path or write one ({fmt})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        empty = "is empty (0 bytes)" if not path.stat().st_size else f"is not valid JSON: {err}"
        raise ValueError(f"prompt file {path} {empty}; fix or rewrite it ({fmt})") from err
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise ValueError(f"prompt file {path} needs a 'prompts' list; {fmt}")
    coordinates = data.get("coordinates", "voxel")
    if coordinates not in ("voxel", "world"):
        raise ValueError(f"prompt file {path}: coordinates must be 'voxel' or 'world', got {coordinates!r}")
    shape = np.asarray(geometry.sliced_shape)
    spec = PromptSpec({}, {}, {})
    for n, entry in enumerate(data["prompts"]):
        where = f"prompt file {path}, entry {n}"
        try:
            cls = int(entry["label"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: needs an integer 'label'") from None
        if cls < 1:
            raise ValueError(f"{where}: label must be >= 1 (0 is background), got {cls}")
        kinds = [k for k in ("box3d", "key_box", "points") if k in entry]
        if len(kinds) != 1:
            raise ValueError(f"{where}: give exactly one of 'box3d', 'key_box', 'points', got {kinds}")
        kind = kinds[0]
        if kind in ("box3d", "key_box"):
            _add_box(spec, cls, entry[kind], kind, coordinates, affine, geometry, where)
            continue
        pts = np.asarray(entry["points"], dtype=np.float64).reshape(-1, 3)
        labels = np.asarray(entry.get("point_labels", [1] * len(pts)), dtype=np.int64)
        if len(labels) != len(pts):
            raise ValueError(f"{where}: {len(pts)} points but {len(labels)} point_labels")
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
            per_slice[int(k)] = (vox[sel][:, [1, 0]].astype(np.float32), labels[sel])
    return spec


def prompts_from_spec(spec: PromptSpec) -> dict[int, dict[int, Prompt2D]]:
    """Per-slice prompts of a spec's 3D boxes and points (key boxes are propagated by the caller)."""
    prompts: dict[int, dict[int, Prompt2D]] = {}
    for cls, box in spec.boxes3d.items():
        i0, j0, k0, i1, j1, k1 = box.tolist()
        prompts.setdefault(cls, {}).update(
            {k: Prompt2D(box=np.array([j0, i0, j1, i1], dtype=np.float32)) for k in range(k0, k1 + 1)}
        )
    for cls, per_slice in spec.points.items():
        for k, (pts, labels) in per_slice.items():
            old = prompts.setdefault(cls, {}).get(k)
            prompts[cls][k] = Prompt2D(box=None if old is None else old.box, points=pts, point_labels=labels)
    return prompts

