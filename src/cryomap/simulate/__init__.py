"""Simulated CryoPPP-layout datasets from real atomic models, with full ground truth.

Modules: :mod:`structure_map` (atomic model → map with
gemmi), :mod:`micrograph` (placement, ice, shot noise at a chosen SNR),
:mod:`dataset` (the CryoPPP-layout writer and ``manifest.json``).
"""
