"""Box refinement of the automatic masks, tried after the clean-up: does a box prompt sharpen them?

A benchmark, not a test. The pipeline's ``--auto-refine`` re-prompts each raw automatic mask with its tight box
and lowers Dice on the hippocampus (``automatic.md``). This script asks whether a later, gentler refinement does
better. Per case it encodes every slice once with a bundle's shipped adapter and runs the bundle's automatic
steps (class prompts, ``z_smooth`` 0.5, threshold 0.5, largest 3D component, label map): that is ``base``.
Then, on every slice of each class's cleaned mask, it prompts the decoder with the mask's box widened by
``m`` pixels (the embeddings reused) and scores two uses of that box-prompted probability, each followed by
the same threshold, largest component and label map:

- ``replace_m<m>``: it replaces the automatic probability on that slice;
- ``mean_m<m>``: it is averaged with the automatic probability.

It prints the mean Dice per setting and the difference to ``base`` paired per (case, class), and writes every
score to a CSV file. Score the validation split (the adapter never trained on it):

    python docs/benchmarks/automatic/refine_sweep.py runs/hippocampus.json validation --max-cases 8 \\
        -o runs/refine_val8.csv
"""

from __future__ import annotations

import csv
import time

import numpy as np
from postprocess_sweep import arguments, bundle_inferer, dice, label_map, load_case, smoothed

from monai_cbo.data import load_datalist
from monai_cbo.inferers import Prompt2D, mask_box
from monai_cbo.networks import SliceCache

MARGINS = (0, 1, 2, 3, 5)
Z_SMOOTH = 0.5  # the hippocampus bundle's
THRESHOLD = 0.5


def widened(box: np.ndarray, margin: int, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    x0, y0, x1, y1 = box
    return np.array([max(0, x0 - margin), max(0, y0 - margin), min(w - 1, x1 + margin), min(h - 1, y1 + margin)])


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--max-cases", type=int, default=0, help="score the first N cases of the split (0: all)")
    args = parser.parse_args()
    pre, inferer, values, names = bundle_inferer(args.bundle)
    entries = load_datalist(args.datalist, args.split)[: args.max_cases or None]
    rows: list[dict] = []
    start = time.perf_counter()
    for i, entry in enumerate(entries):
        volume, gt, case = load_case(entry, pre)
        size, depth = tuple(volume.shape[1:3]), volume.shape[-1]
        cache = SliceCache(max_mib=None)
        prob = np.zeros((len(values), *size, depth), np.float32)
        for z, emb in inferer.encode(volume, range(depth), cache):
            for c, res in enumerate(inferer.decode_classes(emb, size)):
                prob[c, ..., z] = res.prob.numpy()
        prob = smoothed(prob, Z_SMOOTH)
        base = label_map(prob, THRESHOLD, 0.0, values)

        def score(setting: str, labels: np.ndarray, case: str = case, gt: np.ndarray = gt) -> None:
            for v, n in zip(values, names, strict=True):
                rows.append({"setting": setting, "case": case, "class": n, "dice": dice(labels == v, gt == v)})

        score("base", base)
        for margin in MARGINS:
            replaced, averaged = prob.copy(), prob.copy()
            for c, v in enumerate(values):
                for z in range(depth):
                    box = mask_box(base[..., z] == v)
                    if box is None:
                        continue
                    prompt = Prompt2D(box=widened(box, margin, size))
                    boxed = inferer.decode(cache[z], [prompt], size)[0].prob.numpy()
                    replaced[c, ..., z] = boxed
                    averaged[c, ..., z] = 0.5 * (prob[c, ..., z] + boxed)
            score(f"replace_m{margin}", label_map(replaced, THRESHOLD, 0.0, values))
            score(f"mean_m{margin}", label_map(averaged, THRESHOLD, 0.0, values))
        print(f"[{i + 1}/{len(entries)}] {case} ({time.perf_counter() - start:.0f} s)", flush=True)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    reference = {(r["case"], r["class"]): r["dice"] for r in rows if r["setting"] == "base"}
    print("setting " + " ".join(names) + " mean | paired difference to base, pairs better")
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        per = [np.mean([r["dice"] for r in mine if r["class"] == n]) for n in names]
        diff = np.array([r["dice"] - reference[r["case"], r["class"]] for r in mine])
        half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        print(
            f"{setting} "
            + " ".join(f"{d:.4f}" for d in per)
            + f" {np.mean(per):.4f} | {diff.mean():+.4f} ± {half:.4f}, "
            f"{int((diff > 0).sum())}/{len(diff)}"
        )


if __name__ == "__main__":
    main()
