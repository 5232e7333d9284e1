"""Per-target autoencoder: the loss falls, same-view latents cluster, the saved encoder reproduces them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryomap.classify2d.synthetic import simulate_views
from cryomap.encode import EncodeParams, encode_particles
from cryomap.errors import BadInputError
from cryomap.models.autoencoder2d import Autoencoder2D, AutoencoderConfig, embed_with_encoder, preprocess

SMALL = dict(input_size=32, channels=(8, 16, 32), batch_size=24)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    s = simulate_views("7PBL", n_views=4, per_view=24, box=32, apix=6.0, snr=2.0, max_shift_px=1.0, seed=3)
    out = tmp_path_factory.mktemp("enc") / "out"
    res = encode_particles(s.source, out, EncodeParams(latent_dim=6, epochs=10, seed=0, **SMALL))
    return s, out, res


def test_reconstruction_error_falls(trained):
    _, out, res = trained
    assert res.train_loss[-1] < 0.8 * res.train_loss[0]
    log = np.genfromtxt(out / "train_log.csv", delimiter=",", names=True)
    assert len(log) == 10 and np.all(np.isfinite(log["train_loss"]))


def test_same_view_latents_lie_closer_than_other_views(trained):
    s, out, _ = trained
    lat = np.load(out / "latents.npy")
    assert lat.shape == (len(s.source), 6) and lat.dtype == np.float32
    lat = (lat - lat.mean(0)) / lat.std(0).clip(1e-6)
    d = np.linalg.norm(lat[:, None] - lat[None], axis=-1)
    same = s.view[:, None] == s.view[None]
    off = ~np.eye(len(lat), dtype=bool)
    intra, inter = d[same & off].mean(), d[~same].mean()
    assert intra < 0.8 * inter, (intra, inter)


def test_saved_encoder_embeds_like_the_latents(trained):
    s, out, _ = trained
    lat = np.load(out / "latents.npy")
    emb = embed_with_encoder(out / "encoder.safetensors", s.source.images())
    assert np.allclose(emb, lat, atol=1e-4)
    for name in ("encoder.json", "decoder.safetensors", "embedding.png", "reconstructions.png", "run.json"):
        assert (out / name).exists()
    assert not (out / ".inputs.npy").exists()  # the scratch copy of the inputs is gone


def test_rotation_invariant_encoder_ignores_quarter_turns():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(input_size=32, latent_dim=4, channels=(8, 16), rotation_invariant=True, n_rotations=8)
    model = Autoencoder2D(cfg).eval()
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 32, 32)).astype(np.float32)
    x = preprocess(img, cfg)
    turned = torch.rot90(x, 1, dims=(-2, -1))
    with torch.no_grad():
        z, zt = model.encode(x), model.encode(turned)
    assert torch.allclose(z, zt, atol=0.05 * float(z.abs().max()))


def test_too_few_particles_is_bad_input(tmp_path):
    s = simulate_views("7PBL", n_views=1, per_view=1, box=32, apix=6.0, seed=0)
    with pytest.raises(BadInputError, match="at least 2 particles"):
        encode_particles(s.source, tmp_path / "x", EncodeParams(**SMALL))
    assert not (tmp_path / "x").exists()
