"""The denoiser of the conditional diffusion model: a 3D residual U-Net with a timestep embedding.

Layout after improved-diffusion/DISPR, in 3D: input ``cat(x_t, condition)`` (1 + C channels),
residual blocks (GroupNorm → SiLU → Conv3d, timestep embedding added between the two convs),
self-attention at the chosen resolutions (voxels per side), strided-conv downsampling and
nearest-neighbour + conv upsampling, skip connections at every block. Output: ε (1 channel) or,
with ``learn_sigma``, ε and the variance interpolation v (2 channels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 when the width allows (improved-diffusion uses 32 for wider nets)."""
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t [B] → [B, dim] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Residual block with the timestep embedding added after the first convolution."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(norm(in_ch), nn.SiLU(), nn.Conv3d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.out_norm = norm(out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Conv3d(out_ch, out_ch, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv3d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb(emb)[:, :, None, None, None]
        h = self.out_layers(self.out_norm(h))
        return self.skip(x) + h


class AttentionBlock3d(nn.Module):
    """Multi-head self-attention over all voxels of a 3D feature map, with a residual connection."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        while channels % heads:
            heads -= 1
        self.heads = heads
        self.norm = norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        h = self.qkv(self.norm(x).reshape(b, c, -1))  # [B, 3C, N]
        q, k, v = h.reshape(b, 3, self.heads, c // self.heads, -1).permute(1, 0, 2, 4, 3).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, C/H]
        a = a.permute(0, 1, 3, 2).reshape(b, c, -1)
        return x + self.proj(a).reshape(b, c, *spatial)


class _Seq(nn.ModuleList):
    """A list of layers applied in turn; ResBlocks also get the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class DiffusionUNet3d(nn.Module):
    """Residual 3D U-Net denoiser ε_θ(cat(x_t, condition), t).

    Parameters
    ----------
    in_channels: channels of x_t plus the condition (1 + C).
    out_channels: 1 (ε) or 2 (ε, v) with learned variance.
    model_channels: width of the first level.
    channel_mult: width multiplier per level; len = number of levels (input D must divide by
        2^(levels − 1)).
    num_res_blocks: residual blocks per level.
    attention_resolutions: feature-map sizes (voxels per side) that get self-attention, e.g. (8,)
        for D = 32 with 3 levels.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (8,),
        heads: int = 4,
        dropout: float = 0.0,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.levels = len(channel_mult)
        emb_dim = 4 * model_channels
        self.model_channels = model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        attn = set(int(r) for r in attention_resolutions)

        self.input_conv = nn.Conv3d(in_channels, model_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_ch = [model_channels]
        ch, res = model_channels, input_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = _Seq([ResBlock(ch, mult * model_channels, emb_dim, dropout)])
                ch = mult * model_channels
                if res in attn:
                    layers.append(AttentionBlock3d(ch, heads))
                self.down.append(layers)
                skip_ch.append(ch)
            if level != self.levels - 1:
                self.down.append(_Seq([nn.Conv3d(ch, ch, 3, stride=2, padding=1)]))
                skip_ch.append(ch)
                res //= 2
        self.middle = _Seq([ResBlock(ch, ch, emb_dim, dropout), AttentionBlock3d(ch, heads), ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = _Seq([ResBlock(ch + skip_ch.pop(), mult * model_channels, emb_dim, dropout)])
                ch = mult * model_channels
                if res in attn:
                    layers.append(AttentionBlock3d(ch, heads))
                if level and i == num_res_blocks:
                    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    layers.append(nn.Conv3d(ch, ch, 3, padding=1))
                    res *= 2
                self.up.append(layers)
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv3d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [B, in_channels, D, D, D]; t: int64 [B] → [B, out_channels, D, D, D]."""
        if x.shape[-1] % (2 ** (self.levels - 1)):
            raise ValueError(f"box {x.shape[-1]} must be divisible by {2 ** (self.levels - 1)}")
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        h = self.input_conv(x)
        skips = [h]
        for layers in self.down:
            h = layers(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for layers in self.up:
            h = layers(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
