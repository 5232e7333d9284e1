"""End to end on a simulated two-target dataset: `cryomap dataset build`, then a DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

simulate = pytest.importorskip("cryomap.simulate.dataset", reason="the simulate stage is not in this checkout")

D = 32


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    simulate.simulate_dataset(["1BHL", "7PBL"], root / "sim", n_particles=24, micrograph_size=384, apix=3.0,
                              seed=0, progress=False)
    return root


def test_build_on_simulated_targets_and_load_batches(simulated):
    import torch

    from cryomap.cli import main
    from cryomap.datasets.datamodule import DensityDataModule, condition_for_prediction
    from cryomap.datasets.images import prepare_images
    from cryomap.datasets.manifest import Manifest
    from cryomap.io.mrc import read_map
    from cryomap.labels import make_label

    sim = simulated / "sim"
    targets = [{"name": t, "particles": f"sim/{t}/clean/particles.star", "map": f"sim/{t}/maps/{t}_truth.mrc"}
               for t in ("1BHL", "7PBL")]
    cfg = {"seed": 1, "label": {"apix": 6.0, "box": D}, "condition": {"mode": "stack"},
           "split": {"by": "targets", "val_targets": ["7PBL"], "particle_holdout": 0.25}, "targets": targets}
    (simulated / "ds.yaml").write_text(yaml.safe_dump(cfg))
    out = simulated / "ds"
    assert main(["dataset", "build", str(simulated / "ds.yaml"), "-o", str(out)]) == 0
    m = Manifest.load(out)
    truth = read_map(sim / "7PBL" / "maps" / "7PBL_truth.mrc")
    np.testing.assert_allclose(m.label("7PBL"), make_label(truth, apix=6.0, box=D).data, atol=1e-6)
    dm = DensityDataModule(out, batch_size=2, samples_per_epoch=2)
    cond, label = next(iter(dm.train_dataloader()))
    assert cond.shape == (2, 1, D, D, D) and label.shape == (2, 1, D, D, D)
    assert torch.equal(label[0, 0], torch.from_numpy(m.label("1BHL")))
    vcond, vlabel = next(iter(dm.val_dataloader()))
    assert torch.equal(vlabel[0, 0], torch.from_numpy(m.label("7PBL")))
    # each depth slice is one of the target's particle images, prepared as documented
    from cryomap.particles.source import open_particles

    imgs = open_particles(sim / "1BHL" / "clean" / "particles.star")
    prepared = prepare_images(imgs[np.arange(len(imgs))], D).reshape(len(imgs), -1)
    train_rows = set(m.subset("1BHL", "train").tolist())
    for s in cond[0, 0].reshape(D, -1).numpy():
        err = np.abs(prepared - s).max(axis=1)
        assert err.min() < 1e-4 and int(err.argmin()) in train_rows
    pred = condition_for_prediction(out, target="1BHL", seed=0)
    assert pred.shape == (1, D, D, D)
