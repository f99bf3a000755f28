"""Seeing a Trace: plotly figures, an ipywidgets explorer and a self-contained HTML report.

Everything here reads a Trace (never a pipeline), so a trace made on a GPU can be explored on a laptop.
Names are imported on first use: figures and reports need plotly (a base dependency), the explorer
ipywidgets (the ``notebooks`` extra; without it, ``explore`` says how to install it).
"""

from __future__ import annotations

import importlib

__all__ = [
    "explore", "Explorer", "report", "word_heatmap", "word_grid", "denoising", "word_mass", "layer_step",
    "guidance", "schedule", "channels", "compare", "attribution_bars", "attention_vs_attribution",
    "word_attribution",
]
_MODULE = {
    "explore": ".explorer", "Explorer": ".explorer", "report": ".html_report",
    "attribution_bars": ".why", "attention_vs_attribution": ".why", "word_attribution": ".why",
} | {name: ".figures" for name in ("word_heatmap", "word_grid", "denoising", "word_mass", "layer_step",
                                   "guidance", "schedule", "channels", "compare")}


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module 'diffviz.viz' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
