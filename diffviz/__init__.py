"""diffviz: see how each word of a prompt shapes a diffusion model's image."""

__version__ = "0.1.0"

from .capture import CaptureError, estimate_bytes, trace  # noqa: E402
from .io import TraceFileError, load_trace  # noqa: E402
from .pipelines import load_pipeline  # noqa: E402
from .trace import Layer, Token, Trace  # noqa: E402

__all__ = [
    "trace", "Trace", "Token", "Layer", "load_trace", "load_pipeline", "estimate_bytes",
    "CaptureError", "TraceFileError", "explore", "report", "__version__",
]


def __getattr__(name: str):
    # the figures need plotly and ipywidgets (the "notebooks" extra): import them only when used
    if name in ("explore", "report"):
        from . import viz

        return getattr(viz, name)
    if name == "classroom":
        import importlib

        return importlib.import_module(".classroom", __name__)
    raise AttributeError(f"module 'diffviz' has no attribute {name!r}")
