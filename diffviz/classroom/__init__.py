"""The classroom model: a tiny Stable-Diffusion-shaped pipeline trained on captioned coloured shapes.

``load_pipeline()`` returns the shipped model (a diffusers ``StableDiffusionPipeline``, CPU, offline);
``data`` draws the scenes with ground-truth masks; ``judge.judge(prompt, image)`` checks an image against
its prompt (``grader`` hands it to ``diffviz.study``);
``probe.word_reliance`` measures whether it uses a word of the prompt; ``python -m diffviz.classroom.train``
retrains it. Words outside ``vocabulary()`` still generate, but the
tokenizer splits them into characters the model never learned: ``unknown_words(pipe.tokenizer, prompt)``.
"""

from .data import (
    COLOURLESS_DISTRIBUTION,
    COLOURS,
    HELD_OUT_COMBOS,
    IMAGE_SIZE,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    held_out_prompts,
    parse_caption,
    vocabulary,
)
from .judge import grader
from .model import load_pipeline, unknown
from .tokenizer import build_tokenizer, unknown_words

__all__ = [
    "load_pipeline", "vocabulary", "unknown", "unknown_words", "build_tokenizer", "parse_caption",
    "held_out_prompts", "Scene", "IMAGE_SIZE", "COLOURS", "SHAPES", "SIZES", "RELATIONS", "HELD_OUT_COMBOS",
    "COLOURLESS_DISTRIBUTION", "grader",
]
