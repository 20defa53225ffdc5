"""A second training stage on frozen embeddings: an experiment on the bench, not a feature.

A benchmark, not a test. The automatic mode's loss was still falling after the bench's 800 steps, and a
CPU cannot afford many more steps through the encoder (about 0.6 slices/s here). But almost all of an
adapter's trained weights are outside the encoder: of `lora_cbo`'s 4.090 M, the mask decoder holds 4.058 M and
the class prompts 1,024; LoRA and CBO 30,336. This stage starts from a trained adapter, freezes the whole image
encoder with its LoRA and CBO as trained, and trains the mask decoder and the class prompts on. Then every
slice's embedding is fixed, so the bench's feature cache (``CachedFrontSegmenter``) keeps the whole encoder's
output: each training slice is encoded once, and each step after that runs the decoder only.

Everything else is the bench as the adapter was trained: the same data, slices, box jitter and mix of automatic
steps (``--auto-share 0.75``, 10 % of their slices without any class), AdamW with a cosine LR from ``--lr``
to 0. The encoder's weights, frozen here, are saved in the adapter with the rest, so it loads as any other.

    python docs/benchmarks/automatic/decoder_stage.py runs/hippocampus.json -o runs/decoder_stage \\
        --init runs/auto_bench/runs/lora_cbo/seed0/adapter.pt --steps 3000
"""

from __future__ import annotations

import argparse

import monai_cbo.bench.runner as runner
from monai_cbo.bench.runner import BenchConfig, run_bench
from monai_cbo.peft import load_adapter, read_adapter

_build = runner.build_segmenter
_save = runner.save_adapter


def frozen_encoder_builder(init: str):
    """``build_segmenter``, then the adapter ``init`` loaded and every encoder weight frozen (its LoRA and CBO
    included): the mask decoder and the class prompts are what trains."""

    def build(*args, **kwargs):
        model = _build(*args, **kwargs)
        load_adapter(model, init, read_adapter(init))
        for p in model.image_encoder.parameters():
            p.requires_grad_(False)
        frozen = sum(p.numel() for p in model.image_encoder.parameters())
        trains = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"loaded {init}; encoder frozen ({frozen:,} weights), {trains:,} trainable")
        return model

    return build


def save_with_encoder(init: str):
    """``save_adapter`` that writes the encoder's PEFT weights too (frozen in this stage, trained in the first):
    they are the ones ``init`` holds, so the file loads like any adapter of the preset."""
    names = set(read_adapter(init)["state_dict"])

    def save(model, path, **kwargs):
        thawed = [p for n, p in model.named_parameters() if n in names and not p.requires_grad]
        for p in thawed:
            p.requires_grad_(True)
        try:
            return _save(model, path, **kwargs)
        finally:
            for p in thawed:
                p.requires_grad_(False)

    return save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datalist")
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--init", required=True, help="the first stage's adapter (a lora_cbo bench run)")
    parser.add_argument("--preset", default="lora_cbo", help="the preset --init was trained with")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--max-eval-cases", type=int, default=None)
    parser.add_argument("--cache-mib", type=float, default=16000.0, help="memory for the encoder's outputs")
    args = parser.parse_args()
    runner.build_segmenter = frozen_encoder_builder(args.init)
    runner.save_adapter = save_with_encoder(args.init)
    config = BenchConfig(
        datalist=args.datalist,
        out=args.out,
        presets=[args.preset],
        seeds=[0],
        model="litemedsam",
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        modality="mri",
        eval_split=args.eval_split,
        max_eval_cases=args.max_eval_cases,
        auto_share=0.75,
        cache_mib=args.cache_mib,
    )
    command = (
        f"docs/benchmarks/automatic/decoder_stage.py {args.datalist} -o {args.out} --init {args.init} "
        f"--preset {args.preset} --steps {args.steps} --batch {args.batch} --lr {args.lr} "
        f"--eval-split {args.eval_split}" + (f" --max-eval-cases {args.max_eval_cases}" if args.max_eval_cases else "")
    )
    run_bench(config, command=command)


if __name__ == "__main__":
    main()
