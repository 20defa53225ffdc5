"""``monai-cbo report RUN_DIR``: a bench folder -> ``report.md`` (+ ``report_files/``) and a self-contained
``report.html``.

Everything comes from the files ``monai-cbo bench`` keeps (``bench.json``, each run's ``result.json``,
``metrics.csv`` and masks), so a report can be rebuilt, or restyled, without retraining. The overlay images
also need the evaluation images named by the datalist; where they cannot be read the report says so and
leaves the overlays out.

Statistics: "mean ± sd" pools every (seed, case) pair of a preset, so the spread covers both the variation
between cases and between seeds; "seed sd" is the spread of the per-seed mean Dice alone. The CBO rows are
also compared with their base paired by (seed, case).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np

from ..metrics import MetricsTable
from ..peft.config import PRESETS
from ..utils import check_overwrite, write_atomic
from .config import BenchConfig, decoder_lr
from .data import entry_name
from .images import box_plot_svg, encode_png, largest_slice_overlay
from .runner import collect_results

__all__ = ["build_report", "write_report"]

_CBO_PAIRS = (("lora_cbo", "lora"), ("adapter_cbo", "adapter"))


def _fmt(mean: float, sd: float | None = None, digits: int = 3) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    if sd is None or not math.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _params(n: int) -> str:
    return f"{n / 1e6:.3f} M" if n >= 100_000 else f"{n:,}"


class _Table:
    def __init__(self, header: Sequence[str], align: str | None = None) -> None:
        self.header, self.rows = list(header), []
        self.align = align or "l" + "r" * (len(header) - 1)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        sep = ["---:" if a == "r" else "---" for a in self.align]
        lines = [self.header, sep, *self.rows]
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines)

    def html(self) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="{"num" if a == "r" else ""}">{escape(c)}</td>'
                for c, a in zip(row, self.align, strict=False)
            )
            + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Runs:
    """Per-case rows of every finished run, indexed by preset."""

    def __init__(self, run_dir: Path) -> None:
        self.results = collect_results(run_dir)
        if not self.results:
            raise FileNotFoundError(
                f"{run_dir} holds no finished run (runs/<preset>/seed<k>/result.json); run "
                "monai-cbo bench first, or point at its --out folder"
            )
        order = list(PRESETS)
        self.presets = sorted({r["preset"] for r in self.results}, key=order.index)
        self.rows: list[dict] = []
        #: automatic-mode rows (runs trained with --auto-share), by mode (``auto``, ``auto_refine``, ...)
        self.auto_rows: dict[str, list[dict]] = {}
        for r in self.results:
            for row in MetricsTable.read_csv(Path(r["dir"]) / "metrics.csv").rows:
                self.rows.append({**row, "preset": r["preset"], "seed": r["seed"]})
            for mode in r.get("automatic") or {}:
                for row in MetricsTable.read_csv(Path(r["dir"]) / f"metrics_{mode}.csv").rows:
                    self.auto_rows.setdefault(mode, []).append({**row, "preset": r["preset"], "seed": r["seed"]})
        self.classes = list(dict.fromkeys(row["class"] for row in self.rows))

    def _of(self, preset: str, cls: str, mode: str) -> list[dict]:
        """Rows of one preset and class: box prompts (``mode`` ``""``) or one automatic mode."""
        rows = self.auto_rows.get(mode, []) if mode else self.rows
        return [r for r in rows if r["preset"] == preset and r["class"] == cls]

    def values(self, preset: str, cls: str, key: str = "dice", mode: str = "") -> np.ndarray:
        return np.array([r[key] for r in self._of(preset, cls, mode)], dtype=float)

    def by_seed_case(self, preset: str, cls: str, mode: str = "") -> dict[tuple[int, str], float]:
        return {(r["seed"], r["case"]): r["dice"] for r in self._of(preset, cls, mode)}

    def of(self, preset: str) -> list[dict]:
        return [r for r in self.results if r["preset"] == preset]


def _stats(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def _main_table(runs: _Runs) -> _Table:
    table = _Table(
        [
            "preset",
            "PEFT",
            "CBO",
            "decoder",
            "trainable",
            "seeds",
            *[f"Dice {c}" for c in runs.classes],
            "mean Dice",
            "seed sd",
            "HD95 (mm)",
            "NSD",
            *(["automatic Dice"] if runs.auto_rows else []),
        ]
    )
    for preset in runs.presets:
        params = runs.of(preset)[0]["params"]
        dice = [_stats(runs.values(preset, c)) for c in runs.classes]
        per_seed = [
            np.nanmean([r["dice"] for r in runs.rows if r["preset"] == preset and r["seed"] == s])
            for s in sorted({r["seed"] for r in runs.of(preset)})
        ]
        mean_all = _stats(np.concatenate([runs.values(preset, c) for c in runs.classes]))[0]
        hd = _stats(np.concatenate([runs.values(preset, c, "hd95") for c in runs.classes]))
        nsd = _stats(np.concatenate([runs.values(preset, c, "nsd") for c in runs.classes]))
        seed_sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan
        table.add(
            preset,
            _params(params["peft"]),
            _params(params["cbo"]),
            _params(params["decoder"]),
            _params(params["total_trainable"]),
            len(per_seed),
            *[_fmt(*d) for d in dice],
            _fmt(mean_all),
            _fmt(seed_sd),
            _fmt(*hd, digits=2),
            _fmt(*nsd),
            *([_fmt(_auto_mean(runs, preset, "auto"))] if runs.auto_rows else []),
        )
    return table


def _auto_mean(runs: _Runs, preset: str, mode: str) -> float:
    values = [runs.values(preset, c, mode=mode) for c in runs.classes]
    return _stats(np.concatenate(values))[0] if any(v.size for v in values) else math.nan


def _auto_table(runs: _Runs) -> _Table:
    """Automatic segmentation (no prompt) beside box prompts, per preset and class, for runs with class prompts."""
    modes = list(runs.auto_rows)
    table = _Table(["preset", "class", *[_mode_name(m) for m in ["", *modes]]])
    for preset in runs.presets:
        if not any(runs.values(preset, runs.classes[0], mode=m).size for m in modes):
            continue
        for cls in [*runs.classes, "mean"]:
            cells = []
            for mode in ["", *modes]:
                if cls == "mean":
                    cells.append(
                        _fmt(
                            _auto_mean(runs, preset, mode)
                            if mode
                            else _stats(np.concatenate([runs.values(preset, c) for c in runs.classes]))[0]
                        )
                    )
                else:
                    cells.append(_fmt(*_stats(runs.values(preset, cls, mode=mode))))
            table.add(preset, cls, *cells)
    return table


def _mode_name(mode: str) -> str:
    """A metrics mode as the tables name it: box prompts (``""``), auto, auto + refine, auto + lcc."""
    return mode.replace("_", " + ") if mode else "box prompts"


def _cbo_table(runs: _Runs) -> tuple[_Table, list[str]]:
    """Each CBO preset against its base, paired by (seed, case), per class and per mode: box prompts, and each
    automatic mode both presets were scored in (what CBO adds with a prompt and without one can differ)."""
    table = _Table(
        ["comparison", "class", "mode", "pairs", "Δ Dice (mean)", "95 % interval of the mean", "CBO better"],
        "lllrrrr",
    )
    notes = []
    for cbo, base in _CBO_PAIRS:
        if cbo not in runs.presets or base not in runs.presets:
            continue
        for mode in ["", *runs.auto_rows]:
            for cls in runs.classes:
                a, b = runs.by_seed_case(cbo, cls, mode), runs.by_seed_case(base, cls, mode)
                keys = sorted(set(a) & set(b))
                if not keys:
                    continue
                diff = np.array([a[k] - b[k] for k in keys])
                mean = float(diff.mean())
                half = 1.96 * float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
                better = int((diff > 0).sum())
                table.add(
                    f"{cbo} − {base}",
                    cls,
                    _mode_name(mode),
                    len(keys),
                    f"{mean:+.4f}",
                    f"[{mean - half:+.4f}, {mean + half:+.4f}]" if math.isfinite(half) else "–",
                    f"{better}/{len(keys)}",
                )
                where = f"{cls}, {_mode_name(mode)}"
                if math.isfinite(half) and mean + half < 0:
                    notes.append(f"{cbo} is worse than {base} on {where} (Δ {mean:+.4f}, interval below 0).")
                elif math.isfinite(half) and mean - half <= 0:
                    notes.append(
                        f"{cbo} does not beat {base} on {where} beyond noise (Δ {mean:+.4f}, interval spans 0)."
                    )
    return table, notes


def _extra_tables(runs: _Runs) -> tuple[_Table, _Table, _Table]:
    per_class = _Table(["preset", "class", "n", "Dice", "HD95 (mm)", "HD95 undefined", "NSD"], "llrrrrr")
    for preset in runs.presets:
        for cls in runs.classes:
            hd = runs.values(preset, cls, "hd95")
            nsd = runs.values(preset, cls, "nsd")
            per_class.add(
                preset,
                cls,
                len(hd),
                _fmt(*_stats(runs.values(preset, cls))),
                _fmt(*_stats(hd), digits=2),
                int(np.isnan(hd).sum()),
                _fmt(*_stats(nsd)),
            )
    pooled = _Table(
        ["preset", *[f"{c} (all slices)" for c in runs.classes], *[f"{c} (GT slices)" for c in runs.classes]]
    )
    for preset in runs.presets:
        res = runs.of(preset)
        allv = [_stats(np.array([r["eval"]["pooled_dice_2d"][c] for r in res])) for c in runs.classes]
        gtv = [_stats(np.array([r["eval"]["pooled_dice_2d_gt_slices"][c] for r in res])) for c in runs.classes]
        pooled.add(preset, *[_fmt(*v) for v in allv], *[_fmt(*v) for v in gtv])
    timing = _Table(
        [
            "preset",
            "runs",
            "slices trained",
            "train s / run",
            "train slices / s",
            "eval s / run",
            "eval slices / s",
            "final loss",
        ]
    )
    for preset in runs.presets:
        res = runs.of(preset)
        train_s = np.mean([r["train"]["seconds"] for r in res])
        slices = res[0]["train"]["slices"]
        eval_s = np.mean([r["eval"]["seconds"] for r in res])
        eval_n = res[0]["eval"]["slices"]
        loss = [np.mean(r["train"]["loss"][-5:]) for r in res if r["train"]["loss"]]
        timing.add(
            preset,
            len(res),
            slices,
            f"{train_s:.0f}",
            f"{slices / train_s:.2f}" if slices else "–",
            f"{eval_s:.0f}",
            f"{eval_n / eval_s:.2f}",
            f"{np.mean(loss):.3f}" if loss else "–",
        )
    return per_class, pooled, timing


def _case_table(runs: _Runs) -> _Table:
    cases = list(dict.fromkeys(r["case"] for r in runs.rows))
    table = _Table(["case", "class", *runs.presets], "ll" + "r" * len(runs.presets))
    for case in cases:
        for cls in runs.classes:
            cells = []
            for preset in runs.presets:
                v = [r["dice"] for r in runs.rows if r["case"] == case and r["class"] == cls and r["preset"] == preset]
                cells.append(_fmt(float(np.mean(v))) if v else "–")
            table.add(case, cls, *cells)
    return table


def _overlays(runs: _Runs, config: BenchConfig, count: int) -> tuple[list[tuple[str, bytes]], str | None]:
    """Best and worst cases per class of the best preset: (caption, PNG) pairs, or a reason for none."""
    if count <= 0:
        return [], None
    from ..data import load_datalist
    from ..inferers.volume import load_volume, prepare_volume

    means = {p: np.nanmean([r["dice"] for r in runs.rows if r["preset"] == p]) for p in runs.presets}
    best_preset = max(means, key=lambda p: means[p])
    run = min(runs.of(best_preset), key=lambda r: r["seed"])
    try:
        entries = {entry_name(e): e for e in load_datalist(config.datalist, config.eval_split, config.dataset_dir)}
    except (OSError, ValueError) as err:
        return [], f"overlays left out: the evaluation images cannot be read ({err})"
    class_ids = run.get("classes") or _classes_from_datalist(config, runs.classes)
    figures = []
    for cls in runs.classes:
        dice = {
            r["case"]: r["dice"]
            for r in runs.rows
            if r["preset"] == best_preset and r["seed"] == run["seed"] and r["class"] == cls
        }
        ranked = sorted(dice, key=lambda c: dice[c])
        worst = ranked[: min(count, len(ranked) // 2 or 1)]
        best = [c for c in ranked[::-1][:count] if c not in worst]  # a case is shown once per class
        for kind, case in [("worst", c) for c in worst] + [("best", c) for c in best]:
            entry = entries.get(case)
            mask = Path(run["dir"]) / "masks" / f"{case}_seg.nii.gz"
            if entry is None or not mask.is_file():
                continue
            try:
                image = load_volume(entry["image"])
                volume, geometry = prepare_volume(image, config.preprocess)
                gt = geometry.to_sliced(np.rint(load_volume(entry["label"])[0].numpy()).astype(np.int64))
                pred = geometry.to_sliced(np.rint(load_volume(str(mask))[0].numpy()).astype(np.int64))
            except (OSError, ValueError, RuntimeError) as err:
                return figures, f"overlays incomplete: {case} cannot be read ({err})"
            ids = class_ids[cls]
            rgb, z = largest_slice_overlay(volume[0].numpy(), np.isin(gt, ids), [np.isin(pred, ids)])
            png = encode_png(rgb)
            figures.append(
                (
                    f"{kind}: {case}, {cls}, Dice {dice[case]:.3f} ({best_preset}, seed {run['seed']}, "
                    f"slice {z} of the {config.view} view; image | ground truth | prediction)",
                    png,
                )
            )
    return figures, None


def _classes_from_datalist(config: BenchConfig, names: Sequence[str]) -> dict[str, list[int]]:
    """Label values of each scored class, for results written before ``result.json`` recorded them."""
    meta = json.loads(Path(config.datalist).read_text(encoding="utf-8"))
    known = {v: [int(k)] for k, v in (meta.get("labels") or {}).items()}
    known.update({k: [int(i) for i in v] for k, v in (meta.get("regions") or {}).items() if k not in known})
    return {n: known.get(n) or ([int(n)] if str(n).isdigit() else []) for n in names}


def build_report(run_dir: str | Path, overlays: int = 2) -> dict:
    """Everything the report shows, as tables, texts and figures (used by :func:`write_report`)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "bench.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; RUN_DIR must be a folder written by monai-cbo bench")
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    config = BenchConfig.from_saved(saved)
    runs = _Runs(run_dir)
    cbo, notes = _cbo_table(runs)
    per_class, pooled, timing = _extra_tables(runs)
    box_plots = {
        cls: box_plot_svg({p: runs.values(p, cls) for p in runs.presets}, f"Dice per case, {cls} (all seeds)")
        for cls in runs.classes
    }
    figures, overlay_note = _overlays(runs, config, overlays)
    missing = [(p, s) for p, s in config.runs() if not (run_dir / "runs" / p / f"seed{s}" / "result.json").exists()]
    return {
        "config": config,
        "saved": saved,
        "runs": runs,
        "main": _main_table(runs),
        "automatic": _auto_table(runs) if runs.auto_rows else None,
        "cbo": cbo,
        "notes": notes,
        "per_class": per_class,
        "pooled": pooled,
        "timing": timing,
        "cases": _case_table(runs),
        "box_plots": box_plots,
        "figures": figures,
        "overlay_note": overlay_note,
        "missing": missing,
    }


