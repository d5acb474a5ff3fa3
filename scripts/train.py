"""Rule train: train one image model on the cutouts."""

import os
from pathlib import Path

# torch's CPU allocator backs tensors of 2 MB and more with transparent huge pages: a batch of
# cubes, allocated afresh for every batch, then faults in 512 times fewer pages.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# A model with `gpus: N` trains in N spawned processes, and each imports this script again (as
# `__mp_main__`): only the job's own process may run it.
if __name__ == "__main__":
    from synapse_ei.logs import log_to_file

    log_to_file(snakemake.log[0])

    from synapse_ei.learn.train import train_image_model

    train_image_model(
        manifest_path=snakemake.input.manifest,
        cutout_root=snakemake.params.cutout_root,
        architecture=snakemake.params.architecture,
        settings=snakemake.params.settings,
        out_dir=Path(snakemake.output.model).parent,
        checkpoint_dir=snakemake.params.checkpoint_dir,
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        num_workers=snakemake.params.num_workers,
        threads=snakemake.threads,
        name=snakemake.wildcards.model,
    )
