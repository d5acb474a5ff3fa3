"""A gallery of a model's test cutouts: right and wrong calls of each class, as a figure and as
an HTML page whose every tile links to its synapse in Neuroglancer."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from synapse_ei.errors import DataError  # noqa: E402
from synapse_ei.evaluation.metrics import DEFAULT_THRESHOLD  # noqa: E402
from synapse_ei.outputs import atomic_path  # noqa: E402
from synapse_ei.reporting.render import html_document, save_figure  # noqa: E402
from synapse_ei.learn.dataset import CutoutDataset, load_manifest  # noqa: E402
from synapse_ei.learn.models import input_kind  # noqa: E402
from synapse_ei.tables import INHIBITORY, LABELS  # noqa: E402
from synapse_ei.viewer import (  # noqa: E402
    DEFAULT_LOCAL_URL,
    load_sources,
    read_positions,
    synapse_link,
    with_positions,
)

#: Examples per (class, right/wrong) row of the gallery.
GALLERY_PER_GROUP = 4
#: What the metrics of a table-only model say in place of a gallery.
NO_GALLERY = "none: the connectivity baseline reads tables, not images"


def gallery_examples(
    predictions: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD,
    per_group: int = GALLERY_PER_GROUP,
) -> dict[tuple[str, bool], pd.DataFrame]:
    """Test synapses to show, per (true class, called right?): the most confident ones.

    Right calls are sorted by the probability given to their true class, wrong ones by the
    probability given to the wrong class, highest first: the clearest successes and the most
    confident mistakes. Ties are broken by synapse id, so the choice is reproducible.
    """
    test = predictions[predictions["split"] == "test"]
    called = np.where(test["prob_inhibitory"] >= threshold, INHIBITORY, LABELS[0])
    right = called == test["label"].to_numpy()
    chosen = {}
    for label in LABELS:
        own = test["prob_inhibitory"] if label == INHIBITORY else 1 - test["prob_inhibitory"]
        for is_right in (True, False):
            group = test[(test["label"] == label).to_numpy() & (right == is_right)]
            confidence = own[group.index] if is_right else 1 - own[group.index]
            order = group.assign(_confidence=confidence).sort_values(
                ["_confidence", "id"], ascending=[False, True], kind="stable"
            )
            chosen[(label, is_right)] = order.head(per_group).drop(columns="_confidence")
    return chosen


def _gallery_tile(array: np.ndarray) -> np.ndarray:
    """A 2D patch as is; a 3D (Z, Y, X) cube as its central XY section above its central XZ
    section (z stretched to the sections' count of rows), split by a white row."""
    if array.ndim == 2:
        return array
    depth, height, _ = array.shape
    separator = np.full((1, array.shape[2]), 255, dtype=array.dtype)
    return np.vstack([array[depth // 2], separator, array[:, height // 2, :]])


def write_gallery(
    predictions_path: str | Path,
    manifest_path: str | Path,
    cutout_root: str | Path,
    architecture: str,
    model_name: str,
    out_path: str | Path,
    threshold: float = DEFAULT_THRESHOLD,
    per_group: int = GALLERY_PER_GROUP,
    html_path: str | Path | None = None,
    provenance_path: str | Path | None = None,
    synapses_path: str | Path | None = None,
    site: str | None = None,
    local_url: str | None = DEFAULT_LOCAL_URL,
) -> dict[str, int]:
    """A figure of right and wrong test calls of both classes of the ``architecture`` model
    ``model_name``, with their probabilities.

    Four rows (excitatory right/wrong, inhibitory right/wrong) of up to ``per_group`` cutouts
    chosen by :func:`gallery_examples`; 2D patches as stored, 3D cubes as their central
    sections. With ``html_path``, the same tiles as an HTML page (:func:`gallery_html`), each
    with a Neuroglancer link to its synapse (:func:`synapse_ei.viewer.synapse_link`, the layers
    from the query's ``provenance_path``, positions from its ``synapses_path``; ``site`` and
    ``local_url`` as in :func:`synapse_ei.viewer.viewer_sources`). Returns how many examples
    each row shows.
    """
    kind = input_kind(architecture)
    predictions = pd.read_parquet(predictions_path)
    manifest = load_manifest(manifest_path, "test", kind)
    chosen = gallery_examples(predictions, threshold, per_group)
    position = pd.Series(np.arange(len(manifest)), index=manifest["id"])
    missing = [int(i) for group in chosen.values() for i in group["id"] if i not in position.index]
    if missing:
        raise DataError(
            f"{manifest_path}: test synapse {missing[0]} of {predictions_path} has no {kind} "
            "cutout; the predictions come from another run. Rerun the evaluate stage."
        )
    cutouts = CutoutDataset(manifest, cutout_root, kind)
    figure, axes_grid = plt.subplots(
        len(chosen), per_group, figsize=(1.9 * per_group + 0.8, 2.1 * len(chosen)), squeeze=False
    )
    rows_html = _draw_rows(axes_grid, chosen, lambda i: cutouts.read(int(position[i])))
    shown = {name.replace(", ", "_"): len(tiles) for name, tiles in rows_html}
    view = "2D patches" if kind == "2d" else "3D cubes: central XY section over central XZ"
    title = f"{model_name}: test calls at threshold {threshold:g} ({view})"
    figure.suptitle(title, fontsize="medium")
    save_figure(figure, Path(out_path))
    if html_path is not None:
        _write_linked_tiles(rows_html, predictions, title, html_path, provenance_path,
                            synapses_path, site, local_url)
    return shown


def _draw_rows(axes_grid, chosen, read) -> list[tuple[str, list[dict]]]:
    """Draw each group of ``chosen`` in its row of axes (``read(id)`` gives a cutout); return
    the rows' names and tiles (id, image, caption) for the HTML page."""
    rows = []
    for axes_row, ((label, is_right), group) in zip(axes_grid, chosen.items()):
        name = f"{label}, {'right' if is_right else 'wrong'}"
        rows.append((name, []))
        for column, axes in enumerate(axes_row):
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(name)
            if column >= len(group):
                axes.set_frame_on(False)
                if column == 0:
                    axes.text(0.5, 0.5, "none", ha="center", va="center", color="grey")
                continue
            row = group.iloc[column]
            tile = _gallery_tile(read(row["id"]))
            caption = f"p(inh) {row['prob_inhibitory']:.2f}"
            axes.imshow(tile, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes.set_title(caption, fontsize="small")
            rows[-1][1].append({"id": int(row["id"]), "tile": tile, "caption": caption})
    return rows


def _png_data_uri(tile: np.ndarray) -> str:
    buffer = io.BytesIO()
    plt.imsave(buffer, tile, cmap="gray", vmin=0, vmax=255, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _write_linked_tiles(
    rows: list[tuple[str, list[dict]]], predictions: pd.DataFrame, title: str,
    html_path: str | Path, provenance_path: str | Path | None,
    synapses_path: str | Path | None, site: str | None, local_url: str | None,
) -> None:
    """The gallery's tiles as :func:`gallery_html`, each with its synapse's Neuroglancer link."""
    if provenance_path is None or synapses_path is None:
        raise ValueError("write_gallery: html_path needs provenance_path and synapses_path")
    sources = load_sources(provenance_path, site, local_url)
    ids = [tile["id"] for _, tiles in rows for tile in tiles]
    shown = with_positions(
        predictions[predictions["id"].isin(ids)].drop_duplicates("id"),
        read_positions(synapses_path), str(synapses_path),
    ).set_index("id", drop=False)
    for _, tiles in rows:
        for tile in tiles:
            synapse = shown.loc[tile["id"]]
            description = f"synapse {tile['id']}: {tile['caption']}, true {synapse['label']}"
            tile["link"] = synapse_link(sources, synapse, description)
            tile["image"] = _png_data_uri(tile.pop("tile"))
            tile["caption"] = f"synapse {tile['id']}, {tile['caption']}"
    note = f" Neuroglancer: {sources.note}." if sources.note else ""
    with atomic_path(html_path) as tmp:
        Path(tmp).write_text(gallery_html(title + "." + note, rows), encoding="utf-8")


GALLERY_STYLE = (
    "figure{display:inline-block;margin:4px;text-align:center;font:12px sans-serif}"
    "img{width:128px;image-rendering:pixelated}h1{font:bold 16px sans-serif}"
    "h2{font:bold 14px sans-serif}"
)


def gallery_html(title: str, rows: list[tuple[str, list[dict]]]) -> str:
    """The gallery page: a row of tiles per group, each tile its image (a data URI), caption
    and Neuroglancer link, in the report's page shell."""
    parts = []
    for name, tiles in rows:
        parts.append(f"<h2>{html.escape(name)}</h2><div>")
        if not tiles:
            parts.append("<p>none</p>")
        for tile in tiles:
            link = html.escape(tile["link"], quote=True)
            parts.append(
                f"<figure><a href='{link}' target='_blank'>"
                f"<img src='{tile['image']}' alt='{html.escape(tile['caption'], quote=True)}'>"
                f"</a><figcaption>{html.escape(tile['caption'])}<br>"
                f"<a href='{link}' target='_blank'>Neuroglancer</a></figcaption></figure>"
            )
        parts.append("</div>")
    return html_document(title, "".join(parts), style=GALLERY_STYLE)
