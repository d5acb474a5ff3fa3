"""The shared report pieces: Markdown tables, the HTML page, figure files, interval bars."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.container import ErrorbarContainer

from synapse_ei.reporting.render import html_page, interval_bars, markdown_table, save_figure


def test_markdown_escapes_pipes():
    text = markdown_table(["a", "b"], [["x|y", "1"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


def test_html_page_escapes_and_holds_one_table_per_section():
    page = html_page("A < B", "note & more", {
        "first": pd.DataFrame({"x": ["<b>"]}), None: pd.DataFrame({"y": [1]})})
    assert "<title>A &lt; B</title>" in page and "note &amp; more" in page
    assert page.count("<table") == 2 and "<h2>first</h2>" in page and "&lt;b&gt;" in page


def test_interval_bars_clip_and_skip_missing_intervals(tmp_path):
    figure, axes = plt.subplots()
    interval_bars(axes, ["m1", "m2"], {"score": ([0.6, 0.7], [0.5, float("nan")],
                                                 [0.55, 0.9])})
    bars = [patch.get_height() for patch in axes.patches]
    assert bars == [0.6, 0.7]
    # An estimate above its high bound draws no upper bar; a NaN bound no lower one.
    errorbars = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    segments = errorbars[0].lines[2][0].get_segments()
    spans = [sorted((round(a[1], 6), round(b[1], 6))) for a, b in segments]
    assert spans == [[0.5, 0.6], [0.7, 0.9]]
    save_figure(figure, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
