"""What ``monai-cbo adapt`` trains on: labelled volumes paired by case name, every one checked and loaded before
any training starts, every problem reported at once with the case and the fix.

Two folders pair by case name (:func:`pair_folders`): a label named as its image (``case_001.nii.gz``), or with a
label suffix (``case_001_seg.nii.gz``, ``_label``, ``_mask``, ``_gt``), and an nnU-Net image's channel suffix
(``case_001_0000.nii.gz``) is dropped to find its label. A MONAI datalist names them itself
(:func:`cases_from_datalist`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bench.data import ClassKey, LoadedCase
from ..data import load_datalist
from ..inferers.segment import check_label, list_images
from ..inferers.volume import Preprocess, case_name, decide_modality, load_volume
from ..transforms.labels import BRATS_CONVENTIONS

__all__ = [
    "InputProblems",
    "LabelledCase",
    "cases_from_datalist",
    "check_and_load",
    "class_key",
    "has_regions",
    "is_exclusive",
    "pair_folders",
    "parse_class_names",
    "values_of",
    "written_values",
]

#: what a label file's name may add to its image's case name
LABEL_SUFFIXES = ("_seg", "_label", "_labels", "_mask", "_gt", "_segmentation")
_NNUNET_CHANNEL = re.compile(r"_\d{4}$")


class InputProblems(ValueError):
    """Everything wrong with the inputs, one line per problem, each naming the case and the fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) with the labelled volumes; nothing was trained:\n{lines}")


@dataclass(frozen=True)
class LabelledCase:
    """One labelled volume: its case name, image (a file, a DICOM series folder, or several files as channels)
    and label map."""

    name: str
    image: Path | tuple[Path, ...]
    label: Path

    def to_json(self) -> dict:
        image = [str(p) for p in self.image] if isinstance(self.image, tuple) else str(self.image)
        return {"case": self.name, "image": image, "label": str(self.label)}


def _label_key(path: Path) -> str:
    name = case_name(path)
    for suffix in LABEL_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def pair_folders(images: str | Path, labels: str | Path) -> list[LabelledCase]:
    """The cases of an images folder and a labels folder, paired by case name.

    Raises:
        FileNotFoundError: a folder does not exist.
        InputProblems: images without a label, labels without an image, or two files for one case (all named).
    """
    folders = {"images": Path(images), "labels": Path(labels)}
    for what, folder in folders.items():
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{what} folder {folder} does not exist or is not a folder; give IMAGES and LABELS as two folders "
                "of volumes matched by case name, or a datalist JSON as IMAGES alone"
            )
    if folders["images"].resolve() == folders["labels"].resolve():
        raise ValueError(
            f"IMAGES and LABELS are the same folder ({images}); put the label maps in a folder of their own"
        )
    problems: list[str] = []
    by_key: dict[str, Path] = {}
    for path in list_images(folders["labels"]):
        key = _label_key(path)
        if key in by_key:
            problems.append(f"labels {by_key[key].name} and {path.name} are both for case {key}; keep one")
        by_key[key] = path
    cases, used = [], set()
    for image in list_images(folders["images"]):
        name = case_name(image)
        keys = [name] + ([_NNUNET_CHANNEL.sub("", name)] if _NNUNET_CHANNEL.search(name) else [])
        key = next((k for k in keys if k in by_key), None)
        if key is None:
            problems.append(
                f"image {image} has no label in {labels} (expected {name}.nii.gz, or {name}_seg.nii.gz); add it "
                "or move the image out"
            )
            continue
        if key in used:
            problems.append(f"label {by_key[key].name} matches several images (case {key}); one label per image")
            continue
        used.add(key)
        cases.append(LabelledCase(key, image, by_key[key]))
    for key in sorted(set(by_key) - used):
        problems.append(f"label {by_key[key]} has no image in {images} (expected {key} with an image suffix); add it")
    if problems:
        raise InputProblems(problems)
    return cases


