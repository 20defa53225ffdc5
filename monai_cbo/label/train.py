"""The label server's train task: fine-tune an adapter on the labels saved so far with the bundle's own
``train.json``, within the limits the server's operator set."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.train import TrainTask

from ..bundles import BundleInfo, bundle_command, bundle_flags
from ..peft import PRESETS
from .guard import Refused

__all__ = ["TRAIN_LIMITS", "FineTune"]

#: what the train task accepts (the operator widens ``max_epochs`` with ``monai-cbo label --max-train-epochs``)
TRAIN_LIMITS = {
    "max_epochs": (1, 50),
    "slices_per_volume": (1, 64),
    "auto_share": (0.0, 1.0),
    "learning_rate": (1e-7, 1.0),
    "val_fraction": (0.01, 0.9),
    "seed": (0, 2**31 - 1),
}


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
