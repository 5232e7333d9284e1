"""The ready configs in configs/ load, name the report's choices, and pair each GPU size with a CPU twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryomap.errors import BadInputError
from cryomap.pipeline.config import config_from_dict, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_ready_config_validates(path):
    cfg = load_config(path)
    assert cfg.models or cfg.unseen is not None, path.name  # each config runs a model or the unseen path
    for m in cfg.models:
        assert m.condition and m.network["name"] in ("unet3d", "diffusion")


def test_gpu_configs_have_cpu_twins_of_smaller_size():
    names = {p.stem for p in CONFIGS}
    gpu = [n for n in names if not n.endswith("_cpu")]
    assert len(gpu) >= 5
    for n in gpu:
        assert f"{n}_cpu" in names, n
        big = load_config(CONFIGS[0].parent / f"{n}.yaml")
        small = load_config(CONFIGS[0].parent / f"{n}_cpu.yaml")
        assert small.labels.box <= big.labels.box, n


def test_report_sizes_in_the_gpu_stack_configs():
    """The report's labels: 256³ and 128³ on a 1 Å grid; its U-Net 16/32/64 with a 256 bottleneck."""
    for n, box in (("report_unet_stack_256", 256), ("report_unet_stack_128", 128)):
        cfg = load_config(CONFIGS[0].parent / f"{n}.yaml")
        assert cfg.labels.box == box and abs(cfg.labels.apix - 1.0) < 1e-6
        net = cfg.models[0].network
        assert net["widths"] == [16, 32, 64] and net["bottleneck"] == 256


def test_unknown_key_is_one_clear_error():
    with pytest.raises((BadInputError, ValueError)):
        config_from_dict({"data": {"simulate": {"targets": ["7PBL"]}}, "modles": []})
