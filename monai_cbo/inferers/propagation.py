"""One object in 3D from a few 2D boxes: key-slice propagation with stop rules, z ranges, several keys, points.

Axis convention as in :mod:`monai_cbo.inferers.slicewise`: the volume is ``[3, H, W, D]``, slice ``z`` is
``volume[..., z]``, boxes are XYXY (x = column) and points (x, y) in slice pixels.

How an object is grown from its key boxes (:func:`propagate`):

1. Every key slice is segmented from its key box (and the correction points near it). A key without a box (a
   *click key*: a foreground click starts the object) is segmented from the clicks on its slice; with a trained
   adapter's class prompts, what the click points at is the connected part of the adapter's own class mask
   under it (a click on a box-trained model gives a partial mask; the adapter's own mask of the structure is
   far better: hippocampus, anterior, Dice 0.33 against 0.93 on one slice). Then the slice is segmented again
   from the box of that region, grown by the margin as a walk's next prompt is (the models were trained on
   boxes), and is a key box from then on; a click that finds nothing (a mask under
   ``min_area``) starts no walk. A click key's foreground clicks only choose: the decoder is not given them
   again (the adapters were trained on boxes, and a click beside a box made masks worse), and the classes the
   learned stop follows are the ones the click picked, not every class the key mask touches.
   Any foreground click says the object is on its slice: a walk beyond the keys goes at least as far as the
   farthest foreground click in its direction before a stop rule may end it (a click on a slice the walk
   missed used to end the walk sooner, not later: the decoder is less confident with a click beside the box).
2. Between two consecutive key slices, each slice is prompted with the box interpolated linearly between the
   two keys, moved ``neighbour_weight`` of the way towards the box of the neighbouring prediction (the slice
   one step nearer the key it is walked from); the walk goes from both keys to the middle. No stop rule
   applies there: the user said the object is at both ends.
3. Beyond the outermost keys (and never past the z range of a 3D box), each next slice is prompted with the
   previous prediction's tight box grown by a margin, optionally with its low-resolution logits as a mask
   prompt. A direction stops at the first slice whose mask vanishes, jumps in area against the previous
   slice, shrinks to a sliver, lies too little on the previous mask, is predicted with low confidence, does
   not look like the key slice's object in the image embedding, or outgrows a multiple of its key box's
   area, or (with a trained adapter's learned class prompts) lies too little on what the adapter segments
   there on its own (:class:`PropagationConfig` names each threshold, :class:`StopMeasures` each measure). That
   slice is not kept. With ``patience`` above 1, a direction ends only after that many slices in a row break a
   rule (all of them dropped); a slice that breaks one is kept when a later slice holds again. An object with
   a z range (a 3D box) is judged by its own set of these thresholds (the ``range_`` ones): the user has said
   the object is on every slice of the range, so what should end a walk there is not what should end an open
   one.

The defaults were chosen by ``monai-cbo prompts-bench --sweep`` on shared volumes of several kinds with a
validation part held back; see ``docs/benchmarks/propagation.md`` for the sweep and its table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from types import SimpleNamespace

import numpy as np
import torch

from ..networks import SliceCache, class_prompts_of
from ..transforms.prompts import grow_box
from .slicewise import Prompt2D, SliceResult, SliceWiseInferer, mask_box

__all__ = [
    "KeyBox",
    "ObjectPrompt",
    "PropagationConfig",
    "STOP_RULES",
    "StopMeasures",
    "box_edit_leftovers",
    "class_overlap",
    "click_box",
    "feature_similarity",
    "matching_classes",
    "mask_feature",
    "propagate",
    "stop_measures",
    "stops",
]


@dataclass(frozen=True)
class PropagationConfig:
    """The rules of :func:`propagate`; every threshold is named here with its default, chosen by the sweep in
    ``docs/benchmarks/propagation.md`` (``point_reach`` and ``min_area`` were not swept). A rule at its most
    lenient value (0, -1 or infinity) is off: the sweep switched on only those that helped on its tune part.
    These defaults were swept on zero-shot LiteMedSAM; a bundle whose adapter was swept records its own in its
    ``inference.json`` (its task: ``load_bundle(name).task.propagation``).

    Args:
        margin: a propagated box is the previous mask's tight box grown on each side by this fraction of its
            width / height ...
        min_margin: ... and by at least this many slice pixels.
        mask_prompt: also prompt each slice with the previous slice's low-resolution logits.
        max_growth: stop where the mask's area exceeds this multiple of the previous slice's (a leak).
        min_shrink: stop where it falls below this fraction of the previous slice's (a sliver).
        min_overlap: stop where less than this fraction of the mask lies on the previous slice's mask (the box
            caught another structure).
        min_iou: stop where SAM's own IoU estimate falls below this.
        min_confidence: stop where the mean foreground probability inside the mask falls below this.
        min_similarity: stop where the image embedding averaged inside the mask is less similar (cosine) to the
            key slice's than this: the box caught tissue that does not look like the object (-1: off).
        max_key_area: stop where the mask's area exceeds this multiple of its key box's area (w x h): a
            propagated mask never grows beyond it.
        min_class_overlap: stop where less than this fraction of the mask lies on the model's own automatic
            mask of the object's class on that slice (its learned class prompts, decoded from the same
            embedding): a learned stop signal, for an adapter trained with automatic steps. The object's classes
            are those whose automatic masks match the key slices' masks (:func:`matching_classes`), whatever
            label value the prompt writes. 0: off; it never applies to a model without class prompts (zero-shot
            LiteMedSAM) or to an object the adapter does not segment on its key slices.
        neighbour_weight: between two keys, how far (0..1) the interpolated box moves towards the box of the
            neighbouring prediction.
        patience: a direction ends after this many slices in a row break a rule, and those slices are dropped;
            a slice that breaks one is kept when a later slice holds before that (1: end at the first slice that
            breaks one). An empty mask always ends it.
        point_reach: correction points on slice k also prompt slices k - reach .. k + reach.
        click_boxes: correction points edit the box of each slice they reach instead of going to the mask decoder
            (:func:`click_box`): a foreground point outside the box widens it to take the point in, a background
            point inside it moves the box's nearest side past the point. On by default, for every model: chosen
            on the tune part of the propagation suite, where five zero-shot clicks from a 3D box took the mean of
            its sets from 0.680 to 0.520 as points and to 0.698 as box edits (on its validation part they lift
            every set or leave it, where points lowered five of seven), and kept for adapters trained with
            simulated clicks, which read points but gain more from box edits: +0.062 against +0.049 and +0.032
            against +0.008 after five clicks on two hippocampus adapters, with fewer targets ending below their box
            (docs/benchmarks/corrections.md). A click key (a click without a box) always goes to the decoder:
            there is no box to edit.
        click_box_points: with ``click_boxes``, the points a box edit cannot carry also go to the decoder, with the
            edited box (:func:`box_edit_leftovers`): a foreground point already inside the box, a background point
            outside it or one the edit had to leave inside. Without it such a click changes nothing, and the
            interactive protocol, which clicks where the error is largest, clicks there again. Off by default:
            measured on the tune part, it did not lift click-trained adapters beyond noise (hippocampus, 8 targets:
            +0.026 after five clicks against +0.024; spinal cord +0.006 / -0.009 against +0.004 / 0) and lowered
            zero-shot LiteMedSAM's gain (+0.016 against +0.087), which reads points poorly
            (docs/benchmarks/corrections.md).
        click_mask_prompt: a slice that correction points reach also gets its mask of the round before
            (:attr:`ObjectPrompt.previous`, its low-resolution logits) as the mask prompt, as SAM's interactive
            training feeds the previous mask back, and as ``monai-cbo adapt``'s simulated clicks do in half their
            steps; only where the round before left logits on that slice, and only for points that go to the
            decoder (with ``click_boxes`` on, the default, a click edits the box instead and no mask goes in).
        range_max_growth, range_min_shrink, range_min_overlap, range_min_iou, range_min_confidence,
        range_min_similarity, range_max_key_area, range_min_class_overlap, range_patience: the same rules for an
            object with a z range (a 3D box), inside its range; swept separately on the 3D-box protocol.
        min_area: fewer foreground pixels than this is an empty mask.
    """

    margin: float = 0.1
    min_margin: float = 2.0
    mask_prompt: bool = False
    max_growth: float = 1.2
    min_shrink: float = 0.0
    min_overlap: float = 0.0
    min_iou: float = 0.8
    min_confidence: float = 0.0
    min_similarity: float = 0.5
    max_key_area: float = 1.0
    neighbour_weight: float = 1.0
    point_reach: int = 2
    click_boxes: bool = True
    click_box_points: bool = False
    click_mask_prompt: bool = False
    range_max_growth: float = math.inf
    range_min_shrink: float = 0.0
    range_min_overlap: float = 0.0
    range_min_iou: float = 0.0
    range_min_confidence: float = 0.8
    range_min_similarity: float = 0.5
    range_max_key_area: float = 1.5
    min_class_overlap: float = 0.0
    range_min_class_overlap: float = 0.0
    patience: int = 3
    range_patience: int = 1
    min_area: int = 4

    def __post_init__(self) -> None:
        for prefix in ("", "range_"):
            for name in ("min_shrink", "min_overlap", "min_iou", "min_confidence", "min_class_overlap"):
                if getattr(self, prefix + name) < 0:
                    raise ValueError(f"propagation {prefix + name} must be >= 0, got {getattr(self, prefix + name)}")
            growth, key_area = getattr(self, prefix + "max_growth"), getattr(self, prefix + "max_key_area")
            if growth <= 1 or key_area <= 0:
                raise ValueError(
                    f"{prefix}max_growth must be > 1 and {prefix}max_key_area > 0, got {growth} and {key_area}"
                )
            if not -1 <= getattr(self, prefix + "min_similarity") <= 1:
                raise ValueError(
                    f"{prefix}min_similarity is a cosine similarity in [-1, 1], got "
                    f"{getattr(self, prefix + 'min_similarity')}"
                )
        if self.margin < 0 or self.min_margin < 0:
            raise ValueError(f"propagation margin and min_margin must be >= 0, got {self.margin}, {self.min_margin}")
        if not 0 <= self.neighbour_weight <= 1:
            raise ValueError(f"neighbour_weight must be in [0, 1], got {self.neighbour_weight}")
        if min(self.patience, self.range_patience) < 1:
            raise ValueError(
                f"patience and range_patience are counts of slices, >= 1; got {self.patience}, {self.range_patience}"
            )
        if self.point_reach < 0 or self.min_area < 1:
            raise ValueError(f"point_reach must be >= 0 and min_area >= 1, got {self.point_reach}, {self.min_area}")

    def replace(self, **changes) -> PropagationConfig:
        """A copy with ``changes``; unknown names are a ValueError listing the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown propagation setting(s) {unknown}; known: {sorted(known)}")
        return PropagationConfig(**{**asdict(self), **changes})


