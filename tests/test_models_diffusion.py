"""The diffusion process against its closed forms (Ho et al. 2020; Nichol & Dhariwal 2021)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from cryomap.models.diffusion.gaussian_diffusion import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from cryomap.models.diffusion.schedules import make_betas


@pytest.fixture(scope="module")
def diff() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", 1000, learn_sigma=True)


def test_schedules_closed_form():
    lin = make_betas("linear", 1000)
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02) and len(lin) == 1000
    cos = make_betas("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = np.cumprod(1 - cos)
    for t in (0, 10, 500, 900):  # ᾱ_t = f(t + 1)/f(0) where no β was clipped
        assert ab[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert cos.max() <= 0.999
    with pytest.raises(ValueError):
        make_betas("quadratic", 10)


def test_q_sample_matches_closed_form_mean_and_variance(diff):
    betas = make_betas("cosine", 1000)
    ab = np.cumprod(1.0 - betas)
    x0 = torch.linspace(-1, 1, 7, dtype=torch.float64).reshape(1, 1, 7)
    for t_val in (0, 250, 999):
        t = torch.tensor([t_val])
        mean, var, logvar = diff.q_mean_variance(x0, t)
        torch.testing.assert_close(mean, math.sqrt(ab[t_val]) * x0)
        torch.testing.assert_close(var, torch.full_like(x0, 1 - ab[t_val]))
        torch.testing.assert_close(logvar, torch.log(var))
        # Monte Carlo: draws of q_sample have that mean and variance
        g = torch.Generator().manual_seed(t_val)
        n = 40_000
        noise = torch.randn(n, 1, 7, generator=g, dtype=torch.float64)
        xt = diff.q_sample(x0.expand(n, 1, 7), t.expand(n), noise)
        se = math.sqrt((1 - ab[t_val]) / n)
        assert (xt.mean(0) - mean[0]).abs().max() < 5 * se + 1e-12
        assert (xt.var(0) / var[0] - 1).abs().max() < 0.05


def test_posterior_matches_bayes_rule(diff):
    """q(x_{t−1}|x_t,x_0) ∝ q(x_t|x_{t−1}) q(x_{t−1}|x_0): product of two Gaussians, derived here."""
    betas = make_betas("cosine", 1000)
    alphas = 1 - betas
    ab = np.cumprod(alphas)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    xt = torch.randn(3, 1, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 400, 999])
    mean, var, logvar = diff.q_posterior_mean_variance(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        prec = 1 / (1 - ab[ti - 1]) + alphas[ti] / betas[ti]
        v = 1 / prec
        m = v * (math.sqrt(ab[ti - 1]) * x0[i] / (1 - ab[ti - 1]) + math.sqrt(alphas[ti]) * xt[i] / betas[ti])
        torch.testing.assert_close(mean[i], m, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(var[i], torch.full_like(m, v), rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(logvar[i], torch.full_like(m, math.log(v)), rtol=1e-9, atol=1e-12)
    # t = 0: the posterior collapses onto x_0
    m0, v0, _ = diff.q_posterior_mean_variance(x0, xt, torch.tensor([0, 0, 0]))
    torch.testing.assert_close(m0, x0)
    assert float(v0.abs().max()) == 0.0


def test_learned_variance_interpolates_between_beta_and_beta_tilde(diff):
    x = torch.zeros(2, 1, 2, 2, 2, dtype=torch.float64)
    t = torch.tensor([5, 500])
    for v_val, expect in ((1.0, torch.log(diff.betas[t])), (-1.0, diff.posterior_log_variance_clipped[t])):
        out = torch.cat([torch.zeros_like(x), torch.full_like(x, v_val)], 1)
        p = diff.p_mean_variance_from_output(out, x, t)
        torch.testing.assert_close(p["log_variance"][:, 0, 0, 0, 0], expect)


def test_decoder_likelihood_is_a_distribution_over_bins():
    grid = torch.linspace(-1, 1, 256, dtype=torch.float64)  # the 256 bin centres, width 2/255
    for mean, log_scale in ((0.3, -2.0), (-0.9, -4.0), (0.0, 0.5)):
        p = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.full_like(grid, log_scale)).exp()
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)
    # interior bin = Φ(upper) − Φ(lower) (scipy)
    x, m, s = 0.2, 0.1, 0.05
    ref = norm.cdf((x + 1 / 255 - m) / s) - norm.cdf((x - 1 / 255 - m) / s)
    got = discretized_gaussian_log_likelihood(torch.tensor([x], dtype=torch.float64), torch.tensor([m], dtype=torch.float64),
                                              torch.tensor([math.log(s)], dtype=torch.float64)).exp()
    assert float(got) == pytest.approx(ref, rel=1e-9)


def test_vlb_is_decoder_nll_at_t0_and_kl_elsewhere(diff):
    g = torch.Generator().manual_seed(1)
    x0 = (torch.randint(0, 256, (2, 1, 3, 3, 3), generator=g).double() / 255) * 2 - 1
    xt = torch.randn(2, 1, 3, 3, 3, generator=g, dtype=torch.float64)
    out = torch.randn(2, 2, 3, 3, 3, generator=g, dtype=torch.float64) * 0.3
    t = torch.tensor([0, 300])
    vb = diff.vb_terms_bpd(out, x0, xt, t)
    p = diff.p_mean_variance_from_output(out, xt, t, clip_denoised=False)
    # t = 0: −log of the Gaussian mass of x_0's bin (edges to ±∞), with scipy
    mu = p["mean"][0].numpy()
    sd = np.exp(0.5 * p["log_variance"][0].numpy())
    xv = x0[0].numpy()
    upper = np.where(xv > 1 - 1e-3, 1.0, norm.cdf((xv + 1 / 255 - mu) / sd))
    lower = np.where(xv < -1 + 1e-3, 0.0, norm.cdf((xv - 1 / 255 - mu) / sd))
    nll_bits = -np.log(np.maximum(upper - lower, 1e-12)).mean() / math.log(2)
    assert float(vb[0]) == pytest.approx(nll_bits, rel=1e-7)
    # t > 0: KL between the true posterior and p, from the closed form of two Gaussians
    tm, tv, _ = diff.q_posterior_mean_variance(x0, xt, t)
    pm, pv = p["mean"][1], p["log_variance"][1].exp()
    kl = 0.5 * (torch.log(pv / tv[1]) + tv[1] / pv + (tm[1] - pm) ** 2 / pv - 1)
    assert float(vb[1]) == pytest.approx(float(kl.mean()) / math.log(2), rel=1e-7)
    assert float(normal_kl(tm[1], tv[1].log(), tm[1], tv[1].log()).abs().max()) == 0.0


def test_hybrid_loss_stops_the_gradient_of_the_vlb_into_the_mean(diff):
    x0 = torch.rand(2, 1, 4, 4, 4) * 2 - 1
    cond = torch.randn(2, 1, 4, 4, 4)
    param = torch.zeros(2, 2, 4, 4, 4, requires_grad=True)
    model = lambda x_in, t: param + 0.0 * x_in[:, :1]  # noqa: E731  (output = the parameter)
    terms = diff.training_losses(model, x0, cond, torch.tensor([3, 600]))
    terms["vb"].sum().backward()
    assert float(param.grad[:, 0].abs().max()) == 0.0  # ε channel gets no L_vlb gradient
    assert float(param.grad[:, 1].abs().max()) > 0.0  # the variance channel does
    param.grad = None
    terms = diff.training_losses(model, x0, cond, torch.tensor([3, 600]))
    terms["mse"].sum().backward()
    assert float(param.grad[:, 0].abs().max()) > 0.0 and float(param.grad[:, 1].abs().max()) == 0.0


def _toy_model(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed smooth 'denoiser' depending on x_t, the condition and t."""
    x, c = x_in[:, :1], x_in[:, 1:2]
    s = (t.float() / 1000).reshape(-1, 1, 1, 1, 1)
    return torch.cat([torch.tanh(0.5 * x + 0.3 * c) * (1 - s), torch.tanh(c) * 0.5], 1)


