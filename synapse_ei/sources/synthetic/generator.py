"""The embedded demo: a synthetic MICrONS-like dataset written to disk like a real export.

:func:`synthesize` writes CAVE-schema tables (``synapses_pni_2`` with split positions in 4x4x40 nm
voxels, ``aibs_metamodel_celltypes_v661``) and a jpeg precomputed EM volume at 8x8x40 nm, with the
warts of the real tables: orphan axons without a cell-type row, glia as presynaptic segments,
root ids listed twice and the root id 0. :func:`load` reads it back as the ``synthetic`` source.

The labels are carried by the images (see :mod:`synapse_ei.sources.synthetic.render`) and, weakly,
by connectivity: inhibitory synapses are a little smaller, target inhibitory cells a little more
often and come in slightly larger multi-synapse connections. Each presynaptic axon has its own
imaging signature (brightness, contrast, small scale factors) and, with ``neuron_traits`` > 0,
appearance traits of its own (:data:`NEURON_TRAITS`: bouton size, vesicle density, size and
spread, mitochondria, membrane darkness, axoplasm tone), so splits that share neurons between
train and test look better than they are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synapse_ei.errors import DataError
from synapse_ei.outputs import read_json, write_json, write_parquet
from synapse_ei.sources import SourceTables
from synapse_ei.sources.synthetic import render
from synapse_ei.tables import (
    CAVE_POSITION_RESOLUTION,
    CTR,
    EXCITATORY,
    INHIBITORY,
    POST_POSITION,
    PRE_POSITION,
)

EXCITATORY_TYPES = ("23P", "4P", "5P-IT", "5P-ET", "5P-NP", "6P-IT", "6P-CT")
INHIBITORY_TYPES = ("BC", "MC", "BPC", "NGC")
NONNEURON_TYPES = ("astrocyte", "microglia", "oligo", "OPC", "pericyte")
CLASSIFICATION = {
    EXCITATORY: "excitatory_neuron",
    INHIBITORY: "inhibitory_neuron",
    "nonneuron": "nonneuron",
}

#: Resolution (nm per voxel, XYZ) of mip 0 of the EM volume, as MICrONS.
EM_RESOLUTION = (8, 8, 40)
CHUNK_SIZE = (128, 128, 16)
#: Where the volume starts (voxels at mip 0); chunk-aligned and far from 0, like MICrONS.
VOXEL_OFFSET = (128 * 200, 128 * 160, 16 * 1000)
#: One synapse per grid cell of this size (voxels), so a cutout is dominated by its synapse.
GRID_CELL = (88, 88, 12)
_GRID_JITTER = (8, 8, 1)
ROOT_ID_BASE = 864691135_000000000

# Composition of the synapse table by kind of presynaptic segment (fractions of synapses).
ORPHAN_FRACTION = 0.10
GLIA_FRACTION = 0.02
DUPLICATE_FRACTION = 0.03
ZERO_FRACTION = 0.01
EDGE_FRACTION = 0.01

_FILES = ("synapses.parquet", "cell_types.parquet", "truth.parquet", "stats.json", "em/info")


# ----------------------------------------------------------------------------------------------
# Presynaptic axons and their signatures
# ----------------------------------------------------------------------------------------------


def _unique_root_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    return ROOT_ID_BASE + rng.choice(10**9, size=n, replace=False).astype(np.int64)


def _axon_signatures(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Per-axon nuisance parameters shared by all of an axon's synapses."""
    return pd.DataFrame(
        {
            "brightness": rng.normal(0.0, 14.0, n),
            "contrast": rng.lognormal(0.0, 0.15, n),
            "vesicle_density": rng.lognormal(0.0, 0.35, n),
            "vesicle_scale": rng.normal(1.0, 0.07, n),
            "cleft_scale": rng.lognormal(0.0, 0.18, n),
            "bouton_scale": rng.lognormal(0.0, 0.12, n),
            "psd_scale": rng.lognormal(0.0, 0.15, n),
        }
    )


