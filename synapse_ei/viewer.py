"""Neuroglancer links for the synapses the workflow shows or calls.

States are built with ``neuroglancer``'s own state classes (``neuroglancer.ViewerState``,
``ImageLayer``, ``SegmentationLayer``, ``LocalAnnotationLayer``, ``PointAnnotation``) and encoded
by ``neuroglancer.url_state.to_url``: no hand-written JSON. (nglui 4.x builds on the same
classes but requires caveclient, which the synthetic demo must not need.)

Where the layers come from (:func:`viewer_sources`, from ``results/query/provenance.json``):

- ``cave``: the datastack's image and segmentation sources, viewer resolution and viewer site,
  as CAVEclient's info service gives them (recorded by
  :func:`synapse_ei.sources.cave.viewer_provenance`).
- ``synthetic`` and ``files``: the EM path. A web viewer cannot read a local path, so a local
  volume is named by the URL it is served at (``viewer.local_url``; the README says how to
  serve it). These sources have no segmentation volume: the state's title says so, and no
  segmentation layer is invented.

Positions travel in the synapse table's ``position_resolution``; the state states its
dimensions (nm per viewer voxel: the datastack's viewer resolution, else the table's) and every
position is converted into them by :func:`to_viewer_voxels`, never into the EM mip's voxels.

Layout at scale: a predictions table of 10^5+ test synapses does not carry a URL per synapse.
:func:`neuron_links` writes one link per presynaptic neuron with (up to ``max_points``) of its
synapses as point annotations, each named by synapse id and probability, and its root id
selected: one row per neuron, each URL bounded in size. The gallery's tiles get one short
per-synapse link each (:func:`synapse_link`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import neuroglancer
import numpy as np
import pandas as pd

from synapse_ei.errors import DataError
from synapse_ei.outputs import atomic_path, read_json
from synapse_ei.tables import CTR

#: The public Neuroglancer app, where no datastack names its own viewer site.
DEFAULT_SITE = neuroglancer.url_state.default_neuroglancer_url
#: Where a local EM volume is served by default: cloud-volume's viewer server
#: (``CloudVolume(path).viewer()``, cloudvolume/server.py DEFAULT_PORT 1337, with CORS headers).
DEFAULT_LOCAL_URL = "http://localhost:1337"
#: Synapses drawn per neuron link: bounds every URL (about 150 characters per point).
DEFAULT_MAX_POINTS = 100
#: Layer names of every state.
EM_LAYER, SEGMENTATION_LAYER, SYNAPSE_LAYER = "em", "segmentation", "synapses"

NO_SEGMENTATION = {
    "synthetic": "no segmentation: the synthetic dataset has EM and tables only "
                 "(root ids are in the point descriptions)",
    "files": "no segmentation: dataset.files.segmentation_path is not set "
             "(root ids are in the point descriptions)",
}


@dataclass(frozen=True)
class ViewerSources:
    """What a state shows: layer sources, the viewer's voxel size and where the app lives."""

    image: str
    segmentation: str | None
    #: nm per viewer voxel (XYZ): the state's dimensions.
    resolution: tuple[float, float, float]
    #: nm per voxel (XYZ) of the synapse table's positions.
    position_resolution: tuple[float, float, float]
    site: str
    #: Why there is no segmentation layer, when there is none.
    note: str | None = None


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or not all(np.isfinite(triple)) or min(triple) <= 0:
        raise DataError(f"{where}: {value!r} is not three positive nm-per-voxel numbers (XYZ).")
    return triple  # type: ignore[return-value]


def is_local(path: str) -> bool:
    """Whether a data path, after its format (``precomputed://``, ``zarr://``, ...), is a local
    file (``file://`` or a plain path), which a link cannot name: only a server can show it."""
    named = path.startswith("precomputed://") or path.count("://") > 1
    rest = path.split("://", 1)[1] if named else path
    return rest.startswith("file://") or "://" not in rest


