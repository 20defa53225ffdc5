"""The MONAI Label app: prompted and automatic infer tasks and a train task over monai_cbo's own paths.

MONAI Label loads it from the ``main.py`` that ``monai-cbo label`` writes into its work folder; its settings
arrive as the app's ``conf`` (strings): ``work`` (the work folder), ``bundle`` (a shipped bundle's name, or
empty), ``adapter`` (an adapter file, or empty), ``device`` (empty: CUDA when there is one), and the operator's
limits ``max_train_minutes`` and ``allow_image_overwrite``. The datastore is
:class:`~monai_cbo.label.datastore.StudiesDatastore`, the train task :class:`~monai_cbo.label.train.FineTune`.

What the viewers send, in the volume's voxel indices (i, j, k as the file stores them, which is what 3D
Slicer's IJK is):

- ``roi``: ``[i0, j0, i1, j1, k0, k1]``, the box MONAI Label's SAM 2 task reads: slices ``k0 <= k < k1``
  (``k0 == k1``: the one slice ``k0``);
- ``foreground`` / ``background``: ``[[i, j, k], ...]`` clicks.

A request the app cannot serve gets a 4xx answer naming the problem; the server keeps serving. Nothing in the
studies folder is overwritten or deleted, except a label the user saves for an image.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask

from ..bundles import load_bundle
from ..inferers import AutoConfig, Case, KeyPrompt, Preprocess, PropagationConfig, SliceWiseInferer, segment_case
from ..inferers.volume import load_volume
from ..networks import SliceCache, class_prompts_of
from ..task import TaskSpec
from .datastore import StudiesDatastore
from .guard import NAME_MAX, Refused, plain_name
from .train import FineTune

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO_TASK",
    "MAX_CLICKS",
    "PROMPT_TASK",
    "TRAIN_TASK",
    "AdapterStore",
    "MonaiCboApp",
    "parse_prompt",
]

PROMPT_TASK = "monai_cbo_prompt"
AUTO_TASK = "monai_cbo_auto"
TRAIN_TASK = "monai_cbo_train"
TRAINED_PATTERN = "adapter_*.pt"  # adapters the train task wrote: adapter_<UTC time>.pt, newest last by name
MAX_CLICKS = 100  #: foreground + background clicks in one prompted request
#: studies whose slice embeddings the infer tasks keep, so that a correction (the same ROI and a click more) or
#: another object on a study encodes nothing again; the least recently used one is dropped
KEPT_STUDIES = 2
#: memory bound of one kept study's embeddings (a LiteMedSAM slice is 4 MiB: 1024 MiB hold 256 slices)
STUDY_CACHE_MIB = 1024.0
#: memory bound of the decodes remembered across requests (a correction's unchanged slices decode nothing again)
DECODE_MEMO_MIB = 256.0


def _numbers(value: Any, count: int, what: str) -> list[int]:
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_constant=lambda c: math.nan)
        except (json.JSONDecodeError, RecursionError) as err:
            raise Refused(422, f"{what} is not a JSON list of {count} numbers: {value[:80]!r}") from err
    if (
        not isinstance(value, (list, tuple))
        or len(value) != count
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "..."
        raise Refused(422, f"{what} must be a list of {count} numbers, got {shown}")
    if not all(math.isfinite(v) and abs(v) < 2**31 for v in value):
        raise Refused(422, f"{what} must hold finite voxel indices, got {list(value)}")
    return [int(round(v)) for v in value]


def parse_prompt(params: dict[str, Any], shape: tuple[int, int, int]) -> KeyPrompt:
    """The :class:`KeyPrompt` of a viewer's request (``roi``, ``foreground``, ``background``, optional
    ``key_slice``) on a volume of stored ``shape``; raises :class:`Refused` (4xx) naming what is wrong.

    The ROI's slices bound the segmentation, a one-slice ROI's too (it is segmented on that slice alone). Without
    an ROI the first foreground click starts the object on its slice, propagated with the adapter's stop rules."""
    roi = params.get("roi")
    for kind in ("foreground", "background"):
        if not isinstance(params.get(kind) or [], list):
            raise Refused(422, f"{kind} must be a list of [i, j, k] points, got {str(params.get(kind))[:80]!r}")
    count = sum(len(params.get(kind) or []) for kind in ("foreground", "background"))
    if count > MAX_CLICKS:
        raise Refused(422, f"{count} clicks in one request; give at most {MAX_CLICKS}")
    clicks = {
        kind: [_numbers(p, 3, f"a {kind} point") for p in (params.get(kind) or [])]
        for kind in ("foreground", "background")
    }
    points = []
    for kind, flag in (("foreground", 1), ("background", 0)):
        for p in clicks[kind]:
            if any(not 0 <= v < n for v, n in zip(p, shape, strict=True)):
                raise Refused(422, f"{kind} point {p} lies outside the volume of shape {list(shape)}")
            points.append([*p, flag])
    if not roi:
        if not clicks["foreground"]:
            raise Refused(
                422,
                "the prompted task needs an ROI box (roi = [i0, j0, i1, j1, k0, k1] in voxel indices) or a "
                "foreground click to start from; background clicks correct an object, they cannot start one",
            )
        if params.get("key_slice") is not None:
            raise Refused(
                422, "key_slice goes with an ROI; without one the object starts at its first foreground click"
            )
        return KeyPrompt(None, label=1, points=points)  # the first foreground click starts it; propagated, open
    i0, j0, i1, j1, k0, k1 = _numbers(roi, 6, "roi")
    if i1 <= i0 or j1 <= j0 or k1 < k0:
        raise Refused(
            422,
            f"the ROI {[i0, j0, i1, j1, k0, k1]} has no extent: give i0 < i1, j0 < j1 and k0 <= k1 (slices "
            "k0 <= k < k1; k0 == k1 is the one slice k0)",
        )
    if k1 > k0:
        k1 -= 1  # MONAI Label's ROI covers slices k0 <= k < k1
    box = (i0, j0, k0, i1, j1, k1)
    outside = [
        f"{axis} {lo}..{hi} (the volume has 0..{n - 1})"
        for axis, lo, hi, n in zip("ijk", box[:3], box[3:], shape, strict=True)
        if lo < 0 or hi > n - 1
    ]
    if outside:
        raise Refused(422, f"the ROI box lies outside the volume: {', '.join(outside)}")
    key_slice = params.get("key_slice")
    if key_slice is not None:
        key_slice = _numbers([key_slice], 1, "key_slice")[0]
        if not box[2] <= key_slice <= box[5]:
            raise Refused(422, f"key_slice {key_slice} lies outside the ROI's slices {box[2]}..{box[5]}")
    return KeyPrompt(box, label=1, key_slice=key_slice, points=points or None, bounded=True)


