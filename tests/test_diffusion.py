"""Cosine schedule, closed forms of the forward process, and the DDPM/DDIM samplers."""

import math

import numpy as np
import pytest
import torch

from amdiff.diffusion import (CosineSchedule, ddim_sample, ddim_timesteps, ddpm_sample,
                              ddpm_step, diffusion_to_suv, sample, suv_to_diffusion)
from amdiff.errors import InputError

torch.manual_seed(0)


@pytest.fixture(scope="module")
def sched():
    return CosineSchedule(T=250, s=0.008, max_beta=0.999)


def _cos2_alpha_bar(t, T=250, s=0.008):
    """Nichol & Dhariwal alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T)+s)/(1+s) * pi/2)."""
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ schedule
def test_alpha_bar_matches_cos2_by_hand(sched):
    # Paper step t is index t-1. t = 125 = T/2: angle = (0.5 + 0.008)/1.008 * pi/2 = 0.791631 rad,
    # cos^2 = 0.493768, f(0) = cos^2(0.012467) = 0.999845 -> 0.49385 (worked by hand).
    assert sched.alpha_bar[124].item() == pytest.approx(0.49385, abs=2e-5)
    for t in (1, 2, 50, 125, 200, 249):
        assert sched.alpha_bar[t - 1].item() == pytest.approx(_cos2_alpha_bar(t), rel=1e-12)
    # Last step: f(T) = 0 gives beta_T = 1, clipped to 0.999: alpha_bar_T = 0.001 alpha_bar_{T-1}.
    assert sched.betas[-1].item() == pytest.approx(0.999)
    assert sched.alpha_bar[-1].item() == pytest.approx(0.001 * _cos2_alpha_bar(249), rel=1e-9)


def test_schedule_shape_and_monotonicity(sched):
    ab = sched.alpha_bar
    assert ab.shape == (250,) and sched.T == 250
    assert torch.all(ab[1:] < ab[:-1])
    assert ab[0] > 0.999 and ab[-1] < 1e-6
    assert torch.all(sched.betas > 0) and torch.all(sched.betas <= 0.999)
    assert torch.allclose(ab, torch.cumprod(1 - sched.betas, 0), rtol=0, atol=1e-15)
    assert sched.alpha_bar_prev[0] == 1.0 and torch.equal(sched.alpha_bar_prev[1:], ab[:-1])
    # Posterior at the last step (index 0): variance 0, mean = x0 exactly.
    assert sched.posterior_variance[0] == 0
    assert sched.posterior_mean_coef1[0].item() == pytest.approx(1.0, abs=1e-12)
    assert sched.posterior_mean_coef2[0].item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(sched.posterior_log_variance_clipped).all()


@pytest.mark.parametrize("kw", [{"T": 0}, {"T": 2.5}, {"s": -0.1}, {"max_beta": 0.0},
                                {"max_beta": 1.5}])
def test_schedule_rejects_bad_parameters(kw):
    with pytest.raises(InputError):
        CosineSchedule(**kw)


def test_q_sample_statistics(sched):
    x0 = torch.full((4, 1, 40, 40, 40), 0.6)
    for i in (0, 60, 124, 249):
        t = torch.full((4,), i, dtype=torch.long)
        x = sched.q_sample(x0, t, torch.randn(x0.shape, generator=_gen(i)))
        assert x.dtype == torch.float32 and x.shape == x0.shape
        ab = sched.alpha_bar[i].item()
        # 256k samples: standard error of the mean <= 0.002, of the variance <= 0.003.
        assert x.mean().item() == pytest.approx(math.sqrt(ab) * 0.6, abs=0.01)
        assert x.var().item() == pytest.approx(1 - ab, abs=0.01)
    # Per-sample timesteps broadcast over the batch.
    t = torch.tensor([0, 249, 0, 249])
    x = sched.q_sample(x0, t, torch.zeros_like(x0))
    assert torch.allclose(x[:, 0, 0, 0, 0], 0.6 * sched.sqrt_alpha_bar[t].float())


