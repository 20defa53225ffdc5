"""A few-shot bundle's stop rules chosen again on volumes it never saw, then scored on the test cases.

``monai-cbo adapt`` chooses an adapter's stop rules (``min_class_overlap`` and friends) on the volumes it has: its
held-back volume and its training volumes. This asks what that choice costs: the same sweep
(``monai_cbo.bench.propagation_sweep.sweep_stop_rules``) on held-out volumes of the same structure (the split's
validation volumes, never trained on), the chosen rules written as ``--set`` options, and the bundle scored with
them on the test suite by ``monai-cbo prompts-bench`` (docs/benchmarks/fewshot.md)::

    python docs/benchmarks/fewshot/heldout_stop.py runs/fewshot/hippocampus/n4_s0_fastcpu/bundle \\
        --out runs/fewshot/hippocampus/n4_s0_fastcpu/heldout_stop
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TUNE = REPO / "docs" / "benchmarks" / "corrections" / "hippocampus_tune4.json"
TEST = HERE / "hippocampus_test.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="a bundle folder that monai-cbo adapt wrote")
    p.add_argument("--out", required=True, help="a folder for the choice (stop.json) and the test scores (score/)")
    p.add_argument("--tune", default=str(TUNE), help="suite whose cases choose the rules (default: 4 held-out)")
    p.add_argument("--test", default=str(TEST), help="suite that scores the bundle with them")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--cache-dir", default=None, help="prompts-bench's embedding cache for the scoring")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    choice = out / "stop.json"
    if not choice.exists():
        chosen, report = _choose(Path(args.bundle), Path(args.tune), Path(args.data_root))
        choice.write_text(json.dumps({"rules": chosen, "report": report}, indent=1) + "\n")
    rules = json.loads(choice.read_text())["rules"]
    sets = [a for name, value in rules.items() for a in ("--set", f"{name}={value}")]
    cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    subprocess.run(
        [sys.executable, "-m", "monai_cbo.cli", "prompts-bench", args.test, "-o", str(out / "score"), "--data-root",
         args.data_root, "--bundle", args.bundle, *cache, *sets],
        check=True,
    )  # fmt: skip
    return 0


def _choose(bundle: Path, tune: Path, data_root: Path) -> tuple[dict, dict]:
    import torch

    from monai_cbo.adapt.inputs import LabelledCase, check_and_load
    from monai_cbo.bench.data import class_mask
    from monai_cbo.bench.propagation_sweep import sweep_stop_rules
    from monai_cbo.bundles import load_bundle
    from monai_cbo.cli.options import load_model
    from monai_cbo.inferers import PropagationConfig
    from monai_cbo.inferers.propagation import STOP_RULES
    from monai_cbo.inferers.slicewise import SliceWiseInferer

    task = load_bundle(str(bundle)).task
    suite = json.loads(tune.read_text())
    (set_spec,) = suite["sets"].values()
    cases = [
        LabelledCase(c["case"], data_root / c["image"], data_root / c["label"])
        for c in set_spec["cases"]
        if c.get("part", "tune") == "tune"
    ]
    names = {tuple(v) if len(v) > 1 else v[0]: k for k, v in set_spec["targets"].items()}
    loaded, classes, _ = check_and_load(cases, task.preprocess, names)
    model = load_model(None, None, [str(bundle / "models" / "adapter.pt")]).eval()
    inferer = SliceWiseInferer(model, device=torch.device("cpu"))
    volumes = [(c.name, c.volume, [class_mask(c.gt, k) for k in classes]) for c in loaded]
    with torch.inference_mode():
        chosen, report = sweep_stop_rules(inferer, volumes, task.propagation or PropagationConfig())
    names = [prefix + rule for prefix in ("", "range_") for rule in STOP_RULES] + ["patience", "range_patience"]
    rules = {n: getattr(chosen, n) for n in names}
    return {n: (1e9 if v == float("inf") else v) for n, v in rules.items()}, report


if __name__ == "__main__":
    raise SystemExit(main())