#: Per-neuron appearance traits, drawn once per presynaptic cell and shared by all its synapses:
#: name -> standard deviation of the trait's log factor at strength 1
#: (``dataset.synthetic.neuron_traits``; the factor is ``exp(strength * sd * z)``, z ~ N(0, 1)).
#: Real axons differ like this (bouton size, vesicle density, size and packing, mitochondria,
#: membrane and axoplasm staining), which is what lets a split that shares neurons between train
#: and test flatter an image model: it can recognise the neuron beside reading the class cue.
NEURON_TRAITS = {
    "bouton_size": 0.22,  # bouton radius and depth
    "vesicle_density": 0.45,  # vesicles per bouton
    "vesicle_size": 0.06,  # vesicle radius (the class cue's own axis: 20 vs 16.5 nm)
    "vesicle_spread": 0.25,  # depth of the vesicle cloud (packing)
    "mitochondria": 1.0,  # mitochondria per bouton (0.9 on average at strength 0)
    "membrane_darkness": 0.35,  # OD of the bouton's membrane
    "axoplasm": 0.12,  # OD added inside the bouton (this one is additive: strength * sd * z)
}
_TAG_NEURON_TRAITS = 21
#: Mitochondria per bouton on average (a Poisson mean), before the mitochondria trait.
MITOCHONDRIA_PER_BOUTON = 0.9


def _neuron_traits(seed: int, n_axons: int, strength: float) -> pd.DataFrame:
    """Each axon's appearance traits (columns ``trait_<name>``; see :data:`NEURON_TRAITS`).

    Drawn from their own random stream, so the tables do not depend on ``strength`` and strength
    0 (every factor exactly 1, the axoplasm exactly 0) renders the volume of a generator without
    traits byte for byte.
    """
    z = np.random.default_rng([seed, _TAG_NEURON_TRAITS]).standard_normal(
        (n_axons, len(NEURON_TRAITS))
    )
    sd = np.array(list(NEURON_TRAITS.values()))
    factor = np.exp(strength * sd * z)
    axoplasm = list(NEURON_TRAITS).index("axoplasm")
    factor[:, axoplasm] = strength * sd[axoplasm] * z[:, axoplasm]
    return pd.DataFrame(factor, columns=[f"trait_{name}" for name in NEURON_TRAITS])


def _split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    counts = {k: int(round(n * f)) for k, f in fractions.items()}
    counts = {k: (max(1, v) if n >= 50 else v) for k, v in counts.items()}
    counts["labelled"] = n - sum(counts.values())
    if counts["labelled"] < 2:
        raise DataError(
            f"dataset.synthetic.n_synapses: {n} is too small to hold every kind of synapse; "
            "use at least 20."
        )
    return counts