@dataclass
class KeyBox:
    """A box the user drew on slice ``slice``: XYXY in that slice's pixels (x = column); ``None``: a click key,
    segmented from the object's foreground clicks on that slice (see the module docstring)."""

    slice: int
    box: np.ndarray | None

    def __post_init__(self) -> None:
        self.slice = int(self.slice)
        if self.box is None:
            return
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        if self.box[2] < self.box[0] or self.box[3] < self.box[1]:
            raise ValueError(f"key box {self.box.tolist()} on slice {self.slice} is inverted; give x0, y0, x1, y1")

    @property
    def area(self) -> float:
        if self.box is None:
            raise ValueError(f"the click key on slice {self.slice} has no box until it is segmented")
        return float((self.box[2] - self.box[0] + 1) * (self.box[3] - self.box[1] + 1))


@dataclass
class ObjectPrompt:
    """Everything the user said about one object (class) to be grown in 3D.

    ``keys``: one or more :class:`KeyBox`, at most one per slice (their order does not matter); ``z_range``:
    (first, last) slice the object may occupy (a 3D box's thickness), or None; ``points``: slice ->
    (points [N, 2] (x, y), labels [N], 1 foreground / 0 background), corrections that also prompt nearby slices;
    ``previous``: slice -> the low-resolution logits of the round before (``SliceResult.low_res``), which a
    correction round hands back for :attr:`PropagationConfig.click_mask_prompt`.
    """

    keys: list[KeyBox]
    z_range: tuple[int, int] | None = None
    points: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    previous: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("an object to propagate needs at least one key box")
        self.keys = sorted(self.keys, key=lambda k: k.slice)
        for key in self.keys:
            clicks = self.points.get(key.slice)
            if key.box is None and (clicks is None or not (np.asarray(clicks[1]) == 1).any()):
                raise ValueError(
                    f"the key on slice {key.slice} has no box and no foreground click on its slice to start from; "
                    "give a box, or a foreground click (label 1) on that slice"
                )
        slices = [k.slice for k in self.keys]
        twice = sorted({z for z in slices if slices.count(z) > 1})
        if twice:
            raise ValueError(f"two key boxes of one class on slice(s) {twice}; give one box per slice and class")
        if self.z_range is not None:
            lo, hi = (int(v) for v in self.z_range)
            if lo > hi or not all(lo <= z <= hi for z in slices):
                raise ValueError(f"key slice(s) {slices} outside the box's slice range {lo}..{hi}")
            self.z_range = (lo, hi)


