"""Reverse-diffusion samplers: ancestral DDPM (paper Eq. 4) and DDIM (Song et al. 2021).

The model is any callable ``eps_fn(x_t, t) -> eps`` (:class:`EpsModel`): ``x_t`` is the current
noisy image (B, C, X, Y, Z) and ``t`` a LongTensor (B,) of 0-based step indices (paper step
t = index + 1, see :mod:`amdiff.diffusion.schedule`). Conditioning is the caller's job: for
AMDiff, ``eps_fn = lambda x, t: f_den(torch.cat([x, I_LC], 1), t)`` (Eq. 2).

DDPM and Eq. 4. Each step forms the x0 estimate x0^ = predict_x0(x_t, t, eps), clips it to
[-1, 1] (the data range; Med-DDPM and guided-diffusion do this) and takes the mean of the
true posterior q(x_{t-1} | x_t, x0^) with variance sigma_t^2 = beta~_t (posterior variance);
no noise is added at the final step. Substituting x0^ unclipped into the posterior mean gives

    coef1 x0^ + coef2 x_t = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t),

which is Eq. 4 (its alpha-tilde is a typo for alpha-bar); with ``clip_x0=False`` the two are
identical (tested). Clipping only changes steps whose x0^ leaves the data range.

DDIM. An evenly spaced sub-sequence of ``steps`` indices from T-1 down to 0 (T-1 always
included; 0 too when steps > 1). Per step tau -> tau' (tau' = -1 means abar' = 1):
    x_tau' = sqrt(abar') x0^ + sqrt(1 - abar' - sigma^2) eps^ + sigma z,
    sigma  = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar'),
with eps^ re-derived from the clipped x0^. eta = 0 is deterministic given x_T; eta = 1 with
steps = T is exactly the DDPM sampler above (tested).

Randomness comes only from the optional ``torch.Generator`` (x_T, then one draw per noisy
step, in order), so a fixed seed reproduces a sample on the same device.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from amdiff.joblog import progress as progress_of

from amdiff.diffusion.schedule import CosineSchedule
from amdiff.errors import InputError

# callback(step_number, t_index, x_after_step, x0_estimate); step_number counts from 0.
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


class EpsModel(Protocol):
    """Noise predictor: eps = eps_fn(x_t, t), t a LongTensor (B,) of 0-based step indices."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


