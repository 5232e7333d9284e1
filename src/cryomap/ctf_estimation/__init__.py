"""CTF estimation from micrographs: averaged power spectra, a CTFFIND4-style fit, per-patch defocus.

- :func:`~cryomap.ctf_estimation.estimate.estimate_ctf`: a folder or STAR of micrographs →
  ``micrographs_ctf.star`` (RELION 3.1), diagnostic PNGs, per-patch tables (``cryomap ctf``).
- :func:`~cryomap.ctf_estimation.power_spectrum.average_spectra`: tiled periodogram averaging.
- :func:`~cryomap.ctf_estimation.fit.fit_spectrum`: 1D defocus search then 2D refinement.
- :func:`~cryomap.ctf_estimation.patches.fit_patches`: per-patch defocus and its smooth model.
- :class:`~cryomap.ctf_estimation.attach.EstimatedCtf`: the CTF of particles at their coordinates
  (``cryomap extract --ctf``).

The CTF model is the shared one (:mod:`cryomap.core.ctf`, torch-ctf); see
:mod:`cryomap.ctf_estimation.model`. Units: Å, Å/px, degrees (RELION conventions).
"""
