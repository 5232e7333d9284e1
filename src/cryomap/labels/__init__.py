"""Labels: a density map brought to the training grid (voxel size, box) and normalised.

``make_label`` chains the steps: :func:`~cryomap.labels.resample.resample_map` (Fourier
crop/pad to the target voxel size), :func:`~cryomap.labels.box.fit_box` (centred crop or zero
pad to ``box``^3, refusing a molecule that does not fit), :func:`~cryomap.labels.normalize.normalize_map`
(cryo2struct: divide by the 95th percentile of the non-zero voxels, clip to [0, 1]) and the
optional :func:`~cryomap.labels.normalize.threshold_map`.
"""

from cryomap.labels.box import fit_box, required_box
from cryomap.labels.make import make_label, make_label_file
from cryomap.labels.normalize import normalize_map, threshold_map
from cryomap.labels.resample import resample_map, resample_with_origin

__all__ = [
    "fit_box",
    "make_label",
    "make_label_file",
    "normalize_map",
    "required_box",
    "resample_map",
    "resample_with_origin",
    "threshold_map",
]
