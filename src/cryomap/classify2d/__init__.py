"""Reference-free 2D classification, and importers of classes made by cryoSPARC or RELION.

* :func:`cryomap.classify2d.em.classify` — seeded start, soft EM over in-plane rotations ×
  translations (polar Fourier search, :mod:`cryomap.classify2d.polar` / :mod:`.engine`),
  CTF-weighted averages, full-box averages and half sets (:mod:`.averages`).
* :func:`cryomap.classify2d.run.classify_to_folder` — file in, output folder out
  (:mod:`.output`: classes.mrcs ranked by FRC resolution (:mod:`.rank`), classes.star,
  particles.star, gallery.png).
* :func:`cryomap.classify2d.importers.import_cryosparc`, :func:`~.importers.import_relion`.
* :mod:`.synthetic` and :mod:`.metrics` — simulated views and scores (purity, ceiling).
"""

from cryomap.classify2d.em import Classify2DParams, Classify2DResult, classify
from cryomap.classify2d.importers import import_cryosparc, import_relion
from cryomap.classify2d.run import classify_to_folder

__all__ = ["Classify2DParams", "Classify2DResult", "classify", "classify_to_folder", "import_cryosparc",
           "import_relion"]
