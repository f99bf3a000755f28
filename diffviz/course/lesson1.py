"""Lesson 1, denoising step by step: the pipeline diagram, reference answers and exercise checks.

Every ``check_*`` prints a verdict and returns True or False; ``None`` (unanswered) prints a hint. A
``prediction`` (written before measuring) is compared once the answer is right. ``solution(name)`` prints a
worked answer ("signal_step", "x0", "recoloured", "ddim_step"), for whoever asks for it on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from ..traces import Trace
from ..viz._draw import png_uri
from . import Solutions, predicted, tensor_answer, verdict


def pipeline_diagram(trace: Trace, text_states: Sequence[int]) -> go.Figure:
    """The text-to-image pipeline as boxes and arrows, each arrow labelled with the shape of what passes
    along it in ``trace``'s generation; ``text_states`` is the text encoder's output shape for one prompt,
    ``(tokens, d)``. The trace's picture sits at the end."""
    c, h, w = trace.latents.shape[1:]
    tokens, d = text_states
    fig = go.Figure()
    boxes = {"tokenizer": (2.3, 3), "text encoder": (5.2, 3), "U-Net": (5.2, 1), "scheduler": (7.9, 1),
             "VAE decoder": (11.5, 1)}
    notes = {"U-Net": "predicts the noise" + (" (x2)" if trace.noise_uncond is not None else ""),
             "scheduler": "removes part of it"}
    for name, (x, y) in boxes.items():
        fig.add_shape(type="rect", x0=x - 1.05, x1=x + 1.05, y0=y - 0.45, y1=y + 0.45, fillcolor="#e8eef8",
                      line={"color": "#4a6fa5"})
        note = f"<br><span style='font-size:11px'>{notes[name]}</span>" if name in notes else ""
        fig.add_annotation(x=x, y=y, text=f"<b>{name}</b>{note}", showarrow=False, font={"size": 14})
    fig.add_shape(type="rect", x0=3.75, x1=9.1, y0=-0.05, y1=1.75, line={"color": "#999", "dash": "dash"})
    fig.add_annotation(x=9.05, y=1.6, text=f"repeated {trace.num_steps} times, noisy to clean",
                       showarrow=False, xanchor="right", font={"size": 11, "color": "#666"})

    def arrow(start, end, label, where=None, **style):
        fig.add_annotation(x=end[0], y=end[1], ax=start[0], ay=start[1], xref="x", yref="y", axref="x",
                           ayref="y", showarrow=True, arrowhead=2, arrowsize=1.2, arrowwidth=1.5, text="")
        lx, ly = where or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.22)
        fig.add_annotation(x=lx, y=ly, text=label, showarrow=False, font={"size": 12}, **style)

    arrow((0.5, 3), (1.25, 3), "", where=(0.1, 3))
    fig.add_annotation(x=0.45, y=3, text="prompt", showarrow=False, xanchor="right", font={"size": 13})
    arrow((3.35, 3), (4.15, 3), f"token ids [{tokens}]", where=(3.75, 3.7))
    arrow((5.2, 2.55), (5.2, 1.45), f"text embeddings [{tokens}, {d}]<br>(read by cross-attention)",
          where=(5.3, 2.12), xanchor="left")
    arrow((1.6, 1), (4.15, 1), f"noise x<sub>T</sub> [{c}, {h}, {w}]")
    arrow((6.25, 1.15), (6.85, 1.15), "")
    arrow((6.85, 0.85), (6.25, 0.85), f"x<sub>t-1</sub> [{c}, {h}, {w}]", where=(6.55, 0.2))
    arrow((8.95, 1), (10.45, 1), f"x<sub>0</sub> [{c}, {h}, {w}]", where=(9.78, 1.25))
    arrow((12.55, 1), (13.15, 1), f"image [{trace.height}, {trace.width}, 3]", where=(14.0, 2.0))
    if trace.image is not None:
        big = np.asarray(trace.image).repeat(4, axis=0).repeat(4, axis=1)  # sharp pixels, not a blur
        fig.add_layout_image(source=png_uri(big), x=13.25, y=1.75, sizex=1.5, sizey=1.5, xref="x",
                             yref="y", sizing="stretch", layer="above")
    fig.update_xaxes(visible=False, range=[-1.1, 15.3])
    fig.update_yaxes(visible=False, range=[-0.3, 4], scaleanchor="x")
    fig.update_layout(width=960, height=290, margin={"l": 5, "r": 5, "t": 5, "b": 5}, plot_bgcolor="white",
                      showlegend=False)
    return fig


def x0_from_noise(trace: Trace, step: int) -> torch.Tensor:
    """[C, h, w] the predicted clean latent at ``step`` from the noisy latent and the guided noise
    prediction: x0 = (x_t - sqrt(1 - alpha_bar) * eps) / sqrt(alpha_bar) (epsilon prediction)."""
    ab = trace.alpha_bar[step].double()
    x, eps = trace.latents[step].double(), trace.noise_guided[step].double()
    return ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).float()


