"""Flow matching (SD3, Flux): the schedule and x0 of ``FlowMatchEulerDiscreteScheduler``.

The latents at step i are ``x_t = (1 - s) * x0 + s * noise`` with the scheduler's sigma ``s`` (1 at the
start, 0 at the end), and the model predicts the velocity ``v = noise - x0``, so ``x0 = x_t - s * v``.
A trace stores what it stores for every family, so its views read the same: ``sigma`` the
noise-to-signal ratio ``s / (1 - s)`` (infinite at the first step, where s = 1) and ``alpha_bar =
(1 - s)^2 / ((1 - s)^2 + s^2)``, the signal fraction of a variance-preserving schedule with the same
signal-to-noise ratio (so ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` as for DDPM-style schedules).
The scheduler's own sigma is ``s = sigma / (1 + sigma)``. ``noise_cond`` / ``noise_uncond`` hold the
velocity predictions.
"""

from __future__ import annotations

import torch

from .base import Family


class FlowMatching(Family):
    """x0 and schedule for the families whose scheduler is flow matching."""

    def _sigmas(self, t: torch.Tensor) -> torch.Tensor:
        """[step] float32 the scheduler's sigma at each timestep of ``t`` (the nearest scheduled one)."""
        sched = self.pipe.scheduler
        timesteps, sigmas = sched.timesteps.detach().float().cpu(), sched.sigmas.detach().float().cpu()
        return sigmas[(timesteps[None] - t.float().cpu()[:, None]).abs().argmin(1)]

    def schedule(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._sigmas(t)
        return (1 - s) ** 2 / ((1 - s) ** 2 + s**2), s / (1 - s)

    def x0(self, model_output: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        """x_t - sigma * v. Called right after ``scheduler.step`` ran, whose step index then points at the
        next step: the sigma of this one is read on the device (no host sync per step)."""
        sched = self.pipe.scheduler
        index = getattr(sched, "step_index", None)
        if index is None or not hasattr(sched, "sigmas"):
            raise TypeError(f"{type(sched).__name__} is not a flow-matching scheduler; diffviz traces "
                            f"{self.name} pipelines with FlowMatchEulerDiscreteScheduler.")
        sigma = sched.sigmas[index - 1].to(sample.device, torch.float32)
        return (sample.float() - sigma * model_output.float()).to(sample.dtype)
