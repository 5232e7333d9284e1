"""Diverse-subset selection: embed particles (PCA, ResNet-152, encoder), k-means, spread a subset over clusters.

:func:`~cryomap.select.embed.embed` gives one vector per particle, read through a particle source
in chunks; :func:`~cryomap.select.subset.select_diverse` clusters them and picks ``n`` particles
spread over the clusters; :func:`~cryomap.select.run.select_particles` does both and writes a
subset STAR (``cryomap select``). See docs/select.md.
"""

from cryomap.select.embed import METHODS, embed, embed_encoder, embed_pca, embed_resnet152
from cryomap.select.run import CLUSTER_COLUMN, SelectResult, select_particles
from cryomap.select.subset import Selection, allocate, cluster_embeddings, default_clusters, select_diverse

__all__ = [
    "CLUSTER_COLUMN", "METHODS", "SelectResult", "Selection", "allocate", "cluster_embeddings", "default_clusters",
    "embed", "embed_encoder", "embed_pca", "embed_resnet152", "select_diverse", "select_particles",
]