def signal_step(trace: Trace) -> int:
    """The first step whose alpha_bar is at least 0.5: from there on the latent is more signal than noise."""
    return int(torch.nonzero(trace.alpha_bar >= 0.5)[0])


def distance_share(trace: Trace, step: int) -> float:
    """||x0[step] - x0[-1]|| / ||x0[0] - x0[-1]||: how much of its way to the final x0 the guess at
    ``step`` still has to go (1 at step 0, 0 at the last step)."""
    x0 = trace.x0.double()
    return float((x0[step] - x0[-1]).norm() / (x0[0] - x0[-1]).norm())


def drawn_right(images: Sequence, prompt: str) -> int:
    """How many of ``images`` (``[H, W, 3]`` uint8 or PIL, classroom pictures) the judge finds right for
    ``prompt``."""
    from ..classroom import judge

    return sum(bool(judge.judge(prompt, np.asarray(im))["correct"]) for im in images)


def check_x0(answer, trace: Trace, step: int, prediction: float | None = None) -> bool:
    """``answer``: [C, h, w] tensor, the predicted x0 at ``step`` computed from latents, noise and alpha_bar.
    ``prediction``: the share of its way to the final x0 that the guess at ``step`` still has to go, 0..1."""
    ref = x0_from_noise(trace, step)  # float64 maths on the stored tensors; equals trace.x0 under DDIM
    hint = (f"solve the training equation above for x0, with step {step}'s latent, guided noise and "
            f"alpha_bar; the result has the shape of one latent, {list(ref.shape)}.")
    ok, hint = tensor_answer(answer, ref, hint)
    if not verdict(answer, ok, f"that is the model's own predicted x0 at step {step}.", hint):
        return False
    share = distance_share(trace, step)
    close = prediction is not None and abs(float(prediction) - share) <= 0.15
    predicted(prediction, close, f"at step {step} of {trace.num_steps} the guess still has {share:.0%} "
                                 "of its way to the final x0 to go")
    return True


def check_signal_step(answer, trace: Trace, prediction: int | None = None) -> bool:
    """``answer``: int, the first step at which alpha_bar >= 0.5; ``prediction``: the step guessed before."""
    right = signal_step(trace)
    ok = answer is not None and int(answer) == right
    if not verdict(answer, ok, f"from step {right} on (t={int(trace.timesteps[right])}) the latent holds "
                               "more signal than noise.",
                   "look for the first index where trace.alpha_bar >= 0.5 (torch.nonzero helps)."):
        return False
    close = prediction is not None and abs(int(prediction) - right) <= 1
    predicted(prediction, close, f"{right} of {trace.num_steps} steps pass before signal outweighs noise")
    return True


def check_recoloured(answer, images: Sequence, prompt: str, prediction: int | None = None) -> bool:
    """``answer``: int, how many of ``images`` the judge finds drawn as ``prompt``; ``prediction``: the count
    guessed before running them. Classroom pictures only (the judge knows its shapes and colours)."""
    hint = ("run start_from(K, noised, other_embeds) once per noise seed, collect the pictures, and count "
            "those for which diffviz.course.judged would pass "
            "(diffviz.classroom.judge.judge(prompt, image)['correct']).")
    if answer is None or not images:
        return verdict(None, False, "", hint)
    right = drawn_right(images, prompt)
    if not verdict(answer, int(answer) == right, f"the judge finds {right} of your {len(images)} pictures "
                                                 f"drawn as {prompt!r}.", hint):
        return False
    close = prediction is not None and abs(int(prediction) - right) <= 1
    predicted(prediction, close, f"{right} of {len(images)} pictures took the new prompt's colours")
    return True


def step_share(trace: Trace, step: int) -> float:
    """||latents[step + 1] - latents[step]|| / ||x0[step] - latents[step]||: the share of the way from the
    noisy latent to its own guess x0 that the sampler's step at ``step`` moves the latent."""
    x, x0, nxt = (trace.latents[step].double(), trace.x0[step].double(), trace.latents[step + 1].double())
    return float((nxt - x).norm() / (x0 - x).norm())


DDIM_STEP_HINT = ("x0: take the noise part, sqrt(1 - alpha_bar) times the predicted noise, away from x_t, "
                  "then undo the signal's scale sqrt(alpha_bar) (both at t_i: ab_t). x_prev: mix that x0 and "
                  "the same predicted noise with the weights of the previous timestep, sqrt(ab_prev) and "
                  "sqrt(1 - ab_prev); eta = 0 adds no fresh noise. Answer the pair (x0, x_prev).")


