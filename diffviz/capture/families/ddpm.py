"""DDPM-style schedules (Stable Diffusion, PixArt): the schedule and x0 from the scheduler's
``alphas_cumprod``, for DDIM, DDPM, Euler, DPM-Solver, PNDM, UniPC and the other VP samplers.

At timestep t the latents are ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise``; the model predicts
the noise (epsilon), v or x0 itself, as the scheduler's ``prediction_type`` says.
"""

from __future__ import annotations

import torch

from .base import Family


class DDPMSchedule(Family):
    """x0 and schedule for the families whose scheduler follows DDPM's alphas_cumprod."""

    def _alpha_bar(self, t) -> torch.Tensor:
        """alpha_bar at (possibly fractional) timesteps ``t``, interpolated in alphas_cumprod."""
        ac = self.pipe.scheduler.alphas_cumprod.float().cpu()
        t = torch.as_tensor(t, dtype=torch.float32).cpu().clamp(0, len(ac) - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=len(ac) - 1)
        return ac[lo] + (t - lo) * (ac[hi] - ac[lo])

    def schedule(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self._alpha_bar(t)
        return alpha_bar, ((1 - alpha_bar) / alpha_bar).sqrt()

    def x0(self, model_output: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        """x0 for schedulers that do not return it (DPM-Solver, PNDM, UniPC) and for attribution's rebuilt
        step: VP parameterisation, clipped as the scheduler clips it."""
        ab = self._alpha_bar(t).to(sample.device, torch.float32)
        kind = self.pipe.scheduler.config.get("prediction_type", "epsilon")
        x, e = sample.float(), model_output.float()
        if kind == "v_prediction":
            x0 = ab.sqrt() * x - (1 - ab).sqrt() * e
        elif kind == "sample":
            x0 = e
        else:
            x0 = (x - (1 - ab).sqrt() * e) / ab.sqrt()
        sched = self.pipe.scheduler  # then limited as DDIM / DDPM do it (PixArt's configs clip)
        if sched.config.get("thresholding") and hasattr(sched, "_threshold_sample"):
            x0 = sched._threshold_sample(x0)
        elif sched.config.get("clip_sample"):
            r = float(sched.config.get("clip_sample_range", 1.0))
            x0 = x0.clamp(-r, r)
        return x0.to(sample.dtype)
