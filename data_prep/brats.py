"""Datalist for a BraTS glioma folder: one sub-folder per case, the modalities stacked as image channels.

Layouts (``--layout auto`` picks the one whose segmentation files are present):

* ``2015``: deepmedic's preprocessed BRATS 2015, ``<case>/{Flair,T1c,T1,T2}_subtrMeanDivStd.nii.gz`` and
  ``<case>/OTMultiClass.nii.gz``; labels 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing.
* ``2021``: ``BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz``; labels 1 necrotic core, 2 edema,
  4 enhancing (also BraTS 2020 ``BraTS20_Training_XXX``).
* ``2023``: ``BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t2f,t1n,t1c,t2w,seg}.nii.gz``; labels 1 necrotic core,
  2 edema, 3 enhancing.

The datalist records ``label_convention`` and the evaluation ``regions`` (whole tumour, tumour core,
enhancing) as lists of label ids::

    python data_prep/brats.py ../shared/data/BraTS2015_deepmedic -o brats.json --modalities Flair,T1c
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_prep/brats.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.common import (
    LayoutError,
    base_parser,
    make_datalist,
    parse_args,
    require_dir,
    run_cli,
    save,
    select,
    warn,
)
from monai_cbo.transforms.labels import BRATS_CONVENTIONS


@dataclass(frozen=True)
class Layout:
    """File names of one BraTS release: ``{case}`` is the case folder name, ``{modality}`` a modality token."""

    image: str
    seg: str
    modalities: tuple[str, ...]
    default: tuple[str, ...]
    labels: dict[str, str]

    def expected(self, name: str) -> str:
        """The layout's file pattern, for error messages."""
        image = self.image.format(case="<case>", modality="{" + ",".join(self.modalities) + "}")
        return f"{name}: <case>/{image} + <case>/{self.seg.format(case='<case>')}"


# the datalist spells out the regions the bundles evaluate (monai_cbo.transforms.BRATS_CONVENTIONS)
REGION_NAMES = {"WT": "whole_tumour", "TC": "tumour_core", "ET": "enhancing"}

LAYOUTS = {
    "2015": Layout(
        "{modality}_subtrMeanDivStd.nii.gz",
        "OTMultiClass.nii.gz",
        ("Flair", "T1c", "T1", "T2"),
        ("Flair", "T1c"),
        {"0": "background", "1": "necrosis", "2": "edema", "3": "non_enhancing", "4": "enhancing"},
    ),
    "2021": Layout(
        "{case}_{modality}.nii.gz",
        "{case}_seg.nii.gz",
        ("flair", "t1", "t1ce", "t2"),
        ("flair", "t1", "t1ce", "t2"),
        {"0": "background", "1": "necrotic_core", "2": "edema", "4": "enhancing"},
    ),
    "2023": Layout(
        "{case}-{modality}.nii.gz",
        "{case}-seg.nii.gz",
        ("t2f", "t1n", "t1c", "t2w"),
        ("t2f", "t1n", "t1c", "t2w"),
        {"0": "background", "1": "necrotic_core", "2": "edema", "3": "enhancing"},
    ),
}


def detect(dataset_dir: Path, case_dirs: Sequence[Path], layout: str = "auto") -> str:
    """The layout whose segmentation files exist in the case folders; LayoutError if none or several match."""
    names = list(LAYOUTS) if layout == "auto" else select("layout", [layout], ["auto", *LAYOUTS])
    found = [n for n in names if any((d / LAYOUTS[n].seg.format(case=d.name)).is_file() for d in case_dirs)]
    if len(found) == 1:
        return found[0]
    expected = [LAYOUTS[n].expected(n) for n in names]
    problem = (
        f"ambiguous BraTS layout in {dataset_dir}: case folders match {' and '.join(found)}; pass --layout"
        if found
        else f"no case folder in {dataset_dir} matches the BraTS layout {' or '.join(names)}"
    )
    raise LayoutError(problem, expected, [dataset_dir, *case_dirs[:1]])


def build(dataset_dir: str | Path, args: argparse.Namespace) -> dict:
    """The datalist of a BraTS folder: ``image`` lists the modality files in ``args.modalities`` order."""
    dataset_dir = require_dir(dataset_dir)
    case_dirs = sorted(d for d in dataset_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    name = detect(dataset_dir, case_dirs, args.layout)
    layout = LAYOUTS[name]
    modalities = select(f"{name} modality", args.modalities or layout.default, layout.modalities)
    cases, skipped = [], []
    for case_dir in case_dirs:
        case = case_dir.name
        files = [layout.image.format(case=case, modality=m) for m in modalities] + [layout.seg.format(case=case)]
        missing = [f for f in files if not (case_dir / f).is_file()]
        if missing and not args.skip_incomplete:
            problem = f"case {case} is missing {', '.join(missing)}; pass --skip-incomplete to leave such cases out"
            raise LayoutError(problem, [f"{case}/{f}" for f in files], [case_dir])
        if missing:
            skipped.append(f"{case} (no {', '.join(missing)})")
            continue
        cases.append({"case": case, "image": [f"{case}/{f}" for f in files[:-1]], "label": f"{case}/{files[-1]}"})
    if skipped:
        warn(f"skipped {len(skipped)} incomplete case(s): {'; '.join(skipped)}")
    return make_datalist(
        dataset_dir,
        cases,
        args,
        name=f"BraTS {name} ({dataset_dir.name})",
        description=f"BraTS glioma segmentation, {name} layout and labels; channels {', '.join(modalities)}",
        channels=modalities,
        labels=layout.labels,
        label_convention=name,
        regions={REGION_NAMES[r]: list(v) for r, v in BRATS_CONVENTIONS[name].items()},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: scan a BraTS folder and write its datalist."""
    parser = base_parser(__doc__, "the folder holding one sub-folder per case")
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS], help="BraTS release layout (auto)")
    parser.add_argument(
        "--modalities",
        type=lambda s: s.split(","),
        help="modalities in channel order, comma-separated (default: 2015 Flair,T1c; 2021 flair,t1,t1ce,t2; "
        "2023 t2f,t1n,t1c,t2w)",
    )
    parser.add_argument("--skip-incomplete", action="store_true", help="leave out cases missing a file, with a warning")
    args = parse_args(parser, argv)
    return save(build(args.dataset_dir, args), args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