def _start(shape, generator, device, dtype, x_T):
    """Initial x_T (given or drawn from N(0, I)) and the device/dtype everything runs in."""
    if x_T is not None:
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise InputError("x_T", f"shape {tuple(x_T.shape)} differs from shape {tuple(shape)}")
        return x_T.clone()
    if len(shape) < 2:
        raise InputError("shape", f"expected (B, C, ...), got {tuple(shape)}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _noise_like(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _eps(eps_fn, x, t_index):
    t = torch.full((x.shape[0],), int(t_index), device=x.device, dtype=torch.long)
    eps = eps_fn(x, t)
    if eps.shape != x.shape:
        raise InputError("eps_fn", f"returned shape {tuple(eps.shape)}, expected {tuple(x.shape)}")
    return eps, t


@torch.no_grad()
def ddpm_step(eps_fn: EpsModel, x: torch.Tensor, t_index: int, schedule: CosineSchedule,
              generator: torch.Generator | None = None, clip_x0: bool = True):
    """One ancestral step x_t -> x_{t-1}; returns (x_{t-1}, x0 estimate)."""
    eps, t = _eps(eps_fn, x, t_index)
    x0 = schedule.predict_x0(x, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    mean, _, log_var = schedule.q_posterior(x0, x, t)
    if t_index == 0:
        return mean, x0
    return mean + torch.exp(0.5 * log_var) * _noise_like(x, generator), x0


@torch.no_grad()
def ddpm_sample(eps_fn: EpsModel, shape, schedule: CosineSchedule,
                generator: torch.Generator | None = None, clip_x0: bool = True,
                progress: bool = False, device=None, x_T: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32, callback: Callback | None = None):
    """Ancestral sampling over all T steps (Eq. 4 with x0 clipping); returns x_0 (= P_HC)."""
    x = _start(shape, generator, device, dtype, x_T)
    steps = range(schedule.T - 1, -1, -1)
    for n, ti in enumerate(progress_of(steps, desc="ddpm", unit="step", enabled=progress)):
        x, x0 = ddpm_step(eps_fn, x, ti, schedule, generator, clip_x0)
        if callback is not None:
            callback(n, ti, x, x0)
    return x


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """Evenly spaced 0-based indices, descending from T-1 (always included) to 0 (steps > 1)."""
    if int(steps) != steps or not 1 <= steps <= T:
        raise InputError("steps", f"DDIM steps must be an integer in 1..{T}, got {steps}")
    if steps == 1:
        return [T - 1]
    # Spacing (T-1)/(steps-1) >= 1, so rounding keeps the indices distinct.
    return torch.linspace(T - 1, 0, int(steps), dtype=torch.float64).round().long().tolist()


@torch.no_grad()
def ddim_step(eps_fn: EpsModel, x: torch.Tensor, t_index: int, t_prev: int,
              schedule: CosineSchedule, eta: float = 0.0,
              generator: torch.Generator | None = None, clip_x0: bool = True):
    """One DDIM step x_tau -> x_tau' (t_prev = -1 for the final jump to x_0); returns (x', x0)."""
    eps, t = _eps(eps_fn, x, t_index)
    x0 = schedule.predict_x0(x, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = schedule.predict_eps(x, t, x0)  # keep eps consistent with the clipped x0
    ab = schedule.alpha_bar[t_index].item()
    ab_prev = schedule.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
    x_prev = ab_prev ** 0.5 * x0 + max(1 - ab_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0:
        x_prev = x_prev + sigma * _noise_like(x, generator)
    return x_prev, x0


@torch.no_grad()
def ddim_sample(eps_fn: EpsModel, shape, schedule: CosineSchedule, steps: int, eta: float = 0.0,
                generator: torch.Generator | None = None, clip_x0: bool = True,
                progress: bool = False, device=None, x_T: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32, callback: Callback | None = None):
    """DDIM sampling over ``steps`` evenly spaced steps; eta=0 deterministic given x_T."""
    if not eta >= 0:
        raise InputError("eta", f"must be >= 0, got {eta}")
    seq = ddim_timesteps(schedule.T, steps)
    x = _start(shape, generator, device, dtype, x_T)
    pairs = list(zip(seq, seq[1:] + [-1]))
    for n, (ti, tp) in enumerate(progress_of(pairs, desc="ddim", unit="step", enabled=progress)):
        x, x0 = ddim_step(eps_fn, x, ti, tp, schedule, eta, generator, clip_x0)
        if callback is not None:
            callback(n, ti, x, x0)
    return x


def sample(eps_fn: EpsModel, shape, schedule: CosineSchedule, method: str = "ddim",
           steps: int | None = None, **kwargs):
    """Dispatch: method "ddpm" (all T steps; steps must be None or T) or "ddim"
    (``steps`` evenly spaced steps, default T). kwargs go to the chosen sampler."""
    if method == "ddpm":
        if steps is not None and steps != schedule.T:
            raise InputError("steps", f"DDPM runs all T={schedule.T} steps, got steps={steps}")
        eta = kwargs.pop("eta", None)
        if eta is not None and eta != 1:
            raise InputError("eta", f"DDPM has no eta (it equals DDIM with eta=1), got {eta}")
        return ddpm_sample(eps_fn, shape, schedule, **kwargs)
    if method == "ddim":
        return ddim_sample(eps_fn, shape, schedule, steps if steps is not None else schedule.T,
                           **kwargs)
    raise InputError("method", f"unknown sampler {method!r}; expected 'ddpm' or 'ddim'")
