"""Ship a bundle's trained adapter: copy it into ``bundles/<bundle>/models/`` with the record of how it was made.

Run after the bundle's own ``training`` and evaluation (``train.json`` + ``evaluate.json``) on a datalist::

    python bundles/ship_adapter.py hippocampus_mri_cbo runs/ship/hippocampus --datalist runs/hippocampus.json \\
        --data "MSD Task04_Hippocampus, 208 cases in ../shared/data" --command "python -m monai.bundle run ..."

It writes ``models/adapter.pt`` (the run's ``models/best_adapter.pt`` with its float tensors stored as float16:
half the size, about 8 MB for LiteMedSAM, whose mask decoder trains in full; loading casts them back to the
model's float32, and the recorded Dice is reproduced from this file by the tests) and ``models/adapter.json``:
what it was trained on (case counts, the datalist's split), the training command, seed, epochs and time (from the
run's log), the machine, the held-out cases (the datalist's test split: the cases a demo or a test may score
without having trained on them), the mean test Dice per class with box prompts (``eval/``) and with none
(``eval/auto/``), and every test case's Dice. ``monai-cbo bundles`` prints this record, the real-data demo takes
its held-out cases, and ``tests/test_shipped_adapters.py`` reproduces its per-case Dice.

An adapter trained on from the shipped one by a later stage (``monai-cbo bench --init-adapter
bundles/<bundle>/models/adapter.pt --steps 0 --decoder-steps N``: the decoder stage, which the bundles' training
has not) replaces it with ``--stage COMMAND --stage-seconds S --overwrite``, from a folder holding the staged
adapter as ``models/best_adapter.pt`` with its evaluation. The stage must have started from the shipped file (the
adapter's ``init_adapter`` SHA-256 is checked against the record); the new record keeps the first run's command,
epochs and time and any earlier stages, adds this stage's command, time and starting SHA-256 to ``stages``, and
its ``training_seconds`` is the sum.

An existing adapter is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


def _dice(path: Path) -> dict[str, dict[str, float]]:
    """case -> class -> Dice of a bundle evaluation's ``metrics_per_case.csv``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the bundle's evaluate.json on the run first")
    out: dict[str, dict[str, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["case"], {})[row["class"]] = round(float(row["dice"]), 4)
    return out


def _means(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    classes = sorted({c for d in per_case.values() for c in d})
    means = {
        c: sum(d[c] for d in per_case.values() if c in d) / sum(c in d for d in per_case.values()) for c in classes
    }
    means["mean"] = sum(means.values()) / len(means)
    return {k: round(v, 4) for k, v in means.items()}


def _training_time(log: Path | None) -> dict[str, object]:
    """Epochs and wall time of the training run, from its log: the trainer's "Epoch[k] Complete" lines, whose
    times include the validation run at the end of an epoch."""
    if log is None or not log.is_file():
        return {}
    text = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    taken = re.findall(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):(\d+)", text)
    if not taken:
        return {}
    seconds = sum(int(h) * 3600 + int(m) * 60 + int(s) for _, h, m, s in taken)
    return {"epochs": max(int(e) for e, *_ in taken), "training_seconds": seconds}


def _stage_record(models: Path, adapter: Path, meta: dict, command: str, seconds: float, error) -> dict:
    """The training part of the record of a staged adapter: the shipped record's first run (command, epochs) and
    stages with this one added, and the total time; after checking that the stage started from the shipped file."""
    shipped = models / "adapter.json"
    if not shipped.is_file():
        error(f"--stage trains on a shipped adapter, but {shipped} does not exist: ship the first run first")
    previous = json.loads(shipped.read_text(encoding="utf-8"))
    started = ((meta.get("metadata") or {}).get("init_adapter") or {}).get("sha256")
    if started != previous.get("sha256"):
        error(
            f"{adapter} did not start from the shipped {models / 'adapter.pt'} (its init_adapter SHA-256 is "
            f"{started}, the record's {previous.get('sha256')}): "
            f"run the stage with --init-adapter {models / 'adapter.pt'}"
        )
    stage = {"command": command, "seconds": round(seconds), "started_from_sha256": started}
    return {
        **{k: previous[k] for k in ("command", "epochs") if k in previous},
        "training_seconds": previous.get("training_seconds", 0) + stage["seconds"],
        "stages": [*previous.get("stages", []), stage],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="bundle name under bundles/")
    parser.add_argument("run", type=Path, help="the training run's output_dir (models/, eval/, eval/auto/)")
    parser.add_argument("--datalist", type=Path, required=True, help="the datalist it was trained and tested on")
    parser.add_argument("--data", required=True, help="what the data is, in words (origin, case count, licence)")
    parser.add_argument("--command", help="the training command, as run (not with --stage: the record keeps it)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (default 0, the bundles' default)")
    parser.add_argument("--log", type=Path, default=None, help="the training log (for epochs and time)")
    parser.add_argument("--machine", default=None, help="the machine, in words (default: platform and CPU count)")
    parser.add_argument(
        "--stage", default=None, help="the command of a later stage that trained the shipped adapter on into this one"
    )
    parser.add_argument("--stage-seconds", type=float, default=None, help="that stage's wall time")
    parser.add_argument("--note", default=None, help="anything a user must know (for example: a smoke model)")
    parser.add_argument("--overwrite", action="store_true", help="replace a shipped adapter")
    args = parser.parse_args(argv)

    models = ROOT / args.bundle / "models"
    if not (ROOT / args.bundle / "configs" / "metadata.json").is_file():
        parser.error(f"no bundle {args.bundle} under {ROOT}")
    adapter = args.run / "models" / "best_adapter.pt"
    if not adapter.is_file():
        parser.error(f"{adapter} does not exist: train the bundle into {args.run} first")
    if (models / "adapter.pt").exists() and not args.overwrite:
        parser.error(f"{models / 'adapter.pt'} exists; pass --overwrite to replace it")
    if (args.stage is None) != (args.stage_seconds is None):
        parser.error("--stage and --stage-seconds go together: the stage's command and its wall time")
    if args.stage is None and not args.command:
        parser.error("--command is required: the training command, as run")
    if args.stage is not None and args.command:
        parser.error("--command goes with a first run; with --stage the shipped record's command is kept")
    datalist = json.loads(args.datalist.read_text(encoding="utf-8"))
    boxes, auto = _dice(args.run / "eval" / "metrics_per_case.csv"), {}
    if (args.run / "eval" / "auto").is_dir():
        auto = _dice(args.run / "eval" / "auto" / "metrics_per_case.csv")
    meta = torch.load(adapter, map_location="cpu", weights_only=True)
    if args.stage is None:
        training = {"command": args.command, **_training_time(args.log)}
    else:
        training = _stage_record(models, adapter, meta, args.stage, args.stage_seconds, parser.error)
    record = {
        "trained_on": (
            f"{args.data}: trained on the {len(datalist['training'])} training cases, validated on "
            f"{len(datalist.get('validation', []))}, tested on {len(datalist.get('test', []))} held out"
        ),
        "note": args.note,
        "command": training.get("command"),
        "seed": args.seed,
        "split": datalist.get("split"),
        "model": meta.get("model_name"),
        "preset": (meta.get("peft_config") or {}).get("preset"),
        "classes": (meta.get("class_prompts") or {}).get("names"),
        **{k: training[k] for k in ("epochs", "training_seconds", "stages") if k in training},
        "machine": args.machine or f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "shipped": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "stored": "float16 (trained in float32)",
        "sha256": None,
        "held_out_cases": [e.get("case") or Path(e["image"]).name.split(".")[0] for e in datalist.get("test", [])],
        "test_dice": {**({"automatic": _means(auto)} if auto else {}), "boxes": _means(boxes)},
        "test_cases": {"automatic": auto, "boxes": boxes} if auto else {"boxes": boxes},
    }
    models.mkdir(exist_ok=True)
    meta["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in meta["state_dict"].items()}
    tmp = models / ".adapter.pt.tmp"
    torch.save(meta, tmp)
    os.replace(tmp, models / "adapter.pt")
    record["sha256"] = hashlib.sha256((models / "adapter.pt").read_bytes()).hexdigest()
    (models / "adapter.json").write_text(
        json.dumps({k: v for k, v in record.items() if v is not None}, indent=2) + "\n", encoding="utf-8"
    )
    print(f"shipped {models / 'adapter.pt'} ({(models / 'adapter.pt').stat().st_size / 1e6:.1f} MB) with its record")
    for mode, dice in record["test_dice"].items():
        print(f"  test Dice ({mode}): " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
