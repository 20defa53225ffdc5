"""Automatic-mode post-processing sweep: the mask threshold and smoothing across slices, on cached probabilities.

A benchmark, not a test. It encodes every slice of each case once with a bundle's shipped adapter, keeps the
class prompts' probabilities, and then scores every setting on them, without running the model again:

- ``threshold``: the probability above which a pixel is foreground (the pipeline uses 0.5);
- ``z_smooth`` w: each slice's probability is averaged with its two neighbours' at weight w, before
  thresholding (``(p[z] + w p[z-1] + w p[z+1]) / (1 + 2w)``);

then, as the bundle's automatic mode does, the largest 3D component per class and the label map with
overlaps given to the most probable class. It prints the mean 3D Dice per setting and writes them to a CSV
file.

    python docs/benchmarks/automatic/postprocess_sweep.py runs/hippocampus.json validation -o runs/pp_val.csv
    python docs/benchmarks/automatic/postprocess_sweep.py runs/hippocampus.json test -o runs/pp_test.csv \\
        --only 0.5:0,BEST_T:BEST_W
"""

from __future__ import annotations

import argparse
import csv
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from monai_cbo.bundles import bundle_model, load_bundle
from monai_cbo.data import load_datalist
from monai_cbo.inferers import SliceWiseInferer
from monai_cbo.inferers.volume import Preprocess, load_volume, prepare_volume

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
SMOOTHING = (0.0, 0.25, 0.5, 1.0)


def probabilities(inferer: SliceWiseInferer, volume: torch.Tensor) -> np.ndarray:
    """[C, H, W, D] class-prompt probabilities of every slice (float16)."""
    size = tuple(volume.shape[1:3])
    depth = volume.shape[-1]
    out = None
    for z, emb in inferer.encode(volume, range(depth)):
        results = inferer.decode_classes(emb, size)
        if out is None:
            out = np.zeros((len(results), *size, depth), np.float16)
        for c, res in enumerate(results):
            out[c, ..., z] = res.prob.numpy()
    return out


def largest(mask: np.ndarray) -> np.ndarray:
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    return components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))


def smoothed(prob: np.ndarray, w: float) -> np.ndarray:
    """``[C, H, W, D]`` probabilities averaged across slices as the pipeline's ``z_smooth`` w does (float32)."""
    p = prob.astype(np.float32)
    if w > 0:
        padded = np.pad(p, ((0, 0), (0, 0), (0, 0), (1, 1)), mode="edge")
        p = (p + w * padded[..., :-2] + w * padded[..., 2:]) / (1 + 2 * w)
    return p


def label_map(prob: np.ndarray, threshold: float, w: float, values: list[int]) -> np.ndarray:
    p = smoothed(prob, w)
    masks = np.stack([largest(p[c] > threshold) for c in range(len(values))])
    best = np.where(masks, p, -1.0)
    top = best.argmax(0)
    labels = np.zeros(p.shape[1:], np.uint8)
    fg = masks.any(0)
    labels[fg] = np.asarray(values, np.uint8)[top[fg]]
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments every sweep in this folder takes: datalist, split, ``-o`` CSV, ``--bundle``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datalist")
    parser.add_argument("split", help="the datalist's list to score (validation to tune, test to confirm)")
    parser.add_argument("-o", "--out", required=True, help="CSV: setting, case, class, Dice")
    parser.add_argument("--bundle", default="hippocampus_mri_cbo")
    return parser


def bundle_inferer(bundle: str) -> tuple[Preprocess, SliceWiseInferer, list[int], list[str]]:
    """A bundle's preprocessing, an inferer with its shipped adapter, and its classes' label values and names."""
    info = load_bundle(bundle)
    inferer = SliceWiseInferer(bundle_model(info))
    spec = inferer.model.class_prompts
    return info.task.preprocess, inferer, [int(v) for v in spec.class_values], list(spec.class_names)


def load_case(entry: dict, pre: Preprocess) -> tuple[torch.Tensor, np.ndarray, str]:
    """A datalist entry -> (model input ``[3, H, W, D]``, its label in the sliced view, the case name)."""
    volume, geometry = prepare_volume(load_volume(entry["image"]), pre)
    gt = geometry.to_sliced(np.rint(load_volume(entry["label"])[0].numpy()).astype(np.int64))
    return volume, gt, entry.get("case") or Path(entry["image"]).name


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--only", default=None, help="settings to score, threshold:w,... (default: the whole grid)")
    args = parser.parse_args()
    pre, inferer, values, names = bundle_inferer(args.bundle)
    if args.only:
        grid = [tuple(float(x) for x in item.split(":")) for item in args.only.split(",")]
    else:
        grid = list(itertools.product(THRESHOLDS, SMOOTHING))
    rows = []
    start = time.perf_counter()
    entries = load_datalist(args.datalist, args.split)
    for i, entry in enumerate(entries):
        volume, gt, case = load_case(entry, pre)
        prob = probabilities(inferer, volume)
        for t, w in grid:
            labels = label_map(prob, t, w, values)
            for v, n in zip(values, names, strict=True):
                rows.append(
                    {"threshold": t, "z_smooth": w, "case": case, "class": n, "dice": dice(labels == v, gt == v)}
                )
        print(f"[{i + 1}/{len(entries)}] {case} ({time.perf_counter() - start:.0f} s)", flush=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("threshold z_smooth " + " ".join(names) + " mean")
    for t, w in grid:
        per = [
            np.mean([r["dice"] for r in rows if (r["threshold"], r["z_smooth"], r["class"]) == (t, w, n)])
            for n in names
        ]
        print(f"{t:9.2f} {w:8.2f} " + " ".join(f"{d:.4f}" for d in per) + f" {np.mean(per):.4f}")


if __name__ == "__main__":
    main()
