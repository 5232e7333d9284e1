"""Embeddings of particle images: one vector per particle, read through a particle source in chunks.

Three methods (``method`` of :func:`embed`; ``--embedding`` of ``cryomap select``):

``pca`` (default)
    Each image is Fourier-downsampled (:func:`cryomap.core.fourier.resize_images`) to ``size`` px
    (default 32; never up-sampled), standardised per image over the whole box (mean 0, std 1,
    :func:`cryomap.core.images.standardize_images`), and the pixels inside the inscribed circle
    (radius ``size / 2`` px around pixel ``size // 2``) form its feature vector. scikit-learn's
    ``PCA`` (randomized SVD, seeded) is fitted on a seeded random sample of ``fit_sample``
    particles (all of them when there are fewer) and then projects every particle, chunk by chunk,
    onto the first ``dims`` (default 32) components. Not whitened: distances keep the variance
    of each component, so the strong (signal) components dominate the weak (noise) ones.
``resnet152``
    The 2048-d global-average-pooled features of a ResNet-152 (:mod:`cryomap.select.resnet`) with
    weights the user supplies in torchvision's format (nothing is downloaded). Each grey image is
    Fourier-resized to ``size`` px (default 224), standardised per image to ``z`` (mean 0, std 1
    over the box), repeated into 3 channels and mapped to ImageNet's input statistics by
    ``x_c = (0.449 + 0.226·z − mean_c) / std_c``, ``mean = (0.485, 0.456, 0.406)``,
    ``std = (0.229, 0.224, 0.225)``: a standardised particle is treated as a grey photograph of
    mean intensity 0.449 and contrast 0.226 (the averages of ImageNet's channel means and stds),
    then normalised exactly as torchvision's ImageNet models expect.
``encoder``
    The latent vector of the 2D autoencoder trained by ``cryomap encode``:
    ``cryomap.models.autoencoder2d.embed_with_encoder(weights_path, images)`` on each chunk of
    images as stored (the encoder applies the preprocessing it was trained with).

Memory is flat in the number of particles apart from the (N, d) float32 result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cryomap.core.fourier import resize_images
from cryomap.core.images import background_mask, standardize_images
from cryomap.errors import BadInputError
from cryomap.particles.source import ParticleSource

METHODS = ("pca", "resnet152", "encoder")
#: ImageNet channel means and standard deviations (RGB) that torchvision's pretrained models expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: A standardised grey particle is shown to the network as intensity GREY_MEAN + GREY_STD · z.
GREY_MEAN = float(np.mean(IMAGENET_MEAN))
GREY_STD = float(np.mean(IMAGENET_STD))

DEFAULT_PCA_SIZE = 32
DEFAULT_DIMS = 32
DEFAULT_FIT_SAMPLE = 4096
DEFAULT_RESNET_SIZE = 224

Advance = Callable[[int], None]


@contextmanager
def _bar(label: str, total: int, show: bool) -> Iterator[Advance]:
    """A progress bar over particles (cryomap's rich console); a no-op callback when ``show`` is False."""
    if not show:
        yield lambda k: None
        return
    from cryomap.progress import progress_bar

    with progress_bar() as bar:
        task = bar.add_task(label, total=total)
        yield lambda k: bar.advance(task, k)


# ---------------------------------------------------------------------------------------------- PCA

def pca_features(images: np.ndarray, size: int) -> np.ndarray:
    """PCA input of a batch (k, h, w): resized to ``size`` px, standardised, pixels inside the circle.

    Returns (k, p) float32 with p the number of pixels within ``size / 2`` px of pixel ``size // 2``.
    """
    small = standardize_images(resize_images(images, size), inplace=True)
    inside = ~background_mask(size, size / 2.0)
    return small[:, inside]


def embed_pca(
    source: ParticleSource,
    *,
    dims: int = DEFAULT_DIMS,
    size: int = DEFAULT_PCA_SIZE,
    fit_sample: int = DEFAULT_FIT_SAMPLE,
    seed: int = 0,
    chunk: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """PCA embedding (N, d) float32 of every particle of ``source``; d = min(dims, sample, pixels).

    ``size`` (px) is the box the images are Fourier-downsampled to first (capped at the source's
    box: never up-sampled); ``fit_sample`` particles, drawn with ``seed``, fit the components.
    """
    from sklearn.decomposition import PCA

    n = len(source)
    if dims < 1:
        raise BadInputError(f"PCA needs at least 1 dimension, got {dims}", source.path)
    size = int(min(size, source.box))
    if size < 8:
        raise BadInputError(f"images of {source.box} px are too small to embed (need ≥ 8 px)", source.path)
    rng = np.random.default_rng(seed)
    m = min(n, int(fit_sample))
    sample = np.arange(n) if m == n else np.sort(rng.choice(n, size=m, replace=False))
    with _bar("PCA: fitting" if m < n else "PCA", m, progress) as advance:
        feats = []
        for _, imgs in source.subset(sample).chunks(chunk):
            feats.append(pca_features(imgs, size))
            advance(len(imgs))
        fit = np.concatenate(feats)
    del feats
    d = int(min(dims, fit.shape[0], fit.shape[1]))
    pca = PCA(n_components=d, svd_solver="randomized" if d < min(fit.shape) else "full", random_state=seed)
    if m == n:  # the sample is every particle: no second pass
        return pca.fit_transform(fit).astype(np.float32)
    pca.fit(fit)
    del fit
    out = np.empty((n, d), dtype=np.float32)
    with _bar("PCA: embedding", n, progress) as advance:
        for rows, imgs in source.chunks(chunk):
            out[rows] = pca.transform(pca_features(imgs, size))
            advance(len(rows))
    return out


# ----------------------------------------------------------------------------------------- ResNet

def resnet_input(images: np.ndarray, size: int):
    """Network input (k, 3, size, size) float32 torch tensor from grey images (k, h, w); see the module notes."""
    import torch

    z = standardize_images(resize_images(images, size), inplace=True)
    mean = np.asarray(IMAGENET_MEAN, np.float32)[None, :, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[None, :, None, None]
    x = (np.float32(GREY_MEAN) + np.float32(GREY_STD) * z[:, None] - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def resnet_features(model, images: np.ndarray, size: int = DEFAULT_RESNET_SIZE, device=None) -> np.ndarray:
    """2048-d ResNet features (k, 2048) float32 of a batch of grey images (k, h, w) with a loaded model."""
    import torch

    dev = next(model.parameters()).device if device is None else torch.device(device)
    with torch.inference_mode():
        return model.features(resnet_input(images, size).to(dev)).float().cpu().numpy()


def _device(device: str | None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def embed_resnet152(
    source: ParticleSource,
    weights: str | Path | None,
    *,
    size: int = DEFAULT_RESNET_SIZE,
    batch: int = 32,
    device: str | None = None,
    progress: bool = False,
    model=None,
) -> np.ndarray:
    """ResNet-152 embedding (N, 2048) float32 with torchvision-format ``weights`` (a file; required).

    ``size`` (px, ≥ 32) is the network input side; ``batch`` images go through the network at
    once (the result does not depend on it: the network is in eval mode); ``device`` "cpu",
    "cuda" or None/"auto" (a GPU when there is one). ``model`` (a loaded
    :class:`~cryomap.select.resnet.ResNet152`) replaces ``weights``, for tests.
    """
    if model is None:
        if weights is None:
            raise BadInputError("--embedding resnet152 needs --weights FILE: a torchvision resnet152 state dict "
                                "(.pth or .safetensors); nothing is downloaded")
        from cryomap.select.resnet import load_resnet152

        model = load_resnet152(weights)
    if size < 32:
        raise BadInputError(f"--resnet-size must be at least 32 px, got {size}", source.path)
    dev = _device(device)
    model = model.to(dev).eval()
    from cryomap.select.resnet import FEATURE_DIM

    out = np.empty((len(source), FEATURE_DIM), dtype=np.float32)
    with _bar("ResNet-152 features", len(source), progress) as advance:
        for rows, imgs in source.chunks(batch):
            out[rows] = resnet_features(model, imgs, size, dev)
            advance(len(rows))
    return out


# ---------------------------------------------------------------------------------------- encoder

ENCODER_MISSING = "--embedding encoder needs the encoder from `cryomap encode`"


def embed_encoder(source: ParticleSource, weights: str | Path | None, *, chunk: int = 256,
                  progress: bool = False) -> np.ndarray:
    """Latent embedding (N, L) float32 from the ``cryomap encode`` encoder file ``weights``."""
    try:
        from cryomap.models.autoencoder2d import embed_with_encoder
    except ImportError as exc:  # the module, or the function, is not there
        raise BadInputError(f"{ENCODER_MISSING}, which this installation does not have "
                            "(cryomap.models.autoencoder2d.embed_with_encoder)") from exc
    if weights is None:
        raise BadInputError(f"{ENCODER_MISSING}: give its file with --weights")
    weights = Path(weights)
    if not weights.is_file():
        raise BadInputError("encoder weights file not found", weights)
    out: np.ndarray | None = None
    with _bar("encoder latents", len(source), progress) as advance:
        for rows, imgs in source.chunks(chunk):
            lat = np.asarray(embed_with_encoder(weights, imgs), dtype=np.float32)
            if lat.ndim != 2 or len(lat) != len(imgs):
                raise BadInputError(f"the encoder returned shape {lat.shape} for {len(imgs)} images; "
                                    "expected (images, latent)", weights)
            if out is None:
                out = np.empty((len(source), lat.shape[1]), dtype=np.float32)
            out[rows] = lat
            advance(len(rows))
    assert out is not None
    return out


# --------------------------------------------------------------------------------------- dispatch

def check_method(method: str, weights: str | Path | None) -> None:
    """Refuse, before any work, an unknown method, a missing weights file or a missing encoder module."""
    if method not in METHODS:
        raise BadInputError(f"unknown embedding {method!r}; choose one of {', '.join(METHODS)}")
    if method == "resnet152" and weights is None:
        raise BadInputError("--embedding resnet152 needs --weights FILE: a torchvision resnet152 state dict "
                            "(.pth or .safetensors); nothing is downloaded")
    if method == "encoder":
        try:
            from cryomap.models.autoencoder2d import embed_with_encoder  # noqa: F401
        except ImportError as exc:
            raise BadInputError(f"{ENCODER_MISSING}, which this installation does not have "
                                "(cryomap.models.autoencoder2d.embed_with_encoder)") from exc
        if weights is None:
            raise BadInputError(f"{ENCODER_MISSING}: give its file with --weights")
    if method != "pca" and weights is not None and not Path(weights).is_file():
        raise BadInputError("weights file not found", weights)


def embed(
    source: ParticleSource,
    method: str = "pca",
    *,
    weights: str | Path | None = None,
    dims: int = DEFAULT_DIMS,
    size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Embedding (N, d) float32 of every particle by ``method`` (``pca``, ``resnet152``, ``encoder``).

    ``size`` (px) is the PCA box (default 32) or the ResNet input side (default 224); ``dims``
    the PCA dimensions; ``weights`` the ResNet state dict or the encoder file; ``seed`` the PCA
    sample and SVD.
    """
    if method == "pca":
        return embed_pca(source, dims=dims, size=size or DEFAULT_PCA_SIZE, seed=seed, progress=progress)
    if method == "resnet152":
        return embed_resnet152(source, weights, size=size or DEFAULT_RESNET_SIZE, device=device, progress=progress)
    if method == "encoder":
        return embed_encoder(source, weights, progress=progress)
    raise BadInputError(f"unknown embedding {method!r}; choose one of {', '.join(METHODS)}")
