"""How diffviz gets into a pipeline: attn2 processors, the step recorder, and the context
managers that install them and always restore the pipeline."""

from .install import attn2_processors, processors, prompt_attn1_layers, trace
from .processor import Attn2Processor
from .recorder import DEFAULT_MAX_BYTES, CaptureError, estimate_bytes

__all__ = ["DEFAULT_MAX_BYTES", "Attn2Processor", "CaptureError", "attn2_processors", "estimate_bytes", "processors", "prompt_attn1_layers", "trace"]