def _intro(r: dict) -> list[str]:
    c, saved = r["config"], r["saved"]
    machine = saved.get("machine") or {}
    lines = [
        f"Dataset: `{c.datalist}` (train split `{c.train_split}`, {c.max_train_cases or 'all'} cases; scored split "
        f"`{c.eval_split}`, {c.max_eval_cases or 'all'} cases). Model: `{c.model}`"
        + (f" with `{c.checkpoint}`" if c.checkpoint else "")
        + ".",
        "Budget per run: "
        + (f"from the trained adapter `{c.init_adapter}`, " if c.init_adapter else "")
        + f"{c.steps} steps × {c.batch_size} slices, AdamW, LR {c.learning_rate} cosine to 0, "
        + f"box jitter {c.box_jitter} px"
        + (
            f", then {c.decoder_steps} decoder steps with the encoder frozen, LR {decoder_lr(c):.3g} cosine to 0"
            if c.decoder_steps
            else ""
        )
        + f"; seeds {', '.join(map(str, c.seeds))}"
        + (
            f"; automatic steps {c.auto_share:.0%} (learned class prompts, background slices {c.background_ratio:.0%})"
            if c.auto_share
            else ""
        )
        + ". Evaluation: one box per slice and class from the ground truth "
        "(the benchmark protocol of `monai-cbo segment --label`)"
        + ("; and automatic, with no prompt" if c.auto_share else "")
        + ", 3D metrics in the input geometry.",
        f"Command: `{saved.get('command') or 'not recorded'}`",
        "Machine: " + (", ".join(f"{k} {v}" for k, v in machine.items()) if machine else "not recorded") + ".",
    ]
    if r["missing"]:
        lines.append(
            "**Incomplete bench**: runs not finished: " + ", ".join(f"{p} seed {s}" for p, s in r["missing"]) + "."
        )
    return lines


