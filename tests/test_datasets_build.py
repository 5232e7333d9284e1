"""Dataset building, manifest, splits, torch Dataset / Lightning DataModule and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cryomap.io.mrc import read_mrc, write_mrc
from cryomap.io.star import format_image_name, write_star

N_PARTICLES = 40
IMG = 24
BOX = 16


def _blobs(n: int, apix: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = (np.arange(n) - n // 2) * apix
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((n, n, n), np.float32)
    for c in rng.uniform(-4, 4, size=(6, 3)):
        vol += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * 1.5**2))
    return vol


def make_target(root: Path, name: str, seed: int) -> dict:
    """A map (no voxel size issue: 1.25 Å/px header), a 2-stack particle set with a STAR, classes, latents."""
    rng = np.random.default_rng(seed)
    write_mrc(root / f"{name}_map.mrc", _blobs(24, 1.25, seed), 1.25)
    imgs = rng.normal(size=(N_PARTICLES, IMG, IMG)).astype(np.float32)
    half = N_PARTICLES // 2
    write_mrc(root / f"{name}_1.mrcs", imgs[:half], 1.25)
    write_mrc(root / f"{name}_2.mrcs", imgs[half:], 1.25)
    names = [format_image_name(i + 1, f"{name}_1.mrcs") for i in range(half)]
    names += [format_image_name(i + 1, f"{name}_2.mrcs") for i in range(N_PARTICLES - half)]
    df = pd.DataFrame({
        "rlnImageName": names, "rlnAngleRot": 0.0, "rlnAngleTilt": 0.0, "rlnAnglePsi": 0.0,
        "rlnOpticsGroup": 1, "rlnImagePixelSize": 1.25, "rlnImageSize": IMG, "rlnVoltage": 300.0,
    })
    write_star(root / f"{name}.star", df)
    write_mrc(root / f"{name}_classes.mrcs", rng.normal(size=(6, IMG, IMG)).astype(np.float32), 1.25)
    np.save(root / f"{name}_latents.npy", rng.normal(size=(N_PARTICLES, 8)).astype(np.float32))
    return {"name": name, "particles": f"{name}.star", "map": f"{name}_map.mrc",
            "class_averages": f"{name}_classes.mrcs", "latents": f"{name}_latents.npy"}, imgs


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    targets, images = [], {}
    for i, name in enumerate(["a", "b", "c"]):
        t, imgs = make_target(root, name, i)
        targets.append(t)
        images[name] = imgs
    return root, targets, images


def write_config(root: Path, targets, name: str, **overrides) -> Path:
    cfg = {"seed": 3, "label": {"apix": 1.0, "box": BOX}, "condition": {"mode": "stack"},
           "split": {"by": "targets", "val_targets": ["b"], "test_targets": ["c"], "particle_holdout": 0.25},
           "targets": targets}
    for k, v in overrides.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) and isinstance(cfg.get(k, {}), dict) else v
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def by_targets(raw, tmp_path_factory):
    from cryomap.datasets.build import build_dataset

    root, targets, _ = raw
    out = tmp_path_factory.mktemp("ds") / "by_targets"
    return build_dataset(write_config(root, targets, "by_targets"), out)


def test_manifest_labels_and_image_store(by_targets, raw):
    from cryomap.datasets.images import prepare_images
    from cryomap.labels import make_label

    root, _, images = raw
    m = json.loads((by_targets / "manifest.json").read_text())
    assert m["label"]["box"] == BOX and m["condition"]["mode"] == "stack" and m["split_by"] == "targets"
    assert {t["name"]: t["split"] for t in m["targets"]} == {"a": "train", "b": "val", "c": "test"}
    for t in m["targets"]:
        subsets = t["subsets"]
        all_idx = subsets["train"] + subsets["val"] + subsets["heldout"]
        assert sorted(all_idx) == list(range(N_PARTICLES))  # disjoint and complete
        if t["split"] != "test":
            assert len(subsets["heldout"]) == 10
        label = read_mrc(by_targets / t["label"])
        expected = make_label(read_mrc(root / f"{t['name']}_map.mrc"), apix=1.0, box=BOX)
        np.testing.assert_allclose(label.data, expected.data, atol=1e-6)
        assert label.apix == 1.0
        store = np.load(by_targets / t["images"], mmap_mode="r")
        assert store.shape == (N_PARTICLES, BOX, BOX)
        np.testing.assert_allclose(store, prepare_images(images[t["name"]], BOX), atol=1e-5)  # STAR row order


def test_datamodule_splits_fresh_train_draws_fixed_val(by_targets):
    import torch

    from cryomap.datasets.datamodule import DensityDataModule
    from cryomap.datasets.manifest import Manifest

    dm = DensityDataModule(by_targets, batch_size=2, samples_per_epoch=4, seed=0)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = set(dm.train_set.targets), set(dm.val_set.targets), set(dm.test_set.targets)
    assert train == {"a"} and val == {"b"} and test == {"c"}  # a target never in two splits
    loader = dm.train_dataloader()
    epoch0 = list(loader)
    epoch1 = list(loader)
    cond, label = epoch0[0]
    assert cond.shape == (2, 1, BOX, BOX, BOX) and label.shape == (2, 1, BOX, BOX, BOX)
    assert cond.dtype == torch.float32 and label.dtype == torch.float32
    assert not torch.equal(epoch0[0][0], epoch1[0][0])  # fresh draws each epoch
    assert not torch.equal(cond[0], cond[1])  # and between samples
    label_a = torch.from_numpy(Manifest.load(by_targets).label("a"))
    assert torch.equal(label[0, 0], label_a)
    v1 = [c for c, _ in dm.val_dataloader()]
    v2 = [c for c, _ in DensityDataModule(by_targets, batch_size=2, seed=0).val_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(v1, v2)) and len(v1) == 1  # fixed validation draws
    # training never touches held-out particles: every slice is one of a's train images
    m = Manifest.load(by_targets)
    store = np.load(by_targets / m.target("a")["images"]).reshape(N_PARTICLES, -1)
    train_idx = set(m.target("a")["subsets"]["train"])
    for c, _ in epoch0 + epoch1:
        for s in c[:, 0].reshape(-1, BOX * BOX).numpy():
            assert int(np.abs(store - s).max(axis=1).argmin()) in train_idx


def test_split_by_particles_and_prediction_condition(raw, tmp_path):
    from cryomap.datasets.build import build_dataset
    from cryomap.datasets.datamodule import DensityDataModule, condition_for_prediction
    from cryomap.datasets.manifest import Manifest

    root, targets, _ = raw
    cfg = write_config(root, targets, "by_particles",
                       split={"by": "particles", "val_targets": [], "test_targets": [], "val_fraction": 0.25})
    out = build_dataset(cfg, tmp_path / "ds")
    m = Manifest.load(out)
    assert m.targets_with("train") == ["a", "b", "c"] == m.targets_with("heldout") == m.targets_with("val")
    for name in m.target_names:
        s = {k: set(m.subset(name, k).tolist()) for k in ("train", "val", "heldout")}
        assert not (s["train"] & s["val"] or s["train"] & s["heldout"] or s["val"] & s["heldout"])
        assert len(s["heldout"]) == 10 and len(s["val"]) == 10
    dm = DensityDataModule(out, batch_size=3, samples_per_epoch=3)
    dm.setup()
    assert set(dm.test_set.targets) == {"a", "b", "c"}
    cond, label = next(iter(dm.test_dataloader()))
    assert cond.shape == (3, 1, BOX, BOX, BOX)
    # prediction from the held-out particles, exactly as training builds conditions
    c1 = condition_for_prediction(out, target="b", seed=7)
    assert c1.shape == (1, BOX, BOX, BOX)
    np.testing.assert_array_equal(c1, condition_for_prediction(m, target="b", seed=7))
    store = np.load(out / m.target("b")["images"]).reshape(N_PARTICLES, -1)
    held = set(m.subset("b", "heldout").tolist())
    used = {int(np.abs(store - s.reshape(1, -1)).max(axis=1).argmin()) for s in c1[0]}
    assert used <= held
    # the held-out STAR the builder writes gives the same condition as the target's held-out subset
    held_star = m.heldout_star("b")
    from cryomap.io.star import read_star

    assert len(read_star(held_star)) == 10
    np.testing.assert_allclose(condition_for_prediction(out, particles_star=held_star, seed=7), c1, atol=1e-4)
    from_star = condition_for_prediction(out, particles_star=root / "b.star", seed=7)
    assert from_star.shape == (1, BOX, BOX, BOX)
    used_star = {int(np.abs(store - s.reshape(1, -1)).max(axis=1).argmin()) for s in from_star[0]}
    assert len(used_star) == BOX  # drawn from the whole STAR, same preparation as the store


def test_source_storage_equals_resized(raw, tmp_path, by_targets):
    import torch

    from cryomap.datasets.build import build_dataset
    from cryomap.datasets.torch_data import DensityPairs

    root, targets, _ = raw
    out = build_dataset(write_config(root, targets, "source", condition={"mode": "stack", "storage": "source"}),
                        tmp_path / "src")
    assert not (out / "images").exists()
    a = DensityPairs(out, "train", samples_per_epoch=2)
    b = DensityPairs(by_targets, "train", samples_per_epoch=2)
    for key in (0, 5):
        torch.testing.assert_close(a[key][0], b[key][0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["classes-shuffled", "classes-ordered", "class-repeated", "latents"])
def test_other_modes_build_and_load(raw, tmp_path, mode):
    from cryomap.datasets.build import build_dataset
    from cryomap.datasets.datamodule import DensityDataModule

    root, targets, _ = raw
    out = build_dataset(write_config(root, targets, mode, condition={"mode": mode, "n_images": 4}), tmp_path / mode)
    assert not (out / "images").exists()
    dm = DensityDataModule(out, batch_size=2, samples_per_epoch=2)
    cond, label = next(iter(dm.train_dataloader()))
    assert cond.shape == (2, 1, BOX, BOX, BOX) and label.shape == (2, 1, BOX, BOX, BOX)
    from cryomap.datasets.datamodule import condition_for_prediction
    from cryomap.datasets.manifest import Manifest

    m = Manifest.load(out)
    pred = condition_for_prediction(out, target="a", seed=1)
    assert pred.shape == (1, BOX, BOX, BOX)
    if mode == "class-repeated":
        assert bool((cond == cond[:, :, :1]).all())
        np.testing.assert_allclose(pred[0, 5], m.class_averages("a")[0], atol=1e-5)  # the best class
        from_file = condition_for_prediction(out, particles_star=root / "a.star", class_averages=root / "a_classes.mrcs")
        np.testing.assert_allclose(from_file, pred, atol=1e-5)
    if mode == "latents":
        assert np.count_nonzero(cond.numpy()) > 0.99 * cond.numel()  # 30 particles × 8 tiled over 16^3
        from cryomap.datasets.conditions import standardize_latents

        held = m.subset("a", "heldout")
        z = standardize_latents(np.load(root / "a_latents.npy")[held])
        rows = pred.reshape(-1, 8)[: len(held)]  # the held-out particles' latents, in a random order
        assert sorted(int(np.abs(z - r).max(axis=1).argmin()) for r in rows) == list(range(len(held)))


def test_cli_build_show_and_config_errors(raw, tmp_path):
    from cryomap.cli import main

    root, targets, _ = raw
    cfg = write_config(root, targets, "cli")
    out = tmp_path / "cli_ds"
    assert main(["dataset", "build", str(cfg), "-o", str(out)]) == 0
    assert (out / "manifest.json").exists()
    assert main(["dataset", "build", str(cfg), "-o", str(out)]) == 2  # exists, no --force
    assert main(["dataset", "show", str(out)]) == 0
    bad = write_config(root, targets, "bad", split={"val_targets": ["nope"]})
    assert main(["dataset", "build", str(bad), "-o", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    no_classes = write_config(root, [{k: v for k, v in t.items() if k != "class_averages"} for t in targets],
                              "nocls", condition={"mode": "class-repeated"})
    assert main(["dataset", "build", str(no_classes), "-o", str(tmp_path / "nocls")]) == 2


def test_datasets_pickle_for_workers_without_their_memory_maps(by_targets, raw):
    import pickle

    import torch

    from cryomap.particles.source import open_particles
    from cryomap.datasets.torch_data import DensityPairs

    ds = DensityPairs(by_targets, "train", samples_per_epoch=2)
    first = ds[3][0]  # fills the per-process cache (memory map, label)
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000  # the memory-mapped images and the label are not copied
    torch.testing.assert_close(pickle.loads(blob)[3][0], first)
    root = raw[0]
    imgs = open_particles(root / "a.star")
    imgs[np.array([0, 25])]
    again = pickle.loads(pickle.dumps(imgs))
    np.testing.assert_array_equal(again[np.array([25, 0])], imgs[np.array([25, 0])])
    np.testing.assert_array_equal(again[np.array([25])][0], raw[2]["a"][25])  # second stack, STAR order


@pytest.mark.parametrize("seed", range(5))
def test_fraction_splits_put_each_target_in_one_split(seed):
    """By targets with fractions: every target in exactly one split, train never empty, sizes as asked."""
    from cryomap.datasets.build import assign_target_splits, particle_subsets
    from cryomap.datasets.config import DatasetConfig

    names = [f"t{i}" for i in range(7)]
    cfg = DatasetConfig.model_validate({
        "targets": [{"name": n, "particles": f"{n}.star", "map": f"{n}.mrc"} for n in names],
        "split": {"by": "targets", "val_fraction": 0.3, "test_fraction": 0.15, "particle_holdout": 0.2},
    })
    rng = np.random.default_rng(seed)
    split = assign_target_splits(cfg, rng)
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 4, "val": 2, "test": 1} and set(split) == set(names)
    for n in names:
        sub = particle_subsets(50, split[n], cfg, rng)
        used = [i for k in ("train", "val", "heldout") for i in sub[k]]
        assert sorted(used) == list(range(50))  # disjoint and complete within a target
        if split[n] == "train":
            assert not sub["val"] and len(sub["heldout"]) == 10
        elif split[n] == "val":
            assert not sub["train"] and len(sub["heldout"]) == 10
        else:
            assert not sub["train"] and not sub["val"]


def test_validation_passes_repeat_and_epochs_differ_through_lightning_sampler(by_targets):
    """The same val loader iterated twice gives the same batches; set_epoch pins training draws."""
    import torch

    from cryomap.datasets.datamodule import DensityDataModule

    dm = DensityDataModule(by_targets, batch_size=1, samples_per_epoch=2, seed=0, val_draws_per_target=2)
    dm.setup("fit")
    val = dm.val_dataloader()
    p1, p2 = [c for c, _ in val], [c for c, _ in val]
    assert len(p1) == 2 and all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert not torch.equal(p1[0], p1[1])  # two different fixed draws of the val target
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    e3 = [c for c, _ in loader]
    loader.sampler.set_epoch(3)
    assert all(torch.equal(a, b) for a, b in zip(e3, [c for c, _ in loader]))  # resumable: epoch 3 again
    loader.sampler.set_epoch(4)
    assert not any(torch.equal(a, b) for a, b in zip(e3, [c for c, _ in loader]))


def test_preprocessing_chain_is_applied_recorded_and_reused_for_prediction(raw, tmp_path):
    """A dataset config's chain shapes the stored images, lands in the manifest and in a model's meta,
    and a prediction condition from new particles goes through the same chain."""
    from cryomap.datasets.build import build_dataset
    from cryomap.datasets.datamodule import condition_for_prediction
    from cryomap.datasets.images import prepare_images
    from cryomap.datasets.manifest import Manifest
    from cryomap.preprocess.denoise import lowpass
    from cryomap.train.dataset_adapter import manifest_meta

    root, targets, images = raw
    chain = [{"step": "denoise", "method": "lowpass", "resolution": 6.0}]
    out = build_dataset(write_config(root, targets, "chained", preprocess=chain), tmp_path / "chained")
    m = Manifest.load(out)
    assert m.preprocess == chain and manifest_meta(m)["preprocess"] == chain
    store = np.load(out / m.target("a")["images"])
    expected = prepare_images(lowpass(images["a"], 1.25, 6.0), BOX)
    np.testing.assert_allclose(store, expected, atol=1e-5)
    assert not np.allclose(store, prepare_images(images["a"], BOX), atol=1e-2)  # the chain did something
    # new particles (a STAR) for prediction: the condition's slices are chain-processed particles
    cond = condition_for_prediction(m, root / "b.star", seed=0)[0]
    chained_b = prepare_images(lowpass(images["b"], 1.25, 6.0), BOX).reshape(N_PARTICLES, -1)
    for s in cond.reshape(BOX, -1):
        assert np.abs(chained_b - s).max(axis=1).min() < 1e-4
    bad = write_config(root, targets, "badchain", preprocess=[{"step": "sharpen"}])
    from cryomap.errors import BadInputError

    with pytest.raises(BadInputError, match="unknown preprocessing step"):
        build_dataset(bad, tmp_path / "bad")
