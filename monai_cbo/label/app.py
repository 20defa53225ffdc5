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

import json
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import HTTPException
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

logger = logging.getLogger(__name__)

__all__ = ["AUTO_TASK", "PROMPT_TASK", "TRAIN_TASK", "AdapterStore", "MonaiCboApp", "parse_prompt"]

PROMPT_TASK = "monai_cbo_prompt"
AUTO_TASK = "monai_cbo_auto"
TRAIN_TASK = "monai_cbo_train"
TRAINED_PATTERN = "adapter_*.pt"  # adapters the train task wrote: adapter_<UTC time>.pt, newest last by name


def _bad(status: int, message: str) -> HTTPException:
    logger.warning("refused (%d): %s", status, message)
    return HTTPException(status_code=status, detail=message)


def _numbers(value: Any, count: int, what: str) -> list[int]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise _bad(422, f"{what} is not a JSON list of {count} numbers: {value!r}") from err
    if (
        not isinstance(value, (list, tuple))
        or len(value) != count
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise _bad(422, f"{what} must be a list of {count} numbers, got {value!r}")
    return [int(round(v)) for v in value]


def parse_prompt(params: dict[str, Any], shape: tuple[int, int, int]) -> KeyPrompt:
    """The :class:`KeyPrompt` of a viewer's request (``roi``, ``foreground``, ``background``, optional
    ``key_slice``) on a volume of stored ``shape``; raises a 4xx :class:`HTTPException` naming what is wrong."""
    roi = params.get("roi")
    for kind in ("foreground", "background"):
        if not isinstance(params.get(kind) or [], list):
            raise _bad(422, f"{kind} must be a list of [i, j, k] points, got {params.get(kind)!r}")
    clicks = {
        kind: [_numbers(p, 3, f"a {kind} point") for p in (params.get(kind) or [])]
        for kind in ("foreground", "background")
    }
    if not roi:
        raise _bad(
            422,
            "the prompted task needs an ROI box (roi = [i0, j0, i1, j1, k0, k1] in voxel indices): LiteMedSAM "
            "segments from a box; foreground / background clicks correct a box, they cannot replace it",
        )
    i0, j0, i1, j1, k0, k1 = _numbers(roi, 6, "roi")
    if k1 > k0:
        k1 -= 1  # MONAI Label's ROI covers slices k0 <= k < k1
    box = (min(i0, i1), min(j0, j1), min(k0, k1), max(i0, i1), max(j0, j1), max(k0, k1))
    outside = [
        f"{axis} {lo}..{hi} (the volume has 0..{n - 1})"
        for axis, lo, hi, n in zip("ijk", box[:3], box[3:], shape, strict=True)
        if lo < 0 or hi > n - 1
    ]
    if outside:
        raise _bad(422, f"the ROI box lies outside the volume: {', '.join(outside)}")
    points = []
    for kind, flag in (("foreground", 1), ("background", 0)):
        for p in clicks[kind]:
            if any(not 0 <= v < n for v, n in zip(p, shape, strict=True)):
                raise _bad(422, f"{kind} point {p} lies outside the volume of shape {list(shape)}")
            points.append([*p, flag])
    key_slice = params.get("key_slice")
    if key_slice is not None:
        key_slice = _numbers([key_slice], 1, "key_slice")[0]
        if not box[2] <= key_slice <= box[5]:
            raise _bad(422, f"key_slice {key_slice} lies outside the ROI's slices {box[2]}..{box[5]}")
    return KeyPrompt(box, label=1, key_slice=key_slice, points=points or None)


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
        raise _bad(422, f"the image {Path(image).name} cannot be read: {err}") from err
    return tuple(int(n) for n in volume.shape[1:4])


def _output_file() -> str:
    handle, path = tempfile.mkstemp(suffix=".nii.gz", prefix="monai_cbo_")
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
        out = _output_file()
        try:
            result = segment_case(inferer, case, out, self.pre, overwrite=True, propagation=propagation)
        except (ValueError, FileNotFoundError) as err:
            os.unlink(out)
            raise _bad(422, str(err)) from err
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
        name = str(request.get("label_name") or "object")  # "label" is an uploaded label file in MONAI Label
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
            raise _bad(
                409,
                f"the current adapter ({adapter or 'zero-shot LiteMedSAM'}) has no class prompts, "
                f"so it cannot segment without a prompt: use {PROMPT_TASK} with an ROI box",
            )
        names = {str(n): int(v) for n, v in zip(spec.class_names, spec.class_values, strict=True)}
        largest = request.get("largest_cc", self.largest)
        largest = largest if isinstance(largest, bool) else str(largest).lower() in ("1", "true", "yes")
        case = Case(request["image"], auto=AutoConfig(largest_component=largest, z_smooth=self.z_smooth))
        return self._run(case, names, inferer, adapter)


class StudiesDatastore(LocalDatastore):
    """MONAI Label's folder datastore that checks a saved label against its image and never deletes or
    overwrites the user's files."""

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image = self.get_image_uri(image_id)
        if not image:
            raise _bad(404, f"no image {image_id!r} in the studies folder; GET /datastore/?output=all lists them")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(label_tag or "")):
            raise _bad(422, f"label tag {label_tag!r} is not a plain name (letters, digits, _ . -)")
        try:
            check_label(load_volume(label_filename), load_volume(image))
        except Exception as err:  # any unreadable or mismatched upload is the client's problem, not the server's
            raise _bad(422, f"the label uploaded for {image_id} was not saved: {err}") from err
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        if image_id and self.get_image_uri(image_id):
            raise _bad(409, f"image {image_id!r} is already in the studies folder; upload it under another name")
        try:
            load_volume(image_filename)
        except Exception as err:
            raise _bad(422, f"the uploaded image {image_id!r} cannot be read: {err}") from err
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        raise _bad(403, "monai-cbo label never deletes from the studies folder; remove the file yourself")

    def remove_label(self, label_id: str, label_tag: str) -> None:
        raise _bad(403, "monai-cbo label never deletes labels; save a corrected label over it instead")


class FineTune(TrainTask):
    """Fine-tune an adapter on the labels saved so far with the bundle's own ``train.json``; the best
    validation adapter is published atomically as ``<work>/models/adapter_<time>.pt``."""

    def __init__(self, bundle: BundleInfo, work: Path) -> None:
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

    def config(self) -> dict[str, Any]:
        return dict(self.defaults)

    @property
    def stats_file(self) -> Path:
        return self.work / "train" / "stats.json"

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def _write_stats(self, stats: dict[str, Any]) -> None:
        self.stats_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, indent=1), encoding="utf-8")
        os.replace(tmp, self.stats_file)

    def _options(self, request: dict[str, Any]) -> dict[str, Any]:
        options = dict(self.defaults)
        for key, default in self.defaults.items():
            if key in request:
                try:
                    options[key] = type(default)(request[key])
                except (TypeError, ValueError) as err:
                    raise ValueError(
                        f"train parameter {key}={request[key]!r} is not a {type(default).__name__}"
                    ) from err
        if options["max_epochs"] < 1 or options["slices_per_volume"] < 1:
            raise ValueError("max_epochs and slices_per_volume must be >= 1")
        return options

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
        return {TRAIN_TASK: FineTune(self.bundle, self.work)} if self.bundle else {}

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        model = request.get("model")
        if model not in self._infers:
            raise _bad(404, f"no model {model!r} on this server; its models are {', '.join(self._infers)}")
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image) and not self.datastore().get_image_uri(image):
            raise _bad(404, f"no image {image!r} in the studies folder; GET /datastore/?output=all lists them")
        return super().infer(request, datastore)
