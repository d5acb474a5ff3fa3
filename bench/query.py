"""The query stage's memory and time: the CAVE source against a fake server of MICrONS's size.

Usage: ``python bench/query.py [--scale 0.1] [--cap 500] [--paths old new] [--old-commit e3554b2]``

The fake is the test suite's MaterializationEngine (``tests/cave_helpers.py``), driven through
the real caveclient by ``responses``, at the size of minnie65_public: a cell-type reference table
of 94,000 rows on ``nucleus_detection_v0`` (77% neurons), answered through the join, and a
``synapses_pni_2``-like table with every column the real one has (19, positions split) whose
answers are made per query, so the benchmark never holds the whole table. Each neuron has a
lognormal number of outgoing synapses (median 230, mean 380, so a 500-root-id batch answers
about 190,000 rows, some batches over the 200,000-row limit and re-queried in halves).
``--scale`` scales the number of cell-type rows (and so of neurons and batches), not the rows
per answer: at 0.1, 9,400 rows and about 15 batches.

Each path runs in its own fresh process and reports the peak resident memory above the
process's own after imports and the fake built (``ru_maxrss``; the fake's answer of the moment
is part of it, as a server's answer in flight is of a real run; ``responses``' own log of past
answers is cleared as it goes) and the wall time:

- ``old``: ``synapse_ei/sources/cave.py`` as it was before (``--old-commit``, read with
  ``git show``): every column of every answer kept, tidied and capped (``--cap`` per neuron)
  after the last batch; given ``max_rows_per_query=200000`` so that it, too, splits cut answers;
- ``new``: :func:`synapse_ei.sources.cave.load` as the rule runs it: the columns the workflow
  uses (``select_columns``), each answer tidied and capped as it arrives.

Both query the same rows and keep as many (checked; which ones differ, as the seeded sample
changed).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from versions import module_at  # noqa: E402 (bench/, the script's folder)

CELL_ROWS = 94_000
NEURON_FRACTION = 0.77
CELLS = "aibs_metamodel_celltypes_v661"
SYNAPSES = "synapses_pni_2"
SIGMA = 1.0
MEDIAN = 230.0  # mean = median * exp(sigma^2 / 2), about 380


def cell_types(rows: int) -> pd.DataFrame:
    from cave_helpers import ROOT_BASE

    rng = np.random.default_rng(0)
    neuron = rng.random(rows) < NEURON_FRACTION
    inhibitory = rng.random(rows) < 0.12
    return pd.DataFrame({
        "id": np.arange(1, rows + 1, dtype=np.int64),
        "pt_root_id": ROOT_BASE + np.arange(1, rows + 1, dtype=np.int64),
        "classification_system": np.where(
            neuron, np.where(inhibitory, "inhibitory_neuron", "excitatory_neuron"), "nonneuron"),
        "cell_type": np.where(neuron, np.where(inhibitory, "BC", "23P"), "astrocyte"),
        "pt_position_x": rng.integers(0, 400_000, rows),
        "pt_position_y": rng.integers(0, 300_000, rows),
        "pt_position_z": rng.integers(14_000, 28_000, rows),
    })


def synapse_rows(body: dict) -> pd.DataFrame:
    """The synapses of the root ids a query asks for, made on the spot: each root id's count
    and rows come from its own seed, so every query sees the same table."""
    from cave_helpers import ROOT_BASE

    roots = np.asarray(body["filter_in_dict"][SYNAPSES]["pre_pt_root_id"], dtype=np.int64)
    counts = np.array([int(np.random.default_rng(int(r)).lognormal(np.log(MEDIAN), SIGMA))
                       for r in roots], dtype=np.int64)
    counts = np.minimum(counts, 99_999)
    n = int(counts.sum())
    pre = np.repeat(roots, counts)
    within = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    rng = np.random.default_rng(int(roots.sum() % 2**32))
    ctr = rng.integers(0, 400_000, size=(n, 3))
    frame = pd.DataFrame({
        "id": (pre - ROOT_BASE) * 100_000 + within,
        "created": pd.Timestamp("2020-11-04 06:48:19", tz="UTC"),
        "superceded_id": pd.array(np.full(n, None), dtype="Int64"),
        "valid": True,
        "size": rng.integers(50, 5000, n),
        "pre_pt_supervoxel_id": rng.integers(7 * 10**16, 11 * 10**16, n),
        "pre_pt_root_id": pre,
        "post_pt_supervoxel_id": rng.integers(7 * 10**16, 11 * 10**16, n),
        "post_pt_root_id": ROOT_BASE + rng.integers(1, 10**6, n),
    })
    for name, offset in (("pre_pt", -3), ("ctr_pt", 0), ("post_pt", 3)):
        for axis, column in enumerate("xyz"):
            frame[f"{name}_position_{column}"] = ctr[:, axis] + offset
    return frame


def forgetting(server, rsps):
    """``responses`` logs every call with its answer's bytes, which no real run holds: keep only
    the one in flight."""
    def wrap(answer):
        def callback(request):
            rsps.calls.reset()
            for registered in rsps.registered():
                registered.calls.reset()
            return answer(request)
        return callback
    server._simple_query = wrap(server._simple_query)
    server._join_query = wrap(server._join_query)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(path: str, rows: int, cap: int, commit: str, out: multiprocessing.Queue) -> None:
    import responses
    from cave_helpers import (
        DATASTACK, NUCLEUS_TABLE, VERSION, FakeMaterializationServer, as_reference_table,
        make_client,
    )

    from synapse_ei.sources import cave

    source = cave if path == "new" else module_at(commit, "synapse_ei/sources/cave.py", "cave_old")
    parts = as_reference_table(cell_types(rows))
    server = FakeMaterializationServer(
        {CELLS: parts["reference"], NUCLEUS_TABLE: parts["nucleus"], SYNAPSES: synapse_rows},
        references={CELLS: NUCLEUS_TABLE},
    )
    client = make_client()
    synapse_rows({"filter_in_dict": {SYNAPSES: {"pre_pt_root_id": [1]}}})  # warm the imports
    baseline = rss_mb()
    start = time.perf_counter()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        forgetting(server, rsps)
        server.register(rsps)
        result = source.load(DATASTACK, VERSION, SYNAPSES, CELLS, client=client,
                             max_rows_per_query=200_000, max_synapses_per_neuron=cap,
                             backoff_seconds=0.0)
    seconds = time.perf_counter() - start
    queries = sum(1 for r in server.requests if r["table"] == SYNAPSES)
    out.put({
        "path": path, "seconds": seconds, "baseline_mb": baseline,
        "peak_mb": rss_mb(), "queried": result.provenance["rows"]["synapses_queried"],
        "kept": len(result.synapses), "synapse_queries": queries,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.1,
                        help="fraction of the real 94,000 cell-type rows (default 0.1)")
    parser.add_argument("--cap", type=int, default=500, help="max_synapses_per_neuron")
    parser.add_argument("--paths", nargs="+", default=["old", "new"], choices=["old", "new"])
    parser.add_argument("--old-commit", default="e3554b2",
                        help="the commit whose cave.py is the old path (before issue 13)")
    args = parser.parse_args()
    rows = int(round(CELL_ROWS * args.scale))
    context = multiprocessing.get_context("spawn")
    results = []
    for path in args.paths:
        queue = context.Queue()
        process = context.Process(target=run, args=(path, rows, args.cap, args.old_commit,
                                                    queue))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"the {path} path failed (exit code {process.exitcode})")
        results.append(queue.get())
    print(f"cell-type rows {rows:,} (scale {args.scale}), cap {args.cap} per neuron")
    print("| path | synapse queries | rows queried | rows kept | peak RSS above start (MB) "
          "| time (s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['path']} | {r['synapse_queries']} | {r['queried']:,} | {r['kept']:,} | "
              f"{r['peak_mb'] - r['baseline_mb']:,.0f} | {r['seconds']:.1f} |")
    if len({(r["queried"], r["kept"]) for r in results}) > 1:
        raise SystemExit("the paths queried or kept different numbers of synapses")


if __name__ == "__main__":
    main()
