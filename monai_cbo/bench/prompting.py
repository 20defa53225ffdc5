"""``monai-cbo prompts-bench``: how much of per-slice-box Dice a researcher keeps with a few boxes, and the sweep
that chose the propagation defaults.

A *suite* (JSON) names sets of labelled volumes; each set has a modality (and, for CT, an optional
``ct_window`` [lo, hi] in HU), named targets (label values, a region is several) and cases, each marked
``"part": "tune"`` or ``"validation"``. For every case and target the label gives the prompts of each protocol:

* ``per_slice``: the tight box on every slice the target occupies (the reference, which needs the answer);
* ``one_key``: one key box on the slice where the target is largest, propagated;
* ``box3d``: the 3D box of the CVPR 2024 laptop challenge: the middle slice's box plus the target's z range;
* ``three_keys``: key boxes on the first, middle and last slice of the target.

Each is scored by 3D Dice of the target alone, and by how many slices it predicts outside the target's true
extent (and how far). ``--sweep`` tunes :class:`~monai_cbo.inferers.PropagationConfig` on the tune part: each
setting that changes a slice's prompt (:data:`TRAJECTORY_GRID`) is recorded once with the stop rules off, and
every combination of the stop rules (:data:`STOP_GRID`) is scored by truncating the recordings where
:func:`~monai_cbo.inferers.propagation.stops` would stop, the open objects' rules on one key box and three key
boxes, the z-ranged objects' (``range_``) rules on the 3D box; then every part is scored with the chosen
settings.
Validation cases never influence a choice.

Embeddings of the slices visited are stored per case under ``--cache-dir`` (4 MiB a slice), so a sweep encodes
each volume once; decoder calls repeated with the same prompt on one case are answered from memory.

The suite and the protocols' scores: :mod:`~monai_cbo.bench.protocols`; the sweep:
:mod:`~monai_cbo.bench.propagation_sweep`; :func:`run_prompts_bench` runs them.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ..inferers import PropagationConfig, SliceWiseInferer
from ..networks import SliceCache, class_prompts_of
from .propagation_sweep import STOP_GRID, TRAJECTORY_GRID, _sweep
from .protocols import (
    AUTOMATIC,
    INTERACTIVE,
    INTERACTIVE_CLICK,
    PROTOCOLS,
    SuiteCase,
    _load,
    _score,
    objective,
    protocol_prompt,
    read_suite,
    summarise,
    summary_markdown,
)

__all__ = [
    "PROTOCOLS",
    "STOP_GRID",
    "TRAJECTORY_GRID",
    "SuiteCase",
    "objective",
    "protocol_prompt",
    "read_suite",
    "run_prompts_bench",
    "summarise",
    "summary_markdown",
]


def run_prompts_bench(
    suite: str | Path,
    data_root: str | Path,
    out: str | Path,
    model: torch.nn.Module,
    tag: str,
    config: PropagationConfig | None = None,
    sweep: bool = False,
    sets: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    precision: str = "auto",
    clicks: int = 0,
    click_start: bool = False,
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Score the protocols on a suite (optionally sweeping the propagation settings first); write ``rows.csv``,
    ``summary.json``, ``summary.md`` (and ``sweep.csv``) into ``out``; return the summary. ``precision``: see
    :mod:`monai_cbo.precision`; a reduced one keys the embedding cache apart from fp32's. ``clicks`` > 0 adds the
    interactive protocol (:data:`~monai_cbo.bench.protocols.INTERACTIVE`) with that many correction rounds;
    ``click_start`` also the one started by a click (:data:`~monai_cbo.bench.protocols.INTERACTIVE_CLICK`).
    ``encoder``: another runtime for the image encoder (:mod:`monai_cbo.networks.runtime`, its ``info`` keys the
    embedding cache apart from torch's)."""
    if not 0 <= clicks <= 20:
        raise ValueError(f"--clicks must be 0 .. 20 correction rounds, got {clicks}")
    if click_start and not clicks:
        raise ValueError("--click-start starts the interactive protocol with a click: give --clicks too, e.g. 5")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [c for c in read_suite(suite, data_root) if sets is None or c.set in sets]
    if not cases:
        raise ValueError(f"no case of the suite {suite} is in the sets {list(sets or [])}")
    inferer = SliceWiseInferer(model, decode_memo=SliceCache(None), precision=precision, encoder=encoder)
    if encoder is not None:  # another runtime, other embeddings (its own number format)
        info = getattr(encoder, "info", {})
        tag += f"+{info.get('runtime', 'encoder')}:{info.get('precision', '')}"
    elif inferer.precision.reduced:  # other numbers, other embeddings
        tag += f"+{inferer.precision.label}"
    cache_path = Path(cache_dir) if cache_dir else None
    config = config or PropagationConfig()
    start = time.perf_counter()

    def evaluate(setting: PropagationConfig, part_cases: list[SuiteCase], protocols) -> list[dict]:
        rows: list[dict] = []
        for n, case in enumerate(part_cases, 1):
            loaded = _load(case, cache_path, tag)
            inferer.decode_memo.clear()
            rows += _score(inferer, loaded, protocols, setting, clicks)
            loaded.cache.save()
            log(f"    {n}/{len(part_cases)} {case.key} ({time.perf_counter() - start:.0f} s)")
        inferer.decode_memo.clear()
        return rows

    if sweep:
        config = _sweep(inferer, [c for c in cases if c.part == "tune"], config, cache_path, tag, out, log, evaluate)
    automatic = (AUTOMATIC,) if class_prompts_of(model) is not None else ()
    interactive = ((INTERACTIVE,) if clicks else ()) + ((INTERACTIVE_CLICK,) if click_start else ())
    rows = evaluate(config, cases, PROTOCOLS + automatic + interactive)
    if sweep:  # the truncated recordings must predict what the real propagation does
        measured = objective([r for r in rows if r["part"] == "tune" and r["protocol"] != "three_keys"])
        predicted = json.loads((out / "sweep_predicted.json").read_text(encoding="utf-8"))[
            "objective_one_key_and_box3d"
        ]
        log(
            f"sweep check (one key box and 3D box): objective predicted from the truncated recordings "
            f"{predicted:.4f}, measured by propagating with the chosen settings {measured:.4f}"
        )
    with open(out / "rows.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for r in rows for k in r)))  # the interactive rows add two
        writer.writeheader()
        writer.writerows(rows)
    result = {
        "config": asdict(config),
        "tag": tag,
        "precision": inferer.precision.label,
        "encoder_runtime": {"runtime": "torch"} if encoder is None else dict(getattr(encoder, "info", {})),
        "seconds": round(time.perf_counter() - start, 1),
        "parts": {part: summarise([r for r in rows if r["part"] == part]) for part in ("tune", "validation")},
    }
    (out / "summary.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(result), encoding="utf-8")
    return result
