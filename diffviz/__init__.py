"""diffviz: see how each word of a prompt shapes a diffusion model's image."""

__version__ = "0.1.0"

from .capture import CaptureError, estimate_bytes, trace  # noqa: E402
from .io import TraceFileError, load_trace  # noqa: E402
from .pipelines import load_pipeline  # noqa: E402
from .trace import Layer, Token, Trace  # noqa: E402

__all__ = [
    "trace", "Trace", "Token", "Layer", "load_trace", "load_pipeline", "estimate_bytes",
    "CaptureError", "TraceFileError", "explore", "report", "attribute", "agreement", "Attribution", "Agreement",
    "edit", "classroom", "batch", "study", "summarize", "load_summary", "__version__",
]
_LAZY = {  # attribute -> module: plotly, ipywidgets and captum load only when used
    "explore": ".viz", "report": ".viz", "attribute": ".attribution", "agreement": ".attribution",
    "Attribution": ".attribution", "Agreement": ".attribution", "edit": None, "classroom": None,
    "batch": None, "study": ".studies", "summarize": ".summary", "load_summary": ".summary",  # pandas, pyarrow
}


def __getattr__(name: str):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'diffviz' has no attribute {name!r}")
    module = _LAZY[name]
    if module is None:  # a submodule
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(module, __name__), name)
