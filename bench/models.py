"""Training-step throughput and peak memory of each image model, as train.py runs it.

Usage: ``python bench/models.py [--models r3d_18 unet3d] [--norm batch group] [--shape microns]
[--steps 200] [--warmup 10] [--batch-size-2d 128] [--batch-size-3d 32] [--device auto]``

For every model and norm, in one run: random one-channel inputs of the cutout shape (``microns``:
2D 256x256, 3D 128x128x32 as config/microns.yaml cuts them; ``demo``: 64x64 and 32x32x8), random
labels, and the training step of :func:`synapse_ei.learn.train.train_image_model` without the data
loader: bf16 autocast and channels_last / channels_last_3d on CUDA, class-weighted cross-entropy,
backward, gradient clipping, an AdamW step. ``--warmup`` steps (cuDNN autotuning) are not timed.
Prints one markdown row per model: samples per second, milliseconds per step, and on CUDA the
peak memory allocated (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from synapse_ei.learn.device import autocast_for, resolve_device, to_device
from synapse_ei.learn.models import ARCHITECTURES, build_model, input_kind

#: Network input shapes without batch and channel: 2D (Y, X), 3D (Z, Y, X).
SHAPES = {
    "microns": {"2d": (256, 256), "3d": (32, 128, 128)},
    "demo": {"2d": (64, 64), "3d": (8, 32, 32)},
}


def step_rate(architecture: str, norm: str, shape: tuple[int, ...], batch_size: int,
              steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Samples/s, ms/step and peak memory (GiB, CUDA only) of ``steps`` training steps."""
    torch.manual_seed(0)
    kind = input_kind(architecture)
    model = build_model(architecture, num_classes=2, norm=norm).to(device)
    if device.type == "cuda":
        fmt = torch.channels_last if kind == "2d" else torch.channels_last_3d
        model = model.to(memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([0.6, 3.0], device=device))
    x = to_device(torch.randn(batch_size, 1, *shape), device, kind)
    y = torch.randint(0, 2, (batch_size,), device=device)

    def step() -> None:
        with autocast_for(device):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    model.train()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"samples_per_second": steps * batch_size / seconds,
            "ms_per_step": 1000 * seconds / steps, "peak_gib": peak}


def main() -> None:
    image_models = [name for name, kind in ARCHITECTURES.items() if kind != "tables"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=image_models, choices=image_models)
    parser.add_argument("--norm", nargs="+", default=["batch"], choices=["batch", "group"])
    parser.add_argument("--shape", default="microns", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size-2d", type=int, default=128)
    parser.add_argument("--batch-size-3d", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py: fixed shapes
        name = torch.cuda.get_device_name()
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; {args.steps} timed steps after {args.warmup}; "
          f"bf16 autocast and channels_last on CUDA only\n")
    print("| model | norm | input (N, C, ...) | samples/s | ms/step | peak GiB |")
    print("|---|---|---|---:|---:|---:|")
    for architecture in args.models:
        kind = input_kind(architecture)
        batch = args.batch_size_2d if kind == "2d" else args.batch_size_3d
        shape = SHAPES[args.shape][kind]
        for norm in args.norm:
            result = step_rate(architecture, norm, shape, batch, args.steps, args.warmup, device)
            peak = f"{result['peak_gib']:.2f}" if device.type == "cuda" else "n/a"
            print(f"| {architecture} | {norm} | {(batch, 1, *shape)} | "
                  f"{result['samples_per_second']:.1f} | {result['ms_per_step']:.1f} | {peak} |",
                  flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
