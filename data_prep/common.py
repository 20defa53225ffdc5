"""The shared helper of the dataset scripts: arguments, image/label pairing, seeded split, datalist writing.

Every script writes one datalist, a JSON file that MONAI's ``load_decathlon_datalist`` reads (pass
``base_dir=datalist["dataset_dir"]``)::

    {"name": str, "description": str, "dataset_dir": "/abs/path/of/the/dataset/folder",
     "channels": ["CT"],                      # image channel names, in the order they are stacked
     "labels": {"0": "background", "1": "spleen", ...},   # ids to use; any other id counts as background
     "label_convention": "msd" | "2015" | "2021" | "2023" | "btcv" | "amos" | "totalsegmentator",
     "split": {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2},
     "training": [{"case": "a", "image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],
     "validation": [...], "test": [...]}

Paths are relative to ``dataset_dir``; a multi-modal ``image`` is a list of files, one per channel. ``case`` names
the case in outputs (masks, metric tables), which matters where every case's files share names (BraTS 2015).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_cbo.inferers.volume import case_name
from monai_cbo.utils import check_overwrite, write_atomic

__all__ = [
    "LayoutError",
    "base_parser",
    "find_pairs",
    "keep_classes",
    "make_datalist",
    "nifti_files",
    "parse_args",
    "parse_label_names",
    "read_dataset_json",
    "require_dir",
    "run_cli",
    "save",
    "select",
    "split_cases",
    "unique_labels",
    "warn",
    "write_datalist",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _listing(folder: Path, limit: int = 8) -> list[str]:
    """The first ``limit`` entries of ``folder`` (folders end in ``/``), for error messages."""
    if not folder.is_dir():
        return ["(no such folder)"]
    names = sorted(p.name + "/" * p.is_dir() for p in folder.iterdir())
    more = [f"... {len(names) - limit} more"] if len(names) > limit else []
    return names[:limit] + more if names else ["(empty)"]


class LayoutError(ValueError):
    """A dataset folder does not have the expected layout; the message lists what was expected and found."""

    def __init__(self, problem: str, expected: Sequence[str], folders: Sequence[Path]) -> None:
        self.expected = list(expected)
        self.found = {str(folder): _listing(folder) for folder in folders}
        lines = [problem, "  expected: " + "; ".join(self.expected)]
        lines += [f"  found in {folder}: {', '.join(entries)}" for folder, entries in self.found.items()]
        super().__init__("\n".join(lines))


def warn(message: str) -> None:
    """Print a warning for the command-line user."""
    print(f"warning: {message}", file=sys.stderr)


def select(kind: str, names: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """Return ``names`` if all are in ``allowed``, else raise ValueError naming the unknown one and close matches."""
    for name in names:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            shown = ", ".join(allowed[:20]) + (f", ... ({len(allowed)} in all)" if len(allowed) > 20 else "")
            raise ValueError(f"unknown {kind} {name!r}{hint} (known: {shown})")
    return list(names)


def keep_classes(labels: Mapping[str, str], classes: Sequence[str] | None) -> dict[str, str]:
    """``labels`` ({id: name}) restricted to background and the named ``classes``, ids unchanged; all if None."""
    if not classes:
        return dict(labels)
    ids = {name: i for i, name in labels.items() if i != "0"}
    select("class", classes, list(ids))
    return {"0": labels.get("0", "background"), **{ids[name]: name for name in classes}}


def require_dir(path: str | Path) -> Path:
    """``path`` as an absolute Path; FileNotFoundError if it is not a folder."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder {path} does not exist or is not a folder")
    return path


