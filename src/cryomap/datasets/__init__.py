"""Training datasets: (condition, label) pairs built from particle stacks and density maps.

* :mod:`~cryomap.datasets.config` — the YAML config (pydantic).
* :mod:`~cryomap.datasets.conditions` — the condition tensor C×D×D×D in every input mode.
* :mod:`~cryomap.datasets.build` — ``build_dataset``: labels, per-target image stores, manifest.
* :mod:`~cryomap.datasets.torch_data` — torch ``Dataset``s over a built dataset.
* :mod:`~cryomap.datasets.datamodule` — Lightning ``DensityDataModule`` and ``condition_for_prediction``.

Torch and Lightning are imported only by the last two, so the builder stays light.
"""

from cryomap.datasets.conditions import MODES, build_condition

__all__ = ["MODES", "build_condition"]
