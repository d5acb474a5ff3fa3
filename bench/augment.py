"""Cost of each training augmentation per cutout, beside the default set, in one run.

Usage: ``python bench/augment.py [--repeats 20] [--batch 16] [--threads 1] [--sizes demo microns]
[--against REV]``

For each kind (2D patch, 3D cube) and size (``demo``: 64x64 and 8x32x32 as config/config.yaml
cuts them; ``microns``: 256x256 and 32x128x128 as config/microns.yaml does), times
:func:`synapse_ei.learn.transforms.build_transforms` with the default augmentations (the
schema's), with each single augmentation (``augment_strength`` 1, so every random op fires at its
configured odds), and with all of them, on a batch of ``--batch`` random scaled cutouts (the
augmentations take whole batches); then :func:`synapse_ei.learn.augment.mix_batch` (MixUp,
CutMix) on a batch of 32. Prints milliseconds per cutout and the ratio to the default set: the
price the loader (or the device) pays for switching an op on.

``--against REV`` instead times this tree's :class:`~synapse_ei.learn.augment.BatchAugmentation`
against the one of git revision ``REV`` (``synapse_ei/learn/augment.py`` read with ``git show``)
in one process, on one batch of ``--batch`` raw uint8 cutouts (as the loader gives them), the
default and all augmentations, at each of ``--threads`` intra-op threads: ``--repeats`` rounds
in alternating order, the same seed for both in a round; milliseconds a batch, best and median,
and this tree's over the other's. Both must give the same batch for the same seed, or the
ratio would compare different work; where they differ, the line says by how much: rounding
(a 1e-7 gap) or a change on purpose.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from synapse_ei.config import model_defaults
from synapse_ei.learn.augment import AUGMENTATIONS, mix_batch, SECTION_AUGMENTATIONS
from synapse_ei.learn.losses import one_hot
from synapse_ei.learn.transforms import build_transforms
from versions import module_at  # bench/ is the script's folder, first on the path

SIZES = {"demo": {"2d": (64, 64), "3d": (8, 32, 32)},
         "microns": {"2d": (256, 256), "3d": (32, 128, 128)}}


def per_call_ms(function, x: torch.Tensor, repeats: int) -> float:
    function(x)  # warm-up: kernels, caches
    started = time.perf_counter()
    for _ in range(repeats):
        function(x)
    return 1000 * (time.perf_counter() - started) / repeats


def against(args) -> None:
    """This tree's batched augmentation against revision ``args.against``'s (module doc)."""
    from synapse_ei.learn import augment as this
    other = module_at(args.against, "synapse_ei/learn/augment.py", "augment_other")
    print(f"BatchAugmentation, this tree against {args.against}, a batch of {args.batch} raw "
          f"uint8 cutouts, {args.repeats} rounds alternating, ms a batch:")
    for size in args.sizes:
        for kind, shape in SIZES[size].items():
            names = [n for n in AUGMENTATIONS if kind == "3d" or n not in SECTION_AUGMENTATIONS]
            x = torch.randint(0, 256, (args.batch, 1, *shape), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))
            for label, chosen in (("default", list(model_defaults()["augmentations"])),
                                  ("all", names)):
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    versions = {"this": this.BatchAugmentation(kind, chosen),
                                "other": other.BatchAugmentation(kind, chosen)}
                    outputs = [version(x, torch.Generator().manual_seed(1))
                               for version in versions.values()]
                    gap = float((outputs[0] - outputs[1]).abs().max())
                    times = {name: [] for name in versions}
                    for round_ in range(args.repeats):
                        order = list(versions) if round_ % 2 else list(versions)[::-1]
                        for name in order:
                            generator = torch.Generator().manual_seed(round_)
                            started = time.perf_counter()
                            versions[name](x, generator)
                            times[name].append(1000 * (time.perf_counter() - started))
                    best = {name: min(t) for name, t in times.items()}
                    median = {name: statistics.median(t) for name, t in times.items()}
                    print(f"  {size:8} {kind} {label:8} t={threads}  this {best['this']:7.1f} "
                          f"other {best['other']:7.1f} best ({best['this'] / best['other']:.2f}x)"
                          f"  median {median['this']:7.1f} / {median['other']:7.1f} "
                          f"({median['this'] / median['other']:.2f}x)"
                          f"{f'  OUTPUTS DIFFER by up to {gap:.1e}' if gap else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--against", default=None, metavar="REV",
                        help="time this tree's batched augmentation against git revision REV's")
    args = parser.parse_args()
    if args.against:
        return against(args)
    torch.set_num_threads(args.threads[0])
    torch.manual_seed(0)
    print(f"{'size':8} {'kind':4} {'augmentations':34} {'ms/cutout':>10} {'x default':>10}")
    for size in args.sizes:
        for kind, shape in SIZES[size].items():
            x = torch.rand(args.batch, 1, *shape)
            names = [n for n in AUGMENTATIONS if kind == "3d" or n not in SECTION_AUGMENTATIONS]
            variants = {"default": list(model_defaults()["augmentations"]),
                        **{n: [n] for n in names}, "all": names}
            base = None
            for label, chosen in variants.items():
                ms = per_call_ms(build_transforms(kind, True, 1.0, chosen), x,
                                 args.repeats) / args.batch
                base = base or ms
                print(f"{size:8} {kind:4} {label:34} {ms:10.3f} {ms / base:10.2f}")
            batch = torch.rand(32, 1, *shape)
            target = one_hot(torch.randint(2, (32,)))
            for label, alphas in (("mixup (batch of 32)", (0.4, 0.0)),
                                  ("cutmix (batch of 32)", (0.0, 1.0))):
                ms = per_call_ms(lambda b: mix_batch(b, target, *alphas), batch, args.repeats) / 32
                print(f"{size:8} {kind:4} {label:34} {ms:10.3f} {ms / base:10.2f}")


if __name__ == "__main__":
    main()
