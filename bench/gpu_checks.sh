#!/usr/bin/env bash
# The GPU numbers of issue 17 part 4 (BENCHMARKS.md), as one short run on a lent GPU machine.
#
#   bash bench/gpu_checks.sh wheels     # here, once: the packages that machine lacks, into .whl/
#   bash bench/gpu_checks.sh            # there: device `run` with carry [".whl"], timeout_s 580
#   bash bench/gpu_checks.sh smoke      # here, on the CPU: the same steps, tiny, to check the script
#
# The GPU image has torch, torchvision, pandas, tifffile, scikit-learn (/work/.library/device/
# KINDS.md) but not kornia or jsonschema: those travel as Python 3.12 wheels, pinned as in
# pyproject.toml. Results land in $OUT (the device tool brings them back): gpu.txt, log.txt and
# each step's JSON: the GPU-only tests, the augmentations alone, the five models with augmentation
# on the device, two of them with it in the loader, the training loop (EMA on, as in
# config/microns.yaml) against the one before its losses stayed on the device and its EMA update
# stopped waiting for the GPU, and (on several GPUs) the data-parallel scaling. Each step has its
# own time limit, so one that hangs leaves the others' numbers and the run ends inside the
# device's 10-minute limit.
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
    # The training loop before its losses stayed on the device, for the loop's A/B there.
    git show "${LOOP_BEFORE:-c395c83}:synapse_ei/learn/train.py" > .whl/train_before.py
    ls -la .whl
    exit 0
fi

OUT=${OUT:-/tmp/synapse-ei-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log=$OUT/log.txt
: > "$log"
if [[ $mode == smoke ]]; then
    python=${PYTHON:-.venv/bin/python}
    export PYTHONPATH=$PWD:$PWD/tests
    before=$OUT/train_before.py
    git show "${LOOP_BEFORE:-c395c83}:synapse_ei/learn/train.py" > "$before"
    gpus=2
    models=(cnn2d r3d_18); loader_models=(cnn2d); loop_models=(cnn2d); ddp_models=(cnn2d)
    augment_args=(--device cpu --steps 1 --warmup 1 --batch-size 2)
    train_args=(--device cpu --steps 1 --warmup 1 --batch-size 2 --workers 0 --cutouts 8)
    loader_args=("${train_args[@]}")
    loop_args=(--device cpu --cutouts 48 --steps 2 --batch-size 2 --workers 0 --ema-decay 0.999)
    ddp_args=(--device cpu --gpus 2 --cutouts 48 --steps 2 --batch-size 2 --workers 0
              --augment-on loader)
else
    python=python3
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD:$PWD/tests
    before=.whl/train_before.py
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    "$python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'GPUs', torch.cuda.device_count(), 'CPUs', __import__('os').cpu_count())" \
        | tee -a "$OUT/gpu.txt"
    gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
    models=(r3d_18 mc3_18 r2plus1d_18 unet3d resnet50); loader_models=(r3d_18 resnet50)
    loop_models=(r3d_18); ddp_models=(r3d_18)
    augment_args=(--steps 20 --warmup 3 --batch-size 32)
    train_args=(--steps 150 --workers 8)
    loader_args=(--steps 100 --workers 14)
    loop_args=(--steps 80 --batch-size 32 --workers 8 --ema-decay 0.999)
    ddp_args=(--steps 60 --batch-size 32 --workers 6)
fi

# Each step under its own limit (seconds), so one that hangs leaves the others' numbers.
status=0
run_step() {
    local limit=$1; shift
    echo "== $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | sed -u '/y_pred contains/d; /warnings.warn(/d' | tee -a "$log" \
        || status=$?
}
# The GPU-only tests (skipped on a CPU): no host waits in the augmentations, the EMA update or a
# whole training epoch, the same augmentation as on the CPU.
run_step 90 "$python" -m pytest -q --noconftest -p no:cacheprovider tests/learn/test_augment.py \
    tests/learn/test_ema.py \
    tests/learn/test_train.py::test_on_the_gpu_a_training_epoch_waits_for_the_device_only_at_its_end
run_step 40 "$python" bench/train_gpu.py --augment-cost "${augment_args[@]}" \
    --json "$OUT/augment_gpu.json"
run_step 200 "$python" bench/train_gpu.py --models "${models[@]}" "${train_args[@]}" \
    --json "$OUT/train_gpu.json"
run_step 70 "$python" bench/train_gpu.py --models "${loader_models[@]}" "${loader_args[@]}" \
    --augment-on loader --json "$OUT/train_gpu_loader_aug.json"
run_step 110 "$python" bench/train_gpu.py --loop-against "$before" --models "${loop_models[@]}" \
    "${loop_args[@]}" --json "$OUT/train_loop.json"
if (( gpus > 1 )); then  # on one GPU the loop's A/B above is the one-GPU rate
    run_step 110 "$python" bench/train_gpu.py --ddp --models "${ddp_models[@]}" "${ddp_args[@]}" \
        --json "$OUT/ddp.json"
fi
exit $status
