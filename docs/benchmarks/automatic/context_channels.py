"""Neighbouring slices as the encoder's three input channels (2.5D): an experiment on the bench, not a feature.

A benchmark, not a test. Each slice is segmented alone, and the automatic mode's errors are at the structure's
boundary and ends, which the slices above and below would show. The cheapest way to give the model that context
is the input itself: a one-channel volume enters the encoder as three copies of slice z; here it enters as
slices z-1, z and z+1 (the volume's end slices repeated at its ends), in training and in scoring alike. No
weight is added, so the adapters must learn to use what the frozen patch embedding passes on.

It runs ``monai-cbo bench`` with that input (the bench's ``prepare_volume`` wrapped, nothing else changed) at
the budget of the mix measurement in ``automatic.md``, whose ``--auto-share 0.75`` run is the reference:

    python docs/benchmarks/automatic/context_channels.py runs/hippocampus.json -o runs/context_1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import monai_cbo.bench.data as bench_data
import monai_cbo.bench.run as bench_run
from monai_cbo.bench.runner import BenchConfig, run_bench

_prepare = bench_data.prepare_volume


def with_neighbours(image, pre):
    """``prepare_volume``, then channels (z-1, z, z+1) of its one input channel."""
    volume, geometry = _prepare(image, pre)
    if not (torch.equal(volume[0], volume[1]) and torch.equal(volume[1], volume[2])):
        raise ValueError("neighbouring slices as channels need a one-channel image")
    c = volume[1].numpy()
    before = np.concatenate([c[..., :1], c[..., :-1]], axis=-1)
    after = np.concatenate([c[..., 1:], c[..., -1:]], axis=-1)
    return torch.from_numpy(np.ascontiguousarray(np.stack([before, c, after]))), geometry


_build = bench_run.build_segmenter


def with_trainable_stem(*args, **kwargs):
    """``build_segmenter``, then the convolutions of the encoder's patch embedding trainable (its batch norms stay
    frozen, so in evaluation mode: see ``SamSegmenter.train``)."""
    model = _build(*args, **kwargs)
    for name, p in model.image_encoder.patch_embed.named_parameters():
        if name.endswith(".c.weight"):
            p.requires_grad_(True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datalist")
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument(
        "--train-stem", action="store_true", help="also train the patch embedding's convolutions (LiteMedSAM only)"
    )
    args = parser.parse_args()
    bench_data.prepare_volume = with_neighbours
    if args.train_stem:
        bench_run.build_segmenter = with_trainable_stem
    config = BenchConfig(
        datalist=args.datalist,
        out=args.out,
        presets=["adapter_cbo"],
        seeds=[0],
        model="litemedsam",
        steps=200,
        batch_size=2,
        learning_rate=3e-4,
        modality="mri",
        max_eval_cases=12,
        auto_share=0.75,
    )
    command = f"docs/benchmarks/automatic/context_channels.py {args.datalist} -o {args.out}"
    run_bench(config, command=command + (" --train-stem" if args.train_stem else ""))


if __name__ == "__main__":
    main()
