"""Settings of the four analysis rules (one config section each: ``strain``, ``core``,
``dislocations``, ``surface``) and the functions that run them on a potential volume.

Each ``run_*`` finds and indexes the fluorite [001] lattice itself (``a_range_A``, ``min_snr``),
so every rule needs only the reconstruction (volume ``[z, x, y]``, V*A) and its grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..io.datacube import InputError
from .dislocations import DislocationResult, find_dislocations
from .gpa import StrainResult, index_g, strain_from_volume
from .order import CoreResult, core_from_volume
from .peaks import A_CAF2_A, FluoriteLattice, check_peaks_present, find_fluorite_lattice
from .surface import SurfaceResult, surface_from_volume
from ..settings import settings_from_mapping  # noqa: F401  (re-exported)


@dataclass
class StrainSettings:
    """Settings of the ``strain`` rule (:func:`run_strain`: geometric phase analysis per slice).

    Attributes
    ----------
    peak_family : str
        Reflection pair for GPA: ``"220"`` (default; strong in shell and core) or ``"200"`` (weak in
        CaF2).
    g_vectors_inv_A : tuple of two (gx, gy) or None
        Explicit reflections, 1/A, instead of the indexed pair (checked to be present).
    a_range_A : tuple of two float
        Accepted cubic lattice parameters when indexing the spectrum, Angstrom.
    min_snr : float
        Minimum peak-to-background power ratio of an indexed peak.
    mask_sigma_inv_A : float or None
        Gaussian Bragg-mask width, 1/A (None: 15 % of the shorter g, a 2.05 A point spread).
    smoothing_A : float
        Amplitude-weighted Gaussian smoothing of the local lattice vectors, Angstrom; the maps'
        resolution is the mask's point spread and this in quadrature (default 4.0 A). 0 with
        mask_sigma_inv_A = 10 % of |g| is the classic single-mask GPA (3.1 A).
    reference : str
        Zero-strain reference: ``"lattice"`` (cubic lattice of ``reference_a_A``; default CaF2,
        the shell) or ``"region"`` (the amplitude-weighted mean lattice of the particle).
    reference_a_A : float
        Lattice parameter of the ``"lattice"`` reference, Angstrom (5.46: CaF2).
    reference_angle_deg : float or None
        Orientation of the reference [100] axis from +x towards +y, degrees (None: the particle's
        mean orientation; 0 for the simulator's truth, whose cube axes are x and y).
    reference_g_inv_A : tuple of two (gx, gy) or None
        Explicit reference reciprocal vectors, 1/A (overrides ``reference``).
    amplitude_threshold : float
        Maps are masked where the weaker Bragg amplitude is below this fraction of its typical level.
    """

    peak_family: Literal["220", "200"] = "220"
    g_vectors_inv_A: tuple[tuple[float, float], tuple[float, float]] | None = None
    a_range_A: tuple[float, float] = (5.3, 5.9)
    min_snr: float = 50.0
    mask_sigma_inv_A: float | None = None
    smoothing_A: float = 3.4
    reference: Literal["lattice", "region"] = "lattice"
    reference_a_A: float = A_CAF2_A
    reference_angle_deg: float | None = None
    reference_g_inv_A: tuple[tuple[float, float], tuple[float, float]] | None = None
    amplitude_threshold: float = 0.3


@dataclass
class CoreSettings:
    """Settings of the ``core`` rule (:func:`run_core`: order parameter, 3-D core mask, centroid).

    Attributes
    ----------
    threshold : float or None
        A single threshold on the order parameter (minus the per-slice baseline); None: use
        ``threshold_method``.
    threshold_method : str
        ``"contrast"`` (default): per-slice hysteresis between ``grow_fraction`` and
        ``seed_fraction`` of the full-core excess (the largest per-slice 99th percentile);
        ``"otsu"``: one Otsu threshold over all candidate voxels.
    grow_fraction : float
        Growth level of the hysteresis, fraction of the full-core excess (a column about half core).
    seed_fraction : float
        A slice's core region must reach this fraction of the full-core excess somewhere.
    smoothing_A : float
        In-plane Gaussian smoothing of the {200} and {220} magnitudes before their ratio, Angstrom.
    slice_mixing : float
        Weight of each neighbouring slice in the volume the magnitudes come from (0: none, 0.25:
        binomial 1/4, 1/2, 1/4; at most 1/3), against the shell's {200} flicker between slices.
    edge_exclusion_A : float or None
        Pixels closer than this to the particle's edge are not core candidates, Angstrom (None:
        twice the Bragg-filter resolution).
    opening_A : float or None
        Disc radius of a per-slice morphological opening of the core mask, Angstrom (None: twice
        the Bragg-filter resolution; 0: none): removes appendages around dislocation cores.
    baseline : str
        ``"edge"``: subtract each slice's shell level (median order parameter in a ring inside the
        particle edge) before thresholding; ``"none"``: threshold the ratio itself (the paper).
    baseline_band_A : tuple of two float
        Inner and outer distance from the particle edge of that ring, Angstrom.
    mask_sigma_inv_A : float or None
        Gaussian Bragg-mask width, 1/A (None: 20 % of the {200} |g|, about 2.2 A resolution).
    amplitude_threshold : float
        Particle = where the {220} amplitude exceeds this fraction of its typical level.
    largest_component : bool
        Keep only the largest connected 3-D component of the core mask (holes filled per slice).
    a_range_A : tuple of two float
        Accepted cubic lattice parameters when indexing the spectrum, Angstrom.
    min_snr : float
        Minimum peak-to-background power ratio of an indexed {220} peak.
    """

    threshold: float | None = None
    threshold_method: Literal["contrast", "otsu"] = "contrast"
    grow_fraction: float = 0.4
    seed_fraction: float = 0.7
    smoothing_A: float = 2.5
    slice_mixing: float = 0.25
    edge_exclusion_A: float | None = None
    opening_A: float | None = None
    baseline: Literal["edge", "none"] = "edge"
    baseline_band_A: tuple[float, float] = (3.0, 10.0)
    mask_sigma_inv_A: float | None = None
    amplitude_threshold: float = 0.3
    largest_component: bool = True
    a_range_A: tuple[float, float] = (5.3, 5.9)
    min_snr: float = 50.0


@dataclass
class DislocationSettings:
    """Settings of the ``dislocations`` rule (:func:`run_dislocations`: Bragg-filter phase windings).

    Attributes
    ----------
    peak_family : str
        Reflection pair to filter: ``"220"`` (default) or ``"200"``.
    g_vectors_inv_A : tuple of two (gx, gy) or None
        Explicit reflections, 1/A (the paper's red and blue circles), instead of the indexed pair.
    mask_sigma_inv_A : float or None
        Gaussian Bragg-mask width, 1/A (None: 20 % of the shorter g, about 1.6 A resolution).
    amplitude_threshold : float
        Windings count only where the smoothed Bragg amplitude reaches this fraction of its typical level.
    amplitude_smoothing_A : float
        Gaussian smoothing of the amplitude for that test, Angstrom.
    merge_radius_A : float
        Singularities closer than this are one dislocation, Angstrom.
    link_radius_A : float
        Largest in-plane step between linked positions of neighbouring slices, Angstrom.
    max_gap_slices : int
        Slices a 3-D line may skip.
    lattice_burgers_only : bool
        Drop points whose Burgers vector is not a translation of the projected fluorite lattice
        (a/2 <100> combinations; e.g. a/4 <110> from circuits around crack tips) unless a
        lattice-translation point of a neighbouring slice lies within link_radius_A.
    store_maps : bool
        Write the Bragg amplitude and phase maps into dislocations.h5.
    a_range_A : tuple of two float
        Accepted cubic lattice parameters when indexing the spectrum, Angstrom.
    min_snr : float
        Minimum peak-to-background power ratio of an indexed peak.
    """

    peak_family: Literal["220", "200"] = "220"
    g_vectors_inv_A: tuple[tuple[float, float], tuple[float, float]] | None = None
    mask_sigma_inv_A: float | None = None
    amplitude_threshold: float = 0.4
    amplitude_smoothing_A: float = 3.0
    merge_radius_A: float = 7.0
    link_radius_A: float = 3.0
    max_gap_slices: int = 1
    lattice_burgers_only: bool = True
    store_maps: bool = True
    a_range_A: tuple[float, float] = (5.3, 5.9)
    min_snr: float = 50.0


@dataclass
class SurfaceSettings:
    """Settings of the ``surface`` rule (:func:`run_surface`: lattice-amplitude isosurface).

    Attributes
    ----------
    slice_range : tuple of two int or None
        First and last slice (0-based, inclusive) of the volume and mesh; None: all (the paper's
        1-based slices 8-25 of 36 are [7, 24]).
    peak_family : str
        Reflections whose amplitudes are summed: ``"220"`` (default, those of the strain maps) or ``"200"``.
    g_vectors_inv_A : tuple of two (gx, gy) or None
        Explicit reflections, 1/A, instead of the indexed pair.
    mask_sigma_inv_A : float or None
        Gaussian Bragg-mask width, 1/A (None: 10 % of the shorter g).
    smoothing_A : float
        In-plane Gaussian smoothing of the amplitude, Angstrom.
    smoothing_slices : float
        Gaussian smoothing along z, slices (0: none).
    threshold_fraction : float or None
        Isosurface level as a fraction of the typical lattice amplitude; None: Otsu.
    mesh_step_px : int
        Marching-cubes step, pixels (mesh coarsening in-plane).
    a_range_A : tuple of two float
        Accepted cubic lattice parameters when indexing the spectrum, Angstrom.
    min_snr : float
        Minimum peak-to-background power ratio of an indexed peak.
    """

    slice_range: tuple[int, int] | None = None
    peak_family: Literal["220", "200"] = "220"
    g_vectors_inv_A: tuple[tuple[float, float], tuple[float, float]] | None = None
    mask_sigma_inv_A: float | None = None
    smoothing_A: float = 3.0
    smoothing_slices: float = 0.0
    threshold_fraction: float | None = None
    mesh_step_px: int = 2
    a_range_A: tuple[float, float] = (5.3, 5.9)
    min_snr: float = 50.0



def _pair(volume, sampling_A, lat: FluoriteLattice, peak_family, g_vectors_inv_A):
    if g_vectors_inv_A is not None:
        g = np.asarray(g_vectors_inv_A, dtype=np.float64)
        check_peaks_present(volume, sampling_A, g)
        return g, index_g(g, lat.a_A, lat.angle_deg)
    if peak_family == "220":
        return lat.g220_inv_A, lat.hk220
    if peak_family == "200":
        check_peaks_present(volume, sampling_A, lat.g200_inv_A, names=["(2, 0)", "(0, 2)"])
        return lat.g200_inv_A, lat.hk200
    raise InputError(f"lattice analysis: peak_family must be '220' or '200', got {peak_family!r}.")


def run_strain(volume, sampling_A, settings: StrainSettings | None = None,
               origin_A=(0.0, 0.0)) -> tuple[StrainResult, FluoriteLattice]:
    """Strain maps of every slice with :class:`StrainSettings` (see :func:`~.gpa.gpa_strain`)."""
    s = settings or StrainSettings()
    return strain_from_volume(volume, sampling_A, g_vectors_inv_A=s.g_vectors_inv_A, peak_family=s.peak_family,
                              a_range_A=s.a_range_A, min_snr=s.min_snr, mask_sigma_inv_A=s.mask_sigma_inv_A,
                              smoothing_A=s.smoothing_A, reference=s.reference, reference_a_A=s.reference_a_A,
                              reference_angle_deg=s.reference_angle_deg, reference_g_inv_A=s.reference_g_inv_A,
                              amplitude_threshold=s.amplitude_threshold, origin_A=origin_A)


def run_core(volume, sampling_A, settings: CoreSettings | None = None, origin_A=(0.0, 0.0)) -> CoreResult:
    """Order parameter, core mask and centroid with :class:`CoreSettings`."""
    s = settings or CoreSettings()
    lat = find_fluorite_lattice(volume, sampling_A, a_range_A=s.a_range_A, min_snr=s.min_snr)
    check_peaks_present(volume, sampling_A, lat.g200_inv_A, min_snr=3.0, names=["(2, 0)", "(0, 2)"])
    return core_from_volume(volume, sampling_A, lat.g200_inv_A, lat.g220_inv_A, threshold=s.threshold,
                            threshold_method=s.threshold_method, grow_fraction=s.grow_fraction,
                            seed_fraction=s.seed_fraction, baseline=s.baseline, baseline_band_A=s.baseline_band_A,
                            mask_sigma_inv_A=s.mask_sigma_inv_A, amplitude_threshold=s.amplitude_threshold,
                            smoothing_A=s.smoothing_A, slice_mixing=s.slice_mixing,
                            edge_exclusion_A=s.edge_exclusion_A, opening_A=s.opening_A,
                            largest_component=s.largest_component,
                            origin_A=origin_A)


def run_dislocations(volume, sampling_A, settings: DislocationSettings | None = None,
                     origin_A=(0.0, 0.0)) -> DislocationResult:
    """Dislocations per slice and 3-D lines with :class:`DislocationSettings`."""
    s = settings or DislocationSettings()
    lat = find_fluorite_lattice(volume, sampling_A, a_range_A=s.a_range_A, min_snr=s.min_snr)
    g, _ = _pair(volume, sampling_A, lat, s.peak_family, s.g_vectors_inv_A)
    return find_dislocations(volume, sampling_A, g, mask_sigma_inv_A=s.mask_sigma_inv_A,
                             amplitude_threshold=s.amplitude_threshold, amplitude_smoothing_A=s.amplitude_smoothing_A,
                             merge_radius_A=s.merge_radius_A, link_radius_A=s.link_radius_A,
                             max_gap_slices=s.max_gap_slices,
                             translation_g_inv_A=lat.g200_inv_A if s.lattice_burgers_only else None,
                             origin_A=origin_A, keep_maps=s.store_maps)


def run_surface(volume, sampling_A, slice_thickness_A: float, settings: SurfaceSettings | None = None,
                origin_A=(0.0, 0.0)) -> SurfaceResult:
    """Particle mask and isosurface mesh with :class:`SurfaceSettings`."""
    s = settings or SurfaceSettings()
    lat = find_fluorite_lattice(volume, sampling_A, a_range_A=s.a_range_A, min_snr=s.min_snr)
    g, _ = _pair(volume, sampling_A, lat, s.peak_family, s.g_vectors_inv_A)
    return surface_from_volume(volume, sampling_A, g, slice_thickness_A=slice_thickness_A,
                               slice_range=s.slice_range, mask_sigma_inv_A=s.mask_sigma_inv_A,
                               smoothing_A=s.smoothing_A, smoothing_slices=s.smoothing_slices,
                               threshold_fraction=s.threshold_fraction, mesh_step_px=s.mesh_step_px,
                               origin_A=origin_A)
