#!/usr/bin/env bash
# The GPU numbers of issue 17 part 4 (BENCHMARKS.md), as one short run on a lent GPU machine.
#
#   bash bench/gpu_checks.sh wheels     # here, once: the packages that machine lacks, into .whl/
#   bash bench/gpu_checks.sh            # there: device `run` with carry [".whl"], timeout_s 560
#   bash bench/gpu_checks.sh smoke      # here, on the CPU: the same steps, tiny, to check the script
#
# The GPU image has torch, torchvision, pandas, tifffile, scikit-learn (/work/.library/device/
# KINDS.md) but not kornia or jsonschema: those travel as Python 3.12 wheels, pinned as in
# pyproject.toml. Results land in $OUT (the device tool brings them back): gpu.txt, the two
# benches' JSON and logs. Each bench has its own time limit, so one that hangs leaves the other's
# numbers and the run ends inside the device's 10-minute limit.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-gpu}
WHEELS=(kornia==0.9.0 kornia_rs==0.2.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
        referencing==0.37.0 rpds-py==2026.9.1)

if [[ $mode == wheels ]]; then
    grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ls -la .whl
    exit 0
fi

OUT=${OUT:-/tmp/synapse-ei-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ $mode == smoke ]]; then
    python=${PYTHON:-.venv/bin/python}
    export PYTHONPATH=$PWD
    models=(cnn2d r3d_18); ddp_models=(cnn2d)
    train_args=(--device cpu --steps 1 --warmup 1 --batch-size 2 --workers 0 --cutouts 8)
    ddp_args=(--device cpu --gpus 2 --cutouts 48 --steps 2 --batch-size 2 --workers 0
              --augment-on loader)
else
    python=python3
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    "$python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'GPUs', torch.cuda.device_count())" | tee -a "$OUT/gpu.txt"
    models=(r3d_18 mc3_18 r2plus1d_18 unet3d resnet50); ddp_models=(r3d_18 resnet50)
    train_args=(--steps 200 --workers 8)
    ddp_args=(--steps 60 --batch-size 32 --workers 6)
fi

status=0
timeout 330 "$python" bench/train_gpu.py --models "${models[@]}" "${train_args[@]}" \
    --json "$OUT/train_gpu.json" 2>&1 | tee "$OUT/train_gpu.log" || status=$?
timeout 170 "$python" bench/train_gpu.py --ddp --models "${ddp_models[@]}" "${ddp_args[@]}" \
    --json "$OUT/ddp.json" 2>&1 | tee "$OUT/ddp.log" || status=$?
exit $status
