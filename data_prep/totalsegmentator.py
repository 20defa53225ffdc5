"""Datalist for TotalSegmentator-style cases with a class map, optionally restricted to some classes.

Layouts:

* official: ``sXXXX/ct.nii.gz`` + ``sXXXX/segmentations/<class>.nii.gz``, one binary mask per class. ``label`` is
  the list of the selected masks (one channel each) and ``labels`` numbers them 1..C in that order
  (``"label_format": "masks"``).
* pairs (``--image-pattern`` with ``--label-pattern``): globs relative to the folder with at most one ``*``,
  which pairs an image with its label map (``imagesTr/*_ct.nii.gz`` + ``labelsTr/*_seg.nii.gz``). Label ids follow
  the class map; ``labels`` keeps the selected ids and any other id counts as background
  (``"label_format": "label_map"``).

The class map (``{id: name}``, or ``{task: {id: name}}`` read at ``--task``) is ``--class-map`` or else the
folder's ``class_map*.json``::

    python data_prep/totalsegmentator.py ../shared/data/TotalSegmentator_examples -o ts.json \\
        --image-pattern example_ct_sm.nii.gz --label-pattern example_seg.nii.gz --classes spleen,kidney_left
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_prep/totalsegmentator.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import (
    LayoutError,
    base_parser,
    keep_classes,
    make_datalist,
    parse_args,
    require_dir,
    run_cli,
    save,
    select,
)

OFFICIAL = [
    "sXXXX/ct.nii.gz + sXXXX/segmentations/<class>.nii.gz",
    "or image/label maps via --image-pattern/--label-pattern",
]


def load_class_map(dataset_dir: Path, path: Path | None, task: str) -> dict[str, str] | None:
    """``{id: name}`` from ``path`` or the folder's single ``class_map*.json``; None when there is none."""
    if path is None:
        found = sorted(dataset_dir.glob("class_map*.json"))
        if len(found) > 1:
            raise ValueError(
                f"several class maps in {dataset_dir}: {', '.join(p.name for p in found)}; pass --class-map"
            )
        if not found:
            return None
        path = found[0]
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    mapping = data if all(isinstance(v, str) for v in data.values()) else data.get(task)
    if not isinstance(mapping, dict):
        raise ValueError(f"class map {path} has no task {task!r}; pass --task with one of {', '.join(data)}")
    return {str(int(k)): v for k, v in mapping.items()}


def pair_cases(dataset_dir: Path, image_pattern: str, label_pattern: str) -> list[dict[str, str]]:
    """Image/label pairs of two globs; the part matched by ``*`` in the image names the label."""
    if image_pattern.count("*") > 1 or label_pattern.count("*") != image_pattern.count("*"):
        raise ValueError(f"patterns need the same single '*' or none: {image_pattern!r}, {label_pattern!r}")
    head, star, tail = image_pattern.partition("*")
    expected = [f"images {image_pattern}", f"labels {label_pattern}"]
    images = sorted(p for p in dataset_dir.glob(image_pattern) if p.is_file() and not p.name.startswith("."))
    if not images:
        raise LayoutError(f"no file matches --image-pattern {image_pattern!r}", expected, [dataset_dir])
    cases = []
    for image in images:
        rel = image.relative_to(dataset_dir).as_posix()
        label = label_pattern.replace("*", rel[len(head) : len(rel) - len(tail)]) if star else label_pattern
        if not (dataset_dir / label).is_file():
            raise LayoutError(f"image {rel} has no label {label}", expected, [(dataset_dir / label).parent])
        cases.append({"image": rel, "label": label})
    return cases


def official_cases(dataset_dir: Path, subjects: Sequence[Path], classes: Sequence[str]) -> list[dict]:
    """``{"image": "sXXXX/ct.nii.gz", "label": [mask per class]}``; LayoutError naming a missing mask."""
    cases = []
    for subject in subjects:
        masks = [f"{subject.name}/segmentations/{name}.nii.gz" for name in classes]
        missing = [m for m in masks if not (dataset_dir / m).is_file()]
        if missing:
            raise LayoutError(
                f"case {subject.name} is missing {', '.join(missing)}", OFFICIAL, [subject / "segmentations"]
            )
        cases.append({"image": f"{subject.name}/ct.nii.gz", "label": masks})
    return cases


def build(dataset_dir: str | Path, args: argparse.Namespace) -> dict:
    """The datalist of a TotalSegmentator-style folder (layout chosen by whether patterns are given)."""
    dataset_dir = require_dir(dataset_dir)
    class_map = load_class_map(dataset_dir, args.class_map, args.task)
    if args.image_pattern or args.label_pattern:
        if not (args.image_pattern and args.label_pattern and class_map):
            raise ValueError("label maps need --image-pattern, --label-pattern and a class map (--class-map)")
        cases = pair_cases(dataset_dir, args.image_pattern, args.label_pattern)
        labels, label_format = keep_classes({"0": "background", **class_map}, args.classes), "label_map"
    else:
        subjects = sorted(d for d in dataset_dir.iterdir() if (d / "ct.nii.gz").is_file())
        if not subjects:
            raise LayoutError(f"no TotalSegmentator case in {dataset_dir}", OFFICIAL, [dataset_dir])
        known = (
            list(class_map.values())
            if class_map
            else sorted(p.name.removesuffix(".nii.gz") for p in (subjects[0] / "segmentations").glob("*.nii.gz"))
        )
        classes = select("class", args.classes or known, known)
        cases = official_cases(dataset_dir, subjects, classes)
        labels, label_format = {"0": "background", **{str(i): n for i, n in enumerate(classes, 1)}}, "masks"
    return make_datalist(
        dataset_dir,
        cases,
        args,
        name=f"TotalSegmentator ({dataset_dir.name})",
        description=f"TotalSegmentator-style {label_format} with {len(labels) - 1} class(es)",
        channels=args.channels,
        labels=labels,
        label_convention="totalsegmentator",
        label_format=label_format,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: scan a TotalSegmentator-style folder and write its datalist."""
    parser = base_parser(__doc__, "the folder of cases (sXXXX/ sub-folders or image/label files)")
    parser.add_argument("--class-map", type=Path, help="class map JSON (default: the folder's class_map*.json)")
    parser.add_argument("--task", default="total", help="section of a multi-task class map, e.g. total_mr (total)")
    parser.add_argument("--classes", type=lambda s: s.split(","), help="class names to keep, e.g. spleen,kidney_left")
    parser.add_argument("--image-pattern", help="glob of the images, e.g. 'imagesTr/*_ct.nii.gz'")
    parser.add_argument("--label-pattern", help="glob of the label maps, e.g. 'labelsTr/*_seg.nii.gz'")
    parser.add_argument("--channels", type=lambda s: s.split(","), default=["CT"], help="channel names (CT)")
    args = parse_args(parser, argv)
    return save(build(args.dataset_dir, args), args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
