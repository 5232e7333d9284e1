"""``cryomap select``: embeddings recover views, subsets cover rare views, ResNet-152 plumbing, CLI, bad input."""

from __future__ import annotations

import sys
import types
from itertools import combinations
from math import comb

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cryomap.cli import main
from cryomap.errors import BadInputError
from cryomap.particles.source import ParticleSource, open_particles
from cryomap.select.embed import embed_encoder, embed_pca, embed_resnet152, resnet_features, resnet_input
from cryomap.select.resnet import ResNet152, load_resnet152
from cryomap.select.subset import allocate, default_clusters, select_diverse

BOX = 48
APIX = 2.0
#: Four distinct viewing directions (RELION ZYZ rot, tilt, psi in degrees).
VIEWS = np.array([(0, 0, 0), (0, 90, 0), (90, 90, 0), (45, 135, 60)], dtype=float)


def _blob_volume(box: int = BOX) -> np.ndarray:
    """An asymmetric molecule of five Gaussian blobs (centre offsets and widths in px)."""
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    vol = np.zeros((box,) * 3, np.float32)
    for (cx, cy, cz), s, a in [((0, 0, 0), 5, 1.0), ((8, 3, -2), 3, 0.8), ((-6, 9, 4), 3.5, 0.9),
                               ((2, -10, 6), 2.5, 0.7), ((-9, -4, -8), 3, 0.6)]:
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2.0 * s * s))
    return vol


def _particles(counts: list[int], snr: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Projections of the blob molecule near VIEWS (±4° jitter on each angle) plus white noise at ``snr``.

    SNR = mean per-image signal variance / noise variance. Returns images (N, BOX, BOX) and the view of each.
    """
    from cryomap.core.projector import project

    rng = np.random.default_rng(seed)
    view = np.repeat(np.arange(len(counts)), counts)
    angles = VIEWS[view] + rng.uniform(-4, 4, (len(view), 3))
    images = project(_blob_volume(), angles[:, 0], angles[:, 1], angles[:, 2], apix=APIX)
    noise_std = np.sqrt(images.var(axis=(1, 2)).mean() / snr)
    images = images + rng.normal(0.0, noise_std, images.shape)
    return images.astype(np.float32), view


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of particles whose cluster's majority view is their own view."""
    return sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels)) / len(truth)


def _p_random_covers(counts: list[int], n: int) -> float:
    """Probability that n particles drawn uniformly without replacement include every view (inclusion–exclusion)."""
    total = sum(counts)
    p = 0.0
    for r in range(len(counts) + 1):
        for missed in combinations(range(len(counts)), r):
            p += (-1) ** r * comb(total - sum(counts[i] for i in missed), n) / comb(total, n)
    return p


RARE = [600, 30, 30, 20]


@pytest.fixture(scope="module")
def rare_views():
    """680 particles: one common view and three rare ones (30, 30, 20 particles), SNR 0.5."""
    return _particles(RARE, snr=0.5, seed=11)


# ------------------------------------------------------------------------------ embeddings + clusters

def test_pca_kmeans_clusters_recover_the_views():
    images, view = _particles([60, 60, 60, 60], snr=0.3, seed=2)
    vectors = embed_pca(ParticleSource.from_arrays(images, APIX), seed=0)
    assert vectors.shape == (240, 32) and vectors.dtype == np.float32
    sel = select_diverse(vectors, 8, clusters=4, seed=0)
    assert _purity(sel.labels, view) >= 0.95
    # the clusters are not the order of the rows: a shuffled stack gives the same partition
    perm = np.random.default_rng(0).permutation(240)
    sel_p = select_diverse(embed_pca(ParticleSource.from_arrays(images[perm], APIX), seed=0), 8, clusters=4)
    assert _purity(sel_p.labels, view[perm]) >= 0.95


@pytest.mark.parametrize("within", ["nearest", "random"])
def test_subset_covers_every_view_where_a_random_subset_would_not(rare_views, within):
    images, view = rare_views
    n = 8
    p_random = _p_random_covers(RARE, n)
    assert p_random < 0.02  # a uniform random subset of 8 of these 680 covers all four views 1.4 % of the time
    vectors = embed_pca(ParticleSource.from_arrays(images, APIX), seed=0)
    sel = select_diverse(vectors, n, seed=0, within=within)  # default K = min(20, 8, 680) = 8
    assert sel.n_clusters == 8 and len(sel.rows) == n and len(np.unique(sel.rows)) == n
    assert set(view[sel.rows]) == {0, 1, 2, 3}
    assert np.all(np.diff(sel.rows) > 0) and np.array_equal(sel.clusters, sel.labels[sel.rows])


