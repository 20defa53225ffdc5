"""How well ``monai-cbo adapt`` plans the stop sweep's share of a ``--minutes`` budget (docs/benchmarks/fewshot.md).

For an adapt run already done (its bundle's ``models/adapter.json`` records the sweep's volumes and the seconds it
took), time what the planner times (:func:`monai_cbo.adapt.run._sweep_unit_costs`: one slice's encode and one
box's decode, warm) with the same model, preset and number format, and print the reserve the planner gives those
volumes now, the reserve timed on a first (cold) encode as before, and the seconds the sweep took.

    python docs/benchmarks/fewshot/reserve_check.py runs/fewshot/hippocampus/n4_s1_dec0.3_fastcpu --precision fp32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    from monai_cbo.adapt.inputs import cases_from_datalist, check_and_load
    from monai_cbo.adapt.run import _sweep_unit_costs, sweep_seconds_estimate
    from monai_cbo.inferers.slicewise import SliceWiseInferer
    from monai_cbo.inferers.volume import Preprocess
    from monai_cbo.models import build_segmenter

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a learning_curve.py run folder (datalist.json, bundle/)")
    p.add_argument("--precision", default="fp32", help="the run's validation and stop-sweep number format")
    args = p.parse_args(argv)
    run = Path(args.run)
    record = json.loads((run / "bundle/models/adapter.json").read_text())
    sweep = record["propagation"]
    loaded, classes, _ = check_and_load(cases_from_datalist(run / "datalist.json"), Preprocess(), None, print)
    swept = [c for c in loaded if c.name in sweep["volumes"]]
    net = build_segmenter(
        "litemedsam", None, record.get("preset", "adapter_cbo"), class_names=[f"c{i}" for i in range(len(classes))]
    )
    inferer = SliceWiseInferer(net.eval(), device=torch.device("cpu"), precision=args.precision)
    volume = loaded[0].volume
    tick = time.perf_counter()  # the old planner: one encode, the first, times 1.5
    for _ in inferer.encode(volume, [volume.shape[-1] // 2]):
        pass
    cold = time.perf_counter() - tick
    encode, decode = _sweep_unit_costs(inferer, volume)
    slices = sum(c.gt.shape[-1] for c in swept)
    print(
        json.dumps(
            {
                "run": run.name,
                "volumes": len(swept),
                "slices": slices,
                "precision": args.precision,
                "first_encode_s": round(cold, 3),
                "warm_encode_s": round(encode, 3),
                "warm_decode_s": round(decode, 4),
                "reserve_before_s": round(slices * cold * 1.5, 1),
                "reserve_now_s": round(sweep_seconds_estimate(slices, len(classes), encode, decode), 1),
                "sweep_took_s": sweep["seconds"],
            }
        )
    )


if __name__ == "__main__":
    main()
