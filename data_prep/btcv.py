"""Datalist for BTCV (Multi-Atlas Labeling Beyond the Cranial Vault, abdomen): 13 organs on CT.

Layout: ``imagesTr/imgXXXX.nii.gz`` with ``labelsTr/labelXXXX.nii.gz``; the label ids carry the standard BTCV
organ names (1 spleen ... 13 left adrenal gland), optionally restricted with ``--classes``::

    python data_prep/btcv.py /data/BTCV -o btcv.json --classes spleen,liver --val-fraction 0.2 --test-fraction 0.2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_prep/btcv.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import (
    base_parser,
    find_pairs,
    keep_classes,
    make_datalist,
    parse_args,
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
    "portal_and_splenic_vein",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
)


def build(dataset_dir: str | Path, args: argparse.Namespace) -> dict:
    """The datalist of a BTCV folder with the standard organ names."""
    dataset_dir = require_dir(dataset_dir)
    cases = find_pairs(dataset_dir, lambda name: name.replace("img", "label", 1), example="img<XXXX>.nii.gz")
    return make_datalist(
        dataset_dir,
        cases,
        args,
        name="BTCV",
        description="Multi-Atlas Labeling Beyond the Cranial Vault, abdominal CT with 13 organs",
        channels=["CT"],
        labels=keep_classes({str(i): name for i, name in enumerate(CLASSES)}, args.classes),
        label_convention="btcv",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: scan a BTCV folder and write its datalist."""
    parser = base_parser(__doc__, "the BTCV folder with imagesTr/ and labelsTr/")
    parser.add_argument("--classes", type=lambda s: s.split(","), help=f"organs to keep, from {', '.join(CLASSES[1:])}")
    args = parse_args(parser, argv)
    return save(build(args.dataset_dir, args), args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
