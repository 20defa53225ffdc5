"""Write the CT-window suite (suite.json beside this file) for ``monai-cbo prompts-bench``.

One CT with labels is shared here (TotalSegmentator's example CT, 112 slices; its labels are model outputs).
Each window is a pair of sets over the same scan: tune organs (they choose the window) and held-back organs
(only scored), of three tissue kinds: soft tissue, bone, muscle.

    python docs/benchmarks/ct_window/make_suite.py
"""

from __future__ import annotations

import json
from pathlib import Path

WINDOWS = {  # name: HU window [lo, hi]
    "w-500_1000": [-500, 1000],  # the zero-shot default of segment and the label app so far
    "w-160_240": [-160, 240],  # soft tissue (W400 L40): the bundles' window
    "w-1000_1000": [-1000, 1000],  # wide
    "w-500_1300": [-500, 1300],  # bone (W1800 L400)
}
TUNE = {  # TotalSegmentator label values (class_map_total_and_total_mr.json)
    "spleen": [1], "kidney_left": [3], "liver": [5], "small_bowel": [18],  # soft tissue
    "vertebrae_L3": [29], "hip_left": [77],  # bone
    "iliopsoas_left": [88], "gluteus_maximus_left": [80],  # muscle
}  # fmt: skip
HELD_BACK = {
    "kidney_right": [2], "stomach": [6], "colon": [20], "urinary_bladder": [21], "aorta": [52],  # soft tissue
    "vertebrae_L1": [31], "sacrum": [25], "femur_right": [76], "hip_right": [78],  # bone
    "iliopsoas_right": [89], "autochthon_right": [87], "gluteus_medius_right": [83],  # muscle
}  # fmt: skip
#: each target's tissue kind, for the per-kind table (summarise.py)
KIND = {
    **dict.fromkeys(["spleen", "kidney_left", "liver", "small_bowel"], "soft tissue"),
    **dict.fromkeys(["kidney_right", "stomach", "colon", "urinary_bladder", "aorta"], "soft tissue"),
    **dict.fromkeys(["vertebrae_L3", "hip_left", "vertebrae_L1", "sacrum", "femur_right", "hip_right"], "bone"),
    **dict.fromkeys(["iliopsoas_left", "gluteus_maximus_left", "iliopsoas_right"], "muscle"),
    **dict.fromkeys(["autochthon_right", "gluteus_medius_right"], "muscle"),
}
CASE = {
    "case": "example_ct",
    "image": "TotalSegmentator_examples/example_ct.nii.gz",
    "label": "TotalSegmentator_examples/example_seg_fast_force_split.nii.gz",
}


def suite() -> dict:
    sets = {}
    for name, window in WINDOWS.items():
        for part, targets in (("tune", TUNE), ("validation", HELD_BACK)):
            sets[f"{name}_{part}"] = {
                "modality": "ct",
                "ct_window": window,
                "targets": targets,
                "cases": [{**CASE, "part": part}],
            }
    return {
        "description": "CT windows for zero-shot prompting: each window scores tune organs (which choose it) and "
        "held-back organs of the same kinds on TotalSegmentator's example CT (paths relative to ../shared/data)",
        "sets": sets,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("suite.json")
    out.write_text(json.dumps(suite(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
