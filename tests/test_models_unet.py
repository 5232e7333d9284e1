"""The report's 3D U-Net and the diffusion denoiser: shapes per condition mode, gating, overfitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryomap.models.losses import dice_iou, pearson, soft_dice, unet_loss
from cryomap.models.registry import available, build_model
from cryomap.models.unet3d import AttentionGate, UNet3D
from cryomap.train.data import synthetic_pairs

D = 16


def _condition(mode: str) -> np.ndarray:
    from cryomap.datasets.conditions import MODES, build_condition

    assert mode in MODES
    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 24, 24)).astype(np.float32)
    classes = rng.standard_normal((6, 24, 24)).astype(np.float32)
    latents = rng.standard_normal((600, 8)).astype(np.float32)
    return build_condition(images, mode, D, rng, class_averages=classes, latents=latents)


@pytest.mark.parametrize("mode", ["stack", "classes-shuffled", "classes-ordered", "class-repeated", "latents"])
def test_shapes_for_every_condition_mode(mode):
    cond = torch.from_numpy(_condition(mode))[None]  # [1, C, D, D, D]
    assert cond.shape[2:] == (D, D, D)
    torch.manual_seed(0)
    unet = build_model("unet3d", cond.shape[1], widths=(8, 16), bottleneck=32, bottleneck_attention=True)
    with torch.no_grad():
        out = unet(cond)
    assert out.shape == (1, 1, D, D, D)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # sigmoid output
    den = build_model("diffusion", cond.shape[1], model_channels=8, channel_mult=(1, 2), attention_resolutions=(8,), input_size=D)
    x_in = torch.cat([torch.randn(1, 1, D, D, D), cond], 1)
    with torch.no_grad():
        assert den(x_in, torch.tensor([17])).shape == (1, 2, D, D, D)  # ε and v


def test_report_architecture_widths_and_configurability():
    net = UNet3D(in_channels=3)
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3)]
    assert convs[:6] == [16, 16, 32, 32, 64, 64] and convs[6:8] == [256, 256]
    assert sum(isinstance(m, AttentionGate) for m in net.modules()) == 3
    plain = UNet3D(in_channels=1, widths=(4, 8), bottleneck=16, attention_gates=False)
    assert not any(isinstance(m, AttentionGate) for m in plain.modules())
    assert plain(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 1, 8, 8, 8)
    with pytest.raises(ValueError):
        plain(torch.zeros(1, 1, 6, 6, 6))  # not divisible by 2^depth
    assert {"unet3d", "diffusion"} <= set(available())


def test_attention_gate_scales_the_skip_by_a_coefficient_in_0_1():
    torch.manual_seed(0)
    gate = AttentionGate(skip_ch=4, gate_ch=8)
    x = torch.rand(2, 4, 8, 8, 8) + 0.5
    g = torch.randn(2, 8, 4, 4, 4)
    out = gate(x, g)
    ratio = out / x
    assert out.shape == x.shape
    assert float(ratio.min()) > 0 and float(ratio.max()) < 1
    # one coefficient per voxel shared by all channels
    torch.testing.assert_close(ratio[:, :1].expand_as(ratio), ratio)


def test_losses_and_metrics_known_values():
    t = torch.zeros(1, 1, 4, 4, 4)
    t[..., :2, :, :] = 1
    assert dice_iou(t, t) == (1.0, 1.0)
    half = t.clone()
    half[..., :1, :, :] = 0
    d, iou = dice_iou(half, t)
    assert d == pytest.approx(2 * 16 / (16 + 32)) and iou == pytest.approx(0.5)
    assert float(soft_dice(t, t, eps=0)) == pytest.approx(1.0)
    big = torch.where(t > 0, 30.0, -30.0)
    assert float(unet_loss("bce", big, t)) < 1e-6 and float(unet_loss("dice_bce", big, t)) < 1e-3
    assert float(unet_loss("mse", big, t)) < 1e-9 and float(unet_loss("l1", big, t)) < 1e-9
    assert pearson(t, 2 * t + 1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        unet_loss("hinge", big, t)


def test_unet_overfits_one_pair_to_dice_above_0_9():
    torch.manual_seed(0)
    cond, label = synthetic_pairs(1, D, 1, seed=0)
    label = (label > 0.5).float()
    net = UNet3D(in_channels=1, bottleneck_attention=True)  # the report's widths 16-32-64 / 256
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    dice = 0.0
    for step in range(120):
        loss = unet_loss("dice_bce", net.logits(cond), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            with torch.no_grad():
                dice, _ = dice_iou(net(cond), label)
            if dice > 0.9:
                break
    assert dice > 0.9, f"Dice {dice:.3f} after {step + 1} steps"
