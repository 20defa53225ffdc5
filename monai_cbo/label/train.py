"""The label server's train task: a few saved labels become an adapter in minutes, with the training every
adapter gets (``monai-cbo adapt --bundle``: the bundle's recipe, classes and preprocessing), within the limits the
server's operator set."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.train import TrainTask

from ..bundles import BundleInfo, load_bundle
from ..inferers.propagation import PropagationConfig
from ..peft import PRESETS
from ..utils import write_atomic
from .guard import Refused

__all__ = ["TRAIN_LIMITS", "FineTune"]

#: what the train task accepts (the operator sets ``minutes``' top with ``monai-cbo label --max-train-minutes``);
#: ``steps`` > 0 trains exactly that many steps (and ``decoder_steps``) instead of for ``minutes``
TRAIN_LIMITS = {
    "minutes": (0.5, 60.0),
    "steps": (0, 2000),
    "decoder_steps": (0, 10000),
    "auto_share": (0.0, 1.0),
    "click_share": (0.0, 1.0),
    "learning_rate": (1e-7, 1.0),
    "seed": (0, 2**31 - 1),
}
#: the progress lines of ``monai-cbo adapt`` the status follows
_PROGRESS = re.compile(r"^\s+(adapter|decoder)\s+(\d+)%\s+step (\d+)")
_VALIDATION = re.compile(r"validation at step (\d+): boxes ([0-9.]+)(?:, automatic ([0-9.]+))?")


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` still runs (a zombie, ended but not yet reaped, does not)."""
    import psutil

    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (TypeError, ValueError, psutil.Error):
        return False