def _ddim_mistake(x0, x_prev, trace: Trace, step: int) -> str:
    """Names a common slip when the student's pair equals it (float64 maths on the trace's tensors)."""
    ab, ab_prev = trace.alpha_bar[step].double(), trace.alpha_bar[step + 1].double()
    x, eps = trace.latents[step].double(), trace.noise_guided[step].double()
    right_x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    slips = [
        (x0, (x - (1 - ab) * eps) / ab, ("your x0 leaves out the square roots: the weights are "
                                         "sqrt(alpha_bar) and sqrt(1 - alpha_bar), not alpha_bar itself.")),
        (x_prev, ab_prev * right_x0 + (1 - ab_prev) * eps,
         "your x_prev leaves out the square roots of ab_prev and 1 - ab_prev."),
        (x_prev, ab.sqrt() * right_x0 + (1 - ab).sqrt() * eps,
         ("your x_prev uses alpha_bar of this step (ab_t): that gives x_t back. The step lands at the "
          "previous timestep, so its weights use ab_prev.")),
        (x_prev, right_x0, ("your x_prev is x0 itself: DDIM puts the predicted noise back in, at the "
                            "previous timestep's level (sqrt(1 - ab_prev)).")),
    ]
    if step > 0:  # "previous" read as the step before, the noisier one
        ab_before = trace.alpha_bar[step - 1].double()
        slips.append((x_prev, ab_before.sqrt() * right_x0 + (1 - ab_before).sqrt() * eps,
                      (f"your x_prev uses alpha_bar[{step - 1}], the noisier timestep of the step before. "
                       f"The previous timestep is the one sampling goes to next, t_{step + 1} < t_{step}: "
                       f"ab_prev = alpha_bar[{step + 1}].")))
    for mine, slip, says in slips:
        if mine is not None and tensor_answer(mine, slip.float(), "")[0]:
            return says + " "
    return ""


def check_ddim_step(answer, trace: Trace, step: int, prediction: float | None = None) -> bool:
    """``answer``: the pair ``(x0, x_prev)`` of [C, h, w] tensors, one DDIM step (eta = 0) at ``step`` of a
    DDIM ``trace`` written by hand; compared with the sampler's own ``trace.x0[step]`` and
    ``trace.latents[step + 1]``. ``prediction``: the share of the way from x_t to x0 the step moves, 0..1."""
    if not 0 <= step < trace.num_steps - 1:
        raise ValueError(f"step must be 0..{trace.num_steps - 2} (a step with a next one in the trace), "
                         f"not {step}.")
    x0_ref, prev_ref = trace.x0[step].float(), trace.latents[step + 1].float()
    pair = isinstance(answer, (tuple, list)) and len(answer) == 2
    if answer is not None and not pair:
        return verdict(answer, False, "", "answer a pair: answer = (x0, x_prev). " + DDIM_STEP_HINT)
    x0, x_prev = answer if pair else (None, None)
    ok_x0, hint = tensor_answer(x0, x0_ref, DDIM_STEP_HINT)
    ok_prev, hint = tensor_answer(x_prev, prev_ref, hint)
    if answer is not None and not (ok_x0 and ok_prev):
        mistake = _ddim_mistake(x0, x_prev, trace, step)
        part = ("your x0 is right; x_prev is not. " if ok_x0 else
                "your x_prev is right, x0 is not. " if ok_prev else "")
        hint = part + mistake + hint
    if not verdict(answer, ok_x0 and ok_prev, f"x0 and x_prev are the sampler's own x0[{step}] and "
                                              f"latents[{step + 1}]: you took its step by hand.", hint):
        return False
    share = step_share(trace, step)
    close = prediction is not None and abs(float(prediction) - share) <= 0.05
    predicted(prediction, close, f"the step at {step} of {trace.num_steps} moves the latent {share:.0%} "
                                 f"of the way from x_t to its guess x0 (the last step moves it "
                                 f"{step_share(trace, trace.num_steps - 1):.0%})")
    return True


solution = Solutions(
    signal_step="""\
answer = int(torch.nonzero(trace.alpha_bar >= 0.5)[0])  # the first step at which signal outweighs noise""",
    x0="""\
x_t, eps, ab = trace.latents[12].double(), trace.noise_guided[12].double(), trace.alpha_bar[12].double()
answer = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()  # the training equation, solved for x0""",
    recoloured="""\
cond, uncond = pipe.encode_prompt(OTHER, pipe.device, 1, True)
embeds = torch.cat([uncond, cond])  # the order start_from expects: unconditional first
pics = [start_from(K, noised(K, torch.randn(z0.shape, generator=seed(100 + n)).to(z0)), embeds=embeds).numpy()
        for n in NOISES]
answer = lesson1.drawn_right(pics, OTHER)  # the judge's count of pictures drawn as OTHER""",
    ddim_step="""\
x0 = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()        # the guess of the clean latent at t_i
x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps  # re-noised to the previous timestep (eta = 0)
answer = (x0, x_prev)""",
)

