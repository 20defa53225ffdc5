"""The MONAI Label app: prompted and automatic infer tasks and a train task over monai_cbo's own paths.

MONAI Label loads it from the ``main.py`` that ``monai-cbo label`` writes into its work folder; its settings
arrive as the app's ``conf`` (strings): ``work`` (the work folder), ``bundle`` (a shipped bundle's name, or
empty), ``adapter`` (an adapter file, or empty), ``device`` (empty: CUDA when there is one).

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
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask

from ..bundles import (
    BundleInfo,
    bundle_auto_defaults,
    bundle_command,
    bundle_flags,
    bundle_preprocess,
    bundle_propagation,
    load_bundle,
)
from ..inferers import AutoConfig, Case, KeyPrompt, Preprocess, PropagationConfig, SliceWiseInferer, segment_case
from ..inferers.segment import check_label
from ..inferers.volume import load_volume
from ..networks import class_prompts_of
from ..peft import PRESETS
from .guard import NAME_MAX, Refused, check_finite, inside, plain_name

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO_TASK",
    "MAX_CLICKS",
    "MAX_VOLUME_BYTES",
    "PROMPT_TASK",
    "TRAIN_LIMITS",
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
MAX_VOLUME_BYTES = 2 << 30  #: an uploaded image's data, decompressed (its header is read first)
#: what the train task accepts (the operator widens ``max_epochs`` with ``monai-cbo label --max-train-epochs``)
TRAIN_LIMITS = {
    "max_epochs": (1, 50),
    "slices_per_volume": (1, 64),
    "auto_share": (0.0, 1.0),
    "learning_rate": (1e-7, 1.0),
    "val_fraction": (0.01, 0.9),
    "seed": (0, 2**31 - 1),
}


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

    The ROI's slices bound the segmentation, a one-slice ROI's too (it is segmented on that slice alone)."""
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
    if not roi:
        raise Refused(
            422,
            "the prompted task needs an ROI box (roi = [i0, j0, i1, j1, k0, k1] in voxel indices): LiteMedSAM "
            "segments from a box; foreground / background clicks correct a box, they cannot replace it",
        )
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
    points = []
    for kind, flag in (("foreground", 1), ("background", 0)):
        for p in clicks[kind]:
            if any(not 0 <= v < n for v, n in zip(p, shape, strict=True)):
                raise Refused(422, f"{kind} point {p} lies outside the volume of shape {list(shape)}")
            points.append([*p, flag])
    key_slice = params.get("key_slice")
    if key_slice is not None:
        key_slice = _numbers([key_slice], 1, "key_slice")[0]
        if not box[2] <= key_slice <= box[5]:
            raise Refused(422, f"key_slice {key_slice} lies outside the ROI's slices {box[2]}..{box[5]}")
    return KeyPrompt(box, label=1, key_slice=key_slice, points=points or None, bounded=True)


class AdapterStore:
    """The model the infer tasks use: the newest adapter the train task wrote into ``models_dir``, else
    ``base`` (the bundle's or the given adapter), else zero-shot LiteMedSAM. Reloaded when a newer one lands."""

    def __init__(self, models_dir: Path, base: Path | None, device: str | None) -> None:
        self.models_dir, self.base, self.device = Path(models_dir), base, device or None
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._inferer: SliceWiseInferer | None = None

    def current_path(self) -> Path | None:
        trained = sorted(self.models_dir.glob(TRAINED_PATTERN))
        return trained[-1] if trained else self.base

    def inferer(self) -> tuple[SliceWiseInferer, Path | None]:
        from ..models import load_segmenter
        from ..networks import build_model

        path = self.current_path()
        key = (str(path), path.stat().st_mtime_ns) if path else (None, None)
        with self._lock:
            if key != self._key:
                model = load_segmenter(path) if path else build_model("litemedsam")
                logger.info("infer tasks now use %s", path or "zero-shot LiteMedSAM")
                self._inferer, self._key = SliceWiseInferer(model, device=self.device), key
            return self._inferer, path

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
            result = segment_case(inferer, case, out, self.pre, overwrite=True, propagation=propagation)
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

    def __init__(self, store: AdapterStore, pre: Preprocess, propagation: PropagationConfig | None = None) -> None:
        self.propagation = propagation  # a bundle's own settings, else the library's defaults
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
        return self._run(Case(image, key=key), {name: 1}, *self.store.inferer(), self.propagation)


class AutoTask(_Segment):
    """No input -> every class of the current adapter (its learned class prompts)."""

    def __init__(
        self, store: AdapterStore, pre: Preprocess, labels: dict[str, int], largest: bool, z_smooth: float = 0.0
    ) -> None:
        super().__init__(
            store,
            pre,
            InferType.SEGMENTATION,
            labels,
            "monai_cbo: automatic segmentation of every class of the adapter, no prompt",
        )
        self.largest, self.z_smooth = largest, z_smooth

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
        largest = request.get("largest_cc", self.largest)
        largest = largest if isinstance(largest, bool) else str(largest).lower() in ("1", "true", "yes")
        case = Case(request["image"], auto=AutoConfig(largest_component=largest, z_smooth=self.z_smooth))
        return self._run(case, names, inferer, adapter)


