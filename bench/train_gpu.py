"""Training throughput on a GPU, and the share of each step spent waiting for data.

Usage: ``python bench/train_gpu.py [--models r3d_18 mc3_18 resnet50] [--steps 50] [--workers 8]``
and, for data-parallel scaling, ``python bench/train_gpu.py --ddp [--models r3d_18]``.

Writes random stored cutouts of the MICrONS sizes (2D 256x256, 3D 128x128x32, as the cutout stage
writes them, a TIFF stack per kind: see bench/loader.py), then for each model trains ``--steps``
optimiser steps from the training pipeline (:class:`~synapse_ei.learn.dataset.CutoutDataset` reading the
memory-mapped stacks, :func:`~synapse_ei.learn.dataset.make_loader`, :func:`synapse_ei.learn.device.to_device`, the
training augmentations in the loader or on the device as ``--augment-on`` says) with bf16 autocast
and channels_last memory, after ``--warmup`` steps. Reports training samples/s, the share of wall
time spent waiting on the loader (goal: under 5%) and the peak GPU memory. ``--device cpu`` with a
few steps checks that the script runs where there is no GPU (in float32); its numbers mean nothing.

``--ddp`` instead measures data-parallel scaling through the training itself
(:func:`synapse_ei.learn.train.train_image_model` with ``gpus: N``, for N = 1, 2, 4, ... and all
the machine's GPUs): ``--batch-size`` samples per GPU (the global batch grows with N),
``--steps`` steps an epoch, two epochs; the second epoch's samples/s of the history, the
speed-up over one GPU and the efficiency (speed-up / N). ``--device cpu --gpus 2`` runs it with
CPU processes (gloo), to check the script; those numbers mean nothing either.

``--augment-cost`` instead times the training augmentations alone on the device, side by side
on one batch of ``--batch-size`` raw uint8 cutouts of each kind already there: the batched
:class:`~synapse_ei.learn.augment.BatchAugmentation` (the default ops), the per-sample
torchvision path it replaced (bench/loader.py's reference) and one ``grid_sample`` (the floor),
milliseconds a batch (median of ``--steps`` calls after ``--warmup``), and how many times one
batched call waits for the GPU (CUDA's sync debug mode counts them).

``--loop-against FILE`` instead times this tree's training loop against another version's
``synapse_ei/learn/train.py`` (``git show REV:synapse_ei/learn/train.py > FILE``) through
``train_image_model`` on one device, two rounds in alternating order, the other version's EMA
being torch's own ``AveragedModel``; ``--ema-decay`` sets the models' ``ema_decay`` (the
MICrONS configuration's 0.999) so both loops average their weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from synapse_ei.learn.augment import AUGMENTATIONS, BatchAugmentation, SECTION_AUGMENTATIONS
from synapse_ei.learn.dataset import CutoutDataset, make_loader
from synapse_ei.learn.device import to_device
from synapse_ei.learn.models import build_model, input_kind
from synapse_ei.learn.train import train_image_model
from synapse_ei.learn.transforms import build_transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/loader.py writes the cutouts
from loader import one_grid_sample, PerSampleReference, SHAPES, write_cutouts  # noqa: E402
from versions import module_from_file  # noqa: E402


def measure(model_name: str, manifest, root: Path, args) -> dict:
    kind = input_kind(model_name)
    device = torch.device(args.device)
    transform = build_transforms(kind, train=True)
    on_device = args.augment_on == "device"
    dataset = CutoutDataset(manifest, root, kind, transform=None if on_device else transform)
    steps = args.warmup + args.steps
    loader = make_loader(dataset, args.batch_size, seed=0, shuffle=True,
                         num_workers=args.workers, num_samples=steps * args.batch_size,
                         drop_last=True, pin_memory=device.type == "cuda",
                         sampler="balanced")
    memory_format = torch.channels_last if kind == "2d" else torch.channels_last_3d
    model = build_model(model_name).to(device, memory_format=memory_format)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    waiting = 0.0
    batches = iter(loader)
    for step in range(steps):
        if step == args.warmup:
            sync()
            waiting, started = 0.0, time.perf_counter()
        asked = time.perf_counter()
        x, y = next(batches)
        waiting += time.perf_counter() - asked
        x = to_device(x, device, kind, transform if on_device else None)
        y = y.to(device, non_blocking=True)
        # bf16 on the GPU; a CPU smoke run keeps float32, which CPUs without bf16 units run
        # many times faster than emulated bf16.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    sync()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"kind": kind, "samples_per_second": round(args.steps * args.batch_size / seconds, 1),
            "data_wait_share": round(waiting / seconds, 4), "seconds": round(seconds, 2),
            "peak_memory_gib": None if peak is None else round(peak, 2)}


def measure_augment(kind: str, args) -> dict:
    """Milliseconds a batch of the augmentations alone on the device (see the module's doc)."""
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, 1, *SHAPES[kind]), dtype=torch.uint8,
                      generator=generator).to(device)
    batched = build_transforms(kind, train=True)
    reference = PerSampleReference(kind)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    paths = {"batched": batched, "per-sample": reference,
             "one grid_sample": lambda batch: one_grid_sample(batch, generator)}
    times = {name: [] for name in paths}
    for call in range(args.warmup + args.steps):
        for name, path in paths.items():  # interleaved, so drifting clocks hit each alike
            sync()
            started = time.perf_counter()
            path(x)
            sync()
            if call >= args.warmup:
                times[name].append(1000 * (time.perf_counter() - started))
    row = {f"{name}_ms": round(statistics.median(t), 3) for name, t in times.items()}
    row["per_sample_over_batched"] = round(row["per-sample_ms"] / row["batched_ms"], 2)
    row["batched_over_floor"] = round(row["batched_ms"] / row["one grid_sample_ms"], 2)
    if device.type == "cuda":
        every_op = [n for n in AUGMENTATIONS if kind == "3d" or n not in SECTION_AUGMENTATIONS]
        for label, augment in (("", batched), ("_every_op", BatchAugmentation(kind, every_op))):
            try:
                row.update({f"{key}{label}": value
                            for key, value in count_gpu_waits(augment, x).items()})
            except Exception as error:  # noqa: BLE001 -- keep the timings whatever this hits
                row[f"gpu_waits_error{label}"] = repr(error)
    return row