def nifti_files(folder: Path) -> list[Path]:
    """Sorted ``.nii.gz`` / ``.nii`` files in ``folder``, without hidden and macOS ``._*`` files."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))


def find_pairs(
    dataset_dir: Path,
    label_name: Callable[[str], str] = str,
    images: str = "imagesTr",
    labels: str = "labelsTr",
    example: str = "<case>.nii.gz",
) -> list[dict[str, str]]:
    """``{"image", "label"}`` pairs (relative paths) of ``images/*.nii.gz`` and ``labels/label_name(name)``.

    Raises LayoutError if there are no images or an image has no label.
    """
    expected = [f"{images}/{example}", f"{labels}/{label_name(example)}"]
    image_files = nifti_files(dataset_dir / images)
    if not image_files:
        raise LayoutError(f"no NIfTI images in {dataset_dir / images}", expected, [dataset_dir, dataset_dir / images])
    pairs = []
    for image in image_files:
        label = dataset_dir / labels / label_name(image.name)
        if not label.is_file():
            problem = f"image {images}/{image.name} has no label {labels}/{label.name}"
            raise LayoutError(problem, expected, [dataset_dir / labels])
        case = case_name(image)
        pairs.append({"case": case, "image": f"{images}/{image.name}", "label": f"{labels}/{label.name}"})
    return pairs


def read_dataset_json(dataset_dir: Path) -> dict:
    """The folder's MSD-style ``dataset.json`` as a dict, or ``{}`` when there is none."""
    path = dataset_dir / "dataset.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def parse_label_names(text: str) -> dict[str, str]:
    """``"0:background,1:anterior"`` -> ``{"0": "background", "1": "anterior"}``."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, sep, name = item.partition(":")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise ValueError(f"bad label {item!r} in --labels {text!r}; write id:name pairs, e.g. 0:background,1:liver")
        labels[str(int(value))] = name.strip()
    return labels


def unique_labels(path: Path) -> dict[str, str]:
    """Label names from the values present in one label file: ``0 -> background``, ``k -> label_k``."""
    values = np.unique(np.rint(np.asanyarray(nib.load(path).dataobj)).astype(np.int64))
    return {str(v): "background" if v == 0 else f"label_{v}" for v in sorted({0, *values.tolist()})}


def split_cases(cases: Sequence[dict], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Split ``cases`` into ``training`` / ``validation`` / ``test`` reproducibly.

    Cases are sorted first, so the input order does not matter; ``round(n * fraction)`` cases go to validation
    and test, drawn with ``random.Random(seed)``; each split keeps the sorted order. At least one case trains.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and val_fraction + test_fraction < 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    ordered = sorted(cases, key=lambda case: json.dumps(case, sort_keys=True))
    n = len(ordered)
    n_val, n_test = (math.floor(n * f + 0.5) for f in (val_fraction, test_fraction))
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} cases leave none for training with val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    parts = {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "training": order[n_test + n_val :]}
    return {key: [ordered[i] for i in sorted(parts[key])] for key in ("training", "validation", "test")}


def make_datalist(
    dataset_dir: Path,
    cases: Sequence[dict],
    args: argparse.Namespace,
    *,
    name: str,
    description: str,
    channels: Sequence[str],
    labels: Mapping[str, str],
    label_convention: str,
    **extra: object,
) -> dict:
    """The datalist dict (format in the module docstring) with the split taken from ``args``."""
    split = split_cases(cases, args.val_fraction, args.test_fraction, args.seed)
    return {
        "name": name,
        "description": description,
        "dataset_dir": str(dataset_dir),
        "channels": list(channels),
        "labels": dict(sorted(labels.items(), key=lambda item: int(item[0]))),
        "label_convention": label_convention,
        **extra,
        "split": {"seed": args.seed, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction},
        **split,
    }


def write_datalist(path: str | Path, datalist: Mapping, overwrite: bool = False) -> Path:
    """Write ``datalist`` as JSON atomically (temporary file + ``os.replace``); FileExistsError if it exists."""
    return write_atomic(
        path, lambda tmp: tmp.write_text(json.dumps(datalist, indent=2) + "\n", encoding="utf-8"), overwrite
    )


def save(datalist: Mapping, args: argparse.Namespace) -> int:
    """Write ``datalist`` to ``args.output`` (see :func:`write_datalist`), print a summary, return exit status 0."""
    path = write_datalist(args.output, datalist, args.overwrite)
    print(", ".join(f"{len(datalist[key])} {key}" for key in ("training", "validation", "test")) + f" cases -> {path}")
    return 0


def base_parser(description: str, dataset_help: str = "the dataset folder") -> argparse.ArgumentParser:
    """An argument parser with the options every script shares (folder, output, split, overwrite).

    ``description`` (the script's docstring) is shown as written.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", type=Path, help=dataset_help)
    parser.add_argument("-o", "--output", type=Path, required=True, help="datalist JSON file to write")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of cases for validation (0.2)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of cases for test (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; fail early (FileExistsError) when the output exists and ``--overwrite`` is not given."""
    args = parser.parse_args(argv)
    check_overwrite(args.output, args.overwrite)
    return args


def run_cli(main: Callable[[], int]) -> int:
    """Run a script's ``main`` and turn data errors into a one-paragraph message and exit status 1."""
    try:
        return main()
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
