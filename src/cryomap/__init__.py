"""cryomap: from cryo-EM micrographs and particle coordinates to a predicted 3D density map.

Every stage is a typed function in a sub-package (``cryomap.io``, ``cryomap.simulate``,
``cryomap.particles``, ``cryomap.labels``, ``cryomap.datasets``, ``cryomap.models``,
``cryomap.train``, ``cryomap.evaluate``) and a sub-command of the ``cryomap`` CLI.
"""

__version__ = "0.1.0"