#: the rules that end a walk, each with an open-object and a z-ranged (``range_``) threshold in the config
STOP_RULES = (
    "max_growth",
    "min_shrink",
    "min_overlap",
    "min_iou",
    "min_confidence",
    "min_similarity",
    "max_key_area",
    "min_class_overlap",
)


@dataclass(frozen=True)
class StopMeasures:
    """What the stop rules (:func:`stops`) judge a slice propagated beyond the keys by; measured by
    :func:`stop_measures`. Each measure is a number for one slice, or a NumPy array for many (:meth:`stack`).

    Attributes:
        area: foreground pixels of the slice's mask.
        before_area: foreground pixels of the previous slice's mask (the one it was prompted from).
        key_area: the area (w x h) of the key box the walk started from.
        overlap: the fraction of the mask on the previous slice's mask.
        iou: SAM's own IoU estimate.
        confidence: the mean foreground probability inside the mask (0 for an empty mask).
        similarity: the cosine similarity of the mask's mean embedding to the key slice's (:func:`mask_feature`;
            -1 where either mask is empty or the features were not measured).
        class_overlap: the fraction of the mask on the model's automatic mask of the object's classes
            (:func:`class_overlap`; 1 where there is none to compare with).
    """

    area: float | np.ndarray
    before_area: float | np.ndarray
    key_area: float | np.ndarray
    overlap: float | np.ndarray
    iou: float | np.ndarray
    confidence: float | np.ndarray
    similarity: float | np.ndarray
    class_overlap: float | np.ndarray = 1.0

    @classmethod
    def stack(cls, measures: Sequence[StopMeasures]) -> StopMeasures:
        """The measures of ``n`` slices as float64 columns [n, 1], one row per slice: against thresholds [1, m] (m
        settings, as the sweep has them), :func:`stops` answers [n, m]."""
        return cls(
            **{f.name: np.array([getattr(m, f.name) for m in measures], dtype=np.float64)[:, None] for f in fields(cls)}
        )


