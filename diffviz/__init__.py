"""diffviz: see how each word of a prompt shapes a diffusion model's image."""

__version__ = "0.1.0"

__all__ = [
    "trace", "Capture", "Trace", "Token", "Layer", "load_trace", "load_pipeline", "estimate_bytes",
    "CaptureError", "TraceFileError", "explore", "report", "attribute", "agreement", "Attribution",
    "Agreement", "edit", "classroom", "batch", "study", "summarize", "load_summary", "viz", "__version__",
]
# attribute -> module, imported on first use: `import diffviz` costs nothing, reading a trace imports
# torch but not diffusers (only capture and loading do), figures plotly, attribution captum.
_LAZY = {
    "trace": ".capture", "Capture": ".capture", "estimate_bytes": ".capture", "CaptureError": ".capture",
    "Trace": ".traces", "Token": ".traces", "Layer": ".traces", "load_trace": ".io", "TraceFileError": ".io",
    "load_pipeline": ".pipelines", "explore": ".viz", "report": ".viz",
    "attribute": ".attribution", "agreement": ".attribution", "Attribution": ".attribution",
    "Agreement": ".attribution", "edit": None, "classroom": None, "viz": None, "batch": None,
    "study": ".studies", "summarize": ".summary", "load_summary": ".summary",  # pandas, pyarrow
}


def __getattr__(name: str):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'diffviz' has no attribute {name!r}")
    module = _LAZY[name]
    if module is None:  # a submodule
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
