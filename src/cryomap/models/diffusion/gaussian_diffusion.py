"""Conditional Gaussian diffusion (improved DDPM) for 3D density maps.

Written from the equations of Ho et al. 2020 and Nichol & Dhariwal 2021 ("Improved Denoising
Diffusion Probabilistic Models"); DISPR uses the same process with the condition concatenated
to the noisy sample at every step. Notation follows the papers:

* forward  q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)
* posterior q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) with
  μ̃_t = √ᾱ_{t−1} β_t /(1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) · x_t,
  β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t
* reverse p(x_{t−1} | x_t) = N(μ_θ, Σ_θ); the network predicts ε and, with ``learn_sigma``, a
  second channel v: log Σ_θ = v' log β_t + (1 − v') log β̃_t with v' = (v + 1)/2 (paper eq. 15).
* hybrid loss L = L_simple + λ L_vlb (λ = 0.001); the L_vlb term only trains Σ_θ because the
  mean is taken through a stop-gradient (paper, section 3.1).

Timesteps are 0-based (t = 0 … T − 1); t = 0 is the paper's t = 1, whose L_vlb term is the
discretised Gaussian decoder NLL L_0. Data are expected in [−1, 1] (the model's callers map the
[0, 1] labels there); the decoder likelihood uses 255 bins of width 2/255 on that interval as in
the paper's image setting.

Everything is written by hand here (the field has no maintained torch library for this) so that
the maths can be checked term by term against the paper; tests compare each term to its closed
form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from cryomap.models.diffusion.schedules import make_betas

#: A denoiser: ``model(x_in, t) -> output`` where ``x_in = cat(x_t, condition)`` along channels
#: and ``t`` are the original (training) timesteps, int64 of shape [B].
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to [B, 1, 1, ...] for broadcasting against an ``ndim`` tensor."""
    out = values.to(t.device)[t]
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) of the standard normal (exact, via erf)."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, bin_width: float = 2.0 / 255.0
) -> torch.Tensor:
    """log P(x) per element under N(means, e^{2 log_scales}) integrated over x's bin (nats).

    ``x`` lies in [−1, 1]; each value owns the interval x ± bin_width/2, and the first/last bins
    extend to −∞/+∞ (Ho et al. 2020, eq. 13), so the likelihood is a proper distribution.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    upper = _std_normal_cdf(inv_std * (centered + bin_width / 2))
    lower = _std_normal_cdf(inv_std * (centered - bin_width / 2))
    edge = 1.0 - bin_width / 2 - 1e-6
    cdf_plus = torch.where(x > edge, torch.ones_like(upper), upper)
    cdf_min = torch.where(x < -edge, torch.zeros_like(lower), lower)
    prob = (cdf_plus - cdf_min).clamp(min=1e-12)
    return torch.log(prob)


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


class GaussianDiffusion:
    """The diffusion process for a schedule of T steps, optionally respaced to fewer steps.

    Parameters
    ----------
    betas:
        β_t, float64, length T (see :func:`make_betas`).
    learn_sigma:
        The model outputs 2 channels (ε, v) and learns the reverse variance; otherwise 1 channel
        (ε) and the reverse variance is fixed to β̃_t.
    timestep_map:
        For a respaced process, the original timestep each step corresponds to (what the model
        was trained on); identity by default.
    clip_denoised:
        Clip the predicted x_0 to [−1, 1] when sampling.
    vlb_weight:
        λ of the hybrid loss (0.001 in the paper).
    prediction:
        What the mean channel of the network predicts: ``"eps"`` (the paper: ε) or ``"v"``
        (v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, Salimans & Ho 2022). The two carry the same information
        (x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂, ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂); they differ in what a
        network has to output where x_t is nearly pure noise: ε̂ must then equal x_t up to a
        correction √ᾱ_t x_0 of ~10⁻² (so a map error is weighted by SNR_t ≈ 0 in L_simple and
        x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t amplifies any error ~100×), while v̂ ≈ −x_0 is the map
        itself, and ‖v − v̂‖² = (1 + SNR_t)‖x_0 − x̂_0‖². The learned variance, L_vlb (with the
        stop-gradient on the mean channel) and the samplers are the same for both.
    mse_weighting, mse_weight_cap:
        Weight w_t of the ε term: ``"uniform"`` (w_t = 1, the paper's L_simple) or
        ``"inv_snr"``: w_t = clip(1/SNR_t, 1, cap) with SNR_t = ᾱ_t/(1 − ᾱ_t). Since
        ‖ε − ε̂‖² = SNR_t·‖x_0 − x̂_0‖², uniform weights give an error in the predicted map a
        weight of SNR_t, which vanishes at high noise (0.02 at t = 900 of the cosine schedule):
        exactly where the map must come from the condition, because x_t holds almost nothing of
        x_0. ``inv_snr`` is the "truncated SNR" weighting max(SNR_t, 1)·‖x_0 − x̂_0‖² of Salimans &
        Ho 2022 (sec. 4), capped for the ε parametrisation (whose x̂_0 divides by √ᾱ_t).
    """

    def __init__(
        self,
        betas: np.ndarray,
        *,
        learn_sigma: bool = True,
        timestep_map: Sequence[int] | None = None,
        clip_denoised: bool = True,
        vlb_weight: float = 0.001,
        original_steps: int | None = None,
        mse_weighting: str = "uniform",
        mse_weight_cap: float = 20.0,
        prediction: str = "eps",
    ) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1D array in (0, 1]")
        self.num_timesteps = int(betas.shape[0])
        self.original_steps = int(original_steps or self.num_timesteps)
        self.learn_sigma = learn_sigma
        self.clip_denoised = clip_denoised
        self.vlb_weight = vlb_weight
        if mse_weighting not in ("uniform", "inv_snr"):
            raise ValueError(f"unknown mse_weighting {mse_weighting!r} (uniform or inv_snr)")
        self.mse_weighting, self.mse_weight_cap = mse_weighting, float(mse_weight_cap)
        if prediction not in ("eps", "v"):
            raise ValueError(f"unknown prediction {prediction!r} (eps or v)")
        self.prediction = prediction
        tm = np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map)
        self.timestep_map = torch.as_tensor(tm, dtype=torch.long)

        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        self.alphas_cumprod_np = ac

        def T(a: np.ndarray) -> torch.Tensor:  # float64 tables; results are cast to the input dtype
            return torch.as_tensor(a, dtype=torch.float64)

        self.betas = T(betas)
        self.alphas_cumprod = T(ac)
        self.alphas_cumprod_prev = T(ac_prev)
        self.sqrt_alphas_cumprod = T(np.sqrt(ac))
        self.sqrt_one_minus_alphas_cumprod = T(np.sqrt(1.0 - ac))
        self.log_one_minus_alphas_cumprod = T(np.log(1.0 - ac))
        self.sqrt_recip_alphas_cumprod = T(np.sqrt(1.0 / ac))
        self.sqrt_recipm1_alphas_cumprod = T(np.sqrt(1.0 / ac - 1.0))
        self.posterior_variance = T(post_var)
        # β̃_0 = 0; its log is replaced by β̃_1 so log-variances stay finite (the t = 0 term is
        # the decoder NLL, where this value only sets the lower end of the learned range).
        self.posterior_log_variance_clipped = T(np.log(np.append(post_var[1], post_var[1:])))
        self.posterior_mean_coef1 = T(betas * np.sqrt(ac_prev) / (1.0 - ac))
        self.posterior_mean_coef2 = T((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac))
        snr = ac / (1.0 - ac)
        self.mse_weights = T(np.clip(1.0 / snr, 1.0, self.mse_weight_cap) if mse_weighting == "inv_snr" else np.ones_like(ac))

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def from_schedule(cls, schedule: str = "cosine", steps: int = 1000, **kwargs) -> "GaussianDiffusion":
        """A process of ``steps`` steps with the named β schedule (linear or cosine)."""
        return cls(make_betas(schedule, steps), **kwargs)

    def respaced(self, steps: int) -> "GaussianDiffusion":
        """The same process on ``steps`` evenly spaced timesteps (improved DDPM, section 4).

        The new β_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}} keeps ᾱ at the kept timesteps identical, so the
        trained ε-model applies unchanged; learned variances are re-interpolated between the
        respaced β_i and β̃_i. Used by fast ancestral sampling and by DDIM.
        """
        if steps <= 0 or steps > self.num_timesteps:
            raise ValueError(f"sampling steps must be in 1..{self.num_timesteps}, got {steps}")
        keep = np.unique(np.round(np.linspace(0, self.num_timesteps - 1, steps)).astype(np.int64))
        ac = self.alphas_cumprod_np[keep]
        ac_prev = np.append(1.0, ac[:-1])
        new_betas = 1.0 - ac / ac_prev
        base_map = self.timestep_map.numpy()
        return GaussianDiffusion(
            new_betas,
            learn_sigma=self.learn_sigma,
            timestep_map=base_map[keep],
            clip_denoised=self.clip_denoised,
            vlb_weight=self.vlb_weight,
            original_steps=self.original_steps,
            mse_weighting=self.mse_weighting,
            mse_weight_cap=self.mse_weight_cap,
            prediction=self.prediction,
        )

    # ----------------------------------------------------------------- forward process
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        nd = x_start.ndim
        mean = _gather(self.sqrt_alphas_cumprod, t, nd).to(x_start.dtype) * x_start
        var = _gather(1.0 - self.alphas_cumprod, t, nd).to(x_start.dtype).expand_as(x_start)
        logvar = _gather(self.log_one_minus_alphas_cumprod, t, nd).to(x_start.dtype).expand_as(x_start)
        return mean, var, logvar

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        if noise is None:
            noise = torch.randn_like(x_start)
        nd = x_start.ndim
        a = _gather(self.sqrt_alphas_cumprod, t, nd).to(x_start.dtype)
        b = _gather(self.sqrt_one_minus_alphas_cumprod, t, nd).to(x_start.dtype)
        return a * x_start + b * noise

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean μ̃_t, variance β̃_t and clipped log-variance of q(x_{t−1} | x_t, x_0)."""
        nd = x_t.ndim
        c1 = _gather(self.posterior_mean_coef1, t, nd).to(x_t.dtype)
        c2 = _gather(self.posterior_mean_coef2, t, nd).to(x_t.dtype)
        mean = c1 * x_start + c2 * x_t
        var = _gather(self.posterior_variance, t, nd).to(x_t.dtype).expand_as(x_t)
        logvar = _gather(self.posterior_log_variance_clipped, t, nd).to(x_t.dtype).expand_as(x_t)
        return mean, var, logvar

    # ----------------------------------------------------------------- reverse process
    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t."""
        nd = x_t.ndim
        return _gather(self.sqrt_recip_alphas_cumprod, t, nd).to(x_t.dtype) * x_t - _gather(
            self.sqrt_recipm1_alphas_cumprod, t, nd
        ).to(x_t.dtype) * eps

    def eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """ε implied by x_t and x̂_0 (inverse of :meth:`predict_xstart_from_eps`)."""
        nd = x_t.ndim
        return (_gather(self.sqrt_recip_alphas_cumprod, t, nd).to(x_t.dtype) * x_t - x_start) / _gather(
            self.sqrt_recipm1_alphas_cumprod, t, nd
        ).to(x_t.dtype)

    def model_output(self, model: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Run the denoiser on cat(x_t, condition) at the original timesteps of step ``t``."""
        return model(torch.cat([x_t, cond], dim=1), self.timestep_map.to(t.device)[t])

    def p_mean_variance_from_output(
        self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Mean, variance, log-variance and x̂_0 of p(x_{t−1} | x_t) from a model output."""
        clip = self.clip_denoised if clip_denoised is None else clip_denoised
        nd = x_t.ndim
        if self.learn_sigma:
            if out.shape[1] != 2 * x_t.shape[1]:
                raise ValueError(f"learn_sigma needs {2 * x_t.shape[1]} output channels, model gave {out.shape[1]}")
            pred, v = out.chunk(2, dim=1)
            min_log = _gather(self.posterior_log_variance_clipped, t, nd).to(x_t.dtype)
            max_log = _gather(torch.log(self.betas), t, nd).to(x_t.dtype)
            frac = (v + 1.0) / 2.0
            logvar = frac * max_log + (1.0 - frac) * min_log
            var = torch.exp(logvar)
        else:
            pred = out
            var = _gather(self.posterior_variance, t, nd).to(x_t.dtype).expand_as(x_t)
            logvar = _gather(self.posterior_log_variance_clipped, t, nd).to(x_t.dtype).expand_as(x_t)
        if self.prediction == "v":
            a = _gather(self.sqrt_alphas_cumprod, t, nd).to(x_t.dtype)
            b = _gather(self.sqrt_one_minus_alphas_cumprod, t, nd).to(x_t.dtype)
            x0, eps = a * x_t - b * pred, b * x_t + a * pred
        else:
            eps = pred
            x0 = self.predict_xstart_from_eps(x_t, t, eps)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        return {"mean": mean, "variance": var, "log_variance": logvar, "pred_xstart": x0, "eps": eps}

    def p_mean_variance(
        self, model: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, clip_denoised: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """p(x_{t−1} | x_t, condition): see :meth:`p_mean_variance_from_output`."""
        return self.p_mean_variance_from_output(self.model_output(model, x_t, t, cond), x_t, t, clip_denoised)

    # ----------------------------------------------------------------- losses
    def vb_terms_bpd(
        self, out: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """L_vlb term per sample in bits per dimension: KL(q(x_{t−1}|x_t,x_0) ‖ p) for t > 0, the
        discretised decoder NLL −log p(x_0 | x_1) at t = 0."""
        true_mean, _, true_logvar = self.q_posterior_mean_variance(x_start, x_t, t)
        p = self.p_mean_variance_from_output(out, x_t, t, clip_denoised=False)
        kl = _mean_flat(normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, p["mean"], 0.5 * p["log_variance"])
        nll = _mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model: Denoiser,
        x_start: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        vb_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses: ``mse`` (L_simple on ε, or on v with ``prediction="v"``), ``vb`` (λ·T·L_t, learned Σ only) and
        ``loss`` = w_t·``mse`` + ``vb`` (w_t = 1 unless ``mse_weighting`` says otherwise).
        ``vb_weight`` ([B], from :meth:`sample_timesteps`) importance-weights ``vb`` when t was not
        drawn uniformly.

        L_vlb = Σ_t L_t is estimated by one uniformly drawn t, i.e. T·L_t; weighted by λ = 0.001
        that is the paper's hybrid objective. The stop-gradient on ε in the L_vlb term means that
        term trains only the variance channel.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        out = self.model_output(model, x_t, t, cond)
        terms: dict[str, torch.Tensor] = {}
        if self.learn_sigma:
            pred, v = out.chunk(2, dim=1)
            frozen = torch.cat([pred.detach(), v], dim=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x_start, x_t, t) * (self.vlb_weight * self.num_timesteps)
            if vb_weight is not None:
                terms["vb"] = terms["vb"] * vb_weight.to(device=x_start.device, dtype=terms["vb"].dtype)
        else:
            pred = out
            terms["vb"] = torch.zeros(x_start.shape[0], dtype=x_start.dtype, device=x_start.device)
        if self.prediction == "v":
            nd = x_start.ndim
            target = (_gather(self.sqrt_alphas_cumprod, t, nd).to(x_start.dtype) * noise
                      - _gather(self.sqrt_one_minus_alphas_cumprod, t, nd).to(x_start.dtype) * x_start)
        else:
            target = noise
        terms["mse"] = _mean_flat((target - pred) ** 2)
        w = self.mse_weights.to(t.device)[t].to(x_start.dtype)
        terms["loss"] = w * terms["mse"] + terms["vb"]
        return terms

    def sample_timesteps(
        self, n: int, kind: str = "uniform", generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training timesteps ``t`` (int64, [n]) and the importance weights of their L_vlb terms.

        ``uniform`` (the paper): p(t) = 1/T, weights 1. ``high_noise``: p(t) = (2t + 1)/T², so
        noisier steps (where the map must come from the condition) are drawn more often; the
        weight 1/(T·p(t)) = T/(2t + 1) keeps T·L_t an unbiased estimate of L_vlb (the ε/v term
        is a chosen weighting anyway, so it is left as drawn).
        """
        T = self.num_timesteps
        if kind == "uniform":
            t = torch.randint(0, T, (n,), generator=generator)
            return t, torch.ones(n, dtype=torch.float64)
        if kind == "high_noise":
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            t = torch.clamp((T * torch.sqrt(u)).long(), max=T - 1)
            return t, T / (2.0 * t.double() + 1.0)
        raise ValueError(f"unknown timestep sampling {kind!r} (uniform, high_noise)")

    # ----------------------------------------------------------------- samplers
    @torch.no_grad()
    def p_sample_loop(
        self,
        model: Denoiser,
        cond: torch.Tensor,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling x_T → x_0 with the condition re-concatenated at every step."""
        x = noise if noise is not None else torch.randn(*shape, generator=generator, device=cond.device, dtype=cond.dtype)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            p = self.p_mean_variance(model, x, t, cond)
            if i > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = p["mean"] + torch.exp(0.5 * p["log_variance"]) * z
            else:
                x = p["mean"]
            if on_step is not None:
                on_step(i)
        return x

    @torch.no_grad()
    def ddim_sample_loop(
        self,
        model: Denoiser,
        cond: torch.Tensor,
        shape: Sequence[int],
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """DDIM sampling (Song et al. 2021) over this process's steps; η = 0 is deterministic.

        x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ z,
        σ = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}). Use :meth:`respaced` for fewer steps.
        """
        x = noise if noise is not None else torch.randn(*shape, generator=generator, device=cond.device, dtype=cond.dtype)
        nd = x.ndim
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            p = self.p_mean_variance(model, x, t, cond)
            x0 = p["pred_xstart"]
            eps = self.eps_from_xstart(x, t, x0)  # consistent with the clipped x̂_0
            ab = _gather(self.alphas_cumprod, t, nd).to(x.dtype)
            ab_prev = _gather(self.alphas_cumprod_prev, t, nd).to(x.dtype)
            sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
            x = x0 * torch.sqrt(ab_prev) + torch.sqrt((1 - ab_prev - sigma**2).clamp(min=0)) * eps
            if i > 0 and eta > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + sigma * z
            if on_step is not None:
                on_step(i)
        return x

    @torch.no_grad()
    def sample_ensemble(
        self,
        model: Denoiser,
        cond: torch.Tensor,
        samples: int = 4,
        steps: int | None = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        seed: int = 0,
        batch: int = 1,
        on_step: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K samples for one condition [1, C, D, D, D] → (mean, per-voxel std), each [1, 1, D, D, D].

        ``steps`` respaces the process (None: all T steps); ``sampler`` is "ddim" or "ddpm"
        (ancestral). Sample k uses a generator seeded ``seed + k``, so results do not depend on
        ``batch`` (how many samples run together).
        """
        proc = self if steps is None or steps >= self.num_timesteps else self.respaced(steps)
        if cond.shape[0] != 1:
            raise ValueError("sample_ensemble takes one condition (batch size 1)")
        shape = (1, 1, *cond.shape[2:])
        noises = []
        gens = []
        for k in range(samples):
            g = torch.Generator(device=cond.device).manual_seed(int(seed) + k)
            noises.append(torch.randn(*shape, generator=g, device=cond.device, dtype=cond.dtype))
            gens.append(g)
        outs = []
        for start in range(0, samples, batch):
            idx = list(range(start, min(samples, start + batch)))
            x_T = torch.cat([noises[k] for k in idx], 0)
            c = cond.expand(len(idx), *cond.shape[1:])
            # one generator per chunk: the chunk's first sample's; with batch = 1 each sample is
            # fully determined by its own seed
            g = gens[idx[0]]
            if sampler == "ddim":
                outs.append(proc.ddim_sample_loop(model, c, x_T.shape, eta=eta, generator=g, noise=x_T, on_step=on_step))
            elif sampler == "ddpm":
                outs.append(proc.p_sample_loop(model, c, x_T.shape, generator=g, noise=x_T, on_step=on_step))
            else:
                raise ValueError(f"unknown sampler {sampler!r} (ddim or ddpm)")
        x = torch.cat(outs, 0)
        mean = x.mean(0, keepdim=True)
        std = x.std(0, keepdim=True, unbiased=False) if samples > 1 else torch.zeros_like(mean)
        return mean, std


def sample_timesteps(batch: int, num_timesteps: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Uniform t ∈ {0 … T − 1} for a training batch."""
    return torch.randint(0, num_timesteps, (batch,), generator=generator, device=device)

