"""One label from one map: resample → box → normalise → (threshold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError
from cryomap.io.mrc import MrcData, read_map, write_mrc
from cryomap.labels.box import MoleculeDoesNotFitError, box_origin_shift, fit_box
from cryomap.labels.normalize import normalize_map, threshold_map
from cryomap.labels.resample import resample_support, resample_with_origin


def make_label(
    map: MrcData,  # noqa: A002 - the contract's name
    apix: float = 1.0,
    box: int = 128,
    threshold: float | None = None,
    *,
    level: float | None = None,
) -> MrcData:
    """Turn a density map into a training label on a ``box``^3 grid of ``apix`` Å/voxel.

    Steps, in the report's order: Fourier resampling to ``apix`` (centred; see
    :mod:`cryomap.labels.resample`; voxels outside the input's non-zero region stay exactly 0,
    as real-space resampling would leave them), centred crop/zero-pad to ``box``^3 (refusing a molecule that
    does not fit, see :mod:`cryomap.labels.box`; ``level`` overrides the contour in map units),
    cryo2struct normalisation to [0, 1], then, if ``threshold`` is given, 0/1 binarisation
    (``>= threshold`` → 1). The returned origin (Å) keeps the density where it was in space.
    """
    if map.data.ndim != 3:
        raise ValueError(f"expected a 3D map, got shape {map.data.shape}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold applies to the normalised map and must lie in [0, 1], got {threshold}")
    data, origin = resample_with_origin(map.data, map.apix, apix, map.origin)
    support = np.asarray(map.data) != 0
    if data.shape != map.data.shape or not np.isclose(map.apix, apix, rtol=1e-6):
        if not support.all():
            # keep the input's exact zeros: the cryo2struct percentile counts only non-zero voxels,
            # and Fourier ringing in the solvent would otherwise pull it to ~1e-4 of the peak
            data = np.where(resample_support(support, map.apix, apix, data.shape), data, np.float32(0))
    # ``level`` is in the input map's units: Fourier resampling keeps values (it preserves the mean)
    boxed = fit_box(data, box, apix=apix, level=None if level is None else float(level))
    shift = box_origin_shift(data.shape, box, apix)
    origin = (origin[0] + shift[0], origin[1] + shift[1], origin[2] + shift[2])
    label = normalize_map(boxed)
    if threshold is not None:
        label = threshold_map(label, threshold)
    return MrcData(label.astype(np.float32), float(apix), origin)


def to_xyz_space(src: MrcData, path: str | Path) -> MrcData:
    """Put a map read from ``path`` in (z, y, x) order with the origin (Å) other programs use.

    ``read_map`` gives the data in file order and the header ``origin`` only. Two header fields
    change where the density is, so they are applied here:

    * axis order ``MAPC/MAPR/MAPS`` other than 1/2/3: the array is transposed to (z, y, x);
    * ``origin`` all zero with a non-zero ``NCSTART/NRSTART/NSSTART`` (older and many EMDB maps):
      the origin is the start index times the voxel size, as Chimera, ChimeraX and IMP read it.
    """
    import mrcfile

    with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
        h = mrc.header
        order = (int(h.maps), int(h.mapr), int(h.mapc))  # spatial axis (1 = x, 2 = y, 3 = z) of data axes 0, 1, 2
        starts = (int(h.nzstart), int(h.nystart), int(h.nxstart))  # mrcfile's nx/ny/nzstart are NC/NR/NSSTART
    data = src.data
    if order == (0, 0, 0):  # some old writers leave the fields empty: the standard order is meant
        order = (3, 2, 1)
    if sorted(order) != [1, 2, 3]:
        raise BadInputError(f"header axis order MAPC/MAPR/MAPS = {order[::-1]} is not a permutation of 1, 2, 3", path)
    if order != (3, 2, 1):
        axes = [order.index(a) for a in (3, 2, 1)]
        data = np.ascontiguousarray(np.transpose(data, axes))
        starts = tuple(starts[i] for i in axes)
    origin = src.origin
    if all(o == 0 for o in origin) and any(starts):
        origin = (starts[2] * src.apix, starts[1] * src.apix, starts[0] * src.apix)
    return MrcData(data, src.apix, tuple(float(o) for o in origin))


def make_label_file(
    map_path: str | Path,
    out_path: str | Path,
    *,
    apix: float = 1.0,
    box: int = 128,
    threshold: float | None = None,
    in_apix: float | None = None,
    level: float | None = None,
    force: bool = False,
) -> MrcData:
    """Read ``map_path``, :func:`make_label` it and write ``out_path`` (MRC, atomically).

    ``in_apix`` (Å/voxel) overrides the header and is required when the header holds none.
    Errors name the map file.
    """
    from cryomap.io.atomic import check_writable

    map_path = Path(map_path)
    check_writable(out_path, force)
    try:
        src = read_map(map_path, apix=in_apix)
    except BadInputError as err:
        if in_apix is None and "voxel size" in err.message:
            raise BadInputError(err.message.replace("--apix", "--in-apix"), map_path) from err
        raise
    src = to_xyz_space(src, map_path)
    try:
        label = make_label(src, apix=apix, box=box, threshold=threshold, level=level)
    except MoleculeDoesNotFitError as err:
        raise MoleculeDoesNotFitError(err.message, err.needed_box, map_path) from err
    except ValueError as err:
        raise BadInputError(str(err), map_path) from err
    write_mrc(out_path, label.data, label.apix, origin=label.origin, force=force)
    return label