def test_predict_x0_inverts_q_sample(sched):
    g = _gen(1)
    x0 = torch.rand((3, 1, 6, 6, 6), generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for i in range(250):
        t = torch.full((3,), i)
        xt = sched.q_sample(x0, t, eps)
        assert torch.allclose(sched.predict_x0(xt, t, eps), x0, rtol=0, atol=1e-8)
        assert torch.allclose(sched.predict_eps(xt, t, x0), eps, rtol=0, atol=1e-8)
    # float32: exact up to rounding amplified by 1/sqrt(alpha_bar) (~200 at index 248).
    t = torch.tensor([0, 100, 248])
    xt32 = sched.q_sample(x0.float(), t, eps.float())
    x0_hat = sched.predict_x0(xt32, t, eps.float())
    assert x0_hat.dtype == torch.float32
    assert torch.allclose(x0_hat, x0.float(), atol=1e-4)


def test_posterior_mean_is_eq4_without_clipping(sched):
    g = _gen(2)
    xt = torch.randn((250, 1, 3, 3, 3), generator=g, dtype=torch.float64)
    eps = torch.randn(xt.shape, generator=g, dtype=torch.float64)
    t = torch.arange(250)
    mean, var, logvar = sched.q_posterior(sched.predict_x0(xt, t, eps), xt, t)
    b = lambda v: v.reshape(-1, 1, 1, 1, 1)  # noqa: E731
    eq4 = (xt - b(sched.betas) / b(sched.sqrt_one_minus_alpha_bar) * eps) / b(sched.alphas.sqrt())
    assert torch.allclose(mean, eq4, rtol=1e-9, atol=1e-9)
    # Posterior variance beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), by hand at paper t = 2.
    ab1, ab2 = _cos2_alpha_bar(1), _cos2_alpha_bar(2)
    assert var[1].item() == pytest.approx((1 - ab2 / ab1) * (1 - ab1) / (1 - ab2), rel=1e-9)
    assert torch.allclose(logvar[1:].exp(), var[1:], rtol=1e-12)


def test_tables_follow_device_and_dtype(sched):
    x = torch.zeros((2, 1, 2, 2, 2), dtype=torch.float64)
    v = sched.extract("alpha_bar", torch.tensor([3, 7]), x)
    assert v.dtype == torch.float64 and v.shape == (2, 1, 1, 1, 1)
    assert sched.extract("alpha_bar", torch.tensor([3, 7]), x.float()).dtype == torch.float32
    t = sched.sample_t(1000, generator=_gen(3))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 249


# ------------------------------------------------------------------- samplers
def _oracle(sched, x0_true):
    return lambda x, t: sched.predict_eps(x, t, x0_true)


def _smooth_eps(x, t):
    """Deterministic but non-trivial stand-in for a network."""
    return 0.7 * torch.tanh(x) + 1e-3 * t.float().reshape(-1, 1, 1, 1, 1)


def test_ddpm_step_is_eq4_plus_posterior_noise(sched):
    g = _gen(4)
    x = torch.randn((2, 1, 4, 4, 4), generator=g)
    for i in (200, 10):
        out, _ = ddpm_step(_smooth_eps, x, i, sched, generator=_gen(5), clip_x0=False)
        eps = _smooth_eps(x, torch.full((2,), i))
        a, ab, beta = (sched.alphas[i].item(), sched.alpha_bar[i].item(), sched.betas[i].item())
        z = torch.randn(x.shape, generator=_gen(5))
        expect = (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(a) \
            + math.sqrt(sched.posterior_variance[i].item()) * z
        assert torch.allclose(out, expect, atol=1e-5)
    # Last step adds no noise: the generator is not touched.
    out0, x0 = ddpm_step(_smooth_eps, x, 0, sched, generator=None, clip_x0=True)
    assert torch.allclose(out0, x0, atol=1e-6)


@pytest.mark.parametrize("method,kw", [("ddpm", {}), ("ddim", {"steps": 10}),
                                       ("ddim", {"steps": 10, "eta": 1.0}),
                                       ("ddim", {"steps": 1})])
def test_oracle_eps_recovers_x0_from_noise(sched, method, kw):
    x0_true = torch.rand((2, 1, 8, 8, 8), generator=_gen(6)) * 1.8 - 0.9
    out = sample(_oracle(sched, x0_true), x0_true.shape, sched, method=method,
                 generator=_gen(7), **kw)
    assert out.shape == x0_true.shape and out.dtype == torch.float32
    # A single jump from index 249 divides by sqrt(alpha_bar) = 2e-4: float32 rounding of
    # |x_T| <= 4 (~2e-7) is amplified ~5000x there, so that case gets a looser tolerance.
    tol = 3e-3 if kw.get("steps") == 1 else 1e-4
    assert torch.allclose(out, x0_true, atol=tol)


def test_clipping_keeps_output_in_range(sched):
    # An oracle pointing outside [-1, 1] is clipped back to the data range.
    far = torch.full((1, 1, 4, 4, 4), 3.0)
    out = ddpm_sample(_oracle(sched, far), far.shape, sched, generator=_gen(8))
    assert torch.allclose(out, torch.ones_like(out), atol=1e-4)
    out = ddim_sample(_oracle(sched, far), far.shape, sched, steps=5, generator=_gen(8),
                      clip_x0=False)
    assert torch.allclose(out, far, atol=1e-3)


def test_ddim_eta0_is_deterministic_given_x_T(sched):
    x_T = torch.randn((1, 1, 6, 6, 6), generator=_gen(9))
    a = ddim_sample(_smooth_eps, x_T.shape, sched, steps=20, x_T=x_T, generator=_gen(1))
    b = ddim_sample(_smooth_eps, None, sched, steps=20, x_T=x_T, generator=_gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, x_T)          # x_T itself is not modified ...
    assert torch.equal(x_T, torch.randn((1, 1, 6, 6, 6), generator=_gen(9)))
    c = ddim_sample(_smooth_eps, x_T.shape, sched, steps=20, eta=0.5, x_T=x_T, generator=_gen(2))
    assert not torch.allclose(a, c)         # ... and eta > 0 adds noise.


def test_fixed_seed_reproduces_samples(sched):
    shape = (1, 1, 4, 4, 4)
    a = ddpm_sample(_smooth_eps, shape, sched, generator=_gen(11))
    b = ddpm_sample(_smooth_eps, shape, sched, generator=_gen(11))
    c = ddpm_sample(_smooth_eps, shape, sched, generator=_gen(12))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    d = ddim_sample(_smooth_eps, shape, sched, steps=7, eta=1.0, generator=_gen(11))
    e = ddim_sample(_smooth_eps, shape, sched, steps=7, eta=1.0, generator=_gen(11))
    assert torch.equal(d, e)


def test_ddim_full_steps_eta1_equals_ddpm(sched):
    # sigma^2 = beta~_t and the DDIM mean equals the posterior mean when eps is re-derived from
    # the clipped x0: same generator stream -> same sample, with or without clipping.
    shape = (2, 1, 4, 4, 4)
    for clip in (True, False):
        a = ddpm_sample(_smooth_eps, shape, sched, generator=_gen(13), clip_x0=clip)
        b = ddim_sample(_smooth_eps, shape, sched, steps=250, eta=1.0, generator=_gen(13),
                        clip_x0=clip)
        assert torch.allclose(a, b, atol=1e-4)


def test_ddim_timesteps_and_eps_fn_calls(sched):
    assert ddim_timesteps(250, 1) == [249]
    assert ddim_timesteps(250, 2) == [249, 0]
    assert ddim_timesteps(250, 4) == [249, 166, 83, 0]
    assert ddim_timesteps(250, 250) == list(range(249, -1, -1))
    seen, calls = [], []

    def eps_fn(x, t):
        assert t.dtype == torch.long and t.shape == (3,)
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    ddim_sample(eps_fn, (3, 1, 2, 2, 2), sched, steps=4, generator=_gen(0),
                callback=lambda n, ti, x, x0: calls.append((n, ti)))
    assert seen == [249, 166, 83, 0]
    assert calls == [(0, 249), (1, 166), (2, 83), (3, 0)]
    for bad in (0, 251, 2.5):
        with pytest.raises(InputError):
            ddim_timesteps(250, bad)


def test_sample_dispatch_and_errors(sched):
    shape = (1, 1, 2, 2, 2)
    a = sample(_smooth_eps, shape, sched, method="ddpm", generator=_gen(14))
    assert torch.equal(a, ddpm_sample(_smooth_eps, shape, sched, generator=_gen(14)))
    b = sample(_smooth_eps, shape, sched, generator=_gen(14), steps=5)
    assert torch.equal(b, ddim_sample(_smooth_eps, shape, sched, 5, generator=_gen(14)))
    with pytest.raises(InputError, match="steps"):
        sample(_smooth_eps, shape, sched, method="ddpm", steps=10)
    with pytest.raises(InputError, match="method"):
        sample(_smooth_eps, shape, sched, method="euler")
    with pytest.raises(InputError, match="eps_fn"):
        sample(lambda x, t: x[:, :, :1], shape, sched, steps=2)
    with pytest.raises(InputError, match="x_T"):
        ddim_sample(_smooth_eps, (1, 1, 3, 3, 3), sched, 2, x_T=torch.zeros(shape))


# ------------------------------------------------------------ intensity domain
def test_suv_diffusion_round_trip_and_cutoff():
    suv = torch.tensor([-1.0, 0.0, 5.0, 10.0, 20.0, 35.0])
    x = suv_to_diffusion(suv)
    assert torch.allclose(x, torch.tensor([-1.0, -1.0, -0.5, 0.0, 1.0, 1.0]))
    assert torch.allclose(diffusion_to_suv(x), torch.tensor([0.0, 0.0, 5.0, 10.0, 20.0, 20.0]))
    xn = suv_to_diffusion(np.array([2.5, 40.0], dtype=np.float32), cutoff=10.0)
    assert isinstance(xn, np.ndarray) and xn.dtype == np.float32
    assert np.allclose(xn, [-0.5, 1.0])
    inside = torch.rand(1000, generator=_gen(15)) * 20
    assert torch.allclose(diffusion_to_suv(suv_to_diffusion(inside)), inside, atol=1e-5)
    assert diffusion_to_suv(torch.tensor(1.5)).item() == pytest.approx(25.0)  # no clamp back
    with pytest.raises(InputError):
        suv_to_diffusion(suv, cutoff=0)


# ------------------------------------------------------------------ v-parameterisation
def test_v_closed_forms_invert_each_other(sched):
    x0 = torch.rand((3, 1, 4, 4, 4), generator=_gen(11)) * 2 - 1
    noise = torch.randn(x0.shape, generator=_gen(12))
    t = torch.tensor([0, 125, 249])
    x_t = sched.q_sample(x0, t, noise)
    v = sched.v_target(x0, t, noise)
    ab = sched.extract("alpha_bar", t, x0)
    assert torch.allclose(v, ab.sqrt() * noise - (1 - ab).sqrt() * x0, atol=1e-6)
    assert torch.allclose(sched.x0_from_v(x_t, t, v), x0, atol=1e-5)
    assert torch.allclose(sched.eps_from_v(x_t, t, v), noise, atol=1e-5)
    # a v error of 0.01 moves x0 by at most 0.01; through eps it would move it up to ~50 at t = 249
    assert (sched.x0_from_v(x_t, t, v + 0.01) - x0).abs().max() <= 0.01 + 1e-5


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_model_output_target_and_sampling_agree_for_both_predictions(sched, prediction):
    """An AMDiff whose network is an oracle (the true noise or v of a known x0) samples that x0
    from pure noise: the model's eps(), target() and x0_estimate() are consistent."""
    from amdiff.models.amdiff import AMDiff

    model = AMDiff("med_ddpm", denoiser={"channels": [4, 8, 8, 8], "norm_groups": 4,
                                         "attention_heads_channels": 8},
                   timesteps=250, prediction=prediction)
    x0_true = torch.rand((2, 1, 8, 8, 8), generator=_gen(13)) * 1.8 - 0.9
    oracle_eps = _oracle(sched, x0_true)

    def network(x_t, lc, t):
        eps = oracle_eps(x_t, t)
        return eps if prediction == "eps" else sched.v_target(x0_true, t, eps)

    model.network = network
    t = torch.tensor([10, 200])
    noise = torch.randn(x0_true.shape, generator=_gen(14))
    x_t = sched.q_sample(x0_true, t, noise)
    out = model.network(x_t, None, t)
    assert torch.allclose(out, model.target(x0_true, t, noise), atol=1e-4)
    assert torch.allclose(model.x0_estimate(x_t, t, out), x0_true, atol=1e-4)
    lc = torch.zeros_like(x0_true)
    sampled = sample(lambda x, tt: model.eps(x, lc, tt), x0_true.shape, sched, method="ddim",
                     steps=10, generator=_gen(15))
    assert torch.allclose(sampled, x0_true, atol=1e-3)
