"""A seeded cap per group: keep at most ``cap`` rows of each group, a random sample fixed by a seed.

One rule, :func:`cap_per_group`: each row gets a sort key, and a group keeps its ``cap`` rows of
smallest key (ties by synapse id); the result is sorted by id. Three stages cap this way and
differ only in how the keys are drawn, side by side here:

- :func:`hashed_keys` (the ``cave`` source's ``max_synapses_per_neuron``): a key from the synapse
  id and the seed alone, so capping each query's answer as it arrives keeps the rows capping the
  whole table would keep;
- :func:`shuffle_keys` (the label stage's ``max_synapses_per_class``): the rank of each row in a
  seeded shuffle of the table;
- :func:`uniform_keys` (the unlabelled stage's ``predict.max_synapses_per_neuron``): one seeded
  uniform draw per row.

The last two need the whole table and could be one; both stay so that every run capped so far
keeps exactly its rows (a changed sample would change the splits and models built on it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from synapse_ei.errors import DataError


def check_cap(cap: Any, key: str) -> None:
    """A :class:`DataError` naming config ``key`` unless ``cap`` is None or a whole number >= 1."""
    if cap is None:
        return
    whole = isinstance(cap, (int, np.integer)) and not isinstance(cap, bool)
    if not whole or int(cap) < 1:
        raise DataError(f"{key}: {cap!r} must be a whole number >= 1 (or null for no cap).")


def cap_per_group(
    frame: pd.DataFrame, group: str, cap: int, keys: np.ndarray, key: str
) -> pd.DataFrame:
    """The rows of ``frame`` that are among the ``cap`` smallest ``keys`` of their ``group``
    value (ties by ``id``), sorted by ``id`` with a fresh index. ``keys`` holds one key per row
    of ``frame``, in its order; ``key`` is the config key named when ``cap`` is not valid."""
    check_cap(cap, key)
    if len(keys) != len(frame):
        raise ValueError(f"{len(keys)} sample keys for {len(frame)} rows")
    ids = frame["id"].to_numpy(dtype=np.int64)
    groups = pd.factorize(frame[group])[0]
    order = np.lexsort((ids, np.asarray(keys), groups))  # by group, then key, then id
    grouped = groups[order]
    position = np.arange(len(order))
    first = np.r_[True, grouped[1:] != grouped[:-1]] if len(order) else np.zeros(0, bool)
    rank = position - np.maximum.accumulate(np.where(first, position, 0))
    kept = frame.iloc[np.sort(order[rank < int(cap)])]
    return kept.sort_values("id", kind="stable").reset_index(drop=True)


def hashed_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 key per synapse id (SplitMix64's mixer of id and seed):
    the same id and seed give the same key whatever else is sampled with it."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = np.asarray(ids).astype(np.uint64) + np.uint64(int(seed) % 2**64) * golden + golden
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shuffle_keys(n_rows: int, seed: int) -> np.ndarray:
    """The rank of each of ``n_rows`` rows in a seeded shuffle: the order
    ``DataFrame.sample(frac=1.0, random_state=np.random.default_rng(seed))`` puts them in."""
    order = np.random.default_rng(seed).choice(n_rows, size=n_rows, replace=False)
    ranks = np.empty(n_rows, dtype=np.int64)
    ranks[order] = np.arange(n_rows)
    return ranks


def uniform_keys(n_rows: int, seed: int) -> np.ndarray:
    """One seeded uniform draw in [0, 1) per row."""
    return np.random.default_rng(seed).random(n_rows)