def served_source(em_path: str, local_url: str | None = DEFAULT_LOCAL_URL) -> str:
    """The EM path as a Neuroglancer data source: remote paths as they are (``precomputed://``
    added when no format is named), a local one (:func:`is_local`) as the URL ``local_url``
    (None: :data:`DEFAULT_LOCAL_URL`) that serves it."""
    if is_local(em_path):
        return f"precomputed://{(local_url or DEFAULT_LOCAL_URL).rstrip('/')}"
    if em_path.startswith("precomputed://") or em_path.count("://") > 1:
        return em_path
    return f"precomputed://{em_path}"


def viewer_sources(
    provenance: Mapping[str, Any],
    site: str | None = None,
    local_url: str | None = DEFAULT_LOCAL_URL,
    where: str = "provenance",
) -> ViewerSources:
    """The layers, dimensions and viewer site for the dataset of ``provenance`` (the query
    stage's provenance.json). ``site`` overrides the viewer app (default: the datastack's
    ``viewer_site`` for CAVE, else :data:`DEFAULT_SITE`)."""
    source = provenance.get("source")
    if "position_resolution" not in provenance:
        raise DataError(f"{where}: no position_resolution; rerun the query stage.")
    position_resolution = _triple(provenance["position_resolution"],
                                  f"{where}: position_resolution")
    if source == "cave":
        viewer = provenance.get("viewer")
        if not isinstance(viewer, Mapping) or not viewer.get("image_source"):
            raise DataError(
                f"{where}: no viewer sources of the datastack (key 'viewer'); the query stage "
                "records them from CAVEclient's info service: rerun it "
                "(snakemake --forcerun query)."
            )
        return ViewerSources(
            image=served_source(str(viewer["image_source"])),
            segmentation=viewer.get("segmentation_source") or None,
            resolution=_triple(viewer["viewer_resolution"], f"{where}: viewer.viewer_resolution"),
            position_resolution=position_resolution,
            site=site or viewer.get("viewer_site") or DEFAULT_SITE,
            note=None if viewer.get("segmentation_source") else "no segmentation source",
        )
    if "em_path" not in provenance:
        raise DataError(f"{where}: no em_path; rerun the query stage.")
    segmentation = provenance.get("segmentation_path")  # the files source's, remote, if given
    segmentation = served_source(str(segmentation)) if segmentation else None
    return ViewerSources(
        image=served_source(str(provenance["em_path"]), local_url),
        segmentation=segmentation,
        resolution=position_resolution,
        position_resolution=position_resolution,
        site=site or DEFAULT_SITE,
        note=None if segmentation else NO_SEGMENTATION.get(str(source), "no segmentation volume"),
    )


def to_viewer_voxels(positions: Any, sources: ViewerSources) -> np.ndarray:
    """Table positions (N x 3 or 3, in ``position_resolution`` voxels) in viewer voxels."""
    scale = np.asarray(sources.position_resolution) / np.asarray(sources.resolution)
    return np.asarray(positions, dtype=np.float64) * scale


def build_state(
    sources: ViewerSources,
    position: Sequence[float],
    points: pd.DataFrame | None = None,
    segments: Sequence[int] = (),
    title: str | None = None,
) -> neuroglancer.ViewerState:
    """A state centred on ``position`` (table voxels): the EM, the segmentation with
    ``segments`` selected (where the dataset has one), and ``points`` (columns ``id``,
    ``description`` and the table's ctr position columns) as point annotations."""
    dimensions = neuroglancer.CoordinateSpace(
        names=["x", "y", "z"], units="nm", scales=list(sources.resolution)
    )
    state = neuroglancer.ViewerState()
    state.dimensions = dimensions
    state.position = to_viewer_voxels(position, sources)
    state.layers[EM_LAYER] = neuroglancer.ImageLayer(source=sources.image)
    if sources.segmentation is not None:
        state.layers[SEGMENTATION_LAYER] = neuroglancer.SegmentationLayer(
            source=sources.segmentation, segments=[int(s) for s in segments]
        )
    if points is not None and len(points):
        voxels = to_viewer_voxels(points[CTR].to_numpy(), sources)
        state.layers[SYNAPSE_LAYER] = neuroglancer.LocalAnnotationLayer(
            dimensions=dimensions,
            annotations=[
                neuroglancer.PointAnnotation(id=str(int(i)), point=p, description=str(d))
                for i, p, d in zip(points["id"], voxels, points["description"])
            ],
        )
    notes = [text for text in (title, sources.note) if text]
    if notes:
        state.title = "; ".join(notes)
    return state