class AdapterStore:
    """The model the infer tasks use: the newest adapter the train task wrote into ``models_dir``, else
    ``base`` (the bundle's or the given adapter), else zero-shot LiteMedSAM. Reloaded when a newer one lands."""

    def __init__(self, models_dir: Path, base: Path | None, device: str | None, runtime: str | None = None) -> None:
        from ..networks.runtime import default_runtime

        self.models_dir, self.base, self.device = Path(models_dir), base, device or None
        # what runs the image encoder (monai_cbo.networks.runtime): the server's --encoder-runtime, else the default
        self.runtime = runtime or default_runtime()
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._inferer: SliceWiseInferer | None = None
        self._studies: OrderedDict[tuple, SliceCache] = OrderedDict()

    def current_path(self) -> Path | None:
        trained = sorted(self.models_dir.glob(TRAINED_PATTERN))
        return trained[-1] if trained else self.base

    def inferer(self) -> tuple[SliceWiseInferer, Path | None]:
        from ..models import load_segmenter
        from ..networks import build_model
        from ..networks.runtime import encoder_for

        path = self.current_path()
        key = (str(path), path.stat().st_mtime_ns) if path else (None, None)
        with self._lock:
            if key != self._key:
                model = load_segmenter(path) if path else build_model("litemedsam")
                logger.info("infer tasks now use %s", path or "zero-shot LiteMedSAM")
                memo = SliceCache(DECODE_MEMO_MIB)  # keyed by embedding content and prompts: this model's only
                inferer = SliceWiseInferer(model, device=self.device, decode_memo=memo)
                # once per model: a new adapter is converted (seconds) before its first answer, then encodes faster
                inferer.encoder = encoder_for(self.runtime, inferer.model, inferer.device, log=logger.info)
                self._inferer = inferer
                self._key = key
                self._studies.clear()  # another model, other embeddings
            return self._inferer, path

    def embeddings(self, image: str | Path, pre: Preprocess) -> SliceCache:
        """The kept slice embeddings of study ``image`` under the current model and ``pre``: the same cache while
        the file (path, size, modification time), the model and the preprocessing are unchanged, a new one
        otherwise; past :data:`KEPT_STUDIES` the least recently used study's are dropped. Call :meth:`inferer`
        first (it decides the model)."""
        stat = Path(image).stat()
        key = (self._key, str(Path(image).resolve()), stat.st_size, stat.st_mtime_ns, repr(pre))
        with self._lock:
            cache = self._studies.pop(key, None)  # a kept cache may be empty, so not `or`: it is falsy then
            if cache is None:
                cache = SliceCache(STUDY_CACHE_MIB)
            self._studies[key] = cache
            while len(self._studies) > KEPT_STUDIES:
                self._studies.popitem(last=False)
            return cache

    def stop_rules(self, adapter: Path | None) -> PropagationConfig | None:
        """The propagation stop rules the train task swept for ``adapter`` (``adapter_<time>.stop.json`` beside
        it), None for an adapter without them (the bundle's own, or a given one: the task's settings apply)."""
        stop = adapter.with_suffix(".stop.json") if adapter is not None else None
        if stop is None or not stop.is_file():
            return None
        try:
            return PropagationConfig(**json.loads(stop.read_text(encoding="utf-8"))["propagation"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("ignoring %s (%s): the bundle's stop rules apply", stop, err)
            return None

    def class_prompts(self) -> dict | None:
        """The current adapter's class prompts (names, values), None for a prompted-only model."""
        from ..peft import adapter_class_prompts, read_adapter

        path = self.current_path()
        return adapter_class_prompts(read_adapter(path)) if path else None


def _volume_shape(image: str) -> tuple[int, int, int]:
    try:
        volume = load_volume(image)
    except (OSError, ValueError, RuntimeError) as err:
        raise Refused(422, f"the image {Path(image).name} cannot be read: {err}") from err
    return tuple(int(n) for n in volume.shape[1:4])


def _output_file(folder: Path) -> str:
    """A new private file for a result mask in the server's own temporary folder (``<work>/tmp``)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(suffix=".nii.gz", prefix="result_", dir=folder)
    os.close(handle)
    return path


class _Segment(InferTask):
    """What both infer tasks share: the adapter store, the preprocessing, the call into ``segment_case``."""

    def __init__(self, store: AdapterStore, pre: Preprocess, kind, labels, description: str) -> None:
        super().__init__(type=kind, labels=labels, dimension=3, description=description)
        self.store, self.pre = store, pre

    def is_valid(self) -> bool:
        return True

    def _run(
        self,
        case: Case,
        names: dict[str, int],
        inferer: SliceWiseInferer,
        adapter: Path | None,
        propagation: PropagationConfig | None = None,
    ) -> tuple[str, dict[str, Any]]:
        out = _output_file(self.store.models_dir.parent / "tmp")
        try:
            cache = self.store.embeddings(case.image, self.pre)
            result = segment_case(inferer, case, out, self.pre, overwrite=True, propagation=propagation, cache=cache)
        except (ValueError, FileNotFoundError) as err:
            os.unlink(out)
            raise Refused(422, str(err)) from err
        except BaseException:  # nothing is left behind in the temporary folder, whatever failed
            os.unlink(out)
            raise
        return out, {
            "label_names": names,
            "adapter": str(adapter) if adapter else "zero-shot LiteMedSAM",
            "slices": result.slices,
            "latencies": {"total": round(result.seconds, 3)},
        }


class PromptTask(_Segment):
    """ROI box (+ clicks) -> the propagated 3D mask of one object (value 1)."""

    def __init__(self, store: AdapterStore, pre: Preprocess, propagation: PropagationConfig) -> None:
        self.propagation = propagation  # the task's: a bundle's own settings, else the library's defaults
        super().__init__(
            store,
            pre,
            InferType.DEEPGROW,
            ["object"],
            "monai_cbo: one ROI box (optionally with foreground / background clicks) -> 3D mask, propagated "
            "slice by slice within the ROI's slices",
        )

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        image = request["image"]
        key = parse_prompt(request, _volume_shape(image))
        name = str(request.get("label_name") or "object")[:NAME_MAX]  # "label" is an uploaded file in MONAI Label
        inferer, adapter = self.store.inferer()
        own = self.store.stop_rules(adapter)  # a trained adapter's own stop rules before the task's
        out, info = self._run(Case(image, key=key), {name: 1}, inferer, adapter, own or self.propagation)
        info["stop_rules"] = "the adapter's own (swept by the train task)" if own else "the task's"
        return out, info


class AutoTask(_Segment):
    """No input -> every class of the current adapter (its learned class prompts)."""

    def __init__(self, store: AdapterStore, pre: Preprocess, labels: dict[str, int], auto: AutoConfig) -> None:
        super().__init__(
            store,
            pre,
            InferType.SEGMENTATION,
            labels,
            "monai_cbo: automatic segmentation of every class of the adapter, no prompt",
        )
        self.auto = auto  # the task's: a request may switch largest_cc

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        inferer, adapter = self.store.inferer()  # one model for the check and the run, read once
        spec = class_prompts_of(inferer.model)
        if spec is None:
            raise Refused(
                409,
                f"the current adapter ({adapter or 'zero-shot LiteMedSAM'}) has no class prompts, "
                f"so it cannot segment without a prompt: use {PROMPT_TASK} with an ROI box",
            )
        names = {str(n): int(v) for n, v in zip(spec.class_names, spec.class_values, strict=True)}
        largest = request.get("largest_cc", self.auto.largest_component)
        largest = largest if isinstance(largest, bool) else str(largest).lower() in ("1", "true", "yes")
        case = Case(request["image"], auto=replace(self.auto, largest_component=largest))
        return self._run(case, names, inferer, adapter)


class MonaiCboApp(MONAILabelApp):
    """monai_cbo as a MONAI Label app: see the module docstring."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.work = Path(conf.get("work") or Path(app_dir).parent)
        name = conf.get("bundle") or ""
        self.bundle = load_bundle(name) if name else None
        adapter = conf.get("adapter") or (str(self.bundle.adapter) if self.bundle and self.bundle.adapter else "")
        self.task = self.bundle.task if self.bundle else TaskSpec(preprocess=Preprocess(conf.get("modality") or "ct"))
        self.store = AdapterStore(
            self.work / "models", Path(adapter) if adapter else None, conf.get("device"), conf.get("encoder_runtime")
        )
        labels = list(self.bundle.class_names) if self.bundle else None
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_cbo",
            description="SAM adapted with CBO (monai_cbo): box-prompted and automatic segmentation, fine-tuned "
            "on the labels you save",
            version="0.1.0",
            labels=labels,
        )

    def init_datastore(self) -> StudiesDatastore:
        from monailabel.config import settings

        return StudiesDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            allow_overwrite=str(self.conf.get("allow_image_overwrite", "")).lower() == "true",
        )

    def init_infers(self) -> dict[str, InferTask]:
        pre = self.task.preprocess
        tasks: dict[str, InferTask] = {PROMPT_TASK: PromptTask(self.store, pre, self.task.propagation)}
        spec = self.store.class_prompts()
        if spec or self.bundle:  # a bundle's train task gives the adapter class prompts, even if none ships
            names = spec["names"] if spec else list(self.bundle.class_names)
            values = (spec.get("values") if spec else None) or range(1, len(names) + 1)
            labels = {str(n): int(v) for n, v in zip(names, values, strict=True)}
            tasks[AUTO_TASK] = AutoTask(self.store, pre, labels, self.task.auto)
        return tasks

    def init_trainers(self) -> dict[str, TrainTask]:
        if not self.bundle:
            return {}
        limit = self.conf.get("max_train_minutes")
        return {TRAIN_TASK: FineTune(self.bundle, self.work, float(limit) if limit else None)}

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """Run infer task ``request["model"]`` on the datastore's image ``request["image"]`` (an id, never a
        path: MONAI Label's own ``infer`` takes any existing path a client names); with ``save_label``, the
        mask is saved as a label of that image under ``label_tag`` (a plain name) through the datastore."""
        model = request.get("model")
        if model not in self._infers:
            raise Refused(404, f"no model {model!r} on this server; its models are {', '.join(self._infers)}")
        datastore = datastore or self.datastore()
        image_id = plain_name(request.get("image"), "the image id")
        request = copy.deepcopy(request)
        request.update(description=self._infers[model].description, image=datastore.image_path(image_id))
        save = request.get("save_label", False)
        save = save if isinstance(save, bool) else str(save).lower() in ("1", "true", "yes")
        tag = plain_name(request.get("label_tag") or "original", "label_tag") if save else None
        result_file, result_json = self._infers[model](request)
        label_id = result_file
        if save:
            label_id = datastore.save_label(image_id, result_file, tag, {"model": model, "params": result_json})
        return {"label": label_id, "tag": tag or "original", "file": result_file, "params": result_json}