def test_pca_is_chunk_independent_and_seeded(rare_views):
    images, _ = rare_views
    src = ParticleSource.from_arrays(images, APIX)
    a = embed_pca(src, fit_sample=300, seed=3, chunk=64)
    b = embed_pca(src, fit_sample=300, seed=3, chunk=500)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    c = embed_pca(src, fit_sample=300, seed=4)
    assert not np.allclose(np.abs(a), np.abs(c), atol=1e-3)  # another seed fits on another sample


def test_nearest_rule_takes_the_particles_closest_to_each_centre():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (50, 2)) + [20, 0]
    b = rng.normal(0, 1, (30, 2)) - [20, 0]
    x = np.concatenate([a, b])
    sel = select_diverse(x, 6, clusters=2, seed=0)
    assert list(sel.sizes) == [50, 30] and list(sel.quotas) == [3, 3]  # clusters numbered largest first
    for c, members in ((0, np.arange(50)), (1, np.arange(50, 80))):
        d = np.linalg.norm(x[members] - x[members].mean(axis=0), axis=1)
        expect = set(members[np.argsort(d)[:3]])
        assert set(sel.rows[sel.clusters == c]) == expect


def test_allocate_examples():
    assert list(allocate(np.array([100, 3, 1]), 10)) == [6, 3, 1]  # 3 each, capped; the rest to the big one
    assert list(allocate(np.array([5, 5, 5]), 7)) == [3, 2, 2]  # remainder to the most room, ties low index
    assert list(allocate(np.array([10, 4]), 14)) == [10, 4]
    assert list(allocate(np.array([4, 9, 2]), 2)) == [1, 1, 0]  # one each to the two with the most room
    assert default_clusters(200, 5000) == 20 and default_clusters(8, 680) == 8 and default_clusters(50, 30) == 20 and default_clusters(10, 5) == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12), st.data())
def test_allocate_is_water_filling(sizes, data):
    sizes = np.array(sizes)
    n = data.draw(st.integers(0, int(sizes.sum())))
    q = allocate(sizes, n)
    assert q.sum() == n and np.all(q <= sizes) and np.all(q >= 0)
    # no cluster with room left gets more than one particle fewer than any other cluster
    open_ = q < sizes
    if open_.any():
        assert q[open_].min() >= q.max() - 1


# ------------------------------------------------------------------------------ ResNet-152 plumbing

