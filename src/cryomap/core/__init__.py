"""Shared primitives every stage may import: the CTF (:mod:`ctf`), RELION Euler geometry
(:mod:`euler`), Fourier shift/resize/pad (:mod:`fourier`), per-image normalisation
(:mod:`images`), torch thread control (:mod:`threads`), real-space projection (:mod:`projector`)
and Fourier slice insertion/extraction (:mod:`backprojector`). Imports nothing else of cryomap.
"""
