"""What a bundle's task is, in one typed place: its classes and how they sit in a label map, how a volume
becomes model input, and how its masks are finished.

A :class:`TaskSpec` is written once per bundle (the ``task`` section of every config of the bundle, emitted by
``bundles/build_configs.py`` from ``bundles/common/tasks/<bundle>.json``) and read by MONAI's ``ConfigParser``
like any other value, so expressions and command-line overrides work (``--task#auto#z_smooth 0.3``). Both
halves read it:

- datalist -> adapter: ``train.json`` takes its load-and-scale chain (:meth:`Preprocess.load_transforms`), its
  label channels (:meth:`TaskSpec.label_channels`), the slices it samples (:attr:`TaskSpec.sampled_labels`), the
  class prompts (:attr:`TaskSpec.class_names`, :attr:`TaskSpec.label_values`) and its validation's automatic
  settings (:attr:`TaskSpec.auto`) from it; ``evaluate.json`` its writers' names and values.
- file -> mask: ``inference.json``, ``monai-cbo segment --bundle``, the label app and the bench take its
  :class:`Preprocess`, :class:`AutoConfig` and :class:`PropagationConfig` (``load_bundle(name).task``); an
  option overrides one value with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

from monai.transforms import MapTransform

from .inferers.automatic import AutoConfig
from .inferers.propagation import PropagationConfig
from .inferers.volume import Preprocess
from .transforms import BratsRegions, BratsRegionsd, ClassChannelsd

__all__ = ["BRATS_LABEL_VALUES", "TaskSpec"]

#: the value each BraTS region is written with in a label map (WT, TC, ET; later regions over earlier ones)
BRATS_LABEL_VALUES: dict[str, tuple[int, ...]] = {"2015": (2, 1, 4), "2021": (2, 1, 4), "2023": (2, 1, 3)}


@dataclass(frozen=True)
class TaskSpec:
    """A segmentation task: its classes, their label values, preprocessing and post-processing.

    Args:
        class_names: one name per class, in channel order.
        classes: exclusive classes: the label value of each class in the label maps (default 1, 2, ...). A
            label map may hold other values too (TotalSegmentator's hold over 100): they count as background.
        regions: nested classes instead (BraTS: WT holds TC holds ET): a BraTS convention ("2015", "2021",
            "2023") or a mapping ``{class name: label values}`` in channel order (see
            :class:`~monai_cbo.transforms.BratsRegions`). Excludes ``classes``.
        label_values: the value each class is written with in an output label map (later classes over earlier
            ones). Default: ``classes``; for a BraTS convention its own values (:data:`BRATS_LABEL_VALUES`);
            required for a custom ``regions`` mapping.
        preprocess: how a volume becomes model input, in training and inference alike.
        auto: automatic (prompt-free) segmentation's post-processing, as the bundle's validation measured it.
        propagation: how a key box grows through the volume (the stop rules swept for the bundle's adapter).

    Raises:
        ValueError: counts that do not match, both or neither of ``classes``/``regions`` where needed, or a
            custom ``regions`` mapping without ``label_values`` (each message says what to set).
    """

    class_names: Sequence[str] = ("foreground",)
    classes: Sequence[int] | None = None
    regions: str | int | Mapping[str, Sequence[int]] | None = None
    label_values: Sequence[int] | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    auto: AutoConfig = field(default_factory=AutoConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"task: class_names must name each class once, got {list(self.class_names)}")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("class_names", names)
        if self.regions is not None:
            if self.classes is not None:
                raise ValueError("task: give classes (exclusive label values) or regions (nested classes), not both")
            converter = BratsRegions(self.regions)  # checks the convention or mapping
            if len(converter.regions) != len(names):
                raise ValueError(
                    f"task: regions {converter.regions} and class_names {list(names)} differ in number; name "
                    "each region once, in its order"
                )
            if self.label_values is None:
                if str(self.regions) not in BRATS_LABEL_VALUES:
                    raise ValueError(
                        "task: a custom regions mapping needs label_values (the value each region is written "
                        f"with), e.g. {list(range(1, len(names) + 1))}"
                    )
                set_("label_values", BRATS_LABEL_VALUES[str(self.regions)])
        else:
            set_("classes", tuple(int(c) for c in (self.classes or range(1, len(names) + 1))))
            if len(self.classes) != len(names):
                raise ValueError(
                    f"task: classes {list(self.classes)} and class_names {list(names)} differ in number; give "
                    "one label value per class"
                )
            if self.label_values is None:
                set_("label_values", self.classes)
        set_("label_values", tuple(int(v) for v in self.label_values))
        if len(self.label_values) != len(names) or 0 in self.label_values:
            raise ValueError(
                f"task: label_values {list(self.label_values)} must give each of the {len(names)} classes a "
                "non-zero value"
            )

    @property
    def exclusive(self) -> bool:
        """Whether a voxel belongs to one class at most (False for nested regions)."""
        return self.regions is None

    @property
    def sampled_labels(self) -> list[int]:
        """The label values whose slices training samples: the classes', or every value of the regions."""
        return list(self.classes) if self.regions is None else BratsRegions(self.regions).labels

    def label_channels(self, keys: str | Sequence[str] = "label") -> MapTransform:
        """The transform from a label map to one binary channel per class."""
        if self.regions is None:
            return ClassChannelsd(keys, self.classes)
        return BratsRegionsd(keys, self.regions)

    def replace(self, **changes) -> TaskSpec:
        """A copy with ``changes``; unknown names are a ValueError listing the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown task settings {unknown}; the settings are {sorted(known)}")
        if "regions" in changes and "classes" not in changes:
            changes["classes"] = None
        if {"classes", "regions"} & set(changes) and "label_values" not in changes:
            changes["label_values"] = None  # derived again from the new classes
        return replace(self, **changes)
