"""``monai-cbo demo``: the embedded synthetic demo, and the real-data demo on an MSD hippocampus folder.

Every step is a command a user could type (printed before it runs): ``data_prep`` scripts, ``monai-cbo
segment`` and ``python -m monai.bundle run``, so the demo exercises the same paths as real work and shows them.

The real-data demo does not ship volumes (the project never redistributes the data it is tested on): it reads
the cases the hippocampus bundle's adapter was *not* trained on (``held_out_cases`` in its
``models/adapter.json``) from an MSD Task04 folder the user has (``imagesTr/``, ``labelsTr/``).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bundles import bundle_command, bundle_flags, load_bundle

__all__ = ["hippocampus_demo", "pick_held_out", "synthetic_demo"]

REPO = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = "hippocampus_mri_cbo"


def _step(title: str, cmd: Sequence[str]) -> None:
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    code = subprocess.run(list(cmd), cwd=REPO).returncode
    if code:
        raise SystemExit(f"monai-cbo demo: step '{title}' failed (exit code {code}); see its output above")


def _checkout(*parts: str) -> Path:
    path = REPO.joinpath(*parts)
    if not path.exists() or not (REPO / "data_prep").is_dir():
        raise FileNotFoundError(f"{path} not found: run the demo from a source checkout (pip install -e .)")
    return path


def synthetic_demo(out: str | Path, cases: int = 6, epochs: int = 4, preset: str = "lora_cbo", seed: int = 0) -> int:
    """Make synthetic CT cases, train the spleen bundle for a short CPU schedule, evaluate the best adapter."""
    configs = _checkout("bundles", "spleen_ct_cbo", "configs")
    out = Path(out).resolve()
    data = out / "data"
    start = time.perf_counter()
    _step(
        "1/3 demo data: synthetic CT with a spleen-like organ (label 1)",
        [
            sys.executable,
            "data_prep/make_demo_data.py",
            str(data),
            "-o",
            str(data / "datalist.json"),
            "-n",
            str(cases),
            "--seed",
            str(seed),
            "--val-fraction",
            "0.17",
            "--test-fraction",
            "0.17",
            "--overwrite",
        ],
    )
    # a short CPU schedule: one volume per step, 2 slices each (batches of 2D slices are not faster per slice
    # on a CPU, and a smaller step shows progress sooner)
    common = bundle_flags(
        dataset_dir=data,
        output_dir=out,
        preset=preset,
        seed=seed,
        max_epochs=epochs,
        val_interval=max(1, epochs // 2),
        batch_size=1,
        slices_per_volume=2,
        # box prompts only: 32 slices do not train class prompts (automatic Dice stays 0 and validation would
        # pick its adapter by it); automatic segmentation needs a real schedule, see docs/benchmarks/automatic.md
        auto_share=0,
    )
    _step(
        f"2/3 train the spleen bundle: LiteMedSAM + {preset}, {epochs} epochs",
        bundle_command(configs, ["train.json"], common, "training"),
    )
    _step(
        "3/3 evaluate the best adapter on the held-out case: NIfTI masks + Dice table",
        bundle_command(configs, ["train.json", "evaluate.json"], [*common, "--overwrite", "true"], None),
    )
    print(
        f"\ndone in {time.perf_counter() - start:.0f} s. Outputs in {out}:\n"
        f"  data/                      synthetic cases + datalist.json\n"
        f"  models/best_adapter.pt     adapter-only checkpoint (best validation Dice)\n"
        f"  eval/*_seg.nii.gz          masks in the input geometry (box prompts from the label)\n"
        f"  eval/metrics_per_case.csv  Dice / HD95 / NSD per case; eval/metrics_summary.md\n"
        f"  tensorboard/               training curves"
    )
    return 0


def pick_held_out(data_dir: str | Path, held_out: Sequence[str], count: int) -> list[str]:
    """The first ``count`` of the adapter's held-out cases that ``data_dir`` has with a label.

    Raises:
        FileNotFoundError: ``data_dir`` is not an MSD Task04 folder, or has fewer than ``count`` of them (the
            message names the folder, the files looked for and where the data comes from).
    """
    data_dir = Path(data_dir)
    found = [
        c
        for c in held_out
        if (data_dir / "imagesTr" / f"{c}.nii.gz").is_file() and (data_dir / "labelsTr" / f"{c}.nii.gz").is_file()
    ]
    if len(found) < count:
        raise FileNotFoundError(
            f"{data_dir}: the real-data demo needs {count} labelled cases the shipped adapter was not trained on "
            f"(imagesTr/<case>.nii.gz and labelsTr/<case>.nii.gz for cases such as {', '.join(held_out[:3])}) and "
            f"found {len(found)}; point --data at an MSD Task04_Hippocampus folder (http://medicaldecathlon.com/, "
            "CC-BY-SA 4.0)"
        )
    return found[:count]


def _read_dice(path: Path, names: dict[str, str]) -> dict[tuple[str, str], float]:
    """(case, class name) -> Dice of a metrics CSV; ``names`` renames label values (prompted runs score by value)."""
    with path.open(newline="", encoding="utf-8") as f:
        return {(r["case"], names.get(r["class"], r["class"])): float(r["dice"]) for r in csv.DictReader(f)}


def _overlay(image_path: Path, label_path: Path, masks: Sequence[Path], pre, out: Path) -> None:
    """One PNG per case: a row per mask (slice | ground truth | prediction) on the slice where the label is
    largest, in the view the model saw."""
    from .bench.images import encode_png, largest_slice_overlay
    from .inferers.volume import load_volume, prepare_volume
    from .utils import write_atomic

    volume, geometry = prepare_volume(load_volume(str(image_path)), pre)
    sliced = lambda p: geometry.to_sliced(np.rint(load_volume(str(p))[0].numpy()).astype(np.int64)) > 0  # noqa: E731
    stacked, _ = largest_slice_overlay(volume[0].numpy(), sliced(label_path), [sliced(m) for m in masks])
    png = encode_png(stacked)
    write_atomic(out, lambda tmp: tmp.write_bytes(png), overwrite=True)


def hippocampus_demo(
    data_dir: str | Path,
    out: str | Path,
    samples: int = 5,
    epochs: int = 10,
    preset: str = "lora_cbo",
    seed: int = 0,
) -> int:
    """The real-data demo: the hippocampus bundle's shipped adapter, automatically, on held-out MSD cases.

    Takes ``samples`` (>= 4) cases the shipped adapter never saw and
      1. segments all of them with no prompt (``monai-cbo segment --bundle hippocampus_mri_cbo --auto``);
      2. segments them with zero-shot LiteMedSAM and a box per slice from the label, for comparison;
      3. fine-tunes ``preset`` through the bundle's own training (box prompts) on two of them, validating on a
         third, and
      4. scores that adapter with box prompts on the others (bundle evaluation);
    then prints one Dice table and writes a PNG overlay per case. Its own output folder is replaced.
    """
    if samples < 4:
        raise ValueError(
            f"--samples {samples}: the real-data demo needs at least 4 (2 to fine-tune, 1 to validate, "
            "1 or more to score)"
        )
    info = load_bundle(HIPPOCAMPUS)
    held_out = info.record.get("held_out_cases") or []
    if info.adapter is None or not held_out:
        raise FileNotFoundError(
            f"bundle {HIPPOCAMPUS} ships no trained adapter with its held-out cases ({info.adapter_path}, "
            f"{info.path / 'models' / 'adapter.json'}): the real-data demo needs both"
        )
    cases = pick_held_out(data_dir, held_out, samples)
    configs = _checkout("bundles", HIPPOCAMPUS, "configs")
    out = Path(out).resolve()
    data = out / "data"
    start = time.perf_counter()

    print(f"\n== 1/5 stage {len(cases)} cases the shipped adapter was not trained on: {', '.join(cases)}")
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True, exist_ok=True)
        for c in cases:
            shutil.copyfile(Path(data_dir) / sub / f"{c}.nii.gz", data / sub / f"{c}.nii.gz")
    entry = lambda c: {"case": c, "image": f"imagesTr/{c}.nii.gz", "label": f"labelsTr/{c}.nii.gz"}  # noqa: E731
    train, val, test = cases[:2], cases[2:3], cases[3:]
    datalist = {
        "name": "hippocampus demo",
        "description": f"{len(cases)} MSD Task04 cases held out from the shipped adapter's training",
        "labels": {"0": "background", "1": "anterior", "2": "posterior"},
        "training": [entry(c) for c in train],
        "validation": [entry(c) for c in val],
        "test": [entry(c) for c in test],
    }
    (data / "datalist.json").write_text(json.dumps(datalist, indent=2) + "\n", encoding="utf-8")

    cli = [
        sys.executable,
        "-m",
        "monai_cbo.cli",
        "segment",
        str(data / "imagesTr"),
        "--label",
        str(data / "labelsTr"),
        "--overwrite",
    ]
    _step(
        f"2/5 segment them with no prompt: the shipped adapter of {HIPPOCAMPUS}",
        [*cli, "-o", str(out / "shipped_auto"), "--bundle", HIPPOCAMPUS, "--auto"],
    )
    _step(
        "3/5 for comparison, zero-shot LiteMedSAM with a box on every slice taken from the label",
        [*cli, "-o", str(out / "zeroshot_boxes"), "--modality", "mri"],
    )
    options = bundle_flags(
        dataset_dir=data,
        output_dir=out / "finetune",
        preset=preset,
        seed=seed,
        max_epochs=epochs,
        val_interval=epochs,
        batch_size=1,
        auto_share=0,
    )
    _step(
        f"4/5 fine-tune {preset} from scratch on {', '.join(train)} (box prompts, {epochs} epochs)",
        bundle_command(configs, ["train.json"], options, "training"),
    )
    _step(
        f"5/5 score that adapter with box prompts on {', '.join(test)}",
        bundle_command(configs, ["train.json", "evaluate.json"], [*options, "--overwrite", "true"], None),
    )

    names = {str(k): v for k, v in datalist["labels"].items()}
    auto = _read_dice(out / "shipped_auto" / "metrics.csv", names)
    zero = _read_dice(out / "zeroshot_boxes" / "metrics.csv", names)
    tuned = _read_dice(out / "finetune" / "eval" / "metrics_per_case.csv", names)
    columns = ("shipped, no prompt", "zero-shot, boxes", f"{preset}, boxes")
    lines = [f"{'case':<18}{'class':<11}" + "".join(f"{c:>22}" for c in columns)]
    scored: dict[str, list[float]] = {c: [] for c in columns}
    every: dict[str, list[float]] = {c: [] for c in columns}
    for case, cls in sorted(auto):
        row = [auto.get((case, cls)), zero.get((case, cls)), tuned.get((case, cls))]
        for c, v in zip(columns, row, strict=True):
            if v is not None:
                every[c].append(v)
                if case in test:
                    scored[c].append(v)
        lines.append(f"{case:<18}{cls:<11}" + "".join(f"{'-' if v is None else f'{v:.3f}':>22}" for v in row))
    for title, means in (("mean, scored cases", scored), ("mean, all cases", every)):
        cells = [
            f"{np.mean(v):.3f}" if v and (title == "mean, scored cases" or c != columns[2]) else "-"
            for c, v in means.items()
        ]
        lines.append(f"{title:<29}" + "".join(f"{v:>22}" for v in cells))
    table = "\n".join(lines)
    (out / "dice.txt").write_text(table + "\n", encoding="utf-8")

    pre = info.task.preprocess
    overlays = out / "overlays"
    overlays.mkdir(exist_ok=True)
    for c in cases:
        _overlay(
            data / "imagesTr" / f"{c}.nii.gz",
            data / "labelsTr" / f"{c}.nii.gz",
            [out / "shipped_auto" / f"{c}_seg.nii.gz", out / "zeroshot_boxes" / f"{c}_seg.nii.gz"],
            pre,
            overlays / f"{c}.png",
        )
    print(
        f"\n3D Dice per case and class ('-': not scored; the fine-tuned adapter was trained on {', '.join(train)} "
        f"and validated on {', '.join(val)}):\n{table}\n\n"
        f"done in {time.perf_counter() - start:.0f} s. Outputs in {out}:\n"
        "  shipped_auto/*_seg.nii.gz   masks with no prompt (the shipped adapter); metrics.csv\n"
        "  zeroshot_boxes/             zero-shot LiteMedSAM with label boxes; metrics.csv\n"
        "  finetune/models/            the adapter fine-tuned here; finetune/eval/ its masks and scores\n"
        "  overlays/<case>.png         the largest slice: top row no prompt, bottom row zero-shot boxes\n"
        "                              (slice | ground truth | prediction)\n"
        "  dice.txt                    the table above\n"
        "Data: MSD Task04_Hippocampus (Antonelli et al. 2022), CC-BY-SA 4.0."
    )
    return 0
