"""One module per ``cryomap`` sub-command; each defines ``register(app)``. Discovered by :mod:`cryomap.cli`."""
