"""Particle preprocessing: one module per operation, each a typed batch function plus a chainable op.

:mod:`standardize` (whole box or background ring), :mod:`ctf_correct` (phase flip, Wiener),
:mod:`denoise` (Topaz-Denoise's pretrained networks, per-image normalised; Gaussian low-pass),
:mod:`blend` (w·D + (1 − w)·O), :mod:`clahe` (OpenCV), :mod:`guided` (OpenCV contrib guided filter),
:mod:`chain` (step names, configs, applying a chain to a particle source), :mod:`run` (the
``cryomap preprocess`` job) and :mod:`figures`.
"""
