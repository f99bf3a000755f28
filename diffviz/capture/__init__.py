"""How diffviz gets into a pipeline: attn2 processors, the step recorder, and the context
managers that install them and always restore the pipeline."""

from .install import attn2_processors, trace
from .processor import Attn2Processor
from .recorder import DEFAULT_MAX_BYTES, CaptureError, estimate_bytes

__all__ = ["trace", "attn2_processors", "Attn2Processor", "CaptureError", "estimate_bytes", "DEFAULT_MAX_BYTES"]