def stop_measures(
    result: SliceResult,
    previous: SliceResult,
    threshold: float,
    key_area: float,
    feature: torch.Tensor | None = None,
    key_feature: torch.Tensor | None = None,
    automatic: Sequence[np.ndarray | torch.Tensor] = (),
    classes: set[int] | frozenset[int] = frozenset(),
) -> StopMeasures:
    """The stop measures of one propagated slice: the one place they are computed, by :func:`propagate` and by
    the sweep's recordings (:mod:`monai_cbo.bench.prompting`), so that the sweep scores what propagation does.

    Args:
        result: the slice's prediction.
        previous: the prediction of the slice it was prompted from.
        threshold: probability above which a pixel is foreground.
        key_area: the area of the key box the walk started from (:attr:`KeyBox.area`).
        feature: the slice's :func:`mask_feature`, and ``key_feature`` the key slice's; None: not measured
            (similarity -1, which no threshold stops at).
        key_feature: see ``feature``.
        automatic: the model's automatic mask of each class on the slice; only read when ``classes`` is given.
        classes: the classes matching the object on its key slices (:func:`matching_classes`); empty: none.
    """
    mask = result.prob > threshold
    before = previous.prob > threshold
    area = int(mask.sum())
    return StopMeasures(
        area=area,
        before_area=int(before.sum()),
        key_area=key_area,
        overlap=float((mask & before).sum()) / max(area, 1),
        iou=result.iou,
        confidence=float(result.prob[mask].mean()) if area else 0.0,
        similarity=feature_similarity(feature, key_feature),
        class_overlap=class_overlap(mask, automatic, classes) if classes else 1.0,
    )