_SECTIONS = (
    (
        "Main table",
        "main",
        "Trainable parameters by part; Dice / HD95 / NSD mean ± sd over every (seed, case) pair; "
        "seed sd: spread of the per-seed mean Dice. HD95 and NSD are averaged over classes.",
    ),
    (
        "Automatic segmentation",
        "automatic",
        "Dice with no prompt at all (the adapter's learned class prompts, every slice), mean ± sd over every "
        "(seed, case) pair, beside box prompts from the label. auto + refine: each automatic mask re-prompted "
        "with its box, kept where both agree (IoU >= 0.5); auto + lcc: each class's largest 3D connected component; "
        "auto + lcc + smooth (with --auto-z-smooth): each slice's probabilities averaged with its neighbours' "
        "first.",
    ),
    (
        "CBO against its base",
        "cbo",
        "Paired by (seed, case), with box prompts and in each automatic mode both presets were scored in; the "
        "interval is ±1.96 standard errors of the mean difference.",
    ),
    ("Per class", "per_class", "HD95 undefined: cases where exactly one of prediction and ground truth is empty."),
    (
        "Pooled 2D Dice (the paper's metric)",
        "pooled",
        "Not the main figure: Σ 2|P∩G| / Σ (|P|+|G|) over 2D slices "
        "pooled over the test set, as the paper reports it; 'GT slices' pools only slices that show the class. "
        "Mean ± sd over seeds.",
    ),
    ("Time", "timing", "Wall-clock seconds on the machine above, feature cache of frozen stages on."),
    ("Per case", "cases", "Dice per case and class, mean over seeds."),
)


