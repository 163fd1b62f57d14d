"""The HTML report's charts, drawn by matplotlib as inline SVG.

matplotlib because it is the plotting library people already have, its SVG needs
no script and no network to open, and text stays text (searchable, selectable).
"""
from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from .errors import FalfError
from .text_report import FROZEN_COLOUR

__all__ = ["rounds_chart", "widths_chart"]

_BEFORE, _AFTER, _PRUNABLE = "#9ecae1", "#08519c", "#6baed6"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise FalfError("the HTML report draws its charts with matplotlib: pip install 'falf_fx[report]'") from None
    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot

    return pyplot


def _to_svg(figure: Any, prefix: str) -> str:
    """The figure as SVG to inline; its ids carry ``prefix``, so two charts on one page never share one."""
    pyplot = _pyplot()
    buffer = io.StringIO()
    with pyplot.rc_context({"svg.fonttype": "none", "svg.hashsalt": "falf_fx"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    pyplot.close(figure)
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], flags=re.S)  # RDF boilerplate
    text = re.sub(r'\bid="', f'id="{prefix}-', text)
    return re.sub(r'(url\(#|xlink:href="#)', rf"\1{prefix}-", text)


def _layer_axis(ax: Any, names: Sequence[str]) -> None:
    step = max(1, len(names) // 60)  # at most ~60 labels; the table under the chart has every layer
    ax.set_xticks(range(0, len(names), step))
    ax.set_xticklabels(names[::step], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel("layer (conv and linear, in module order)")
    ax.spines[["top", "right"]].set_visible(False)


def widths_chart(before: Mapping[str, int], after: Optional[Mapping[str, int]] = None,
                 frozen: Optional[Mapping[str, int]] = None) -> str:
    """Output channels per layer: before and after a compression, or prunable and frozen shares of one model."""
    pyplot = _pyplot()
    names = list(before)
    width = min(16.0, max(6.0, 0.09 * len(names) + 2))
    figure, ax = pyplot.subplots(figsize=(width, 3.6))
    x = range(len(names))
    if after is not None:
        ax.bar(x, [before[n] for n in names], color=_BEFORE, width=0.9, label="before")
        ax.bar(x, [after.get(n, 0) for n in names], color=_AFTER, width=0.5, label="after")
        ax.set_title("Output channels per layer, before and after")
    else:
        stuck = [min((frozen or {}).get(n, 0), before[n]) for n in names]
        ax.bar(x, [before[n] - s for n, s in zip(names, stuck)], color=_PRUNABLE, width=0.8, label="prunable")
        ax.bar(x, stuck, bottom=[before[n] - s for n, s in zip(names, stuck)], color=FROZEN_COLOUR, width=0.8,
               label="frozen")
        ax.set_title("Output channels per layer: prunable and frozen")
    ax.set_ylabel("channels")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    _layer_axis(ax, names)
    return _to_svg(figure, "widths")


def rounds_chart(history: Sequence[Mapping[str, Any]], base_metric: Optional[float], metric: str) -> str:
    """The metric and the kept share of MACs after every round; rounds undone by the tolerance are hollow."""
    pyplot = _pyplot()
    figure, ax = pyplot.subplots(figsize=(6.5, 3.2))
    rounds = [0] + [int(r["round"]) for r in history]
    macs = [1.0] + [float(r["macs_ratio"]) for r in history]
    ax.plot(rounds, macs, color=_AFTER, marker="s", label="MACs kept (of the original)")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("MACs kept", color=_AFTER)
    ax.set_xlabel("round (0: the model before compression)")
    ax.set_xticks(rounds)
    scores = [base_metric] + [r.get("metric") for r in history]
    if any(s is not None for s in scores):
        right = ax.twinx()
        points = [(x, s, r) for x, s, r in zip(rounds, scores, [{"kept": True}] + list(history)) if s is not None]
        right.plot([p[0] for p in points], [p[1] for p in points], color="#d95f02", marker="o", label=metric)
        undone = [p for p in points if not p[2].get("kept", True)]
        if undone:
            right.scatter([p[0] for p in undone], [p[1] for p in undone], s=80, facecolors="white",
                          edgecolors="#d95f02", zorder=3, label="undone (over the tolerance)")
        right.set_ylabel(metric, color="#d95f02")
        right.legend(frameon=False, fontsize=8, loc="lower right")
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    ax.set_title("Every round: MACs kept and validation " + metric)
    return _to_svg(figure, "rounds")
