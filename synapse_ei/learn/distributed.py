"""Data-parallel training of one model on several GPUs (or, for tests, CPU processes).

:func:`launch` starts one process per GPU inside the job with torchrun's own launcher
(``torch.distributed.launcher.api.elastic_launch``, what ``torchrun --standalone`` runs), so the
Snakemake rule keeps calling one Python function and a Slurm job is one task holding N GPUs.
Each process joins the process group (NCCL on GPUs, gloo on the CPU), trains a DDP copy of the
model on its share of every global batch (:class:`RankBatches`) and the gradients are averaged.

The processes are started with ``spawn`` (fresh interpreters), never ``fork``: a child forked
from a process whose OpenMP threads have run (any multi-threaded torch op on the CPU) hangs in
its first multi-threaded op (libgomp is not fork-safe), and a forked child cannot use CUDA
after its parent did. A spawned child imports the parent's main module again, so a script that
trains data-parallel keeps its work under ``if __name__ == "__main__":`` (scripts/train.py).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.utils.data import BatchSampler, DataLoader, Sampler

from synapse_ei.errors import DataError

log = logging.getLogger(__name__)

#: Log lines of the processes: where the launching job logs, with the process's rank.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [rank {rank}]: %(message)s"


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, model.pt and the history."""
        return self.rank == 0


def check_processes(gpus: int, batch_size: int, device: torch.device, model: str) -> None:
    """A :class:`DataError` unless ``gpus`` processes can share batches of ``batch_size`` on
    ``device``."""
    if batch_size % gpus:
        raise DataError(f"models: {model}: batch_size {batch_size} is not a multiple of gpus "
                        f"{gpus}; each GPU takes an equal share of a batch.")
    if device.type == "cuda" and torch.cuda.device_count() < gpus:
        raise DataError(f"models: {model} asks for gpus: {gpus} but this machine has "
                        f"{torch.cuda.device_count()} GPU(s); lower gpus or give the job more "
                        "(the profile's train entry).")


class RankBatches(Sampler[list[int]]):
    """This rank's share of each global batch: the same global batches on every rank (one
    sampler, one seed), item ``rank``, ``rank + size``, ... of each (equal shares when the
    batch size is a multiple of the processes; the last batch's differ by one at most).

    Works for any sampler (random or class-balanced): together the processes train on the
    batches a single process draws with the same seed.
    """

    def __init__(self, batches: BatchSampler, world: World) -> None:
        self.batches, self.world = batches, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.world.rank::self.world.size]

    def __len__(self) -> int:
        return len(self.batches)


def shard_loader(loader: DataLoader, world: World) -> DataLoader:
    """``loader`` with this rank's share of every batch (same sampler, generator and workers)."""
    batches = BatchSampler(loader.sampler, loader.batch_size, loader.drop_last)
    return DataLoader(
        loader.dataset, batch_sampler=RankBatches(batches, world),
        num_workers=loader.num_workers, worker_init_fn=loader.worker_init_fn,
        generator=loader.generator, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers,
    )


def sum_over_ranks(*values: float) -> list[float]:
    """Each value summed over all processes (float64, on the process group's device)."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def gather(value: Any, world: World) -> list[Any]:
    """``value`` of every process, in rank order."""
    found: list[Any] = [None] * world.size
    dist.all_gather_object(found, value)
    return found


def _log_files() -> list[str]:
    """The files this process logs to, which the training processes log to as well."""
    return [handler.stream.name for handler in logging.getLogger().handlers
            if isinstance(handler, logging.StreamHandler)
            and isinstance(getattr(handler.stream, "name", None), str)
            and not handler.stream.name.startswith("<")]


def _join(log_files: Sequence[str], device_type: str) -> tuple[World, torch.device]:
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    handlers: list[logging.Handler] = [logging.FileHandler(path) for path in log_files]
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT.format(rank=rank),
                        handlers=handlers or [logging.StreamHandler()], force=True)
    if device_type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device(device_type)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return World(rank, size), device


@record  # writes a failure's message and traceback where the launcher reads them
def _run_process(function: Callable[..., Any], log_files: Sequence[str], device_type: str,
                 kwargs: dict[str, Any]) -> Any:
    world, device = _join(log_files, device_type)
    result = function(world=world, device=device, **kwargs)
    # Not in a `finally`: on a failure the group must stay up until `record` has written this
    # process's error, or the others fail first on the closed connection and theirs is the
    # error reported; the process's exit closes the group instead.
    dist.destroy_process_group()
    return result


def launch(function: Callable[..., Any], processes: int, device: torch.device,
           **kwargs: Any) -> Any:
    """Run ``function(world=..., device=..., **kwargs)`` in ``processes`` processes on this
    machine (one per GPU on CUDA); rank 0's return value.

    ``function`` and ``kwargs`` must pickle (each process, started by ``spawn``, unpickles
    them). A failed process stops the others; the error names its rank and message.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=uuid.uuid4().hex,
        # What `torchrun --standalone` uses: a rendezvous on a free local port.
        rdzv_backend="c10d", rdzv_endpoint="localhost:0",
        # A failure is retried by Snakemake's retries, resuming from the checkpoint.
        max_restarts=0, monitor_interval=0.1, start_method="spawn",
    )
    log.info("launching %d training processes on %s", processes, device.type)
    try:
        results = elastic_launch(config, _run_process)(
            function, _log_files(), device.type, kwargs)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", message)
        raise RuntimeError(f"training process {rank} of {processes} failed: {message}") from None
    return results[0]