def _markdown(r: dict, files: dict[str, str]) -> str:
    out = ["# Bench report", "", *[f"{line}  " for line in _intro(r)], ""]
    for title, key, note in _SECTIONS:
        if r[key] is None:
            continue
        out += [f"## {title}", "", note, "", r[key].markdown(), ""]
        if key == "cbo" and r["notes"]:
            out += [*[f"- {n}" for n in r["notes"]], ""]
    out += ["## Box plots", ""] + [f"![Dice per case, {c}]({files[f'box_{c}']})" for c in r["box_plots"]] + [""]
    out += ["## Overlays", ""]
    if r["overlay_note"]:
        out += [r["overlay_note"], ""]
    for i, (caption, _) in enumerate(r["figures"]):
        out += [f"![{caption}]({files[f'overlay_{i}']})", "", f"*{caption}*", ""]
    return "\n".join(out)


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px}"
    "th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "figure{display:inline-block;margin:0.5em}figcaption{font-size:12px;max-width:600px}"
)


def _html(r: dict) -> str:
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Bench report</title><style>{_CSS}</style>"
        "</head><body><h1>Bench report</h1>"
    ]
    out += [f"<p>{escape(line)}</p>" for line in _intro(r)]
    for title, key, note in _SECTIONS:
        if r[key] is None:
            continue
        out += [f"<h2>{escape(title)}</h2><p>{escape(note)}</p>", r[key].html()]
        if key == "cbo" and r["notes"]:
            out.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in r["notes"]) + "</ul>")
    out.append("<h2>Box plots</h2>" + "".join(f"<figure>{svg}</figure>" for svg in r["box_plots"].values()))
    out.append("<h2>Overlays</h2>")
    if r["overlay_note"]:
        out.append(f"<p>{escape(r['overlay_note'])}</p>")
    for caption, png in r["figures"]:
        data = base64.b64encode(png).decode()
        out.append(
            f"<figure><img src='data:image/png;base64,{data}' alt='{escape(caption)}'>"
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: str | Path, overlays: int = 2, overwrite: bool = False) -> list[Path]:
    """Write ``report.md`` (figures in ``report_files/``) and a self-contained ``report.html`` into ``run_dir``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a bench folder or has no finished run.
        FileExistsError: a report exists and ``overwrite`` is False.
    """
    run_dir = Path(run_dir)
    md_path, html_path, fig_dir = run_dir / "report.md", run_dir / "report.html", run_dir / "report_files"
    for path in (md_path, html_path):
        check_overwrite(path, overwrite)
    report = build_report(run_dir, overlays)
    fig_dir.mkdir(exist_ok=True)
    for old in [*fig_dir.glob("overlay_*.png"), *fig_dir.glob("boxplot_*.svg")]:  # figures of an earlier report
        old.unlink()
    files: dict[str, str] = {}
    written = []
    for cls, svg in report["box_plots"].items():
        name = f"boxplot_{''.join(ch if ch.isalnum() else '_' for ch in cls)}.svg"
        written.append(write_atomic(fig_dir / name, lambda p, s=svg: p.write_text(s, encoding="utf-8"), overwrite=True))
        files[f"box_{cls}"] = f"report_files/{name}"
    for i, (_, png) in enumerate(report["figures"]):
        name = f"overlay_{i}.png"
        written.append(write_atomic(fig_dir / name, lambda p, b=png: p.write_bytes(b), overwrite=True))
        files[f"overlay_{i}"] = f"report_files/{name}"
    md = _markdown(report, files)
    written.append(write_atomic(md_path, lambda p: p.write_text(md, encoding="utf-8"), overwrite=True))
    html = _html(report)
    written.append(write_atomic(html_path, lambda p: p.write_text(html, encoding="utf-8"), overwrite=True))
    return [md_path, html_path, fig_dir]