def _torchvision_resnet152_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter and buffer names/shapes of torchvision's ``resnet152().state_dict()``, in its order.

    Written from torchvision's architecture (models/resnet.py): a 7×7/2 stem of 64 channels,
    Bottleneck stages of [3, 8, 36, 3] blocks with widths 64/128/256/512 and expansion 4, a
    projection shortcut ``downsample.0`` (1×1 conv) + ``downsample.1`` (BN) in each stage's first
    block, and fc 2048 → 1000. Every BatchNorm has weight, bias, running_mean, running_var and
    num_batches_tracked (a 0-d int64).
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, (blocks, planes) in enumerate(zip((3, 8, 36, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            cin = inplanes if b == 0 else planes * 4
            shapes[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


def _random_torchvision_state(seed: int) -> dict[str, torch.Tensor]:
    """A random state dict under torchvision's names (He-scaled convs, non-trivial BN statistics)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in _torchvision_resnet152_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7, dtype=torch.int64)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("running_mean") or name.endswith("bias"):
            state[name] = 0.05 * torch.randn(shape, generator=g)
        elif name.startswith("fc."):
            state[name] = 0.01 * torch.randn(shape, generator=g)
        else:  # BN weight; the last BN of a residual branch small, so 50 blocks stay bounded
            state[name] = (0.2 if name.endswith("bn3.weight") else 0.5) + 0.5 * torch.rand(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def tv_state():
    return _random_torchvision_state(0)


def test_resnet152_names_and_shapes_match_torchvision(tv_state):
    model = ResNet152()
    expected = _torchvision_resnet152_shapes()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(expected)  # same names, same order
    assert got == expected
    assert len(expected) == 932 and sum(1 for k in expected if k.startswith("layer3.") and k.endswith(".conv1.weight")) == 36
    assert sum(p.numel() for p in model.parameters()) == 60_192_808  # torchvision's resnet152 parameter count
    model.load_state_dict(tv_state, strict=True)


@pytest.fixture
def one_thread():
    """One torch thread: on the shared 2-core machine two threads spin against other jobs (see core/threads.py)."""
    from cryomap.core.threads import torch_threads

    with torch_threads(1):
        yield


def test_resnet152_features_from_pth_and_safetensors(tmp_path, tv_state, one_thread):
    from safetensors.torch import save_file

    pth, sft = tmp_path / "resnet152.pth", tmp_path / "resnet152.safetensors"
    torch.save(tv_state, pth)
    save_file(tv_state, str(sft))
    model = load_resnet152(pth)
    assert not model.training
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 40, 40)).astype(np.float32)
    size = 32
    feats = resnet_features(model, images, size)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all() and feats.std() > 0
    np.testing.assert_array_equal(feats, resnet_features(model, images, size))  # deterministic
    one_by_one = np.concatenate([resnet_features(model, im[None], size) for im in images])
    np.testing.assert_allclose(one_by_one, feats, rtol=1e-4, atol=1e-5)  # batch-independent (eval BN)
    # features are invariant to the images' intensity scale and offset (per-image standardisation)
    np.testing.assert_allclose(resnet_features(model, 3.0 * images + 5.0, size), feats, rtol=1e-3, atol=1e-4)
    # the .safetensors file gives the same network; features through a source come in row order
    src = ParticleSource.from_arrays(images, APIX)
    via_source = embed_resnet152(src, sft, size=size, batch=3, device="cpu")
    np.testing.assert_allclose(via_source, feats, rtol=1e-4, atol=1e-5)
    # features are the pooled layer4 output, before fc: fc applied to them gives the logits
    with torch.inference_mode():
        x = torch.from_numpy(feats)
        np.testing.assert_allclose(model.fc(x).numpy(), model(resnet_input(images, size)).numpy(),
                                   rtol=1e-4, atol=1e-4)
    # the weights are used: other weights, other features
    other = ResNet152().eval()
    other.load_state_dict(_random_torchvision_state(1), strict=True)
    assert not np.allclose(resnet_features(other, images, size), feats, rtol=1e-2)


def test_resnet152_refuses_missing_or_foreign_weights(tmp_path, tv_state):
    src = ParticleSource.from_arrays(np.zeros((2, 32, 32), np.float32), APIX)
    with pytest.raises(BadInputError, match="needs --weights"):
        embed_resnet152(src, None)
    with pytest.raises(BadInputError, match="not found"):
        embed_resnet152(src, tmp_path / "nope.pth")
    partial = dict(tv_state)
    del partial["layer3.35.bn3.weight"]
    partial["head.weight"] = torch.zeros(3)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(BadInputError, match=r"1 missing \(e\.g\. layer3\.35\.bn3\.weight\).*1 unexpected"):
        load_resnet152(tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="cannot read weights"):
        load_resnet152(tmp_path / "junk.pth")


# ------------------------------------------------------------------------------ encoder hook

def test_encoder_embedding_calls_the_encode_module(tmp_path, monkeypatch):
    calls = []

    def embed_with_encoder(weights_path, images):
        calls.append((weights_path, images.shape))
        return np.stack([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1)

    fake = types.ModuleType("cryomap.models.autoencoder2d")
    fake.embed_with_encoder = embed_with_encoder
    monkeypatch.setitem(sys.modules, "cryomap.models.autoencoder2d", fake)
    weights = tmp_path / "encoder.pt"
    weights.write_bytes(b"x")
    images = np.random.default_rng(0).normal(size=(300, 16, 16)).astype(np.float32)
    out = embed_encoder(ParticleSource.from_arrays(images, APIX), weights, chunk=128)
    np.testing.assert_allclose(out[:, 0], images.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert [c[1][0] for c in calls] == [128, 128, 44] and calls[0][0] == weights


def test_encoder_embedding_without_the_encode_module(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryomap.models.autoencoder2d", None)  # import raises ImportError
    src = ParticleSource.from_arrays(np.zeros((2, 16, 16), np.float32), APIX)
    with pytest.raises(BadInputError, match="needs the encoder from `cryomap encode`"):
        embed_encoder(src, tmp_path / "enc.pt")


# ------------------------------------------------------------------------------ the command

@pytest.fixture(scope="module")
def rare_star(tmp_path_factory, rare_views):
    """The rare-view particles written as a stack + STAR, with each particle's true view as a column."""
    import pandas as pd

    from cryomap.particles.writer import write_particles

    images, view = rare_views
    table = pd.DataFrame({"rlnClassNumber": view + 1})
    out = tmp_path_factory.mktemp("rare") / "stack"
    write_particles(ParticleSource.from_arrays(images, APIX, table), out, progress=False)
    return out / "particles.star", view


def test_cli_writes_a_subset_star_naming_the_original_stack(rare_star, tmp_path, capsys):
    star, view = rare_star
    out, npy = tmp_path / "sel" / "subset.star", tmp_path / "emb.npy"
    assert main(["select", str(star), "-n", "8", "-o", str(out), "--embedding-out", str(npy)]) == 0
    err = capsys.readouterr().err
    assert "selected 8 of 680 particles from 8 clusters" in err
    src, sub = open_particles(star), open_particles(out)
    assert len(sub) == 8 and sub.stack_paths == [p.resolve() for p in src.stack_paths]
    rows = np.array([int(name.split("@")[0]) - 1 for name in sub.table["rlnImageName"]])
    np.testing.assert_array_equal(sub.images(), src.images(rows))  # the same pixels, read from the same stack
    np.testing.assert_array_equal(sub.table["rlnClassNumber"].to_numpy(), view[rows] + 1)  # rows keep their columns
    clusters = sub.table["rlnCryomapCluster"].to_numpy()
    assert clusters.min() >= 1 and clusters.max() <= 8 and len(set(clusters)) == 8  # 1-based, one per cluster
    assert set(view[rows]) == {0, 1, 2, 3}
    emb = np.load(npy)
    assert emb.shape == (680, 32) and emb.dtype == np.float32
    # again without --force: refused, nothing changed; with --force and another seed: replaced
    before = out.read_bytes()
    assert main(["select", str(star), "-n", "8", "-o", str(out)]) == 2
    assert out.read_bytes() == before
    assert main(["select", str(star), "-n", "5", "-o", str(out), "--seed", "1", "--within", "random",
                 "--clusters", "5", "--embedding-out", str(npy), "--force"]) == 0
    assert len(open_particles(out)) == 5


def test_cli_reads_a_bare_stack(rare_star, tmp_path, capsys):
    star, _ = rare_star
    stack = star.parent / "particles.mrcs"
    out = tmp_path / "from_stack.star"
    assert main(["select", str(stack), "-n", "4", "-o", str(out), "--pca-size", "24", "--dims", "8"]) == 0
    sub, src = open_particles(out), open_particles(stack)
    rows = np.array([int(name.split("@")[0]) - 1 for name in sub.table["rlnImageName"]])
    np.testing.assert_array_equal(sub.images(), src.images(rows))
    assert "selected 4 of 680 particles from 4 clusters (pca, 8 dims" in capsys.readouterr().err


@pytest.mark.parametrize("args, says", [
    (["-n", "0"], "at least 1"),
    (["-n", "681"], "cannot select 681 particles: the file holds 680"),
    (["-n", "5", "--embedding", "umap"], "unknown embedding 'umap'"),
    (["-n", "5", "--embedding", "resnet152"], "needs --weights"),
    (["-n", "5", "--embedding", "resnet152", "--weights", "{tmp}/missing.pth"], "weights file not found"),
    (["-n", "5", "--embedding", "encoder", "--weights", "{tmp}/enc.pt"], "needs the encoder from `cryomap encode`"),
    (["-n", "5", "--clusters", "0"], "--clusters must be between 1 and"),
    (["-n", "5", "--within", "farthest"], "unknown --within"),
    (["-n", "5", "--embedding-out", "{tmp}/emb.txt"], "must be a .npy"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(rare_star, tmp_path, capsys, monkeypatch, args, says):
    monkeypatch.setitem(sys.modules, "cryomap.models.autoencoder2d", None)
    (tmp_path / "enc.pt").write_bytes(b"x")
    star, _ = rare_star
    out = tmp_path / "out.star"
    argv = ["select", str(star), "-o", str(out), *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cryomap: error:") and "\n" not in err and says in err, err
    assert not out.exists() and not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob(".*partial*"))


def test_cli_refuses_a_missing_input(tmp_path, capsys):
    assert main(["select", str(tmp_path / "none.star"), "-n", "3", "-o", str(tmp_path / "o.star")]) == 2
    err = capsys.readouterr().err.strip()
    assert "none.star" in err and "not found" in err and not (tmp_path / "o.star").exists()


def test_minibatch_kmeans_for_large_sets(monkeypatch):
    import cryomap.select.subset as subset

    monkeypatch.setattr(subset, "MINIBATCH_ABOVE", 100)  # the MiniBatchKMeans path, on a small set
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0]], float)
    truth = np.repeat([0, 1, 2], [300, 200, 100])
    x = centres[truth] + rng.normal(0, 1, (600, 3))
    sel = subset.select_diverse(x, 9, clusters=3, seed=0)
    assert _purity(sel.labels, truth) == 1.0 and list(sel.sizes) == [300, 200, 100]
    assert list(np.bincount(truth[sel.rows])) == [3, 3, 3]
