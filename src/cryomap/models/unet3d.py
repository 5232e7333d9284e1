"""The report's 3D U-Net (approach 4.1): condition C×D³ → density map 1×D³.

Encoder 16 → 32 → 64 channels (two 3×3×3 conv + norm + ReLU per level, 2× max-pool between
levels), a bottleneck of 256 channels with optional multi-head self-attention, a mirrored decoder
(transposed-conv 2× upsampling, concatenated skip connections) whose skips pass through additive
attention gates (Oktay et al. 2018, "Attention U-Net"), a 1×1×1 output conv and a sigmoid.
Widths, depth (= number of encoder levels), gates, bottleneck attention and normalisation are
configurable. The spec did not name a normalisation; GroupNorm is the default because it behaves
the same at batch size 1 and in DDP (BatchNorm is available as ``norm="batch"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cryomap.models.diffusion.unet import AttentionBlock3d


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        g = 8 if channels % 8 == 0 else 1
        return nn.GroupNorm(g, channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (group, batch, instance, none)")


class ConvBlock(nn.Module):
    """Two 3×3×3 convolutions, each followed by normalisation and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "group") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(in_ch, out_ch, 3, padding=1),
            _norm(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_ch, out_ch, 3, padding=1),
            _norm(norm, out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018, fig. 2).

    α = σ(ψ(ReLU(W_x x + W_g g))), computed at the coarse resolution of the gating signal g and
    trilinearly upsampled to x; the gate returns α·x, suppressing skip features where the coarser
    decoder context says there is nothing.
    """

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int | None = None) -> None:
        super().__init__()
        inter = inter_ch or max(1, skip_ch // 2)
        self.theta_x = nn.Conv3d(skip_ch, inter, kernel_size=2, stride=2, bias=False)
        self.phi_g = nn.Conv3d(gate_ch, inter, kernel_size=1)
        self.psi = nn.Conv3d(inter, 1, kernel_size=1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        theta = self.theta_x(x)
        phi = self.phi_g(g)
        if phi.shape[2:] != theta.shape[2:]:
            phi = F.interpolate(phi, size=theta.shape[2:], mode="trilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        alpha = F.interpolate(alpha, size=x.shape[2:], mode="trilinear", align_corners=False)
        return x * alpha


class UNet3D(nn.Module):
    """3D U-Net with attention gates: [B, C, D, D, D] → [B, 1, D, D, D].

    ``forward`` returns the activated map (sigmoid by default); :meth:`logits` the pre-activation
    output, which the BCE losses use for numerical stability. D must be divisible by
    2^len(widths).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        bottleneck: int = 256,
        attention_gates: bool = True,
        bottleneck_attention: bool = False,
        attention_heads: int = 4,
        norm: str = "group",
        out_activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths:
            raise ValueError("widths must name at least one encoder level")
        self.depth = len(widths)
        self.out_activation = out_activation
        self.encoders = nn.ModuleList()
        ch = in_channels
        for w in widths:
            self.encoders.append(ConvBlock(ch, w, norm))
            ch = w
        self.bottleneck = ConvBlock(ch, bottleneck, norm)
        self.bottleneck_attention = AttentionBlock3d(bottleneck, attention_heads) if bottleneck_attention else None
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoders = nn.ModuleList()
        ch = bottleneck
        for w in reversed(widths):
            self.gates.append(AttentionGate(w, ch) if attention_gates else nn.Identity())
            self.ups.append(nn.ConvTranspose3d(ch, w, kernel_size=2, stride=2))
            self.decoders.append(ConvBlock(2 * w, w, norm))
            ch = w
        self.head = nn.Conv3d(ch, out_channels, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation output [B, 1, D, D, D]."""
        if x.shape[-1] % (2**self.depth) or len(set(x.shape[2:])) != 1:
            raise ValueError(f"input must be a cube whose side divides by {2 ** self.depth}, got {tuple(x.shape[2:])}")
        skips = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
            h = F.max_pool3d(h, 2)
        h = self.bottleneck(h)
        if self.bottleneck_attention is not None:
            h = self.bottleneck_attention(h)
        for up, gate, dec in zip(self.ups, self.gates, self.decoders):
            skip = skips.pop()
            gated = gate(skip, h) if isinstance(gate, AttentionGate) else skip
            h = dec(torch.cat([up(h), gated], dim=1))
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        if self.out_activation == "sigmoid":
            return torch.sigmoid(out)
        if self.out_activation in ("none", "identity"):
            return out
        raise ValueError(f"unknown out_activation {self.out_activation!r} (sigmoid or none)")


class PlainUNet3D(UNet3D):
    """The same U-Net without attention gates or bottleneck attention (benchmark peer)."""

    def __init__(self, **kwargs) -> None:
        kwargs.update(attention_gates=False, bottleneck_attention=False)
        super().__init__(**kwargs)
