"""Datalist for a Medical Segmentation Decathlon task folder (Task09_Spleen, Task04_Hippocampus, ...).

Layout: ``imagesTr/<case>.nii.gz`` with ``labelsTr/<case>.nii.gz`` (macOS ``._*`` files are skipped) and an
optional ``dataset.json``. Label names come from ``--labels``, else ``dataset.json``, else the values of the
first label file; channel names from ``--channels``, else the ``modality`` entry of ``dataset.json``::

    python data_prep/msd.py ../shared/data/Task04_Hippocampus -o hippocampus.json \\
        --labels 0:background,1:anterior,2:posterior --val-fraction 0.2 --test-fraction 0.2 --seed 0

``--download Task09_Spleen`` needs internet: it fetches the official MSD tarball with MONAI
(``monai.apps.download_and_extract``, checksum-verified) into DATASET_DIR, then converts DATASET_DIR/Task09_Spleen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_prep/msd.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import (
    base_parser,
    find_pairs,
    make_datalist,
    parse_args,
    parse_label_names,
    read_dataset_json,
    require_dir,
    run_cli,
    save,
    select,
    unique_labels,
    warn,
)


def download(root: Path, task: str) -> Path:
    """Download and extract the MSD ``task`` into ``root / task`` with MONAI (needs internet); return that folder."""
    from monai.apps import DecathlonDataset, download_and_extract

    select("MSD task", [task], list(DecathlonDataset.resource))
    root.mkdir(parents=True, exist_ok=True)
    url, md5 = DecathlonDataset.resource[task], DecathlonDataset.md5[task]
    download_and_extract(url, root / f"{task}.tar", root, hash_val=md5, hash_type="md5")
    return root / task


def build(
    dataset_dir: str | Path,
    args: argparse.Namespace,
    labels: dict[str, str] | None = None,
    channels: Sequence[str] | None = None,
) -> dict:
    """The datalist of an MSD-layout folder; ``labels`` / ``channels`` override ``dataset.json``."""
    dataset_dir = require_dir(dataset_dir)
    cases = find_pairs(dataset_dir)
    meta = read_dataset_json(dataset_dir)
    if labels is None:
        labels = meta.get("labels")
    if labels is None:
        first = dataset_dir / cases[0]["label"]
        labels = unique_labels(first)
        warn(f"no dataset.json: label names {labels} come from the values of {first}; pass --labels to name them")
    if channels is None:
        modality = meta.get("modality", {})
        channels = [modality[k] for k in sorted(modality, key=int)]
    if not channels:
        warn("channel names unknown (no dataset.json modality); pass --channels, e.g. --channels MRI")
    return make_datalist(
        dataset_dir,
        cases,
        args,
        name=meta.get("name", dataset_dir.name),
        description=meta.get("description", f"MSD-layout folder {dataset_dir.name}"),
        channels=channels,
        labels=labels,
        label_convention="msd",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: scan (or download, then scan) an MSD task folder and write its datalist."""
    parser = base_parser(__doc__, "the MSD task folder (with --download: the folder to download into)")
    parser.add_argument(
        "--labels", type=parse_label_names, help="label names as id:name pairs, e.g. 0:background,1:liver"
    )
    parser.add_argument("--channels", type=lambda s: s.split(","), help="channel names, comma-separated, e.g. CT")
    parser.add_argument(
        "--download", metavar="TASK", help="first download this MSD task, e.g. Task09_Spleen (internet)"
    )
    args = parse_args(parser, argv)
    dataset_dir = download(args.dataset_dir, args.download) if args.download else args.dataset_dir
    return save(build(dataset_dir, args, args.labels, args.channels), args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
