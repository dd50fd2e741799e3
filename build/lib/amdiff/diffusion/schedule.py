"""Cosine variance schedule (T=250) and the closed forms of the Gaussian diffusion (paper Eq. 1).

Timestep convention: every ``t`` argument is a LongTensor of **0-based step indices**
``0..T-1``; index ``i`` stands for the paper's step ``t = i + 1`` (paper: 1 <= t <= T). So
``alpha_bar[i]`` is the paper's alpha_bar_{i+1} and ``alpha_bar_prev[0] = 1`` (alpha_bar_0).

Schedule (Nichol & Dhariwal 2021, as Med-DDPM uses it):
    f(u) = cos^2(((u / T) + s) / (1 + s) * pi / 2),   u = 0..T
    beta_t = min(1 - f(t) / f(t - 1), max_beta),        t = 1..T
    alpha_t = 1 - beta_t,   alpha_bar_t = prod_{k<=t} alpha_k
Without the clip alpha_bar_t = f(t) / f(0) exactly; the clip only bites at the last step
(f(T) = 0 gives beta_T = 1 -> 0.999), keeping alpha_T > 0 so every step can be inverted.
alpha_bar is the cumulative product of the clipped alphas, so the posterior coefficients below
are exactly consistent with the betas.

Tables are computed and stored in float64 on the CPU; each lookup returns values in the
dtype and on the device of the tensor it is combined with (cached per device/dtype).

Intensity domain: the diffusion runs on x = clamp(SUV, 0, cutoff) / cutoff * 2 - 1 in [-1, 1]
(the paper cuts SUV off at 20); see :func:`suv_to_diffusion` / :func:`diffusion_to_suv`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from amdiff.errors import InputError

SUV_CUTOFF = 20.0


def suv_to_diffusion(suv, cutoff: float = SUV_CUTOFF):
    """SUV -> diffusion domain: clamp to [0, cutoff], map linearly to [-1, 1].

    Works on torch tensors and numpy arrays (type and dtype preserved for float inputs).
    """
    if not cutoff > 0:
        raise InputError("cutoff", f"SUV cutoff must be > 0, got {cutoff}")
    return suv.clip(0.0, cutoff) / cutoff * 2.0 - 1.0


def diffusion_to_suv(x, cutoff: float = SUV_CUTOFF):
    """Diffusion domain -> SUV: the exact affine inverse, (x + 1) / 2 * cutoff.

    No clamping here: a value outside [-1, 1] maps outside [0, cutoff]. (The trainer clamps its
    x0 estimate before this, straight-through by default; see amdiff.train.trainer.)
    """
    if not cutoff > 0:
        raise InputError("cutoff", f"SUV cutoff must be > 0, got {cutoff}")
    return (x + 1.0) * (cutoff / 2.0)


def cosine_alpha_bar(u, T: int, s: float = 0.008):
    """Unclipped cosine alpha_bar(u) = f(u) / f(0) for (possibly fractional) step u in [0, T]."""
    u = np.asarray(u, dtype=np.float64)
    f = np.cos((u / T + s) / (1.0 + s) * math.pi / 2.0) ** 2
    f0 = math.cos(s / (1.0 + s) * math.pi / 2.0) ** 2
    return f / f0


class CosineSchedule:
    """Cosine-schedule Gaussian diffusion: forward noising, x0/eps conversion, posterior.

    Attributes (float64 CPU tensors of length T, indexed by 0-based step i = paper t - 1):
    betas, alphas, alpha_bar, alpha_bar_prev, sqrt_alpha_bar, sqrt_one_minus_alpha_bar,
    sqrt_recip_alpha_bar, sqrt_recipm1_alpha_bar, posterior_variance,
    posterior_log_variance_clipped, posterior_mean_coef1 (multiplies x0),
    posterior_mean_coef2 (multiplies x_t).
    """

    def __init__(self, T: int = 250, s: float = 0.008, max_beta: float = 0.999):
        if int(T) != T or T < 1:
            raise InputError("T", f"number of diffusion steps must be a positive integer, got {T}")
        if not s >= 0:
            raise InputError("s", f"cosine offset must be >= 0, got {s}")
        if not 0 < max_beta <= 1:
            raise InputError("max_beta", f"must be in (0, 1], got {max_beta}")
        self.T, self.s, self.max_beta = int(T), float(s), float(max_beta)

        ab = cosine_alpha_bar(np.arange(self.T + 1), self.T, self.s)
        betas = np.minimum(1.0 - ab[1:] / ab[:-1], self.max_beta)
        alphas = 1.0 - betas
        alpha_bar = np.cumprod(alphas)
        alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
        # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t): variance of q(x_{t-1} | x_t, x0).
        post_var = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        tables = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": np.sqrt(alpha_bar),
            "sqrt_one_minus_alpha_bar": np.sqrt(1.0 - alpha_bar),
            "sqrt_recip_alpha_bar": np.sqrt(1.0 / alpha_bar),
            "sqrt_recipm1_alpha_bar": np.sqrt(1.0 / alpha_bar - 1.0),
            "posterior_variance": post_var,
            # beta~_1 = 0; its log is replaced by beta~_2's (as DDPM code does) to stay finite.
            # Only used where noise is added, which never happens at the last step.
            "posterior_log_variance_clipped": np.log(
                np.append(post_var[1] if self.T > 1 else betas[0], post_var[1:])),
            "posterior_mean_coef1": betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),
            "posterior_mean_coef2": (1.0 - alpha_bar_prev) * np.sqrt(alphas) / (1.0 - alpha_bar),
        }
        for name, arr in tables.items():
            setattr(self, name, torch.from_numpy(arr))
        self._names = tuple(tables)
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"CosineSchedule(T={self.T}, s={self.s}, max_beta={self.max_beta})"

    # ---------------------------------------------------------------- lookups
    def table(self, name: str, device, dtype) -> torch.Tensor:
        """Table ``name`` converted to device/dtype (cached so sampling loops copy it once)."""
        if name not in self._names:
            raise KeyError(name)
        key = (name, torch.device(device), dtype)
        hit = self._cache.get(key)
        if hit is None:
            hit = getattr(self, name).to(device=device, dtype=dtype)
            self._cache[key] = hit
        return hit

    def extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at steps ``t`` (B,), shaped (B, 1, ...) to broadcast against ``like``."""
        t = torch.as_tensor(t, device=like.device).long().reshape(-1)
        vals = self.table(name, like.device, like.dtype)[t]
        return vals.reshape(t.shape[0], *([1] * (like.dim() - 1)))

    def sample_t(self, batch: int, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
        """Uniform random training steps in 0..T-1 (LongTensor of shape (batch,))."""
        device = device if device is not None else (
            generator.device if generator is not None else "cpu")
        return torch.randint(0, self.T, (batch,), generator=generator, device=device)

    # ---------------------------------------------------------- closed forms
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 1: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (noise drawn if not given)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (self.extract("sqrt_alpha_bar", t, x0) * x0
                + self.extract("sqrt_one_minus_alpha_bar", t, x0) * noise)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 from predicted noise (Eq. 1 inverted): x_t / sqrt(abar) - sqrt(1/abar - 1) eps.

        Differentiable; no clipping. The gradient with respect to eps is scaled by
        sqrt(1/abar - 1): ~0.4 at t = T/4, 1 at T/2, ~5e3 at t = T - 1. The trainer forms P_HC from
        it only for t < ``training.aux_max_t_fraction`` x T (see amdiff.train.trainer).
        """
        return (self.extract("sqrt_recip_alpha_bar", t, x_t) * x_t
                - self.extract("sqrt_recipm1_alpha_bar", t, x_t) * eps)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Noise implied by x_t and x0: (x_t / sqrt(abar) - x0) / sqrt(1/abar - 1)."""
        return ((self.extract("sqrt_recip_alpha_bar", t, x_t) * x_t - x0)
                / self.extract("sqrt_recipm1_alpha_bar", t, x_t))

    # ---------------------------------------------------------- v-parameterisation
    # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022). A network predicting v gives
    # x0 = sqrt(abar) x_t - sqrt(1 - abar) v, whose error is the v error times at most 1, where
    # the eps route multiplies it by sqrt(1/abar - 1) (5e3 at t = T - 1 of T = 250).
    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v of a training pair: sqrt(abar_t) eps - sqrt(1 - abar_t) x0."""
        return (self.extract("sqrt_alpha_bar", t, x0) * noise
                - self.extract("sqrt_one_minus_alpha_bar", t, x0) * x0)

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The noise a predicted v implies: sqrt(abar) v + sqrt(1 - abar) x_t."""
        return (self.extract("sqrt_alpha_bar", t, x_t) * v
                + self.extract("sqrt_one_minus_alpha_bar", t, x_t) * x_t)

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The x0 a predicted v implies: sqrt(abar) x_t - sqrt(1 - abar) v (differentiable)."""
        return (self.extract("sqrt_alpha_bar", t, x_t) * x_t
                - self.extract("sqrt_one_minus_alpha_bar", t, x_t) * v)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t-1} | x_t, x0) = N(coef1 x0 + coef2 x_t, beta~_t).

        Returns (mean, variance, log_variance_clipped); variances are shaped (B, 1, ...).
        """
        mean = (self.extract("posterior_mean_coef1", t, x_t) * x0
                + self.extract("posterior_mean_coef2", t, x_t) * x_t)
        return (mean, self.extract("posterior_variance", t, x_t),
                self.extract("posterior_log_variance_clipped", t, x_t))
