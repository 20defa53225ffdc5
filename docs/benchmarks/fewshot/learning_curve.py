"""Few-shot learning curves of ``monai-cbo adapt`` (docs/benchmarks/fewshot.md), resumable.

For each structure, number of labelled volumes N and seed: adapt on N training volumes (``monai-cbo adapt``, the
bundle kept under ``--runs``), then score the bundle on the structure's held-out suite with ``monai-cbo
prompts-bench --bundle`` (a box on every slice, one key box, 3D box, three key boxes, automatic). N = 0 is
zero-shot LiteMedSAM. Every finished step is kept on disk and skipped when the command runs again (an interrupted
adapt resumes); the figures go to ``results.json`` beside this script::

    python docs/benchmarks/fewshot/learning_curve.py --structure hippocampus --n 0,1,2,4 --seeds 0 --minutes 10
    python docs/benchmarks/fewshot/learning_curve.py --n 4 --steps 49 --decoder-steps 1500   # exact steps
    python docs/benchmarks/fewshot/learning_curve.py --n 4 --steps 49 --decoder-steps 1500 --click-share 0.5
    python docs/benchmarks/fewshot/learning_curve.py --structure brats2015 --n 0,1,2,3 --seeds 0,1,2,3
    python docs/benchmarks/fewshot/learning_curve.py --structure spinal_cord --n 0,1 --seeds 0,1,2
    python docs/benchmarks/fewshot/learning_curve.py --structure nrrd_lesions --n 0,1 --seeds 0,1,2
    python docs/benchmarks/fewshot/learning_curve.py --structure totalseg_ct --n 0,1 --seeds 0

Paths: ``--data-root`` (default ../shared/data), ``--runs`` (default runs/fewshot; bundles, scores, caches).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

#: per structure: how its training volumes are listed, its classes, and the suite it is scored on
STRUCTURES = {
    "hippocampus": {
        "datalist": [
            "data_prep/msd.py",
            "{data}/Task04_Hippocampus",
            "--val-fraction",
            "0.2",
            "--test-fraction",
            "0.2",
            "--seed",
            "0",
        ],
        "dataset_dir": "{data}/Task04_Hippocampus",
        "classes": "1:anterior,2:posterior",
        "suite": HERE / "hippocampus_test.json",
    },
    # four cases: seed s trains on the N cases from the s-th on (in name order, wrapping round) and is scored on
    # the others; zero-shot on all four
    "brats2015": {
        "rotate": (REPO / "docs" / "benchmarks" / "propagation" / "suite.json", "brats2015"),
        "classes": "1+2+3+4:whole_tumour,1+3+4:tumour_core",
        "adapt_options": ["--channels", "0,1", "--modality", "mri"],
    },
    # one subject's three contrasts: N = 1 trains on one (seed s: the s-th in name order) and scores the other two
    "spinal_cord": {
        "rotate": (REPO / "docs" / "benchmarks" / "propagation" / "suite.json", "spinal_cord"),
        "classes": "1:cord",
        "adapt_options": ["--modality", "mri"],
    },
    # brain1, brain2 (MR) and breast1: N = 1 trains on one and scores the other two
    "nrrd_lesions": {
        "rotate": (REPO / "docs" / "benchmarks" / "propagation" / "suite.json", "nrrd_lesions"),
        "classes": "1:lesion",
        "adapt_options": ["--modality", "mri"],
    },
    # the one shared CT with organ labels; no other CT is shared (example_ct_sm is a crop of the same scan), so
    # its adapter is scored on another subject's MR and on the CT's organs it was not trained on
    "totalseg_ct": {
        "training": [
            {
                "case": "example_ct",
                "image": "TotalSegmentator_examples/example_ct.nii.gz",
                "label": "TotalSegmentator_examples/example_seg_fast_force_split.nii.gz",
            }
        ],
        "classes": "1:spleen,3:kidney_left,5:liver",
        "adapt_options": ["--modality", "ct"],
        "suite": HERE / "totalseg_scored.json",
    },
}


def _rotation(spec: dict, n: int, seed: int, data: Path, run: Path) -> tuple[dict | None, Path]:
    """For a rotating structure: the datalist of run (n, seed) and the suite of the cases it does not train on,
    written into ``run``."""
    suite_file, name = spec["rotate"]
    suite = json.loads(suite_file.read_text())
    entry = suite["sets"][name]
    cases = sorted(entry["cases"], key=lambda c: c["case"])
    if n >= len(cases):
        raise SystemExit(f"{name} has {len(cases)} cases: train on at most {len(cases) - 1}, and score on the rest")
    train = [cases[(seed + i) % len(cases)] for i in range(n)]
    scored = [{**c, "part": "validation"} for c in cases if c not in train]
    run.mkdir(parents=True, exist_ok=True)
    scored_suite = run / "suite.json"
    scored_suite.write_text(
        json.dumps(
            {
                "description": f"{name} cases not trained on by this run (of {suite_file.name}); paths relative to "
                "--data-root",
                "sets": {name: {**entry, "cases": scored}},
            },
            indent=1,
        )
    )
    datalist = {
        "dataset_dir": str(data),
        "training": [{"case": c["case"], "image": c["image"], "label": c["label"]} for c in train],
    }
    return (datalist if n else None), scored_suite


def _run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a", encoding="utf-8") as f:
        result = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}); see {log}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--structure", choices=sorted(STRUCTURES), default="hippocampus")
    p.add_argument("--n", default="0,1,2,4", help="numbers of labelled volumes (0: zero-shot)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train exact steps instead of --minutes (with --decoder-steps: the decoder stage's); the runs are "
        "named n{N}_s{seed}_steps{S}+{D}",
    )
    p.add_argument("--decoder-steps", type=int, default=0)
    p.add_argument(
        "--click-share",
        type=float,
        default=None,
        help="adapt's --click-share (simulated clicks in training); the runs are named ..._clicks{share}. Without "
        "it, the recipe's default (0.5 since 2026-12-06; the runs without the suffix in results.json were trained "
        "with 0, the default then: give --click-share 0 to repeat them)",
    )
    p.add_argument(
        "--decoder-share",
        type=float,
        default=None,
        help="with --minutes: adapt's --decoder-share (the decoder stage's share of the training time); the runs "
        "are named ..._dec{share}. Without it, the recipe's",
    )
    p.add_argument(
        "--decoder-slices",
        type=int,
        default=None,
        help="adapt's --decoder-slices (most slices the decoder stage trains on); the runs are named "
        "..._dslices{K}. Without it, the recipe's",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="adapt's --precision (training and its validation); the runs are named ..._{precision}. Without it, "
        "adapt's default (auto: training in bf16 on a CPU with native bf16 since 33175c4, fp32 before; each "
        "entry's 'precision' says which, see cpu_speed.md)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="adapt's --preset (e.g. adapter: the default adapter_cbo without CBO, to pair CBO against its base at "
        "each N); the runs are named ..._{preset}. Without it, the recipe's",
    )
    p.add_argument(
        "--auto-share",
        type=float,
        default=None,
        help="adapt's --auto-share (the share of steps with no prompt, training the class prompts); the runs are "
        "named ..._auto{share}. Without it, the recipe's",
    )
    p.add_argument(
        "--walk-boxes",
        type=float,
        default=None,
        help="adapt's --walk-boxes (the share of box steps prompted with the neighbouring slice's grown box); the "
        "runs are named ..._walk{share}. Without it, the recipe's",
    )
    p.add_argument(
        "--cbo-lr-mult",
        type=float,
        default=None,
        help="adapt's --cbo-lr-mult (CBO's learning rate as a multiple of the base rate); runs named ..._cbolr{x}",
    )
    p.add_argument(
        "--walk-prompt",
        action="store_true",
        help="adapt's --walk-prompt (with --walk-boxes: the walk's boxes flagged to the adapter); runs named "
        "..._walk{share}p",
    )
    p.add_argument(
        "--walk-stage",
        choices=("both", "decoder"),
        default=None,
        help="adapt's --walk-stage (with --walk-boxes: 'decoder' trains them in the decoder stage only); runs named "
        "..._walk{share}d",
    )
    p.add_argument(
        "--tag",
        default="",
        help="appended to the run's name (..._{tag}), to keep runs of another machine or setting apart",
    )
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--runs", default=str(REPO / "runs" / "fewshot"))
    args = p.parse_args(argv)
    if args.tag and (not re.fullmatch(r"[\w.+-]+", args.tag) or args.tag in (".", "..")):
        p.error(f"--tag {args.tag!r}: letters, digits and . + - _ only (it names a folder under --runs)")
    spec = STRUCTURES[args.structure]
    data, runs = Path(args.data_root).resolve(), Path(args.runs).resolve()
    if not data.is_dir():
        raise SystemExit(f"{data} does not exist: the curves need the shared data (--data-root)")
    root = runs / args.structure
    root.mkdir(parents=True, exist_ok=True)
    training = []
    if "datalist" in spec:  # a fixed split: seeds take the next volumes of its training part
        split = root / "split.json"
        if not split.exists():
            script, *rest = (a.format(data=data) for a in spec["datalist"])
            _run([sys.executable, script, *rest, "-o", str(split)], root / "split.log")
        training = json.loads(split.read_text())["training"]
    results_file = HERE / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    mine = results.setdefault(args.structure, {})
    cli = [sys.executable, "-m", "monai_cbo.cli"]
    budget = ["--minutes", str(args.minutes)]
    if args.steps is not None:
        budget = ["--steps", str(args.steps), "--decoder-steps", str(args.decoder_steps)]
    clicks = [] if args.click_share is None else ["--click-share", str(args.click_share)]
    precision = [] if args.precision is None else ["--precision", args.precision]
    recipe = [] if args.preset is None else ["--preset", args.preset]
    recipe += [] if args.auto_share is None else ["--auto-share", str(args.auto_share)]
    if args.decoder_share is not None and args.steps is None:
        budget += ["--decoder-share", str(args.decoder_share)]
    recipe += [] if args.decoder_slices is None else ["--decoder-slices", str(args.decoder_slices)]
    recipe += [] if args.walk_boxes is None else ["--walk-boxes", str(args.walk_boxes)]
    recipe += ["--walk-prompt"] if args.walk_prompt else []
    recipe += [] if args.walk_stage is None else ["--walk-stage", args.walk_stage]
    recipe += [] if args.cbo_lr_mult is None else ["--cbo-lr-mult", str(args.cbo_lr_mult)]
    for n in [int(v) for v in args.n.split(",")]:
        for seed in [int(v) for v in args.seeds.split(",")] if n else [0]:
            key = f"n{n}_s{seed}" + (f"_steps{args.steps}+{args.decoder_steps}" if args.steps is not None and n else "")
            key += f"_clicks{args.click_share:g}" if args.click_share is not None and n else ""
            key += f"_dec{args.decoder_share:g}" if args.decoder_share is not None and args.steps is None and n else ""
            key += f"_dslices{args.decoder_slices}" if args.decoder_slices is not None and n else ""
            key += f"_{args.precision}" if args.precision is not None and n else ""
            key += f"_{args.preset}" if args.preset is not None and n else ""
            key += f"_auto{args.auto_share:g}" if args.auto_share is not None and n else ""
            key += f"_walk{args.walk_boxes:g}" if args.walk_boxes is not None and n else ""
            key += "d" if args.walk_stage == "decoder" and n else ""
            key += "p" if args.walk_prompt and n else ""
            key += f"_cbolr{args.cbo_lr_mult:g}" if args.cbo_lr_mult is not None and n else ""
            key += f"_{args.tag}" if args.tag else ""
            run = root / key
            bundle = run / "bundle"
            if "rotate" in spec:
                listed, suite = _rotation(spec, n, seed, data, run)
            elif "training" in spec:  # one fixed training list: seeds change the initialisation and sampling only
                if n > len(spec["training"]):
                    raise SystemExit(f"{args.structure} has {len(spec['training'])} training volume(s): --n {n}")
                listed = {"dataset_dir": str(data), "training": spec["training"][:n]}
                suite = spec["suite"]
            else:
                first = training[(seed * n) % len(training) :][:n]  # seed s: the next n volumes of the split
                listed = {"dataset_dir": spec["dataset_dir"].format(data=data), "training": first}
                suite = spec["suite"]
            if n and not (bundle / "configs" / "metadata.json").exists():
                run.mkdir(exist_ok=True)
                datalist = run / "datalist.json"
                datalist.write_text(json.dumps(listed, indent=1))
                resume = ["--resume"] if (bundle / ".adapt" / "state.pt").exists() else []
                start = time.time()
                _run(
                    [*cli, "adapt", str(datalist), "-o", str(bundle), "--classes", spec["classes"], "--seed",
                     str(seed), *budget, *clicks, *precision, *recipe, *resume, *spec.get("adapt_options", [])],
                    run / "adapt.log",
                )  # fmt: skip
                print(f"  adapted in {(time.time() - start) / 60:.1f} min", flush=True)
            score = run / "score"
            if not (score / "summary.json").exists():
                run.mkdir(exist_ok=True)
                source = ["--bundle", str(bundle)] if n else []
                _run(
                    [*cli, "prompts-bench", str(suite), "-o", str(score), "--data-root", str(data),
                     "--cache-dir", str(root / "embeddings"), *source],
                    run / "score.log",
                )  # fmt: skip
            summary = json.loads((score / "summary.json").read_text())["parts"]["validation"]
            scored = json.loads(Path(suite).read_text())["sets"]
            entry = {"n": n, "seed": seed, "scores": summary}
            entry["scored_cases"] = sorted(c["case"] for e in scored.values() for c in e["cases"])
            if n:
                record = json.loads((bundle / "models" / "adapter.json").read_text())
                entry.update(
                    training_cases=record["training_cases"],
                    steps=record["steps"],
                    decoder_steps=record.get("decoder_steps"),
                    recipe=record.get("recipe"),
                    training_minutes=round(record["training_seconds"] / 60, 2),
                    stopped=record["stopped"],
                    validation=record["validation_dice"],
                    stop_sweep=record["propagation"],
                    precision=record.get("precision"),
                    machine=record["machine"],
                )
            mine[key] = entry
            results_file.write_text(json.dumps(results, indent=1) + "\n")
            print(
                f"  {key}: "
                + json.dumps({s: {p: round(v["dice"], 3) for p, v in d.items()} for s, d in summary.items()})
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