def test_ddim_eta0_is_deterministic_and_eta1_is_not(diff):
    cond = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    proc = diff.respaced(10)
    xT = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    a = proc.ddim_sample_loop(_toy_model, cond, xT.shape, eta=0.0, noise=xT, generator=torch.Generator().manual_seed(10))
    b = proc.ddim_sample_loop(_toy_model, cond, xT.shape, eta=0.0, noise=xT, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    c = proc.ddim_sample_loop(_toy_model, cond, xT.shape, eta=1.0, noise=xT, generator=torch.Generator().manual_seed(10))
    d = proc.ddim_sample_loop(_toy_model, cond, xT.shape, eta=1.0, noise=xT, generator=torch.Generator().manual_seed(11))
    assert not torch.equal(c, d)
    assert float(a.abs().max()) <= 1.0 + 1e-5  # x̂_0 is clipped to the data range


def test_respacing_keeps_alpha_bar_and_maps_timesteps(diff):
    r = diff.respaced(50)
    assert r.num_timesteps == 50
    kept = r.timestep_map.numpy()
    assert kept[0] == 0 and kept[-1] == 999
    np.testing.assert_allclose(r.alphas_cumprod.numpy(), diff.alphas_cumprod.numpy()[kept], rtol=1e-9)


def test_ensemble_mean_std_and_reproducibility(diff):
    cond = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    m1, s1 = diff.sample_ensemble(_toy_model, cond, samples=3, steps=5, seed=7)
    m2, s2 = diff.sample_ensemble(_toy_model, cond, samples=3, steps=5, seed=7, batch=3)
    assert m1.shape == (1, 1, 8, 8, 8) and s1.shape == (1, 1, 8, 8, 8)
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(s1, s2)
    assert float(s1.mean()) > 0  # different starting noise → spread
    # K = 1 by hand equals the ensemble's first member
    proc = diff.respaced(5)
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(7))
    one = proc.ddim_sample_loop(_toy_model, cond, x.shape, noise=x)
    m_one, s_one = diff.sample_ensemble(_toy_model, cond, samples=1, steps=5, seed=7)
    torch.testing.assert_close(one, m_one)
    assert float(s_one.abs().max()) == 0.0
    # ancestral sampling runs and differs from DDIM
    anc, _ = diff.sample_ensemble(_toy_model, cond, samples=1, steps=5, seed=7, sampler="ddpm")
    assert anc.shape == one.shape and not torch.equal(anc, one)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_samplers_with_an_oracle_denoiser_return_the_condition(prediction):
    """A denoiser that knows x_0 (here: the condition channel) predicts the exact ε of x_t at the
    *original* timestep it is given. DDIM (η = 0, respaced) then lands on x_0 at every step and
    returns it, and ancestral sampling's last step (posterior mean at t = 0) returns it too. This
    fails if the condition is not re-concatenated at every step, if respaced steps pass the wrong
    original timestep to the model, or if the DDIM/posterior updates are wrong."""
    diff = GaussianDiffusion.from_schedule("cosine", 1000, prediction=prediction)
    ab = diff.alphas_cumprod

    def oracle(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, x0 = x_in[:, :1], x_in[:, 1:2]
        a = ab[t].to(x.dtype).reshape(-1, 1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        out = eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0  # v
        return torch.cat([out, torch.zeros_like(out)], 1)

    g = torch.Generator().manual_seed(5)
    x0 = (torch.rand(2, 1, 6, 6, 6, generator=g, dtype=torch.float64) * 1.8 - 0.9)
    for steps in (50, 7):
        proc = diff.respaced(steps)
        xT = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        out = proc.ddim_sample_loop(oracle, x0, x0.shape, noise=xT)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)
    anc = diff.respaced(10).p_sample_loop(oracle, x0, x0.shape, generator=torch.Generator().manual_seed(1),
                                          noise=torch.randn(x0.shape, generator=g, dtype=torch.float64))
    torch.testing.assert_close(anc, x0, rtol=0, atol=1e-6)


def test_inv_snr_weighting_of_the_eps_term():
    """w_t = clip(1/SNR_t, 1, cap): 1 where SNR ≥ 1, the cap at the noisiest steps, and
    w_t·‖ε − ε̂‖² = max(1, 1/SNR)·SNR·‖x_0 − x̂_0‖² (truncated-SNR weighting of the map error)."""
    uni = GaussianDiffusion.from_schedule("cosine", 1000)
    snr_w = GaussianDiffusion.from_schedule("cosine", 1000, mse_weighting="inv_snr", mse_weight_cap=20.0)
    ab = np.cumprod(1 - make_betas("cosine", 1000))
    snr = ab / (1 - ab)
    w = snr_w.mse_weights.numpy()
    assert (uni.mse_weights.numpy() == 1).all()
    np.testing.assert_allclose(w, np.clip(1 / snr, 1, 20))
    assert w[0] == 1.0 and w[999] == 20.0 and 1 < w[700] < 20
    x0 = torch.rand(2, 1, 4, 4, 4, dtype=torch.float64) * 2 - 1
    cond = torch.randn(2, 1, 4, 4, 4, dtype=torch.float64)
    out = torch.randn(2, 2, 4, 4, 4, dtype=torch.float64)
    model = lambda x_in, t: out  # noqa: E731
    t = torch.tensor([10, 700])
    noise = torch.randn(2, 1, 4, 4, 4, dtype=torch.float64)
    a, b = uni.training_losses(model, x0, cond, t, noise), snr_w.training_losses(model, x0, cond, t, noise)
    torch.testing.assert_close(a["mse"], b["mse"])
    torch.testing.assert_close(b["loss"], torch.as_tensor(w[[10, 700]]) * a["mse"] + a["vb"])
    # the weighted ε error equals the truncated-SNR weighted map error
    x_t = uni.q_sample(x0, t, noise)
    x0_hat = uni.predict_xstart_from_eps(x_t, t, out[:, :1])
    map_err = ((x0 - x0_hat) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(b["loss"] - b["vb"], torch.as_tensor(np.maximum(snr[[10, 700]], 1.0)) * map_err)
    with pytest.raises(ValueError):
        GaussianDiffusion.from_schedule("cosine", 10, mse_weighting="p2")


def test_v_prediction_loss_weights_the_map_error_by_one_plus_snr():
    """‖v − v̂‖² = (1 + SNR_t)‖x_0 − x̂_0‖² = ‖ε − ε̂‖²/ᾱ_t, and L_vlb sees the same p(x_{t−1}|x_t)
    whichever channel layout produced it."""
    vd = GaussianDiffusion.from_schedule("cosine", 1000, prediction="v")
    ed = GaussianDiffusion.from_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(8)
    x0 = torch.rand(2, 1, 4, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(2, 1, 4, 4, 4, generator=g, dtype=torch.float64)
    out = torch.randn(2, 2, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([30, 900])
    terms = vd.training_losses(lambda x_in, tt: out, x0, torch.zeros_like(x0), t, noise)
    x_t = vd.q_sample(x0, t, noise)
    p = vd.p_mean_variance_from_output(out, x_t, t, clip_denoised=False)
    ab = vd.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    snr = (ab / (1 - ab)).flatten()
    map_err = ((x0 - p["pred_xstart"]) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(terms["mse"], (1 + snr) * map_err)
    torch.testing.assert_close(terms["mse"], ((noise - p["eps"]) ** 2).mean(dim=(1, 2, 3, 4)) / ab.flatten())
    # the ε model given the implied ε̂ predicts the same reverse step
    p_eps = ed.p_mean_variance_from_output(torch.cat([p["eps"], out[:, 1:]], 1), x_t, t, clip_denoised=False)
    torch.testing.assert_close(p_eps["mean"], p["mean"])
    torch.testing.assert_close(
        ed.vb_terms_bpd(torch.cat([p["eps"], out[:, 1:]], 1), x0, x_t, t), vd.vb_terms_bpd(out, x0, x_t, t))
    with pytest.raises(ValueError):
        GaussianDiffusion.from_schedule("cosine", 10, prediction="x0")


def test_high_noise_timestep_sampling_is_importance_weighted():
    """p(t) ∝ 2t + 1, and weighting by 1/(T p(t)) keeps T·L_t an unbiased estimate of Σ_t L_t."""
    from cryomap.models.diffusion.gaussian_diffusion import GaussianDiffusion

    T = 50
    diff = GaussianDiffusion.from_schedule("cosine", T)
    t, w = diff.sample_timesteps(400_000, "high_noise", generator=torch.Generator().manual_seed(0))
    freq = np.bincount(t.numpy(), minlength=T) / len(t)
    expected = (2 * np.arange(T) + 1) / T**2
    np.testing.assert_allclose(freq, expected, atol=6e-4)
    np.testing.assert_allclose(w.numpy(), T / (2 * t.numpy() + 1.0))
    f = np.cos(np.arange(T) / 7.0) + 2.0  # any per-t loss
    assert float(np.mean(w.numpy() * f[t.numpy()])) == pytest.approx(f.mean(), rel=0.01)
    t_u, w_u = diff.sample_timesteps(8, "uniform", generator=torch.Generator().manual_seed(3))
    assert torch.equal(t_u, torch.randint(0, T, (8,), generator=torch.Generator().manual_seed(3)))
    assert torch.all(w_u == 1)


def test_vb_weight_scales_only_the_vlb_term():
    from cryomap.models.diffusion.gaussian_diffusion import GaussianDiffusion

    diff = GaussianDiffusion.from_schedule("cosine", 20, learn_sigma=True)
    x0 = torch.rand(3, 1, 4, 4, 4) * 2 - 1
    cond = torch.zeros_like(x0)
    t = torch.tensor([0, 7, 19])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    model = lambda x_in, tt: 0.1 * torch.cat([x_in[:, :1], -x_in[:, :1]], dim=1)  # noqa: E731
    plain = diff.training_losses(model, x0, cond, t, noise)
    w = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    weighted = diff.training_losses(model, x0, cond, t, noise, vb_weight=w)
    torch.testing.assert_close(weighted["vb"], plain["vb"] * w.float())
    torch.testing.assert_close(weighted["mse"], plain["mse"])
    torch.testing.assert_close(weighted["loss"] - weighted["vb"], plain["loss"] - plain["vb"])