def stops(config: PropagationConfig | SimpleNamespace, measures: StopMeasures, ranged: bool) -> bool | np.ndarray:
    """Whether propagation stops at a slice with ``measures``: the one statement of the stop rules (see
    :class:`PropagationConfig`). ``ranged``: the object has a z range (a 3D box), so the ``range_`` thresholds
    apply. The thresholds of ``config`` (then any object with the config's threshold names) and the measures may
    be NumPy arrays (the sweep evaluates many settings at once); the result then is one too."""
    prefix = "range_" if ranged else ""
    rule = {name: getattr(config, prefix + name) for name in STOP_RULES}
    m = measures
    return (
        (m.area < config.min_area)
        | (m.area > rule["max_key_area"] * m.key_area)
        | (m.area > rule["max_growth"] * m.before_area)
        | (m.area < rule["min_shrink"] * m.before_area)
        | (m.overlap < rule["min_overlap"])
        | (m.iou < rule["min_iou"])
        | (m.confidence < rule["min_confidence"])
        | (m.similarity < rule["min_similarity"])
        | (m.class_overlap < rule["min_class_overlap"])
    )


def mask_feature(embedding: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor | None:
    """The image embedding ``[1, C, h, w]`` averaged over a mask given by its low-resolution logits ``[L, L]``
    (model-input space, L a multiple of h), unit length; None for an empty mask. An ensemble's embedding
    ``[1, M, C, h, w]`` (:class:`~monai_cbo.networks.SegmenterEnsemble`) counts as ``M * C`` channels."""
    if embedding.ndim == 5:
        embedding = embedding.flatten(1, 2)
    h = embedding.shape[-1]
    inside = torch.nn.functional.avg_pool2d((low_res > 0).float()[None, None], low_res.shape[-1] // h)[0, 0] > 0.5
    if not inside.any():
        return None
    feature = embedding[0].float().to(inside.device)[:, inside].mean(dim=1)
    return feature / feature.norm().clamp_min(1e-12)


def feature_similarity(feature: torch.Tensor | None, key: torch.Tensor | None) -> float:
    """Cosine similarity of two :func:`mask_feature` vectors; -1 (unlike anything) when either mask is empty."""
    return -1.0 if feature is None or key is None else float(feature @ key)


def _grow(box: np.ndarray, config: PropagationConfig, size: tuple[int, int]) -> np.ndarray:
    return grow_box(box, config.margin, config.min_margin, (size[1] - 1, size[0] - 1))


def click_box(box: np.ndarray, points: np.ndarray, labels: np.ndarray, pad: float, size: tuple[int, int]) -> np.ndarray:
    """``box`` (XYXY) edited by correction ``points`` (x, y) with their ``labels`` (1 foreground, 0 background)
    (:attr:`PropagationConfig.click_boxes`, on by default: the models here read boxes better than points): each
    foreground point outside the box widens it to hold the point with ``pad`` pixels around it; then each
    background point inside it moves the nearest side of the box to just past the point (the next nearest where
    that would leave a foreground point out or the box under 2 pixels wide). The box stays inside the slice
    (``size``: H, W)."""
    out = np.asarray(box, dtype=np.float32).copy()
    points, labels = np.asarray(points, dtype=np.float32).reshape(-1, 2), np.asarray(labels).reshape(-1)
    foreground = points[labels == 1]
    for x, y in foreground:
        out = np.array([min(out[0], x - pad), min(out[1], y - pad), max(out[2], x + pad), max(out[3], y + pad)])
    out = np.clip(out, 0, [size[1] - 1, size[0] - 1, size[1] - 1, size[0] - 1]).astype(np.float32)
    for x, y in points[labels == 0]:
        if not (out[0] <= x <= out[2] and out[1] <= y <= out[3]):
            continue
        cuts = [(x - out[0], 0, x + 1), (out[2] - x, 2, x - 1), (y - out[1], 1, y + 1), (out[3] - y, 3, y - 1)]
        for _, side, value in sorted(cuts):
            edited = out.copy()
            edited[side] = value
            wide = edited[2] - edited[0] >= 2 and edited[3] - edited[1] >= 2
            holds = all(edited[0] <= fx <= edited[2] and edited[1] <= fy <= edited[3] for fx, fy in foreground)
            if wide and holds:
                out = edited
                break
    return out


def box_edit_leftovers(box: np.ndarray, edited: np.ndarray, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Which correction ``points`` (with ``labels``) the box edit from ``box`` to ``edited`` (:func:`click_box`)
    does not carry, as a boolean mask: a foreground point that was already inside ``box`` (the edit only widens
    for one outside it), and a background point outside ``box`` (a leak past the box) or still inside ``edited``
    (its cut was refused). What :attr:`PropagationConfig.click_box_points` sends to the decoder as points."""
    points, labels = np.asarray(points, dtype=np.float32).reshape(-1, 2), np.asarray(labels).reshape(-1)

    def inside(b: np.ndarray) -> np.ndarray:
        x, y = points[:, 0], points[:, 1]
        return (b[0] <= x) & (x <= b[2]) & (b[1] <= y) & (y <= b[3])

    was, now = inside(np.asarray(box)), inside(np.asarray(edited))
    return np.where(labels == 1, was, ~was | now)


#: a class prompt's automatic mask matches an object's key-slice mask when their overlap is at least this share of
#: the smaller of the two (a class of the object, or one part of an object that is a union of classes)
CLASS_MATCH = 0.5


def matching_classes(automatic: Sequence[np.ndarray | torch.Tensor], key_mask: np.ndarray | torch.Tensor) -> set[int]:
    """The class prompts (indices into ``automatic``, one mask per class on a key slice) whose automatic mask
    matches ``key_mask``, the object's mask on that slice: what the adapter calls this object."""
    key = torch.as_tensor(key_mask).bool()
    found = set()
    for i, auto in enumerate(automatic):
        auto = torch.as_tensor(auto).bool()
        smaller = min(int(auto.sum()), int(key.sum()))
        if smaller and int((auto & key).sum()) >= CLASS_MATCH * smaller:
            found.add(i)
    return found


def class_overlap(mask, automatic: Sequence, classes: set[int]) -> float:
    """The learned stop's measure: the fraction of ``mask`` on the union of the ``classes``' automatic masks
    (``automatic``: one per class on the same slice; NumPy or torch); 1 when no class matched the object."""
    if not classes:
        return 1.0
    mask = torch.as_tensor(mask).bool()
    own = torch.stack([torch.as_tensor(automatic[i]).bool() for i in sorted(classes)]).any(0)
    return float((mask & own).sum()) / max(int(mask.sum()), 1)


def propagate(
    inferer: SliceWiseInferer,
    volume: torch.Tensor,
    prompt: ObjectPrompt,
    config: PropagationConfig | None = None,
    cache: SliceCache | Mapping | None = None,
    class_masks: dict[int, list[torch.Tensor]] | None = None,
) -> dict[int, SliceResult]:
    """Segment one object slice by slice from its key boxes (see the module docstring); ``{z: result}``.

    ``cache``: the volume's :class:`~monai_cbo.networks.SliceCache`, shared with every other class and prompt
    source of the volume so that each slice is encoded once. ``class_masks``: the model's automatic mask of each
    class per slice (:meth:`~monai_cbo.inferers.SliceWiseInferer.decode_classes` thresholded, for the learned
    stop), filled here and shared by every object of the volume so that each slice gets one class-decode pass;
    default: this call's own.
    """
    config = config or PropagationConfig()
    depth, size = volume.shape[-1], tuple(volume.shape[1:3])
    for key in prompt.keys:
        if not 0 <= key.slice < depth:
            raise ValueError(f"key slice {key.slice} outside the volume's 0..{depth - 1}")
    lo, hi = prompt.z_range if prompt.z_range is not None else (0, depth - 1)
    lo, hi = max(lo, 0), min(hi, depth - 1)
    thr = inferer.threshold
    point_slices = sorted(prompt.points)
    features: dict[int, torch.Tensor | None] = {}  # per slice, for the similarity rule
    ranged = prompt.z_range is not None
    patience = config.range_patience if ranged else config.patience
    learned = (config.range_min_class_overlap if ranged else config.min_class_overlap) > 0
    learned = learned and class_prompts_of(inferer.model) is not None
    automatic = {} if class_masks is None else class_masks  # per slice, the model's automatic mask of each class

    started: set[int] = set()  # click keys' slices once segmented: their foreground clicks chose, a box prompts

    def clicks_near(z: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        chosen = []
        for k in (k for k in point_slices if abs(k - z) <= config.point_reach):
            pts, labels = np.asarray(prompt.points[k][0]), np.asarray(prompt.points[k][1])
            keep = labels == 0 if k in started else np.ones(len(labels), dtype=bool)
            if keep.any():
                chosen.append((pts[keep], labels[keep]))
        if not chosen:
            return None, None
        return np.concatenate([p for p, _ in chosen]), np.concatenate([lab for _, lab in chosen])

    def run(z: int, box: np.ndarray | None, previous: SliceResult | None = None, walked: bool = False) -> SliceResult:
        """Slice ``z`` decoded from ``box`` (a walk's box where ``walked``) and the clicks near it."""
        pts, labels = clicks_near(z)
        if config.click_boxes and box is not None and pts is not None:
            edited = click_box(box, pts, labels, config.min_margin, size)
            keep = box_edit_leftovers(box, edited, pts, labels) if config.click_box_points else None
            box, pts, labels = edited, *((pts[keep], labels[keep]) if keep is not None and keep.any() else (None, None))
        logits = previous.low_res if (config.mask_prompt and previous is not None) else None
        if config.click_mask_prompt and pts is not None and z in prompt.previous:
            logits = prompt.previous[z]  # this slice's own mask of the round before, which the points correct
        _, emb = next(inferer.encode(volume, [z], cache))
        prompt2d = Prompt2D(box=box, points=pts, point_labels=labels, mask_logits=logits, walk=walked)
        res = inferer.decode(emb, [prompt2d], size)[0]
        if max(config.min_similarity, config.range_min_similarity) > -1:
            features[z] = mask_feature(emb, res.low_res)
        if learned:
            own_masks(z, emb)
        return res

    def own_masks(z: int, emb: torch.Tensor | None = None) -> list:
        """The model's automatic mask of each class on slice ``z``: one class-decode pass per slice, whatever
        object asks."""
        if z not in automatic:
            if emb is None:
                _, emb = next(inferer.encode(volume, [z], cache))
            automatic[z] = [r.prob > thr for r in inferer.decode_classes(emb, size)]
        return automatic[z]

    def area(res: SliceResult) -> int:
        return int((res.prob > thr).sum())

    def clicked_region(z: int, first: SliceResult) -> tuple[torch.Tensor, set[int]]:
        """What a click key's clicks point at on slice ``z``, and the classes it belongs to: for a model with class
        prompts, the connected parts of its own class masks that hold a foreground click (a click says "this
        one"), else the clicks' own mask (no class)."""
        found = first.prob > thr
        model = getattr(inferer, "model", None)
        if model is None or class_prompts_of(model) is None:
            return found, set()
        from scipy import ndimage

        pts, labels = prompt.points[z]
        clicks = [(int(round(y)), int(round(x))) for (x, y), lab in zip(pts, labels, strict=True) if lab == 1]
        picked, classes = torch.zeros_like(found), set()
        for i, mask in enumerate(own_masks(z)):
            parts, _ = ndimage.label(np.asarray(mask))
            for y, x in clicks:
                if 0 <= y < size[0] and 0 <= x < size[1] and parts[y, x]:
                    picked |= torch.as_tensor(parts == parts[y, x])
                    classes.add(i)
        return (picked, classes) if int(picked.sum()) >= config.min_area else (found, set())

    keys, results, picked_classes = [], {}, set()
    for key in prompt.keys:
        if key.box is None:  # a click key: what its clicks point at, then the box of that (grown by the margin)
            first = run(key.slice, None)
            found, classes_here = clicked_region(key.slice, first)
            if int(found.sum()) < config.min_area:
                results[key.slice] = first  # nothing there: the key slice's answer, and no walk from it
                continue
            started.add(key.slice)  # its foreground clicks have done their work: from here on, the box prompts
            picked_classes |= classes_here
            key = KeyBox(key.slice, _grow(mask_box(found), config, size))  # grown as a walk's next prompt
        keys.append(key)
        results[key.slice] = run(key.slice, key.box, walked=key.slice in started)  # a click key's box: the walk's
    if not keys:
        return results

    for a, b in zip(keys, keys[1:], strict=False):  # between keys: from both ends to the middle
        middle = (a.slice + b.slice) / 2
        for start, step in ((a, 1), (b, -1)):
            previous = results[start.slice]
            z = start.slice + step
            while (z <= middle) if step > 0 else (z > middle):
                t = (z - a.slice) / (b.slice - a.slice)
                box = (1 - t) * a.box + t * b.box
                if area(previous) >= config.min_area:  # refined towards the neighbouring prediction's box
                    near = _grow(mask_box(previous.prob > thr), config, size)
                    box = (1 - config.neighbour_weight) * box + config.neighbour_weight * near
                results[z] = run(z, box.astype(np.float32), previous, walked=True)
                previous = results[z]
                z += step

    classes = set()  # what the adapter calls this object, on any of its key slices
    for key in keys if learned else []:
        if key.slice not in started:  # a click key's classes are those its click picked
            classes |= matching_classes(automatic[key.slice], results[key.slice].prob > thr)
    classes |= picked_classes if learned else set()
    # a foreground click says the object is on its slice: a walk goes at least that far, whatever the rules say
    clicked = [k for k in point_slices if (np.asarray(prompt.points[k][1]) == 1).any()]
    for key, step in ((keys[-1], 1), (keys[0], -1)):  # beyond the outermost keys, with stop rules
        previous = results[key.slice]
        z = key.slice + step
        reach = max((abs(k - key.slice) for k in clicked if (k - key.slice) * step > 0), default=0)
        pending: dict[int, SliceResult] = {}  # slices that broke a rule: kept only if a later slice holds
        while lo <= z <= hi:
            before = previous.prob > thr
            if int(before.sum()) < config.min_area:
                break
            res = run(z, _grow(mask_box(before), config, size), previous, walked=True)
            own = automatic.get(z, ())  # decoded where the learned stop is on
            measures = stop_measures(
                res, previous, thr, key.area, features.get(z), features.get(key.slice), own, classes
            )
            if abs(z - key.slice) > reach and stops(config, measures, ranged):
                pending[z] = res
                if len(pending) >= patience:  # `patience` slices in a row broke a rule: the object has ended
                    break
            else:
                results.update(pending)  # a slice that holds keeps the ones before it
                pending.clear()
                results[z] = res
            previous = res  # the next slice is prompted from this one, kept or pending (as the sweep records)
            z += step
    return results