def to_link(state: neuroglancer.ViewerState, sources: ViewerSources) -> str:
    """The URL of ``state`` in the viewer app of ``sources``."""
    return neuroglancer.url_state.to_url(state, prefix=sources.site.rstrip("/") + "/")


def synapse_link(sources: ViewerSources, synapse: Mapping[str, Any], description: str) -> str:
    """A short link to one synapse (``id``, ``pre_pt_root_id`` and ctr position columns):
    centred on it, drawn as one point, its presynaptic root id selected."""
    point = pd.DataFrame([{"id": synapse["id"], "description": description,
                           **{c: synapse[c] for c in CTR}}])
    state = build_state(sources, [synapse[c] for c in CTR], point,
                        segments=[int(synapse["pre_pt_root_id"])],
                        title=f"synapse {int(synapse['id'])}")
    return to_link(state, sources)


def with_positions(frame: pd.DataFrame, synapses: pd.DataFrame, where: str) -> pd.DataFrame:
    """``frame`` (a column ``id``) with the ctr positions of ``synapses`` (the query table);
    a synapse the table lacks is a :class:`DataError` naming it."""
    missing_columns = [c for c in ["id", *CTR] if c not in synapses.columns]
    if missing_columns:
        raise DataError(f"{where}: the synapse table lacks {missing_columns}.")
    merged = frame.merge(synapses[["id", *CTR]], on="id", how="left", validate="many_to_one")
    lost = merged[CTR[0]].isna()
    if lost.any():
        raise DataError(
            f"{where}: synapse {int(merged.loc[lost, 'id'].iloc[0])} has no position in the "
            "query's synapse table: the files come from different runs; rerun the workflow."
        )
    return merged


def _point_descriptions(group: pd.DataFrame) -> pd.Series:
    text = "synapse " + group["id"].astype("int64").astype(str) + ": p(inh) " + group[
        "prob_inhibitory"].map("{:.2f}".format)
    if "label" in group:
        text = text + ", true " + group["label"].astype(str)
    return text


def neuron_links(
    predictions: pd.DataFrame,
    synapses: pd.DataFrame,
    sources: ViewerSources,
    max_points: int = DEFAULT_MAX_POINTS,
    where: str = "predictions",
) -> pd.DataFrame:
    """One link per presynaptic neuron of ``predictions`` (``id``, ``pre_pt_root_id``,
    ``prob_inhibitory``, optionally ``label``), its root id selected and its synapses as
    point annotations, centred on the first one drawn.

    With labels, the most confidently wrong synapses are drawn first (the ones worth a look),
    else the lowest ids; at most ``max_points`` per neuron, so a URL stays a few kB whatever
    the neuron's size. Columns: pre_pt_root_id, n_synapses, n_points, neuroglancer_link;
    sorted by root id.
    """
    if max_points < 1:
        raise DataError(f"viewer.max_points_per_link: {max_points} must be at least 1.")
    frame = with_positions(predictions, synapses, where)
    if "label" in frame:
        error = np.where(frame["label"] == "inhibitory", 1 - frame["prob_inhibitory"],
                         frame["prob_inhibitory"])
        frame = frame.assign(_order=-error)
    else:
        frame = frame.assign(_order=0.0)
    frame = frame.sort_values(["pre_pt_root_id", "_order", "id"], kind="stable")
    frame["description"] = _point_descriptions(frame)
    rows = []
    for root_id, group in frame.groupby("pre_pt_root_id", sort=True):
        drawn = group.head(max_points)
        state = build_state(
            sources, drawn[CTR].iloc[0].to_numpy(), drawn, segments=[int(root_id)],
            title=f"neuron {int(root_id)}: {len(drawn)} of its {len(group)} synapses",
        )
        rows.append({"pre_pt_root_id": int(root_id), "n_synapses": int(len(group)),
                     "n_points": int(len(drawn)), "neuroglancer_link": to_link(state, sources)})
    columns = ["pre_pt_root_id", "n_synapses", "n_points", "neuroglancer_link"]
    return pd.DataFrame(rows, columns=columns).astype({"pre_pt_root_id": "int64"})


