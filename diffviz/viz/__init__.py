"""Seeing a Trace: plotly figures, an ipywidgets explorer and a self-contained HTML report.

Everything here reads a Trace (never a pipeline), so a trace made on a GPU can be explored on a laptop.
"""

from .explorer import Explorer, explore
from .figures import channels, compare, denoising, guidance, layer_step, schedule, word_grid, word_heatmap, word_mass
from .report import report
from .why import attention_vs_attribution, attribution_bars, word_attribution

__all__ = [
    "explore", "Explorer", "report", "word_heatmap", "word_grid", "denoising", "word_mass", "layer_step",
    "guidance", "schedule", "channels", "compare", "attribution_bars", "attention_vs_attribution", "word_attribution",
]
