"""How diffviz gets into a pipeline: the family adapters (which layers read the prompt), the attention
processors, the step recorder, and the context managers that install them and always restore the pipeline."""

from .families import CaptureError, family_of
from .install import processors, trace
from .recorder import DEFAULT_MAX_BYTES, Capture, estimate_bytes

__all__ = ["DEFAULT_MAX_BYTES", "Capture", "CaptureError", "estimate_bytes", "family_of", "processors",
           "trace"]