def load_sources(
    provenance_path: str | Path,
    site: str | None = None,
    local_url: str | None = DEFAULT_LOCAL_URL,
) -> ViewerSources:
    """:func:`viewer_sources` of the query stage's provenance.json."""
    return viewer_sources(read_json(provenance_path), site, local_url, where=str(provenance_path))


def read_positions(synapses_path: str | Path) -> pd.DataFrame:
    """The ids and ctr positions of the query's synapse table (only those columns are read)."""
    return pd.read_parquet(synapses_path, columns=["id", *CTR])


def write_test_links(
    predictions_path: str | Path,
    synapses_path: str | Path,
    provenance_path: str | Path,
    out_path: str | Path,
    site: str | None = None,
    local_url: str | None = DEFAULT_LOCAL_URL,
    max_points: int = DEFAULT_MAX_POINTS,
) -> int:
    """``out_path`` (CSV): one row per test neuron of a model's predictions, with its label,
    mean probability of inhibitory and :func:`neuron_links` link. Returns the row count."""
    predictions = pd.read_parquet(predictions_path)
    test = predictions[predictions["split"] == "test"]
    if test.empty:
        raise DataError(f"{predictions_path}: no test synapses; rerun the evaluate stage.")
    sources = load_sources(provenance_path, site, local_url)
    links = neuron_links(test, read_positions(synapses_path), sources, max_points,
                         where=str(predictions_path))
    grouped = test.groupby("pre_pt_root_id", sort=True)
    neurons = pd.DataFrame({"label": grouped["label"].first(),
                            "mean_prob_inhibitory": grouped["prob_inhibitory"].mean()})
    table = links.merge(neurons, left_on="pre_pt_root_id", right_index=True, validate="1:1")
    columns = ["pre_pt_root_id", "label", "n_synapses", "mean_prob_inhibitory", "n_points",
               "neuroglancer_link"]
    with atomic_path(out_path) as tmp:
        table[columns].to_csv(tmp, index=False)
    return len(table)


def write_unlabelled_links(
    neurons_path: str | Path,
    predictions_path: str | Path,
    synapses_path: str | Path,
    provenance_path: str | Path,
    out_path: str | Path,
    site: str | None = None,
    local_url: str | None = DEFAULT_LOCAL_URL,
    max_points: int = DEFAULT_MAX_POINTS,
) -> int:
    """``out_path`` (CSV): the unlabelled-axon calls of ``neurons_path`` with ``n_points`` and a
    ``neuroglancer_link`` per axon (its synapses of ``predictions_path`` as points, its root id
    selected). Returns the row count."""
    neurons = pd.read_csv(neurons_path, dtype={"pre_pt_root_id": "int64"})
    predictions = pd.read_parquet(predictions_path)
    sources = load_sources(provenance_path, site, local_url)
    links = neuron_links(predictions, read_positions(synapses_path), sources, max_points,
                         where=str(predictions_path))
    table = neurons.merge(links.drop(columns="n_synapses"), on="pre_pt_root_id", how="left",
                          validate="1:1")
    if table["neuroglancer_link"].isna().any():
        root = int(table.loc[table["neuroglancer_link"].isna(), "pre_pt_root_id"].iloc[0])
        raise DataError(f"{neurons_path}: neuron {root} has no synapse in {predictions_path}; "
                        "the files come from different runs: rerun predict_unlabelled.")
    table["n_points"] = table["n_points"].astype("int64")
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False)
    return len(table)
