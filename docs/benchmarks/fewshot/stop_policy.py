"""How a few-shot adapter's stop rules should be chosen: each policy's choice scored on test volumes.

``monai-cbo adapt`` chooses the stop rules on the volumes it has, most of which it trained on; on unseen volumes
its masks are less sure of themselves, so rules that fit the training volumes end walks early there
(docs/benchmarks/fewshot.md). This records every stop-rule combination's 3D Dice once per target and protocol
(``monai_cbo.bench.propagation_sweep.record_stop_rules``) on three groups of volumes: the bundle's own (its
datalist: trained on and held back), held-out volumes of the same structure, and the test cases; then scores on
the test cases the combination each policy picks: the best on the own or held-out volumes with near-ties (within
``tie``) going to the most lenient rules, for several ``tie``. The recordings are kept (``recordings.npz``), so
policies can be added without recording again. ``--score POLICY`` then scores the bundle with that policy's rules
on the test cases with every protocol (``monai-cbo prompts-bench``; ``adapt``'s own choice is ``"own tie 0.001"``
on the volumes its time allowed)::

    python docs/benchmarks/fewshot/stop_policy.py runs/fewshot/hippocampus/n4_s0_fastcpu/bundle \\
        --out runs/fewshot/hippocampus/n4_s0_fastcpu/stop_policy --score "held_out tie 0.001"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
HELD_OUT = REPO / "docs" / "benchmarks" / "corrections" / "hippocampus_tune4.json"
TEST = HERE / "hippocampus_test.json"
TIES = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="a bundle folder that monai-cbo adapt wrote")
    p.add_argument("--out", required=True, help="a folder for recordings.npz and policies.json")
    p.add_argument("--held-out", default=str(HELD_OUT), help="suite of held-out volumes (never trained on)")
    p.add_argument("--test", default=str(TEST), help="suite of test volumes")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--score", action="append", default=[], help="a policy to score with every protocol (repeatable)")
    p.add_argument("--cache-dir", default=None, help="prompts-bench's embedding cache for --score")
    args = p.parse_args(argv)
    out, bundle = Path(args.out), Path(args.bundle)
    out.mkdir(parents=True, exist_ok=True)
    store, grid = out / "recordings.npz", out / "combinations.json"
    groups = {"own": None, "held_out": Path(args.held_out), "test": Path(args.test)}
    if not store.exists():
        arrays, combos = _record(bundle, groups, Path(args.data_root))
        grid.write_text(json.dumps(combos) + "\n")  # the columns of every recording, in order
        np.savez_compressed(store, **arrays)
    data, combos = dict(np.load(store)), json.loads(grid.read_text())
    from monai_cbo.bench.propagation_sweep import _lenient_best, _rules, _strictness

    lenient = np.array([_strictness(c) for c in combos])
    report: dict = {}
    for family in ("open", "ranged"):
        test = data[f"test_{family}"].mean(axis=0)
        rows = {
            "test_best": round(float(test.max()), 4),
            "rules_off": round(float(test[int(np.argmin(lenient))]), 4),
        }
        for group in ("own", "held_out"):
            scores = data[f"{group}_{family}"].mean(axis=0)
            for tie in TIES:
                pick = _lenient_best(scores, lenient, tie)
                rows[f"{group} tie {tie:g}"] = {
                    "test": round(float(test[pick]), 4),
                    "chosen_on": round(float(scores[pick]), 4),
                    "rules": combos[pick],
                }
        report[family] = rows
    (out / "policies.json").write_text(json.dumps(report, indent=1) + "\n")
    for family, rows in report.items():
        print(f"{family}: test best {rows['test_best']}, rules off {rows['rules_off']}")
        for name, row in rows.items():
            if isinstance(row, dict):
                print(f"  {name:>18}: test {row['test']:.4f} (on its volumes {row['chosen_on']:.4f})")
    unknown = [policy for policy in args.score if policy not in report["open"]]
    if unknown:
        known = [k for k, v in report["open"].items() if isinstance(v, dict)]
        raise SystemExit(f"--score: no policy {unknown}; the policies are {known}")
    for policy in args.score:
        rules = {**_rules(report["open"][policy]["rules"], False), **_rules(report["ranged"][policy]["rules"], True)}
        sets = [a for name, value in rules.items() for a in ("--set", f"{name}={value}")]
        cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
        subprocess.run(
            [sys.executable, "-m", "monai_cbo.cli", "prompts-bench", args.test, "-o",
             str(out / ("score_" + policy.replace(" ", "_"))), "--data-root", args.data_root, "--bundle", str(bundle),
             *cache, *sets],
            check=True,
        )  # fmt: skip
    return 0


def _record(bundle: Path, groups: dict, data_root: Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    import torch

    from monai_cbo.adapt.inputs import LabelledCase, cases_from_datalist, check_and_load
    from monai_cbo.bench.data import class_mask
    from monai_cbo.bench.propagation_sweep import record_stop_rules
    from monai_cbo.bundles import load_bundle
    from monai_cbo.cli.options import load_model
    from monai_cbo.inferers.slicewise import SliceWiseInferer

    task = load_bundle(str(bundle)).task
    if task.regions is not None:
        raise SystemExit(f"{bundle}: a bundle of nested regions; this script pairs exclusive label values")
    model = load_model(None, None, [str(bundle / "models" / "adapter.pt")]).eval()
    inferer = SliceWiseInferer(model, device=torch.device("cpu"))
    names = dict(zip(task.classes or range(1, len(task.class_names) + 1), task.class_names, strict=True))
    arrays = {}
    for group, suite in groups.items():
        if suite is None:  # the bundle's own volumes: those it trained on and those it held back
            datalist = bundle / "data" / "datalist.json"
            cases = cases_from_datalist(datalist) + cases_from_datalist(datalist, "validation")
        else:
            (spec,) = json.loads(suite.read_text())["sets"].values()
            cases = [LabelledCase(c["case"], data_root / c["image"], data_root / c["label"]) for c in spec["cases"]]
        loaded, classes, _ = check_and_load(cases, task.preprocess, names)
        volumes = [(c.name, c.volume, [class_mask(c.gt, k) for k in classes]) for c in loaded]
        with torch.inference_mode():
            combos, dice, _ = record_stop_rules(inferer, volumes, task.propagation)
        for family, values in dice.items():
            arrays[f"{group}_{family}"] = values
        print(f"{group}: {len(loaded)} volumes recorded", flush=True)
    return arrays, combos


if __name__ == "__main__":
    raise SystemExit(main())