class FineTune(TrainTask):
    """Train an adapter on the labels saved so far with ``monai-cbo adapt --bundle`` (the bundle's recipe,
    classes and preprocessing; held-back validation, the best validated weights, the adapter's own stop rules
    swept on the labelled volumes) and publish it atomically as ``<work>/models/adapter_<time>.pt``, its stop
    rules beside it (``adapter_<time>.stop.json``), for the infer tasks' next request."""

    def __init__(self, bundle: BundleInfo, work: Path, max_minutes: float | None = None) -> None:
        super().__init__(
            f"monai_cbo: adapt {bundle.name} to the labels saved so far in a few minutes (monai-cbo adapt, the "
            "bundle's recipe); the infer tasks use the new adapter and its stop rules from their next request on"
        )
        from ..adapt import bundle_recipe

        self.bundle, self.work = bundle, Path(work)
        recipe = bundle_recipe(bundle.path)
        self.defaults: dict[str, Any] = {
            "minutes": 10.0,
            "steps": 0,
            "decoder_steps": 0,
            "preset": recipe.preset,
            "auto_share": recipe.auto_share,
            "click_share": recipe.click_share,
            "learning_rate": recipe.learning_rate,
            "seed": recipe.seed,
            "stop_sweep": True,
        }
        self.limits = dict(TRAIN_LIMITS)
        if max_minutes is not None:
            self.limits["minutes"] = (min(0.5, float(max_minutes)), float(max_minutes))
        self.defaults["minutes"] = min(self.defaults["minutes"], self.limits["minutes"][1])

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
        checked: dict[str, Any] = {}
        for key, value in params.items():
            if key == "preset":
                if not isinstance(value, str) or value not in PRESETS:
                    raise Refused(
                        422, f"train parameter preset={str(value)[:40]!r} is not a preset; one of {sorted(PRESETS)}"
                    )
                checked[key] = value
                continue
            if key == "stop_sweep":
                if not isinstance(value, bool):
                    raise Refused(422, f"train parameter stop_sweep={str(value)[:40]!r} is not true or false")
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
        if checked.get("decoder_steps") and not checked.get("steps"):
            raise Refused(422, "train parameter decoder_steps goes with steps (a minutes budget splits its own time)")
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
        text = json.dumps(stats, indent=1)
        write_atomic(self.stats_file, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)

    def _options(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return {**self.defaults, **self.validate({k: request[k] for k in self.defaults if k in request})}
        except Refused as err:
            raise ValueError(err.message) from err

    def command(self, datalist: Path, out: Path, options: dict[str, Any]) -> list[str]:
        """The ``monai-cbo adapt`` command a request with ``options`` runs."""
        cmd = [sys.executable, "-m", "monai_cbo.cli", "adapt", str(datalist), "-o", str(out)]
        cmd += ["--bundle", str(self.bundle.path)]
        if options["steps"]:
            cmd += ["--steps", str(options["steps"]), "--decoder-steps", str(options["decoder_steps"])]
        else:
            cmd += ["--minutes", str(options["minutes"])]
        for key in ("preset", "auto_share", "click_share", "learning_rate", "seed"):
            cmd += [f"--{key.replace('_', '-')}", str(options[key])]
        return cmd + ([] if options["stop_sweep"] else ["--no-stop-sweep"])

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        options = self._options(request)
        pairs = sorted((d["image"], d["label"]) for d in datastore.datalist() if d.get("label"))  # a stable order
        if not pairs:
            raise ValueError("adapting needs at least 1 labelled image; none saved so far: save labels in the viewer")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        run = self.work / "train" / stamp
        run.mkdir(parents=True, exist_ok=False)
        datalist = run / "datalist.json"
        items = [{"image": i, "label": lab} for i, lab in pairs]
        datalist.write_text(json.dumps({"training": items}, indent=1), encoding="utf-8")
        out = run / "bundle"
        cmd = self.command(datalist, out, options)
        stats: dict[str, Any] = {
            "status": "RUNNING",
            "stage": None,
            "progress": 0,
            "step": 0,
            "best_metric": 0.0,
            "start_ts": stamp,
            "train": [Path(i).name for i, _ in pairs],
            "options": options,
            "run_dir": str(run),
            "pid": os.getpid(),
        }
        self._write_stats(stats)
        started = time.perf_counter()
        log = run / "training.log"
        with open(log, "w", encoding="utf-8") as sink:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its progress as it comes
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=run, env=env)
            for line in proc.stdout:
                sink.write(line)
                print(line, end="", flush=True)  # MONAI Label shows the task's output in its train status
                if m := _PROGRESS.match(line):
                    stats.update(stage=m.group(1), progress=int(m.group(2)), step=int(m.group(3)))
                    self._write_stats(stats)
                if m := _VALIDATION.search(line):
                    score = float(m.group(3) or m.group(2))
                    stats["best_metric"] = max(stats["best_metric"], score)
                    self._write_stats(stats)
            code = proc.wait()
        stats["total_time"] = round(time.perf_counter() - started, 1)
        adapter = out / "models" / "adapter.pt"
        if code != 0 or not (out / "configs" / "metadata.json").is_file():
            stats["status"] = "ERROR"
            self._write_stats(stats)
            tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-5:])
            raise RuntimeError(f"adapting failed (exit code {code}); its log is {log}; it ends:\n{tail}")
        record = json.loads((out / "models" / "adapter.json").read_text(encoding="utf-8"))
        swept = load_bundle(str(out)).task.propagation if options["stop_sweep"] else None
        target = self._publish(adapter, swept, stamp)
        stats.update(
            status="DONE",
            progress=100,
            adapter=str(target),
            bundle=str(out),
            validation=record.get("validation", {}).get("note"),
            validation_dice={k: v.get("mean") for k, v in (record.get("validation_dice") or {}).items()},
        )
        self._write_stats(stats)
        return stats

    def _publish(self, adapter: Path, propagation: PropagationConfig | None, stamp: str) -> Path:
        """``adapter`` as ``<work>/models/adapter_<stamp>.pt`` with the stop rules swept for it beside it (none
        when the sweep was off: the task's apply); the stop rules land first and the adapter by a rename, so the
        infer tasks never see one without the other."""
        models = self.work / "models"
        models.mkdir(parents=True, exist_ok=True)
        target = models / f"adapter_{stamp}.pt"
        if propagation is not None:
            text = json.dumps({"propagation": dataclasses.asdict(propagation)}, indent=1)
            write_atomic(target.with_suffix(".stop.json"), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        write_atomic(target, lambda tmp: shutil.copyfile(adapter, tmp))  # the infer tasks see only whole files
        return target
