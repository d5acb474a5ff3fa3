"""How every report of the workflow is drawn and written: figure files, Markdown tables, the
HTML page shell and the bar chart of scores with their 95% intervals."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from synapse_ei.outputs import atomic_path, write_text  # noqa: E402

DPI = 120


def save_figure(figure: plt.Figure, png_path: str | Path) -> None:
    """Lay out ``figure``, write it as a PNG atomically and close it."""
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    plt.close(figure)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; '|' inside cells is escaped."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


REPORT_STYLE = (
    "body{font-family:sans-serif}table.report{border-collapse:collapse}"
    "table.report th,table.report td{padding:4px 8px;border-bottom:1px solid #ccc;"
    "text-align:left}"
)


def html_document(title: str, body: str, style: str = REPORT_STYLE) -> str:
    """The one HTML page shell: a self-contained page titled ``title`` around ``body`` (HTML)."""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}</body></html>\n"
    )


def html_page(title: str, note: str, sections: Mapping[str | None, pd.DataFrame]) -> str:
    """A report page: ``title``, the ``note`` paragraph, then one table per section
    (heading -> table; a ``None`` heading draws the table without one)."""
    body = "".join(
        ("" if heading is None else f"<h2>{html.escape(heading)}</h2>\n")
        + table.to_html(index=False, border=0, classes="report", escape=True)
        + "\n"
        for heading, table in sections.items()
    )
    return html_document(title, f"<p>{html.escape(note)}</p>\n{body}")


def write_html(path: str | Path, title: str, note: str,
               sections: Mapping[str | None, pd.DataFrame]) -> None:
    write_text(path, html_page(title, note, sections))


def interval_bars(
    axes: plt.Axes,
    groups: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
) -> None:
    """Grouped bars on ``axes``: per series (legend name -> estimates, interval lows, highs, one
    of each per group) a bar per group with its interval as an error bar. A missing interval
    draws no error bar; clipping guards against an estimate outside its interval."""
    positions = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for index, (name, (estimate, low, high)) in enumerate(series.items()):
        estimate = np.asarray(estimate, dtype=float)
        low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
        errors = np.nan_to_num(np.clip([estimate - low, high - estimate], 0, None))
        offset = (index - (len(series) - 1) / 2) * width
        axes.bar(positions + offset, estimate, width, yerr=errors, capsize=3, label=name)
    axes.set_xticks(positions, list(groups))
