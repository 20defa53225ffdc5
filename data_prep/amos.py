"""Datalist for AMOS 2022 (abdominal multi-organ, 15 classes, CT and MRI).

Layout: ``imagesTr/amos_XXXX.nii.gz`` with ``labelsTr/amos_XXXX.nii.gz`` and ``dataset.json``, whose label names
are used when present (else the 15 standard names). Cases numbered 500 and up are MRI, the others CT;
``--modality`` keeps one of the two, optionally with ``--classes``::

    python data_prep/amos.py /data/amos22 -o amos_ct.json --modality CT --val-fraction 0.2 --test-fraction 0.2
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_prep/amos.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import (
    base_parser,
    find_pairs,
    keep_classes,
    make_datalist,
    parse_args,
    read_dataset_json,
    require_dir,
    run_cli,
    save,
)

CLASSES = (
    "background",
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
    "duodenum",
    "urinary_bladder",
    "prostate_uterus",
)
FIRST_MRI = 500


def is_mri(image: str) -> bool:
    """Whether an AMOS image (``imagesTr/amos_XXXX.nii.gz``) is MRI: case numbers from 500 on are."""
    match = re.search(r"amos_(\d+)", image)
    if match is None:
        raise ValueError(f"{image} is not named amos_XXXX.nii.gz; cannot tell CT from MRI")
    return int(match[1]) >= FIRST_MRI


def build(dataset_dir: str | Path, args: argparse.Namespace) -> dict:
    """The datalist of the AMOS cases of ``args.modality``, with the class names of ``dataset.json``."""
    dataset_dir = require_dir(dataset_dir)
    meta = read_dataset_json(dataset_dir)
    pairs = find_pairs(dataset_dir, example="amos_XXXX.nii.gz")
    cases = [case for case in pairs if is_mri(case["image"]) == (args.modality == "MRI")]
    labels = meta.get("labels", {str(i): name for i, name in enumerate(CLASSES)})
    return make_datalist(
        dataset_dir,
        cases,
        args,
        name=meta.get("name", "AMOS"),
        description=f"AMOS abdominal multi-organ segmentation, {args.modality} cases",
        channels=[args.modality],
        labels=keep_classes(labels, args.classes),
        label_convention="amos",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: scan an AMOS folder and write the datalist of one modality."""
    parser = base_parser(__doc__, "the AMOS folder with imagesTr/, labelsTr/ and dataset.json")
    parser.add_argument("--modality", choices=["CT", "MRI"], default="CT", help="which cases to keep (CT)")
    parser.add_argument("--classes", type=lambda s: s.split(","), help="class names to keep (from dataset.json)")
    args = parse_args(parser, argv)
    return save(build(args.dataset_dir, args), args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