def cases_from_datalist(path: str | Path, split: str = "training") -> list[LabelledCase]:
    """The ``split`` cases of a MONAI datalist (``image`` and ``label`` per entry; paths as the bundles read them)."""
    entries = load_datalist(path, split)
    cases = []
    for entry in entries:
        if "label" not in entry:
            raise InputProblems([f"datalist {path}: entry {entry.get('image')} has no label; adapt needs labels"])
        image = entry["image"]
        image = tuple(Path(p) for p in image) if isinstance(image, list) else Path(image)
        name = entry.get("case") or case_name(image[0] if isinstance(image, tuple) else image)
        cases.append(LabelledCase(str(name), image, Path(entry["label"])))
    names = [c.name for c in cases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputProblems([f"datalist {path}: case names {twice} appear more than once; name each case once"])
    return cases


def parse_class_names(text: str | None) -> dict[ClassKey, str]:
    """``"1:spleen,2:left kidney"`` -> {1: "spleen", 2: "left kidney"}; a class that covers several label values
    (a region: BraTS whole tumour holds the core, which holds the enhancing part) joins them with ``+``:
    ``"1+2+4:whole tumour,1+4:tumour core,4:enhancing"`` -> {(1, 2, 4): ..., (1, 4): ..., 4: ...}; a BraTS
    convention by its year, ``"brats2021"`` (also 2015, 2023), gives its WT, TC and ET. None or "" -> {}.

    Raises:
        ValueError: an item that is not VALUES:NAME with label values 1.., or a class or name twice.
    """
    text = (text or "").strip()
    if text.lower().startswith("brats") and text[5:] in BRATS_CONVENTIONS:
        return {class_key(values): name for name, values in BRATS_CONVENTIONS[text[5:]].items()}
    out: dict[ClassKey, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        values, sep, name = item.partition(":")
        try:
            numbers = [int(v) for v in values.split("+")]
        except ValueError:
            numbers = [0]
        if not sep or not name.strip() or min(numbers) < 1 or len(set(numbers)) != len(numbers):
            raise ValueError(
                f"--classes: {item.strip()!r} is not VALUES:NAME (e.g. 1:spleen,2:liver, or 1+2+4:whole tumour for "
                "a class covering several label values, or brats2021); values are 1.."
            )
        key = class_key(numbers)
        if key in out or name.strip() in out.values():
            raise ValueError(f"--classes: {item.strip()!r} repeats a class or a name; give each class once")
        out[key] = name.strip()
    return out


def class_key(values: Sequence[int]) -> ClassKey:
    """The key of the class covering label ``values``: the value itself for one, their sorted tuple for several."""
    values = tuple(sorted(int(v) for v in values))
    return values[0] if len(values) == 1 else values


def values_of(key: ClassKey) -> tuple[int, ...]:
    """The label values class ``key`` covers."""
    return key if isinstance(key, tuple) else (key,)


def has_regions(classes: Collection[ClassKey]) -> bool:
    """Whether some class covers several label values (the bundle's task then holds ``regions``)."""
    return any(isinstance(key, tuple) for key in classes)


def is_exclusive(classes: Collection[ClassKey]) -> bool:
    """Whether no label value belongs to two classes (then a voxel is in one class at most)."""
    values = [v for key in classes for v in values_of(key)]
    return len(values) == len(set(values))


def written_values(classes: Sequence[ClassKey]) -> list[int]:
    """The value each class is written with in an output label map, later classes over earlier ones: a class's
    own label value; for classes that share values, the smallest value a class covers that no later class does
    (BraTS 2021's WT, TC, ET: 2, 1, 4, which writes the original label map back).

    Raises:
        ValueError: a class whose every value a later class covers too (it could never be seen in the map).
    """
    out = []
    for i, key in enumerate(classes):
        later = {v for other in classes[i + 1 :] for v in values_of(other)}
        own = [v for v in values_of(key) if v not in later]
        if not own:
            raise ValueError(
                f"--classes: class {'+'.join(map(str, values_of(key)))} covers no label value that a later class "
                "does not: list the larger region first (whole tumour, then tumour core, then enhancing)"
            )
        out.append(min(own))
    return out


def check_and_load(
    cases: Sequence[LabelledCase],
    preprocess: Preprocess,
    class_names: Mapping[ClassKey, str] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[LoadedCase], dict[ClassKey, str], Preprocess]:
    """Read every case, check it, and keep it in memory preprocessed, before any training.

    Checks: the image and label read; the label lies on the image's grid (another orientation of the same grid is
    accepted, as ``segment`` accepts it); the label holds foreground of a trained class; every named class
    appears in some volume; every volume has one modality (CT or MRI, decided as ``segment`` decides it, unless
    ``preprocess`` names it).

    Returns:
        the loaded cases, the classes (class key: a label value or a region's values, -> name: the named ones,
        else every value present), and the preprocessing with its modality decided.

    Raises:
        InputProblems: every problem found, each with its case and fix.
    """
    problems: list[str] = []
    read = []
    for case in cases:
        try:
            image = load_volume(list(case.image) if isinstance(case.image, tuple) else case.image)
            label = load_volume(case.label)
            gt, present = check_label(label, image)
        except (OSError, ValueError, RuntimeError) as err:
            problems.append(f"case {case.name}: {err}")
            continue
        read.append((case, image, gt, present))
    wanted = dict(class_names or {})
    all_present = sorted({v for *_, present in read for v in present})
    classes = wanted or {v: str(v) for v in all_present}
    trained = sorted({v for key in classes for v in values_of(key)})
    for key, name in wanted.items():
        if not set(values_of(key)) & set(all_present) and read:
            problems.append(
                f"class {'+'.join(map(str, values_of(key)))} ({name}) appears in no label map (values present: "
                f"{all_present}); drop it from --classes or label it"
            )
    try:
        written_values(list(classes))
    except ValueError as err:
        problems.append(str(err))
    for case, *_, present in read:
        if not set(present) & set(trained):
            kept = f" of the classes {trained}" if wanted else ""
            problems.append(f"case {case.name}: label {case.label} has no foreground{kept}; label it or leave it out")
    modalities = {
        case.name: decide_modality(image.as_tensor()) if preprocess.modality == "auto" else preprocess.modality
        for case, image, *_ in read
    }
    if len(set(modalities.values())) > 1:
        by = {m: sorted(n for n, mm in modalities.items() if mm == m) for m in set(modalities.values())}
        problems.append(
            f"the volumes mix modalities ({by}; CT when the image holds air below -200 HU); adapt one modality at a "
            "time, or set it with --modality"
        )
    if problems:
        raise InputProblems(problems)
    decided = dataclasses.replace(preprocess, modality=next(iter(modalities.values()), "mri"))
    loaded = [  # the trained classes only; the raw images are not kept
        LoadedCase.prepare(case.name, image, np.where(np.isin(gt, trained), gt, 0), decided, keep_image=False)
        for case, image, gt, _ in read
    ]
    log(
        f"{len(loaded)} labelled volume(s), {decided.modality.upper()}, classes "
        + ", ".join(f"{'+'.join(map(str, values_of(k)))}:{n}" for k, n in classes.items())
    )
    return loaded, classes, decided
