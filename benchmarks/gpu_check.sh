#!/usr/bin/env bash
# On a lent GPU machine: install the carried wheels (.whl/, if any) into /tmp/site, then run
#   monai-cbo gpu-check OUT_DIR [options]     (CUDA tests, AMP throughput, a time-capped resumable bench)
# from this checkout, with the carried data (.gpudata/). Prepare both here first: benchmarks/prepare_gpu_carry.sh.
# Without CUDA it runs the CPU dry run and exits 0. Usage: bash benchmarks/gpu_check.sh OUT_DIR [options]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [monai-cbo gpu-check options]}
shift
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}  # where the wheels are installed (the machine starts bare each time)
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || exit 1
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # monai_cbo from this checkout (subprocesses inherit it)
export PYTHONUNBUFFERED=1
exec "$PY" -m monai_cbo.cli gpu-check "$OUT_DIR" "$@"