def _nifti_voxels(path: str | Path, what: str) -> tuple[tuple[int, ...], int]:
    """The shape and the data's size in bytes of a NIfTI file, read from its header alone (nothing is
    decompressed beyond it), so an upload's size is checked before its data is read."""
    try:
        header = nib.load(str(path)).header
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = np.dtype(header.get_data_dtype()).itemsize
    except Exception as err:  # nibabel / gzip errors of a corrupt or truncated upload
        raise Refused(422, f"the {what} was not saved: it is not a readable NIfTI file ({type(err).__name__})") from err
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape, int(np.prod(shape, dtype=np.int64)) * itemsize


class StudiesDatastore(LocalDatastore):
    """MONAI Label's folder datastore under :mod:`~monai_cbo.label.guard`'s rule: every id and tag is a plain
    name, every path it builds lies inside the studies folder, an existing image is never overwritten (409,
    unless the server was started with ``--allow-image-overwrite``), a label is checked against its image (its
    header first, so a decompression bomb is refused before it is read) and saved only under
    ``labels/<tag>/``, and nothing is deleted."""

    def __init__(self, *args, allow_overwrite: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.allow_overwrite = allow_overwrite
        self.root = Path(self._datastore_path).resolve()
        self.images_root = Path(self._datastore.image_path()).resolve()
        self.labels_root = Path(self._datastore.label_path(None)).resolve()

    def _image(self, image_id: str) -> str:
        """The path of image ``image_id`` of the datastore; :class:`Refused` 404 if there is none."""
        path = super().get_image_uri(plain_name(image_id, "the image id"))
        if not path:
            raise Refused(404, f"no image {image_id!r} in the studies folder; GET /datastore/?output=all lists them")
        return str(inside(path, self.root, f"image {image_id!r}"))

    def get_image_uri(self, image_id: str) -> str:
        if not isinstance(image_id, str) or not image_id:
            return ""
        path = super().get_image_uri(plain_name(image_id, "the image id"))
        return str(inside(path, self.root, f"image {image_id!r}")) if path else ""

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        plain_name(label_id, "the label id"), plain_name(label_tag, "the label tag")
        path = super().get_label_uri(label_id, label_tag)
        return str(inside(path, self.labels_root, f"label {label_id!r}")) if path else ""

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        return super().get_image_info(plain_name(image_id, "the image id"))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        check_finite(info, "info")
        return super().update_image_info(plain_name(image_id, "the image id"), info)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return super().get_label_info(plain_name(label_id, "the label id"), plain_name(label_tag, "the label tag"))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        check_finite(info, "info")
        return super().update_label_info(
            plain_name(label_id, "the label id"), plain_name(label_tag, "the label tag"), info
        )

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image = self._image(image_id)
        label_tag = plain_name(label_tag, "the label tag")
        inside(self.labels_root / label_tag, self.labels_root, f"label tag {label_tag!r}")
        shape, _ = _nifti_voxels(label_filename, f"label uploaded for {image_id}")
        volume = load_volume(image)
        expected = [int(n) for n in volume.shape[1:4]]
        if len(shape) != 3 or sorted(shape) != sorted(expected):  # another orientation of the grid is reoriented
            raise Refused(
                422,
                f"the label uploaded for {image_id} was not saved: its header says shape {list(shape)}, the image "
                f"has {expected}; upload the label made on this image's grid",
            )
        try:
            check_label(load_volume(label_filename), volume)
        except Exception as err:  # any unreadable or mismatched upload is the client's problem, not the server's
            detail = str(err).replace(str(label_filename), "the upload")  # the server's own paths stay its own
            raise Refused(422, f"the label uploaded for {image_id} was not saved: {detail}") from err
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        image_id = plain_name(image_id, "the image id")
        suffix = next((s for s in (".nii.gz", ".nii") if str(image_filename).endswith(s)), None)
        if suffix is None:
            raise Refused(415, f"the uploaded image {image_id!r} is not a NIfTI file (.nii.gz, .nii)")
        dest = inside(self.images_root / f"{image_id}{suffix}", self.images_root, f"image {image_id!r}")
        if not self.allow_overwrite and (super().get_image_uri(image_id) or dest.exists()):
            raise Refused(
                409,
                f"image {image_id!r} is already in the studies folder and images are never overwritten; upload it "
                "under another name (or start the server with --allow-image-overwrite)",
            )
        shape, size = _nifti_voxels(image_filename, f"uploaded image {image_id!r}")
        if size > MAX_VOLUME_BYTES:
            raise Refused(
                413,
                f"the uploaded image {image_id!r} holds {size:,} bytes of voxels (shape {list(shape)}); this server "
                f"takes at most {MAX_VOLUME_BYTES:,}",
            )
        try:
            load_volume(image_filename)
        except Exception as err:
            detail = str(err).replace(str(image_filename), "the upload")
            raise Refused(422, f"the uploaded image {image_id!r} was not saved: it cannot be read: {detail}") from err
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        raise Refused(403, "monai-cbo label never deletes from the studies folder; remove the file yourself")

    def remove_label(self, label_id: str, label_tag: str) -> None:
        raise Refused(403, "monai-cbo label never deletes labels; save a corrected label over it instead")


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` still runs (a zombie, ended but not yet reaped, does not)."""
    import psutil

    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (TypeError, ValueError, psutil.Error):
        return False


class FineTune(TrainTask):
    """Fine-tune an adapter on the labels saved so far with the bundle's own ``train.json``; the best
    validation adapter is published atomically as ``<work>/models/adapter_<time>.pt``."""

    def __init__(self, bundle: BundleInfo, work: Path, max_epochs: int | None = None) -> None:
        super().__init__(
            f"monai_cbo: fine-tune {bundle.name}'s preset on the labels saved so far (the bundle's own training); "
            "the infer tasks use the new adapter from their next request on"
        )
        self.bundle, self.work = bundle, Path(work)
        train = json.loads((bundle.path / "configs" / "train.json").read_text(encoding="utf-8"))
        self.defaults = {
            "preset": train["peft"]["preset"],
            "max_epochs": 5,
            "slices_per_volume": int(train.get("slices_per_volume", 4)),
            "auto_share": float(train.get("auto_share", 0.5)),
            "learning_rate": float(train.get("learning_rate", 3e-4)),
            "val_fraction": 0.2,
            "seed": 0,
        }
        self.limits = dict(TRAIN_LIMITS)
        if max_epochs is not None:
            self.limits["max_epochs"] = (1, int(max_epochs))

    def config(self) -> dict[str, Any]:
        return dict(self.defaults)

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` of a train request checked against the defaults' types and the operator's limits;
        :class:`Refused` (422) naming the parameter, the value and what is allowed."""
        if not isinstance(params, dict):
            raise Refused(422, f"train parameters must be a JSON object, got {type(params).__name__}")
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise Refused(422, f"unknown train parameter(s) {unknown}; this task takes {sorted(self.defaults)}")
        checked = {}
        for key, value in params.items():
            if key == "preset":
                if not isinstance(value, str) or value not in PRESETS:
                    raise Refused(
                        422, f"train parameter preset={str(value)[:40]!r} is not a preset; one of {sorted(PRESETS)}"
                    )
                checked[key] = value
                continue
            kind = type(self.defaults[key])
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Refused(422, f"train parameter {key}={str(value)[:40]!r} is not a number")
            if not math.isfinite(value):
                raise Refused(422, f"train parameter {key}={value} is not a finite number")
            if kind is int and value != int(value):
                raise Refused(422, f"train parameter {key}={value} is not an integer")
            lo, hi = self.limits[key]
            if not lo <= value <= hi:
                raise Refused(
                    422,
                    f"train parameter {key}={value} is outside {lo}..{hi} (the limits this server was started with)",
                )
            checked[key] = kind(value)
        return checked

    @property
    def stats_file(self) -> Path:
        return self.work / "train" / "stats.json"

    def stats(self) -> dict[str, Any]:
        """The last training's status; a run whose process has ended without saying so (stopped with
        ``DELETE /train/``, or killed) reads STOPPED, not RUNNING."""
        try:
            stats = json.loads(self.stats_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        if stats.get("status") == "RUNNING" and not _alive(stats.get("pid")):
            stats["status"] = "STOPPED"
        return stats

    def _write_stats(self, stats: dict[str, Any]) -> None:
        self.stats_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, indent=1), encoding="utf-8")
        os.replace(tmp, self.stats_file)

    def _options(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return {**self.defaults, **self.validate({k: request[k] for k in self.defaults if k in request})}
        except Refused as err:
            raise ValueError(err.message) from err

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        options = self._options(request)
        pairs = sorted((d["image"], d["label"]) for d in datastore.datalist() if d.get("label"))  # a stable split
        if len(pairs) < 2:
            raise ValueError(
                f"fine-tuning needs at least 2 labelled images (one to train on, one to validate on); "
                f"{len(pairs)} saved so far: save labels in the viewer first"
            )
        n_val = min(len(pairs) - 1, max(1, round(len(pairs) * options["val_fraction"])))
        train, val = pairs[:-n_val], pairs[-n_val:]
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        run = self.work / "train" / stamp
        run.mkdir(parents=True, exist_ok=False)
        datalist = run / "datalist.json"
        items = lambda ps: [{"image": i, "label": lab} for i, lab in ps]  # noqa: E731
        datalist.write_text(
            json.dumps({"training": items(train), "validation": items(val)}, indent=1), encoding="utf-8"
        )
        epochs = options["max_epochs"]
        options_cli = bundle_flags(
            datalist=datalist,
            dataset_dir=run,
            output_dir=run,
            max_epochs=epochs,
            val_interval=epochs,
            slices_per_volume=options["slices_per_volume"],
            auto_share=options["auto_share"],
            learning_rate=options["learning_rate"],
            seed=options["seed"],
            preset=options["preset"],
        )
        cmd = bundle_command(self.bundle.path / "configs", ["train.json"], options_cli, "training")
        stats = {
            "status": "RUNNING",
            "epoch": 0,
            "total_epochs": epochs,
            "best_metric": 0.0,
            "start_ts": stamp,
            "train": [Path(i).name for i, _ in train],
            "validation": [Path(i).name for i, _ in val],
            "options": options,
            "run_dir": str(run),
            "pid": os.getpid(),
        }
        self._write_stats(stats)
        started = time.perf_counter()
        log = run / "training.log"
        with open(log, "w", encoding="utf-8") as sink:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=run)
            for line in proc.stdout:
                sink.write(line)
                print(line, end="", flush=True)  # MONAI Label shows the task's output in its train status
                if m := re.search(r"Epoch\[(\d+)\] Complete", line):
                    stats["epoch"] = int(m.group(1))
                    self._write_stats(stats)
                if m := re.search(r"val_mean_dice: ([0-9.]+)", line):
                    stats["best_metric"] = max(stats["best_metric"], float(m.group(1)))
                    self._write_stats(stats)
            code = proc.wait()
        best = run / "models" / "best_adapter.pt"
        stats["total_time"] = round(time.perf_counter() - started, 1)
        if code != 0 or not best.is_file():
            stats["status"] = "ERROR"
            self._write_stats(stats)
            raise RuntimeError(f"fine-tuning failed (exit code {code}); its log is {log}")
        models = self.work / "models"
        models.mkdir(parents=True, exist_ok=True)
        target = models / f"adapter_{stamp}.pt"
        tmp = models / f".{target.name}.partial"
        tmp.write_bytes(best.read_bytes())
        os.replace(tmp, target)  # the infer tasks only ever see a complete file
        stats.update(status="DONE", adapter=str(target))
        self._write_stats(stats)
        return stats


class MonaiCboApp(MONAILabelApp):
    """monai_cbo as a MONAI Label app: see the module docstring."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.work = Path(conf.get("work") or Path(app_dir).parent)
        name = conf.get("bundle") or ""
        self.bundle = load_bundle(name) if name else None
        adapter = conf.get("adapter") or (str(self.bundle.adapter) if self.bundle and self.bundle.adapter else "")
        self.pre = bundle_preprocess(self.bundle) if self.bundle else Preprocess(conf.get("modality") or "ct")
        self.store = AdapterStore(self.work / "models", Path(adapter) if adapter else None, conf.get("device"))
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
        propagation = bundle_propagation(self.bundle) if self.bundle else None
        tasks: dict[str, InferTask] = {PROMPT_TASK: PromptTask(self.store, self.pre, propagation)}
        spec = self.store.class_prompts()
        if spec or self.bundle:  # a bundle's train task gives the adapter class prompts, even if none ships
            names = spec["names"] if spec else list(self.bundle.class_names)
            values = (spec.get("values") if spec else None) or range(1, len(names) + 1)
            defaults = bundle_auto_defaults(self.bundle) if self.bundle else {}
            labels = {str(n): int(v) for n, v in zip(names, values, strict=True)}
            tasks[AUTO_TASK] = AutoTask(
                self.store, self.pre, labels, bool(defaults.get("largest_component")), defaults.get("z_smooth", 0.0)
            )
        return tasks

    def init_trainers(self) -> dict[str, TrainTask]:
        if not self.bundle:
            return {}
        limit = self.conf.get("max_train_epochs")
        return {TRAIN_TASK: FineTune(self.bundle, self.work, int(limit) if limit else None)}

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
        request.update(description=self._infers[model].description, image=datastore._image(image_id))
        save = request.get("save_label", False)
        save = save if isinstance(save, bool) else str(save).lower() in ("1", "true", "yes")
        tag = plain_name(request.get("label_tag") or "original", "label_tag") if save else None
        result_file, result_json = self._infers[model](request)
        label_id = result_file
        if save:
            label_id = datastore.save_label(image_id, result_file, tag, {"model": model, "params": result_json})
        return {"label": label_id, "tag": tag or "original", "file": result_file, "params": result_json}
