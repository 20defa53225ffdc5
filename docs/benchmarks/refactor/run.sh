#!/bin/bash
# A small bench before and after a refactor that must not change results: the same datalist, budget and seed
# through two checkouts; compare.py then checks adapters tensor by tensor, metrics files byte by byte and masks
# voxel by voxel. Run from an empty folder:
#   git worktree add /tmp/before 1900b85        # the commit before issue 32's refactors
#   python data_prep/msd.py ../shared/data/Task04_Hippocampus -o hippocampus.json \
#       --labels 0:background,1:anterior,2:posterior --val-fraction 0.2 --test-fraction 0.2 --seed 0
#   bash docs/benchmarks/refactor/run.sh /tmp/before /path/to/monai_cbo/checkout && python .../compare.py
set -e
BEFORE=$1 AFTER=$2
COMMON="--model tiny_tinyvit --presets lora_cbo,adapter_cbo --seeds 0 --steps 4 --weight-decay 0 --modality mri \
  --max-train-cases 3 --max-eval-cases 2 --device cpu --auto-share 0.5 --decoder-steps 2"
# the bench options were named --batch / --lr before issue 32 and --batch-size / --learning-rate after
OMP_NUM_THREADS=1 PYTHONPATH=$BEFORE python -m monai_cbo.cli bench hippocampus.json -o before $COMMON --batch 2 --lr 3e-4 \
  > before.log 2>&1
OMP_NUM_THREADS=1 PYTHONPATH=$AFTER python -m monai_cbo.cli bench hippocampus.json -o after $COMMON --batch-size 2 \
  --learning-rate 3e-4 > after.log 2>&1
