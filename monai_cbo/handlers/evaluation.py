"""Evaluation handlers: per-case Dice / HD95 / NSD table, and masks written in the input's geometry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..inferers.volume import case_name, save_label_map
from ..metrics import MetricsTable, case_metrics
from ..transforms.labels import ChannelsToLabelMap

__all__ = ["CaseMetricsWriter", "LabelMapWriter"]

logger = logging.getLogger(__name__)


def _named_items(engine: Engine, name_key: str) -> list[tuple[str, dict]]:
    """``(case name, output item)`` pairs of the current iteration.

    The name is the datalist's ``case`` field where present (``data_prep`` writes it; BraTS 2015 cases all
    share file names), else the image's file name without its suffix. Only the last path component is kept:
    MONAI's ``load_decathlon_datalist`` turns any value naming an existing folder into an absolute path, and
    an output name must never lead outside the output folder.
    """
    output, batch = engine.state.output, engine.state.batch
    outputs = output if isinstance(output, list) else [output]
    batches = batch if isinstance(batch, list) else [batch] * len(outputs)
    named = []
    for item, source in zip(outputs, batches, strict=False):
        case = source.get("case") if isinstance(source, dict) else None
        if case is None:
            path = item[name_key].meta.get("filename_or_obj", "case") if hasattr(item[name_key], "meta") else "case"
            case = case_name(str(path[0] if isinstance(path, (list, tuple)) else path))
        named.append((Path(str(case[0] if isinstance(case, (list, tuple)) else case)).name, item))
    return named


class CaseMetricsWriter:
    """Per case and class: Dice, HD95 and NSD (mm, from the volume's affine); at the end, a per-case CSV, a
    summary (mean ± std) as CSV and Markdown, logged too.

    Attach to an evaluator whose (decollated) output items hold binary channels ``[K, ...]`` under
    ``pred_key`` and ``label_key``, one channel per name in ``class_names``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        pred_key: str = "pred",
        label_key: str = "label",
        name_key: str = "image",
        nsd_tolerance_mm: float = 2.0,
        overwrite: bool = False,
    ) -> None:
        self.output_dir, self.class_names = Path(output_dir), list(class_names)
        self.pred_key, self.label_key, self.name_key = pred_key, label_key, name_key
        self.tolerance, self.overwrite = nsd_tolerance_mm, overwrite
        self.table = MetricsTable()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: setattr(self, "table", MetricsTable()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def record(self, engine: Engine) -> None:
        for case, item in _named_items(engine, self.name_key):
            pred, label = item[self.pred_key], item[self.label_key]
            spacing = np.linalg.norm(np.asarray(pred.affine)[:3, :3], axis=0) if hasattr(pred, "affine") else 1.0
            rows = []
            for k, name in enumerate(self.class_names):
                p = (torch.as_tensor(pred[k]) > 0.5).cpu().numpy().astype(np.int64)
                g = (torch.as_tensor(label[k]) > 0.5).cpu().numpy().astype(np.int64)
                rows += case_metrics(p, g, {1: name}, spacing, self.tolerance)
            self.table.add(case, rows)

    def write(self, engine: Engine) -> None:
        self.table.write_csv(self.output_dir / "metrics_per_case.csv", overwrite=self.overwrite)
        self.table.write_summary(self.output_dir / "metrics_summary.csv", overwrite=self.overwrite)
        markdown = self.table.to_markdown()
        (self.output_dir / "metrics_summary.md").write_text(markdown + "\n", encoding="utf-8")
        print(f"evaluation summary ({self.output_dir}):\n{markdown}", flush=True)


class LabelMapWriter:
    """Write each case's prediction, binary channels ``[K, X, Y, Z]`` in the input's geometry (e.g. after
    ``Invertd``), as one label map ``<case><postfix>`` NIfTI: channel k writes ``values[k]``, later channels over
    earlier ones (see :class:`~monai_cbo.transforms.ChannelsToLabelMap`). Atomic; an existing file is kept
    unless ``overwrite``."""

    def __init__(
        self,
        output_dir: str | Path,
        values: Sequence[int],
        key: str = "pred",
        name_key: str = "image",
        postfix: str = "_seg.nii.gz",
        overwrite: bool = False,
    ) -> None:
        self.output_dir, self.key, self.name_key = Path(output_dir), key, name_key
        self.postfix, self.overwrite = postfix, overwrite
        self.to_labels = ChannelsToLabelMap(values)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for name, item in _named_items(engine, self.name_key):
            pred = item[self.key]
            labels = self.to_labels(pred)[0].cpu().numpy()
            path = self.output_dir / f"{name}{self.postfix}"
            save_label_map(labels, pred, path, self.overwrite)
            logger.info(f"wrote {path}")
