"""Model families: the only code that knows a U-Net from a transformer.

The capture, the edits, attribution, ``estimate_bytes``, the ``Trace`` and its views learn about a
pipeline from one adapter, a ``Family`` subclass chosen by ``family_of(pipe)`` and made once per run.
Adding a family is one new module here whose class is decorated with ``@register`` (base.py holds the
protocol and the registry), and its import below. No module may import diffusers at its top level (a
trace must open without it). An adapter provides:

* ``name`` and ``matches(pipe)`` (classmethod): which pipelines it handles.
* ``denoiser``: the module called once per step; its ``attn_processors`` / ``set_attn_processor`` are
  where processors go. ``denoiser_io(args, kwargs) -> (sample, timestep)`` reads its input,
  ``prediction(output)`` its output (what ``scheduler.step`` receives).
* ``layers(latent) -> list[Layer]``: every attention module that reads the prompt, in the order the
  denoiser runs them, each with its query grid for a latent of (h, w) cells, its heads, a display
  ``label`` and a ``block`` (the group names the layer selector and the views use).
* ``self_layers(latent) -> list[Layer]`` (optional, default none): the image-to-image self-attention
  modules, for self-attention maps of chosen query pixels (``trace(pipe, queries=...)``); their
  processor gets the image keys.
* ``processor(name, original, sink, edit)``: the processor to install on module ``name`` in place of
  ``original``. Keep the original's effect (wrap it) or raise ``CaptureError`` saying why it cannot.
  The sink receives the query and the *text* keys (``sink.keep``), or normalised probabilities over the
  text keys; ``edit(layer, probs)`` changes probabilities over the text keys.
* ``text_encoders()``: modules whose input ids are recorded; ``read_prompt(ids, prompt)`` turns them
  into a ``PromptTokens`` (words, and one ``Token`` per text key position with its word and encoder).
* the schedule: ``x0(model_output, t, sample)`` when the scheduler does not return it, and
  ``schedule(t) -> (alpha_bar, sigma)`` per step (alphas for DDPM-style schedulers, sigmas for flow
  matching), stored in the Trace.
* video families (``video.py``: Wan, CogVideoX) add a frame axis: latents ``[B, C, frame, h, w]`` after
  ``unpack``, query grids ``(frame, h, w)``; the video is read from ``vae.decode``. ``guidance_calls``
  says whether a guided step is one batched denoiser call or two (Wan: conditional, then unconditional).
* the rest has defaults here: ``guided()``, ``latent_size(sample)``, ``unpack(latents)``,
  ``default_size()``, ``latent_channels()``, ``model_info()``; ``step_model(trace, step, target)``
  rebuilds one denoiser call for attribution (families without it raise NotImplementedError).
"""

from __future__ import annotations

# isort: off
# each registers its family; family_of tries them in this order
from . import sd, sd3, flux, pixart, wan, cogvideox  # noqa: F401
# isort: on
from .base import FAMILIES, CaptureError, Family, PromptTokens, family_of, supported

__all__ = ["FAMILIES", "CaptureError", "Family", "PromptTokens", "family_of", "supported"]