def count_gpu_waits(function, x: torch.Tensor) -> dict:
    """How many times ``function(x)`` makes the host wait for the GPU (after a first call, which
    allocates), and where."""
    function(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            function(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    waits = [w for w in caught if "synchroniz" in str(w.message)]
    return {"gpu_waits_per_batched_call": len(waits),
            "gpu_waits_where": sorted({f"{Path(w.filename).name}:{w.lineno}" for w in waits})}


def device_name(args) -> str:
    return torch.cuda.get_device_name() if args.device == "cuda" else args.device


def report_augment(results: dict, args) -> None:
    device = device_name(args)
    print(f"{device}: the default training augmentations alone, a batch of {args.batch_size} "
          f"raw uint8 cutouts on the device, ms a batch (median of {args.steps}):")
    for kind, row in results.items():
        waits = row.get("gpu_waits_per_batched_call")
        print(f"  {kind}  batched {row['batched_ms']:8.2f}  per-sample {row['per-sample_ms']:8.2f}"
              f"  one grid_sample {row['one grid_sample_ms']:8.2f}  per-sample/batched "
              f"{row['per_sample_over_batched']:.1f}x  batched/floor "
              f"{row['batched_over_floor']:.2f}x"
              + ("" if waits is None else f"  GPU waits {waits} {row['gpu_waits_where']}, "
                 f"every op {row.get('gpu_waits_per_batched_call_every_op')} "
                 f"{row.get('gpu_waits_where_every_op')}"))


def process_counts(available: int) -> list[int]:
    """1, 2, 4, ... up to ``available``, and ``available`` itself."""
    counts = [n for n in (2 ** k for k in range(available.bit_length())) if n <= available]
    return sorted(set(counts) | {available})


def split_manifest(manifest, root: Path) -> Path:
    """``manifest`` with one cutout in 8 for validation, the rest for training, as a parquet
    file under ``root``: what ``train_image_model`` reads."""
    path = root / "manifest.parquet"
    manifest.assign(split=["val" if i % 8 == 0 else "train" for i in range(len(manifest))]
                    ).to_parquet(path, index=False)
    return path


def second_epoch_rate(train, model_name: str, table: Path, root: Path, work: Path, gpus: int,
                      args) -> float:
    """Training samples/s of the second of two epochs of ``train`` (a ``train_image_model``)
    over ``table`` (the parquet file of :func:`split_manifest`), ``--steps`` batches of
    ``--batch-size`` per GPU an epoch."""
    settings = {"architecture": model_name, "epochs": 2, "batch_size": args.batch_size * gpus,
                "samples_per_epoch": args.steps * args.batch_size * gpus, "gpus": gpus,
                "augment_on": args.augment_on, "learning_rate": 1e-4, "ema_decay": args.ema_decay}
    history = train(table, root, model_name, settings, work / "out",
                    work / "ckpt", seed=0, device=args.device, num_workers=args.workers,
                    threads=max(1, args.workers))
    return round(float(history["samples_per_second"].iloc[-1]), 1)


def measure_ddp(model_name: str, manifest, root: Path, args) -> dict:
    """Samples/s of the training's second epoch on 1, 2, 4, ... GPUs; speed-up and efficiency."""
    available = args.gpus or torch.cuda.device_count()
    table = split_manifest(manifest, root)
    rows = {}
    for n in process_counts(available):
        rows[n] = {"samples_per_second": second_epoch_rate(
            train_image_model, model_name, table, root, root / f"{model_name}-{n}", n, args)}
    one = rows[1]["samples_per_second"]
    for n, row in rows.items():
        row["speedup"] = round(row["samples_per_second"] / one, 2)
        row["efficiency"] = round(row["speedup"] / n, 2)
    return {"kind": input_kind(model_name), "gpus": rows}


def measure_loop(model_name: str, manifest, root: Path, args) -> dict:
    """The training loop of this tree against the ``learn/train.py`` of another version
    (``--loop-against``), one GPU, two rounds in alternating order: second-epoch samples/s."""
    other = module_from_file(args.loop_against, "train_other")
    # The other version's EMA is torch's own AveragedModel, as before ema.py's update.
    other.build_ema = lambda model, decay: AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    versions = {"this": train_image_model, "other": other.train_image_model}
    table = split_manifest(manifest, root)
    rates = {name: [] for name in versions}
    for round_ in range(2):
        for name in (list(versions) if round_ == 0 else list(versions)[::-1]):
            rates[name].append(second_epoch_rate(versions[name], model_name, table, root,
                                                 root / f"{model_name}-{name}-{round_}", 1, args))
    return {"kind": input_kind(model_name), "samples_per_second": rates,
            "this_over_other": round(max(rates["this"]) / max(rates["other"]), 3)}


def report_train(results: dict, args) -> None:
    device = device_name(args)
    precision = "bf16" if args.device == "cuda" else "float32"
    print(f"{device}, batch {args.batch_size}, {args.workers} loader workers, {precision}, "
          f"channels_last, training augmentations on the {args.augment_on}:")
    for name, row in results.items():
        print(f"  {name:<12} {row['kind']}  {row['samples_per_second']:8.1f} samples/s  "
              f"waiting for data {100 * row['data_wait_share']:5.1f}%  "
              f"peak memory {row['peak_memory_gib']} GiB")


def report_loop(results: dict, args) -> None:
    print(f"training loop, one {args.device} device, this tree against {args.loop_against}, "
          f"second epoch of {args.steps} batches of {args.batch_size}, ema_decay "
          f"{args.ema_decay}:")
    for name, row in results.items():
        print(f"  {name:<12} this {row['samples_per_second']['this']}  other "
              f"{row['samples_per_second']['other']} samples/s  best this/other "
              f"{row['this_over_other']:.3f}")


def report_ddp(results: dict, args) -> None:
    device = device_name(args)
    print(f"{device}: data-parallel training, batch {args.batch_size} per GPU, {args.steps} "
          f"steps an epoch, {args.workers} loader workers per GPU (second epoch):")
    for name, result in results.items():
        for n, row in result["gpus"].items():
            print(f"  {name:<12} {n} GPU(s) {row['samples_per_second']:8.1f} samples/s  "
                  f"speed-up {row['speedup']:.2f}  efficiency {row['efficiency']:.2f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["r3d_18", "mc3_18", "resnet50"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--cutouts", type=int, default=1024)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--augment-on", choices=["loader", "device"], default="device")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--ddp", action="store_true",
                        help="measure data-parallel scaling over 1, 2, 4, ... GPUs instead")
    parser.add_argument("--gpus", type=int, default=None,
                        help="with --ddp: the most GPUs (processes) to use (default: all)")
    parser.add_argument("--augment-cost", action="store_true",
                        help="time the augmentations alone on the device instead")
    parser.add_argument("--loop-against", type=Path, default=None,
                        help="time the training loop against this other version of "
                             "synapse_ei/learn/train.py instead (one GPU), its EMA torch's "
                             "own AveragedModel")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="with --loop-against and --ddp: the models' ema_decay "
                             "(config/microns.yaml sets 0.999)")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    if args.augment_cost:
        results = {kind: measure_augment(kind, args) for kind in SHAPES}
        report_augment(results, args)
    else:
        bench, report = ((measure_loop, report_loop) if args.loop_against
                         else (measure_ddp, report_ddp) if args.ddp else (measure, report_train))
        root = Path(tempfile.mkdtemp(prefix="synapse-ei-train-", dir=args.dir))
        try:
            manifest = write_cutouts(root, args.cutouts)
            results = {name: bench(name, manifest, root, args) for name in args.models}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