def _axon_table(
    rng: np.random.Generator, n_neurons: int, n_zero: int, inhibitory_fraction: float
) -> pd.DataFrame:
    """Every presynaptic segment: its kind, true class, root id and imaging signature.

    Neurons get exactly ``round(n_neurons * max(inhibitory_fraction, 0.1))`` inhibitory cells;
    the other kinds draw their class at ``inhibitory_fraction``.
    """
    n_inh_neurons = int(np.clip(round(n_neurons * max(inhibitory_fraction, 0.1)), 1, n_neurons - 1))
    n_orphan_axons = max(1, n_neurons // 4)
    n_glia_axons = max(1, round(n_neurons * 0.03))
    n_dup_axons = max(2, round(n_neurons * 0.04))

    kinds = (
        ["neuron"] * n_neurons
        + ["orphan"] * n_orphan_axons
        + ["glia"] * n_glia_axons
        + ["duplicate"] * n_dup_axons
        + ["zero"] * n_zero  # root id 0: each such synapse stands for a lost axon
    )
    axons = pd.DataFrame({"kind": kinds})
    cls = np.where(rng.uniform(size=len(axons)) < inhibitory_fraction, INHIBITORY, EXCITATORY)
    cls[:n_neurons] = EXCITATORY
    cls[rng.choice(n_neurons, n_inh_neurons, replace=False)] = INHIBITORY
    axons["true_class"] = cls
    ids = _unique_root_ids(rng, len(axons))
    ids[axons.kind.to_numpy() == "zero"] = 0
    axons["pre_pt_root_id"] = ids
    return pd.concat([axons, _axon_signatures(rng, len(axons))], axis=1)


def _assign_synapses(
    rng: np.random.Generator,
    axons: pd.DataFrame,
    counts: dict[str, int],
    inhibitory_fraction: float,
) -> np.ndarray:
    """Each synapse's axon (index into ``axons``): heavy-tailed synapses per axon, with exact
    class totals on single-type neurons."""
    weights = rng.lognormal(0.0, 0.6, len(axons))
    n_lab = counts["labelled"]
    n_lab_inh = int(round(inhibitory_fraction * n_lab))
    if inhibitory_fraction > 0 and n_lab_inh == 0:
        n_lab_inh = 1
    kind = axons.kind.to_numpy()
    cls = axons.true_class.to_numpy()
    neuron = kind == "neuron"
    assignment = []
    for mask, total in (
        (neuron & (cls == INHIBITORY), n_lab_inh),
        (neuron & (cls == EXCITATORY), n_lab - n_lab_inh),
        (kind == "orphan", counts["orphan"]),
        (kind == "glia", counts["glia"]),
        (kind == "duplicate", counts["duplicate"]),
    ):
        members = np.flatnonzero(mask)
        if total == 0:
            continue
        if len(members) == 0:
            raise DataError(
                "dataset.synthetic: inhibitory_fraction leaves no neuron of one class; "
                "use a fraction between 0.05 and 0.5."
            )
        per = rng.multinomial(total, weights[members] / weights[members].sum())
        assignment.append(np.repeat(members, per))
    assignment.append(np.flatnonzero(kind == "zero"))
    return np.concatenate(assignment)


def _build_axons(
    rng: np.random.Generator, n_synapses: int, n_neurons: int, inhibitory_fraction: float
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Presynaptic axons (with class, kind, root id, signature) and each synapse's axon.

    ``inhibitory_fraction`` is met exactly on synapses whose presynaptic segment is a neuron with a
    single cell-type row, the ones a labelling step can keep.
    """
    counts = _split_counts(
        n_synapses,
        {
            "orphan": ORPHAN_FRACTION,
            "glia": GLIA_FRACTION,
            "duplicate": DUPLICATE_FRACTION,
            "zero": ZERO_FRACTION,
        },
    )
    axons = _axon_table(rng, n_neurons, counts["zero"], inhibitory_fraction)
    synapse_axon = _assign_synapses(rng, axons, counts, inhibitory_fraction)
    return axons, synapse_axon, pd.DataFrame(counts, index=[0])


def _cell_type_rows(
    rng: np.random.Generator, axons: pd.DataFrame, post_cells: pd.DataFrame
) -> pd.DataFrame:
    """The cell-type table: neurons, post-only cells, glia, and a few duplicated root ids."""

    def pick(cls: str) -> str:
        pools = {EXCITATORY: EXCITATORY_TYPES, INHIBITORY: INHIBITORY_TYPES}
        pool = pools.get(cls, NONNEURON_TYPES)
        return str(rng.choice(pool))

    rows = []
    for axon in axons.itertuples(index=False):
        if axon.kind in ("neuron", "duplicate"):
            rows.append((axon.pre_pt_root_id, pick(axon.true_class), axon.true_class))
        if axon.kind == "duplicate":
            # Multi-soma merge: a second row, half the time of the other class.
            other = axon.true_class
            if rng.uniform() < 0.5:
                other = INHIBITORY if other == EXCITATORY else EXCITATORY
            rows.append((axon.pre_pt_root_id, pick(other), other))
        if axon.kind == "glia":
            rows.append((axon.pre_pt_root_id, pick("nonneuron"), "nonneuron"))
    for cell in post_cells.itertuples(index=False):
        if cell.typed and cell.origin == "post":
            rows.append((cell.root_id, pick(cell.cell_class), cell.cell_class))
    n_extra_glia = max(2, len(post_cells) // 10)
    taken = set(axons.pre_pt_root_id) | set(post_cells.root_id)
    for root in _unique_root_ids(rng, n_extra_glia):
        if root not in taken:
            rows.append((root, pick("nonneuron"), "nonneuron"))
    table = pd.DataFrame(rows, columns=["pt_root_id", "cell_type", "cell_class"])
    table["classification_system"] = table.cell_class.map(CLASSIFICATION)
    table = table.drop(columns="cell_class").astype({"pt_root_id": "int64"})
    order = rng.permutation(len(table))
    return table.iloc[order].reset_index(drop=True)


def _post_cells(rng: np.random.Generator, axons: pd.DataFrame, n_neurons: int) -> pd.DataFrame:
    """Postsynaptic candidates: the labelled neurons themselves and post-only cells."""
    neurons = axons[axons.kind == "neuron"]
    n_post_only = max(20, int(n_neurons * 1.5))
    post_cls = np.where(rng.uniform(size=n_post_only) < 0.18, INHIBITORY, EXCITATORY)
    post_only = pd.DataFrame(
        {
            "root_id": _unique_root_ids(rng, n_post_only),
            "cell_class": post_cls,
            "typed": rng.uniform(size=n_post_only) > 0.06,  # some targets lack a cell type
            "origin": "post",
        }
    )
    pre_as_post = pd.DataFrame(
        {
            "root_id": neurons.pre_pt_root_id.to_numpy(),
            "cell_class": neurons.true_class.to_numpy(),
            "typed": True,
            "origin": "pre",
        }
    )
    cells = pd.concat([post_only, pre_as_post], ignore_index=True)
    clash = (cells.origin == "post") & cells.root_id.isin(axons.pre_pt_root_id)
    return cells[~clash].reset_index(drop=True)


def _connect(
    rng: np.random.Generator,
    axons: pd.DataFrame,
    synapse_axon: np.ndarray,
    post_cells: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray]:
    """Postsynaptic root id and connection multiplicity for each synapse (weak class signal)."""
    post_ids = np.empty(len(synapse_axon), np.int64)
    multiplicity = np.empty(len(synapse_axon), np.int64)
    inh_pool = post_cells.root_id[post_cells.cell_class == INHIBITORY].to_numpy()
    exc_pool = post_cells.root_id[post_cells.cell_class == EXCITATORY].to_numpy()
    order = np.argsort(synapse_axon, kind="stable")
    bounds = np.flatnonzero(np.diff(synapse_axon[order])) + 1
    for group in np.split(order, bounds):
        axon = axons.iloc[synapse_axon[group[0]]]
        inhibitory = axon.true_class == INHIBITORY
        extra_mean = 0.7 if inhibitory else 0.35
        p_inh_target = 0.32 if inhibitory else 0.16
        start = 0
        while start < len(group):
            m = min(1 + rng.poisson(extra_mean), len(group) - start)
            pool = inh_pool if rng.uniform() < p_inh_target else exc_pool
            target = pool[rng.integers(len(pool))]
            while target == axon.pre_pt_root_id:
                target = pool[rng.integers(len(pool))]
            post_ids[group[start : start + m]] = target
            multiplicity[group[start : start + m]] = m
            start += m
    return post_ids, multiplicity


# ----------------------------------------------------------------------------------------------
# Layout and appearance
# ----------------------------------------------------------------------------------------------


def _grid_shape(n: int) -> tuple[int, int, int]:
    nz = max(2, int(round(np.cbrt(n) * 0.8)))
    nxy = int(np.ceil(np.sqrt(n / nz)))
    while nxy * nxy * nz < n:
        nxy += 1
    return nxy, nxy, nz


def _layout(rng: np.random.Generator, n: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Synapse centre voxels (volume-relative, XYZ) on a jittered grid, and the volume shape.

    A few synapses sit in the outer margin, closer to the edge than half a cutout.
    """
    grid = _grid_shape(n)
    cell = np.array(GRID_CELL)
    shape = tuple(int(v) for v in np.array(grid) * cell)
    cells = rng.choice(int(np.prod(grid)), size=n, replace=False)
    ijk = np.stack(np.unravel_index(cells, grid), axis=1)
    centre = ijk * cell + cell // 2
    centre += rng.integers(-np.array(_GRID_JITTER), np.array(_GRID_JITTER) + 1, size=(n, 3))
    n_edge = int(round(n * EDGE_FRACTION))
    if n_edge:
        on_x_face = np.flatnonzero((ijk[:, 0] == 0) | (ijk[:, 0] == grid[0] - 1))
        chosen = rng.choice(on_x_face, size=min(n_edge, len(on_x_face)), replace=False)
        near = rng.integers(4, 20, size=len(chosen))
        low_face = ijk[chosen, 0] == 0
        centre[chosen, 0] = np.where(low_face, near, shape[0] - 1 - near)
    return centre, shape


def _vesicle_counts(
    rng: np.random.Generator,
    trait_rng: np.random.Generator,
    mean: np.ndarray,
    factor: np.ndarray,
) -> np.ndarray:
    """Poisson vesicle counts of mean ``mean * factor``, with ``rng`` drawing exactly what it
    draws for ``mean`` alone.

    numpy's Poisson sampler takes a number of draws that depends on the mean, so drawing at
    ``mean * factor`` from ``rng`` would shift every later draw (synapse ids, sizes, the split)
    with the trait strength. The factor is applied from ``trait_rng`` instead: a Poisson
    ``mean * (factor - 1)`` more where it is above 1, binomial thinning with probability
    ``factor`` where it is below (both give a Poisson count of mean ``mean * factor``).
    """
    counts = rng.poisson(mean)
    more = np.maximum(factor - 1.0, 0.0)
    counts = counts + trait_rng.poisson(mean * more)
    return trait_rng.binomial(counts, np.minimum(factor, 1.0))


def _appearance(
    rng: np.random.Generator,
    trait_rng: np.random.Generator,
    true_class: np.ndarray,
    signature: pd.DataFrame,
) -> pd.DataFrame:
    """Per-synapse rendering parameters: geometry, class cues, and the axon's nuisances and
    appearance traits (``signature`` holds the synapse's axon's; what the traits need drawn
    comes from ``trait_rng``, so ``rng`` draws the same at any trait strength)."""
    n = len(true_class)
    inh = true_class == INHIBITORY
    theta = rng.uniform(0, 2 * np.pi, n)
    # Most clefts cut the sections near-perpendicularly; some are strongly tilted.
    phi = np.clip(rng.normal(0, 0.4, n), -1.15, 1.15)
    cleft_radius = np.clip(rng.normal(150, 30, n) * signature.cleft_scale.to_numpy(), 100, 200)
    bouton_scale = signature.bouton_scale.to_numpy() * signature.trait_bouton_size.to_numpy()
    bouton = np.clip(
        cleft_radius + rng.uniform(30, 90, n) * bouton_scale,
        cleft_radius + 25,
        270,
    )
    post = np.clip(cleft_radius + rng.uniform(20, 100, n), cleft_radius + 20, 270)
    # Gray type I (excitatory): thick PSD; type II (inhibitory): thin, symmetric densities.
    psd = np.where(inh, rng.normal(12, 4, n), rng.normal(40, 8, n)) * signature.psd_scale.to_numpy()
    psd = np.clip(psd, 5, 70)
    vesicle_radius = np.where(inh, rng.normal(16.5, 1.5, n), rng.normal(20, 1.5, n))
    return pd.DataFrame(
        {
            "theta": theta,
            "phi": phi,
            "cleft_radius_nm": cleft_radius,
            "cleft_width_nm": rng.uniform(17, 24, n),
            "bouton_radius_nm": bouton,
            "post_radius_nm": post,
            "bouton_depth_nm": rng.uniform(110, 170, n) * bouton_scale,
            "post_depth_nm": rng.uniform(90, 190, n),
            "curvature_per_nm": rng.normal(0, 1 / 2500, n),
            "psd_thickness_nm": psd,
            "psd_radius_frac": rng.uniform(0.75, 0.95, n),
            "psd_od": np.where(inh, rng.uniform(0.4, 0.65, n), rng.uniform(0.65, 0.95, n)),
            "pre_density_nm": np.where(inh, rng.normal(13, 3, n), rng.normal(10, 3, n)).clip(4),
            "pre_density_od": rng.uniform(0.25, 0.5, n),
            "n_vesicles": _vesicle_counts(
                rng,
                trait_rng,
                np.where(inh, 40, 45) * signature.vesicle_density.to_numpy(),
                signature.trait_vesicle_density.to_numpy(),
            ),
            "vesicle_radius_nm": vesicle_radius
            * signature.vesicle_scale.to_numpy()
            * signature.trait_vesicle_size.to_numpy(),
            "vesicle_size_cv": np.where(inh, 0.16, 0.07),
            "vesicle_flatness": np.where(inh, rng.uniform(0.45, 0.75, n), 0.93),
            "vesicle_flatness_sd": np.where(inh, 0.15, 0.04),
            "cloud_depth_nm": rng.uniform(120, 230, n) * signature.trait_vesicle_spread.to_numpy(),
            "brightness": signature.brightness.to_numpy(),
            "contrast": signature.contrast.to_numpy(),
            "mitochondria_rate": MITOCHONDRIA_PER_BOUTON * signature.trait_mitochondria.to_numpy(),
            "membrane_od_scale": signature.trait_membrane_darkness.to_numpy(),
            "axoplasm_od": signature.trait_axoplasm.to_numpy(),
        }
    )


# ----------------------------------------------------------------------------------------------
# The EM volume
# ----------------------------------------------------------------------------------------------


def _write_em(path: Path, truth: pd.DataFrame, shape: tuple[int, int, int], seed: int) -> None:
    """Write the jpeg precomputed volume slab by slab (chunk-aligned in z) into ``path``."""
    from cloudvolume import CloudVolume

    info = CloudVolume.create_new_info(
        num_channels=1,
        layer_type="image",
        data_type="uint8",
        encoding="jpeg",
        resolution=list(EM_RESOLUTION),
        voxel_offset=list(VOXEL_OFFSET),
        chunk_size=list(CHUNK_SIZE),
        volume_size=list(shape),
    )
    vol = CloudVolume(f"file://{path}", info=info, progress=False, compress=False)
    vol.commit_info()
    off = np.array(VOXEL_OFFSET)
    cache: dict = {}
    for z0, z1 in render.iter_slabs(shape, CHUNK_SIZE[2]):
        slab = render.render_slab(truth, shape, z0, z1, seed, cache)
        vol[off[0] : off[0] + shape[0], off[1] : off[1] + shape[1], off[2] + z0 : off[2] + z1] = (
            slab
        )


def _write_em_atomically(
    out_dir: Path, truth: pd.DataFrame, shape: tuple[int, int, int], seed: int
) -> None:
    """Write ``out_dir/em``: the volume is a directory, so build it beside its final place and
    rename it in one step."""
    em_final = out_dir / "em"
    em_tmp = Path(tempfile.mkdtemp(prefix=".em.", dir=out_dir))
    try:
        _write_em(em_tmp, truth, shape, seed)
        if em_final.exists():
            shutil.rmtree(em_final)
        os.replace(em_tmp, em_final)
    finally:
        if em_tmp.exists():
            shutil.rmtree(em_tmp)


# ----------------------------------------------------------------------------------------------
# The tables
# ----------------------------------------------------------------------------------------------


def _check_arguments(
    n_synapses: int, n_neurons: int, inhibitory_fraction: float, neuron_traits: float
) -> None:
    if n_synapses < 20:
        raise DataError(f"dataset.synthetic.n_synapses: {n_synapses} is too small; use >= 20.")
    if n_neurons < 4:
        raise DataError(f"dataset.synthetic.n_neurons: {n_neurons} is too small; use >= 4.")
    if not 0.0 <= inhibitory_fraction < 1.0:
        raise DataError(
            f"dataset.synthetic.inhibitory_fraction: {inhibitory_fraction} is not in [0, 1); "
            "use e.g. 0.15."
        )
    if not 0.0 <= neuron_traits <= 3.0:
        raise DataError(
            f"dataset.synthetic.neuron_traits: {neuron_traits} is not in [0, 3]; use 0 for "
            "neurons that look alike, 1 for the demo's documented strength."
        )


def _cave_points(
    centre: np.ndarray, look: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Table positions (4x4x40 nm voxels) of each synapse's centre and its pre and post points,
    80 nm either side of the cleft along its normal."""
    scale = np.array(EM_RESOLUTION) / np.array(CAVE_POSITION_RESOLUTION)
    ctr = (centre + np.array(VOXEL_OFFSET)) * scale
    normal = np.stack(
        [
            np.cos(look.phi) * np.cos(look.theta),
            np.cos(look.phi) * np.sin(look.theta),
            np.sin(look.phi),
        ],
        axis=1,
    )
    offset_nm = 80.0 * normal / np.array(CAVE_POSITION_RESOLUTION)
    pre = np.rint(ctr + offset_nm).astype(np.int64)
    post = np.rint(ctr - offset_nm).astype(np.int64)
    return ctr.astype(np.int64), pre, post


def _synapse_table(
    ids: np.ndarray,
    pre_root: np.ndarray,
    post_root: np.ndarray,
    points: tuple[np.ndarray, np.ndarray, np.ndarray],
    size: np.ndarray,
) -> pd.DataFrame:
    """The ``synapses_pni_2``-like table, CAVE column order, every column int64."""
    synapses = pd.DataFrame({"id": ids})
    synapses["pre_pt_root_id"] = pre_root.astype(np.int64)
    synapses["post_pt_root_id"] = post_root
    for columns, values in zip((CTR, PRE_POSITION, POST_POSITION), points):
        for k, column in enumerate(columns):
            synapses[column] = values[:, k]
    synapses["size"] = size
    return synapses


def _draw_tables(
    seed: int, n_synapses: int, n_neurons: int, inhibitory_fraction: float, neuron_traits: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, tuple[int, int, int], pd.Series]:
    """Synapses, cell types, truth (generator parameters per synapse), the volume shape and the
    synapse counts by kind, all from one stream of ``seed`` in a fixed order (the dataset depends
    on it) but for the neuron traits, which have their own."""
    rng = np.random.default_rng(seed)
    axons, synapse_axon, counts = _build_axons(rng, n_synapses, n_neurons, inhibitory_fraction)
    axons = axons.join(_neuron_traits(seed, len(axons), neuron_traits))
    post_cells = _post_cells(rng, axons, n_neurons)
    cell_types = _cell_type_rows(rng, axons, post_cells)
    post_ids, multiplicity = _connect(rng, axons, synapse_axon, post_cells)
    # Shuffle so table order says nothing about the axon.
    order = rng.permutation(n_synapses)
    synapse_axon, post_ids, multiplicity = synapse_axon[order], post_ids[order], multiplicity[order]
    syn_axons = axons.iloc[synapse_axon].reset_index(drop=True)
    true_class = syn_axons.true_class.to_numpy()

    centre, shape = _layout(rng, n_synapses)
    trait_rng = np.random.default_rng([seed, _TAG_NEURON_TRAITS, 1])
    look = _appearance(rng, trait_rng, true_class, syn_axons)
    inh = true_class == INHIBITORY
    size = np.maximum(
        np.rint(rng.lognormal(np.where(inh, 5.35, 5.55), 0.65, n_synapses)), 20
    ).astype(np.int64)
    ids = 100_000_000 + np.sort(rng.choice(10**8, size=n_synapses, replace=False)).astype(np.int64)

    synapses = _synapse_table(
        ids, syn_axons.pre_pt_root_id.to_numpy(), post_ids, _cave_points(centre, look), size
    )
    truth = pd.DataFrame(
        {
            "id": ids,
            "true_class": true_class,
            "presynaptic_kind": syn_axons.kind.to_numpy(),
            "axon_index": synapse_axon,
            "multiplicity": multiplicity,
            "render_index": np.arange(n_synapses),
            "vx": centre[:, 0],
            "vy": centre[:, 1],
            "vz": centre[:, 2],
        }
    )
    truth = pd.concat([truth, look], axis=1)
    return synapses, cell_types, truth, shape, counts.iloc[0]


def _stats(
    settings: dict[str, Any],
    counts: pd.Series,
    truth: pd.DataFrame,
    cell_types: pd.DataFrame,
    shape: tuple[int, int, int],
    seconds: float,
) -> dict[str, Any]:
    """What ``stats.json`` says: the settings, the synapses by kind, the volume's geometry."""
    return {
        **settings,
        "n_labelled_neuron_synapses": int(counts.labelled),
        "n_inhibitory_labelled_synapses": int(
            ((truth.presynaptic_kind == "neuron") & (truth.true_class == INHIBITORY)).sum()
        ),
        "n_orphan_synapses": int(counts.orphan),
        "n_glia_synapses": int(counts.glia),
        "n_duplicate_id_synapses": int(counts.duplicate),
        "n_zero_id_synapses": int(counts.zero),
        "n_cell_type_rows": len(cell_types),
        "n_duplicated_cell_type_ids": int(cell_types.pt_root_id.duplicated().sum()),
        "volume_shape_xyz": list(shape),
        "voxel_offset_xyz": list(VOXEL_OFFSET),
        "resolution_nm": list(EM_RESOLUTION),
        "seconds": round(seconds, 2),
    }


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def synthesize(
    out_dir: str | Path,
    n_synapses: int,
    n_neurons: int,
    inhibitory_fraction: float,
    seed: int,
    neuron_traits: float,
) -> dict:
    """Write the whole synthetic dataset under out_dir, deterministically from seed; return stats.

    Writes ``synapses.parquet``, ``cell_types.parquet``, ``truth.parquet`` (per-synapse generator
    parameters and true class), ``stats.json`` and ``em/`` (jpeg precomputed, 8x8x40 nm).
    ``neuron_traits`` is the strength of the per-neuron appearance traits (:data:`NEURON_TRAITS`);
    0 draws none. No default here: the workflow's is the schema's
    (``dataset.synthetic.neuron_traits``), one place.
    The tables depend only on the other arguments.
    """
    _check_arguments(n_synapses, n_neurons, inhibitory_fraction, neuron_traits)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    synapses, cell_types, truth, shape, counts = _draw_tables(
        seed, n_synapses, n_neurons, inhibitory_fraction, neuron_traits
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_em_atomically(out_dir, truth, shape, seed)
    write_parquet(out_dir / "synapses.parquet", synapses)
    write_parquet(out_dir / "cell_types.parquet", cell_types)
    write_parquet(out_dir / "truth.parquet", truth)
    settings = {
        "seed": int(seed),
        "n_synapses": int(n_synapses),
        "n_neurons": int(n_neurons),
        "inhibitory_fraction": float(inhibitory_fraction),
        "neuron_traits": float(neuron_traits),
    }
    stats = _stats(settings, counts, truth, cell_types, shape, time.perf_counter() - started)
    write_json(out_dir / "stats.json", stats)
    return stats


def load(synthetic_dir: str | Path) -> SourceTables:
    """Read what synthesize wrote, as the ``synthetic`` source (see synapse_ei.sources)."""
    root = Path(synthetic_dir)
    missing = [name for name in _FILES if not (root / name).exists()]
    if missing:
        raise DataError(
            f"{root}: the synthetic dataset is incomplete (missing {missing}). "
            "Run the synthesize rule (snakemake synthesize) or "
            "synapse_ei.sources.synthetic.generator.synthesize() to write it."
        )
    synapses = pd.read_parquet(root / "synapses.parquet")
    cell_types = pd.read_parquet(root / "cell_types.parquet")
    stats = read_json(root / "stats.json")
    provenance = {
        "source": "synthetic",
        "path": str(root.resolve()),
        "seed": stats.get("seed"),
        "n_synapses": len(synapses),
        "n_cell_type_rows": len(cell_types),
        "inhibitory_fraction": stats.get("inhibitory_fraction"),
    }
    return SourceTables(
        synapses=synapses,
        cell_types=cell_types,
        em_path=f"precomputed://file://{(root / 'em').resolve()}",
        position_resolution=tuple(float(v) for v in CAVE_POSITION_RESOLUTION),
        provenance=provenance,
    )
