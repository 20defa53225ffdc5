"""Compare the before / after benches of run.sh: adapters tensor by tensor, metrics files byte by byte, masks voxel
by voxel, result.json's Dice; exit 1 on any difference. Run in the folder run.sh ran in."""

import filecmp
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

bad = 0
for run in sorted(Path("before/runs").glob("*/seed*")):
    other = Path("after/runs") / run.relative_to("before/runs")
    a = torch.load(run / "adapter.pt", weights_only=False)
    b = torch.load(other / "adapter.pt", weights_only=False)
    ta, tb = a.get("state_dict", a), b.get("state_dict", b)
    keys = [k for k in ta if isinstance(ta[k], torch.Tensor)]
    same = all(torch.equal(ta[k], tb[k]) for k in keys) and set(keys) == {
        k for k in tb if isinstance(tb[k], torch.Tensor)
    }
    print(run, "adapter tensors", len(keys), "identical" if same else "DIFFER")
    bad += not same
    for csv in sorted(run.glob("metrics*.csv")):
        eq = filecmp.cmp(csv, other / csv.name, shallow=False)
        print("  ", csv.name, "identical" if eq else "DIFFER")
        bad += not eq
    for mask in sorted(run.glob("masks*/*.nii.gz")):
        eq = np.array_equal(
            np.asarray(nib.load(mask).dataobj), np.asarray(nib.load(other / mask.relative_to(run)).dataobj)
        )
        bad += not eq
        if not eq:
            print("  mask differs", mask)
    ra, rb = (json.loads((r / "result.json").read_text()) for r in (run, other))
    print(
        "  dice",
        {k: v for k, v in ra.items() if "dice" in k.lower()} == {k: v for k, v in rb.items() if "dice" in k.lower()},
    )
sys.exit(1 if bad else 0)
