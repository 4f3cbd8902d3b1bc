"""Virtual detectors on a 4D-STEM datacube, streamed a block of scan rows at a time.

Everything here takes an array-like of shape ``(Rx, Ry, Qx, Qy)`` that can be sliced along
``Rx`` (an open canonical ``h5py`` dataset from :class:`msptycho.io.open_datacube`, or a numpy
array), reads a block of scan rows at a time and never holds the whole cube in memory.

Detector coordinates are pixel indices: pixel ``(i, j)`` has its centre at ``(i, j)``, as for
``detector_center_px`` of the canonical calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: target size of one block of rows read at a time, bytes (float32)
BLOCK_BYTES = 64 * 1024**2


def _rows_per_block(shape, rows_per_block):
    if rows_per_block is not None:
        return max(1, int(rows_per_block))
    return max(1, BLOCK_BYTES // (int(np.prod(shape[1:])) * 4))


def _blocks(dset, rows_per_block=None):
    """Yield ``(r0, block)`` with ``block`` of shape ``(n, Ry, Qx, Qy)`` as float64."""
    n = _rows_per_block(dset.shape, rows_per_block)
    for r0 in range(0, dset.shape[0], n):
        yield r0, np.asarray(dset[r0:r0 + n], dtype=np.float64)


def mean_diffraction_pattern(dset, rows_per_block: int | None = None) -> np.ndarray:
    """Mean diffraction pattern over all scan positions.

    Parameters
    ----------
    dset : array-like ``(Rx, Ry, Qx, Qy)``
        Counts per detector pixel (e.g. an open canonical datacube).
    rows_per_block : int, optional
        Scan rows read at a time (default: about 64 MiB).

    Returns
    -------
    ndarray ``(Qx, Qy)``, float64
        Mean counts per detector pixel per scan position.
    """
    total = np.zeros(dset.shape[2:], dtype=np.float64)
    for _, block in _blocks(dset, rows_per_block):
        total += block.sum(axis=(0, 1))
    return total / (dset.shape[0] * dset.shape[1])


@dataclass(frozen=True)
class BrightFieldDisk:
    """The bright-field (undiffracted) disk on the detector.

    Attributes
    ----------
    center_px : (float, float)
        Disk centre (Qx, Qy), detector pixel indices.
    radius_px : float
        Disk radius, detector pixels.
    """

    center_px: tuple[float, float]
    radius_px: float

    def semiangle_mrad(self, mrad_per_pixel: float) -> float:
        """Radius as a convergence semi-angle, mrad."""
        return self.radius_px * mrad_per_pixel


def find_bright_field_disk(pattern: np.ndarray) -> BrightFieldDisk:
    """Locate the bright-field disk in a (mean) diffraction pattern.

    The pattern is split into disk and background by Otsu's threshold; the plateau level ``p``
    and background level ``b`` are the medians of the two classes. The disk is the largest
    connected region above ``(p + b) / 2``. Within that region grown by two pixels, each pixel's
    covered fraction ``f = clip((I - b) / (p - b), 0, 1)`` gives the radius
    ``sqrt(sum(f) / pi)`` (exact for a uniformly filled disk whose edge pixels are partially
    covered) and the centre is the ``f``-weighted centroid.

    Parameters
    ----------
    pattern : ndarray ``(Qx, Qy)``
        Mean diffraction pattern, counts (any non-negative scale).

    Returns
    -------
    BrightFieldDisk
        Centre and radius in detector pixels.

    Raises
    ------
    ValueError
        If the pattern is flat (no disk can be told from the background).
    """
    from skimage.filters import threshold_otsu

    pattern = np.asarray(pattern, dtype=np.float64)
    if pattern.ndim != 2 or not np.all(np.isfinite(pattern)) or np.ptp(pattern) <= 0:
        raise ValueError("find_bright_field_disk: expected a finite 2-D pattern with contrast.")
    t = threshold_otsu(pattern)
    above = pattern > t
    plateau, background = float(np.median(pattern[above])), float(np.median(pattern[~above]))
    if not plateau > background:
        raise ValueError("find_bright_field_disk: no bright-field disk stands out of the pattern.")
    labels, n = ndimage.label(pattern > 0.5 * (plateau + background))
    if n == 0:
        raise ValueError("find_bright_field_disk: no bright-field disk stands out of the pattern.")
    sizes = ndimage.sum_labels(np.ones_like(pattern), labels, index=np.arange(1, n + 1))
    region = labels == (1 + int(np.argmax(sizes)))
    # refine the plateau on the disk's interior, then measure on a grown region
    core = ndimage.binary_erosion(region, iterations=1)
    if core.any():
        plateau = float(np.median(pattern[core]))
    grown = ndimage.binary_dilation(region, iterations=2)
    frac = np.clip((pattern - background) / (plateau - background), 0.0, 1.0) * grown
    area = float(frac.sum())
    qx, qy = np.indices(pattern.shape)
    center = (float((frac * qx).sum() / area), float((frac * qy).sum() / area))
    return BrightFieldDisk(center_px=center, radius_px=float(np.sqrt(area / np.pi)))


def annular_mask(shape_q: tuple[int, int], center_px, inner_px: float, outer_px: float) -> np.ndarray:
    """Boolean detector mask of pixels whose centres lie at ``inner_px <= r < outer_px``.

    Parameters
    ----------
    shape_q : (int, int)
        Detector shape (Qx, Qy).
    center_px : (float, float)
        Annulus centre, pixel indices.
    inner_px, outer_px : float
        Inner and outer radii, pixels (``inner_px = 0`` gives a disk, ``outer_px = inf`` all
        pixels beyond ``inner_px``).
    """
    qx, qy = np.indices(shape_q, dtype=np.float64)
    r = np.hypot(qx - center_px[0], qy - center_px[1])
    return (r >= inner_px) & (r < outer_px)


def virtual_images(dset, masks, rows_per_block: int | None = None) -> np.ndarray:
    """Virtual-detector images: the counts under each detector mask at every scan position.

    Parameters
    ----------
    dset : array-like ``(Rx, Ry, Qx, Qy)``
        Counts (e.g. an open canonical datacube).
    masks : sequence of ndarray ``(Qx, Qy)``
        Detector weights (boolean masks or real weights).
    rows_per_block : int, optional
        Scan rows read at a time.

    Returns
    -------
    ndarray ``(len(masks), Rx, Ry)``, float64
        Summed counts per scan position for each mask.
    """
    w = np.stack([np.asarray(m, dtype=np.float64) for m in masks])
    if w.shape[1:] != tuple(dset.shape[2:]):
        raise ValueError(f"virtual_images: masks of shape {w.shape[1:]} do not fit the "
                         f"detector {tuple(dset.shape[2:])}.")
    out = np.empty((w.shape[0],) + tuple(dset.shape[:2]), dtype=np.float64)
    wf = w.reshape(w.shape[0], -1)
    for r0, block in _blocks(dset, rows_per_block):
        n = block.shape[0]
        flat = block.reshape(n * block.shape[1], -1)
        out[:, r0:r0 + n] = (wf @ flat.T).reshape(w.shape[0], n, block.shape[1])
    return out


def virtual_bright_field(dset, disk: BrightFieldDisk, radius_factor: float = 1.0,
                         rows_per_block: int | None = None) -> np.ndarray:
    """Virtual bright-field image: counts inside ``radius_factor`` times the BF disk, ``(Rx, Ry)``."""
    m = annular_mask(dset.shape[2:], disk.center_px, 0.0, radius_factor * disk.radius_px)
    return virtual_images(dset, [m], rows_per_block)[0]


def virtual_annular_dark_field(dset, disk: BrightFieldDisk, inner_factor: float = 1.3,
                               outer_factor: float = np.inf,
                               rows_per_block: int | None = None) -> np.ndarray:
    """Virtual annular dark-field image ``(Rx, Ry)``: counts between ``inner_factor`` and
    ``outer_factor`` times the BF disk radius (default: from 1.3 radii to the detector edge)."""
    m = annular_mask(dset.shape[2:], disk.center_px, inner_factor * disk.radius_px,
                     outer_factor * disk.radius_px)
    return virtual_images(dset, [m], rows_per_block)[0]


@dataclass(frozen=True)
class IngestOverview:
    """What the ingest overview figure shows (see :func:`compute_overview`).

    Attributes
    ----------
    mean_pattern : ndarray ``(Qx, Qy)``
        Mean diffraction pattern, counts per pixel per scan position.
    disk : BrightFieldDisk
        Bright-field disk found in ``mean_pattern``.
    bright_field : ndarray ``(Rx, Ry)``
        Virtual bright-field image (counts inside the disk).
    annular_dark_field : ndarray ``(Rx, Ry)``
        Virtual ADF image (counts between ``adf_inner_px`` and ``adf_outer_px``).
    adf_inner_px, adf_outer_px : float
        ADF detector radii, pixels (``adf_outer_px`` may be ``inf``).
    """

    mean_pattern: np.ndarray
    disk: BrightFieldDisk
    bright_field: np.ndarray
    annular_dark_field: np.ndarray
    adf_inner_px: float
    adf_outer_px: float


def disk_from_calibration(calibration) -> BrightFieldDisk:
    """The BF disk a calibration implies: centre ``detector_center_px``, radius
    ``semiangle_mrad / mrad_per_pixel`` pixels."""
    return BrightFieldDisk(tuple(float(c) for c in calibration.detector_center_px),
                           float(calibration.semiangle_mrad / calibration.mrad_per_pixel))


def compute_overview(dset, adf_inner_factor: float = 1.3, adf_outer_factor: float = np.inf,
                     rows_per_block: int | None = None,
                     fallback_disk: BrightFieldDisk | None = None) -> IngestOverview:
    """Mean pattern, BF disk, virtual BF and ADF images in two streaming passes over ``dset``.

    Parameters
    ----------
    dset : array-like ``(Rx, Ry, Qx, Qy)``
        Counts (e.g. an open canonical datacube).
    adf_inner_factor, adf_outer_factor : float
        ADF radii in units of the BF disk radius.
    rows_per_block : int, optional
        Scan rows read at a time.
    fallback_disk : BrightFieldDisk, optional
        Used when no disk stands out of the mean pattern (e.g. :func:`disk_from_calibration`);
        without it that case raises ``ValueError``.
    """
    mean = mean_diffraction_pattern(dset, rows_per_block)
    try:
        disk = find_bright_field_disk(mean)
    except ValueError:
        if fallback_disk is None:
            raise
        disk = fallback_disk
    inner, outer = adf_inner_factor * disk.radius_px, adf_outer_factor * disk.radius_px
    bf_mask = annular_mask(dset.shape[2:], disk.center_px, 0.0, disk.radius_px)
    adf_mask = annular_mask(dset.shape[2:], disk.center_px, inner, outer)
    bf, adf = virtual_images(dset, [bf_mask, adf_mask], rows_per_block)
    return IngestOverview(mean, disk, bf, adf, float(inner), float(outer))


__all__ = ["mean_diffraction_pattern", "BrightFieldDisk", "find_bright_field_disk",
           "annular_mask", "virtual_images", "virtual_bright_field",
           "virtual_annular_dark_field", "IngestOverview", "disk_from_calibration",
           "compute_overview"]
