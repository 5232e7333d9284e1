"""Shared primitives every stage may import: the CTF (:mod:`ctf`), RELION Euler geometry
(:mod:`euler`), Fourier shift/resize/pad (:mod:`fourier`), per-image normalisation
(:mod:`images`) and torch thread control (:mod:`threads`). Imports nothing else of cryomap.
"""
