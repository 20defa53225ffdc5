"""The bench's cases in memory (:class:`BenchData`): training slices with foreground, evaluation volumes with
labels, loaded once and preprocessed, and the seeded order in which a run draws the training slices."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import load_datalist
from ..inferers.segment import Case, check_label
from ..inferers.volume import Preprocess, SliceGeometry, case_name, load_volume, prepare_volume
from .config import BenchConfig

__all__ = ["BenchData", "ClassKey", "LoadedCase", "class_mask", "entry_name", "foreground_slices"]

#: a class: its label value, or the label values a region covers (nested or overlapping classes, BraTS WT / TC)
ClassKey = int | tuple[int, ...]


@dataclass
class LoadedCase:
    """A bench case held in memory, preprocessed (not to be confused with :class:`~monai_cbo.inferers.Case`, a
    case to segment from files)."""

    name: str
    volume: torch.Tensor  # [3, H, W, D] in the sliced view, [0, 1]
    gt: np.ndarray  # [H, W, D] sliced integer labels
    geometry: SliceGeometry
    image: Any = None  # the loaded MetaTensor (evaluation cases: to write masks in the input geometry)
    spacing: np.ndarray | None = None

    @classmethod
    def prepare(cls, name: str, image: Any, gt: np.ndarray, preprocess: Preprocess, keep_image: bool) -> LoadedCase:
        """The case of a loaded ``image`` and its checked label map ``gt`` (stored orientation), preprocessed."""
        volume, geometry = prepare_volume(image, preprocess)
        spacing = np.linalg.norm(image.affine.numpy()[:3, :3], axis=0)
        sliced = np.ascontiguousarray(geometry.to_sliced(gt))
        return cls(name, volume, sliced, geometry, image if keep_image else None, spacing)


def class_mask(gt: np.ndarray, key: ClassKey) -> np.ndarray:
    """Where ``gt`` holds class ``key``: its label value, or any of a region's values."""
    return np.isin(gt, key) if isinstance(key, tuple) else gt == key


def foreground_slices(gt: np.ndarray, classes: Sequence[ClassKey], min_pixels: int) -> list[int]:
    """The slices (last axis) of a sliced label map where some class covers at least ``min_pixels`` pixels."""
    return [z for z in range(gt.shape[-1]) if max(int(class_mask(gt[..., z], c).sum()) for c in classes) >= min_pixels]


class BenchData:
    """The bench's cases, loaded once: training slices with foreground, evaluation volumes with labels.

    Everything stays in memory, preprocessed (float32, 3 channels, in the sliced view): about 0.1 GB per
    BraTS-sized case (240 x 240 x 155), a few MB per hippocampus case. For a training set larger than memory,
    bench a subset (``max_train_cases``) or train with the bundles, which stream from disk.

    Args:
        config: the bench configuration (datalist, splits, case limits, preprocessing, classes).
        log: where progress lines go.
    """

    def __init__(self, config: BenchConfig, log: Callable[[str], None] = print) -> None:
        self.config = config
        meta = json.loads(Path(config.datalist).read_text(encoding="utf-8"))
        names = {int(k): v for k, v in (meta.get("labels") or {}).items() if int(k) != 0}
        train = load_datalist(config.datalist, config.train_split, config.dataset_dir)[: config.max_train_cases]
        evals = load_datalist(config.datalist, config.eval_split, config.dataset_dir)[: config.max_eval_cases]
        log(f"loading {len(train)} {config.train_split} and {len(evals)} {config.eval_split} cases ...")
        self._index(
            [self._load(e, keep_image=False) for e in train],
            [self._load(e, keep_image=True) for e in evals],
            names,
            meta.get("regions") or {},
            log,
        )

    @classmethod
    def from_cases(
        cls,
        config: BenchConfig,
        train: list[LoadedCase],
        evals: list[LoadedCase],
        names: dict[int, str],
        held_out: Collection[tuple[int, int]] = (),
        log: Callable[[str], None] = print,
    ) -> BenchData:
        """The bench's cases from volumes already loaded (``monai-cbo adapt`` checks and loads its own): ``names``
        maps each label value to its class name; ``held_out`` (training case index, slice) are kept out of
        training (a one-volume adaptation validates on them)."""
        self = cls.__new__(cls)
        self.config = config
        self._index(train, evals, names, {}, log, set(held_out))
        return self

    def _index(
        self,
        train: list[LoadedCase],
        evals: list[LoadedCase],
        names: dict[int, str],
        regions: dict,
        log: Callable[[str], None],
        held_out: set[tuple[int, int]] = frozenset(),
    ) -> None:
        config = self.config
        self.train, self.eval = train, evals
        present = sorted({int(v) for c in self.train + self.eval for v in np.unique(c.gt) if v})
        self.classes = list(config.classes) if config.classes else present
        if not self.classes:
            raise ValueError(f"datalist {config.datalist}: no foreground label in any case; check the label files")
        #: metric spec: per class, plus the dataset's evaluation regions (BraTS) where the datalist names them
        self.class_names = {c: names.get(c, str(c)) for c in self.classes}
        self.metric_classes: dict[str, list[int]] = {
            name: list(c) if isinstance(c, tuple) else [c] for c, name in self.class_names.items()
        }
        for region, ids in regions.items():
            ids = sorted(int(i) for i in ids)
            if self.metric_classes.get(region) == ids:
                continue  # e.g. BraTS 2015's "enhancing": a label and a region at once
            self.metric_classes[region if region not in self.metric_classes else f"{region} (region)"] = ids
        if len(set(self.class_names.values())) != len(self.class_names):
            raise ValueError(f"datalist {config.datalist}: label names {self.class_names} must be distinct")
        self.slices = [
            (i, z)
            for i, c in enumerate(self.train)
            for z in foreground_slices(c.gt, self.classes, config.min_foreground)
            if (i, z) not in held_out
        ]
        if not self.slices:
            raise ValueError(
                f"datalist {config.datalist}: no {config.train_split} slice holds >= {config.min_foreground} "
                f"pixels of classes {self.classes}"
            )
        foreground = set(self.slices)
        #: slices with no class at all (fewer than min_foreground of each): automatic steps learn "absent" from them
        self.background = [(i, z) for i, c in enumerate(self.train) for z in range(c.gt.shape[-1])]
        self.background = [s for s in self.background if s not in foreground and s not in held_out]
        log(
            f"{len(self.slices)} training slices with foreground, {len(self.background)} without; "
            f"classes {self.class_names}"
        )

    def _load(self, entry: dict, keep_image: bool) -> LoadedCase:
        case = Case(image=entry["image"], label=entry["label"], name=entry_name(entry))
        image = load_volume(case.image)
        gt, _ = check_label(load_volume(case.label), image)  # the checks of monai-cbo segment --label
        return LoadedCase.prepare(case.name, image, gt, self.config.preprocess, keep_image)

    def sample_order(self, seed: int, count: int) -> list[tuple[int, int]]:
        """``count`` training slices for ``seed``: passes over a shuffled pool, identical for every preset."""
        rng = np.random.default_rng(seed)
        order: list[tuple[int, int]] = []
        while len(order) < count:
            order += [self.slices[i] for i in rng.permutation(len(self.slices))]
        return order[:count]


def entry_name(entry: dict) -> str:
    """A datalist entry's case name: its ``case`` field, else the name of its (first) image file."""
    image = entry["image"]
    return entry.get("case") or case_name(image[0] if isinstance(image, list) else image)
