"""Simulated CryoPPP-layout datasets from real atomic models, with full ground truth.

Modules: :mod:`angles` (RELION ZYZ Euler angles), :mod:`structure_map` (atomic model → map with
gemmi), :mod:`projection` (Fourier-slice projection, RELION convention), :mod:`ctf` (torch-ctf
with RELION parameters), :mod:`micrograph` (placement, ice, shot noise at a chosen SNR),
:mod:`dataset` (the CryoPPP-layout writer and ``manifest.json``).
"""
