"""Accuracy of the lattice analyses on analytic core-shell volumes with known truth.

The volumes (msptycho.lattice.synthetic) are Gaussian atomic columns at fluorite [001] cation and
anion positions, heavier cations in an off-centre core, moved by an analytic field: a relaxed core
dilated by 4.4 % (SrYbF5 on CaF2) with its 3-D misfit field outside, a twist from -1 to +1 degree
through the depth and, in the second volume, edge dislocations. 400 x 400 pixels of 0.197 A
(7.9 nm), 16 slices of 8 A. Numbers are printed (run with -s to see them).
"""

import numpy as np
import pytest

from msptycho.lattice import (core_from_volume, find_dislocations, find_fluorite_lattice, strain_from_volume,
                              surface_from_volume, validate_core, validate_dislocations, validate_strain,
                              validate_surface)
from msptycho.lattice.synthetic import Dislocation, synthetic_fluorite_particle
from msptycho.lattice.validate import interface_band

H = 5.46 / 2  # a/2: projected lattice translation


@pytest.fixture(scope="module")
def pristine():
    sp = synthetic_fluorite_particle()
    lat = find_fluorite_lattice(sp.volume, sp.sampling_A)
    return sp, lat


@pytest.fixture(scope="module")
def cracked():
    disl = [Dislocation(-18, 10, (H, 0), 2, 13), Dislocation(15, 15, (0, -H), 0, 15),
            Dislocation(-10, -18, (H, H), 4, 10), Dislocation(20, -12, (-H, 0), 0, 8)]
    sp = synthetic_fluorite_particle(dislocations=disl, twist_deg=(0.5, -0.5), seed=1)
    lat = find_fluorite_lattice(sp.volume, sp.sampling_A)
    return sp, lat


def test_lattice_found(pristine):
    sp, lat = pristine
    print(f"\nlattice: a = {lat.a_A:.4f} A (shell 5.46, core 5.70), [100] at {lat.angle_deg:.3f} deg, "
          f"snr220 = {lat.snr220.round(0)}, snr200 = {lat.snr200.round(0)}")
    assert 5.40 < lat.a_A < 5.75 and abs(lat.angle_deg) < 0.5


def test_strain_accuracy(pristine):
    sp, lat = pristine
    res, _ = strain_from_volume(sp.volume, sp.sampling_A)  # default: CaF2 a = 5.46 A, measured angle
    band = interface_band(sp.core_mask, 2 * res.resolution_A, sp.sampling_A)
    m = validate_strain(res, sp.dilation, sp.rotation_deg, sp.particle_mask, edge_band_A=10.0)
    far = validate_strain(res, sp.dilation, sp.rotation_deg, sp.particle_mask, edge_band_A=10.0, exclude_mask=band)
    print(f"\nreference: {res.reference}; GPA resolution {res.resolution_A:.2f} A; coverage {m['coverage']:.3f}")
    print(f"dilation RMS error: raw {100 * m['dilation_rms']:.3f} %, resolution-matched "
          f"{100 * m['dilation_rms_resolution_matched']:.3f} %, raw away from the core interface (+-"
          f"{2 * res.resolution_A:.1f} A) {100 * far['dilation_rms']:.3f} %; bias {100 * m['dilation_bias']:.3f} %")
    print(f"rotation RMS error: raw {m['rotation_rms_deg']:.3f} deg, resolution-matched "
          f"{m['rotation_rms_resolution_matched_deg']:.3f} deg; bias {m['rotation_bias_deg']:.3f} deg")
    assert m["coverage"] > 0.98
    assert m["dilation_rms_resolution_matched"] <= 0.003
    assert far["dilation_rms"] <= 0.003
    assert m["rotation_rms_deg"] <= 0.2
    # the core is dilated by 4.4 % per direction relative to CaF2: dilation ~ +8.8 % at its centre
    cz = int(round(sp.core_centroid[2]))
    i, j = int(round(sp.core_centroid[0] / sp.sampling_A)), int(round(sp.core_centroid[1] / sp.sampling_A))
    print(f"core-centre dilation {100 * res.dilation[cz, i, j]:.2f} % (truth {100 * sp.dilation[cz, i, j]:.2f} %)")
    assert res.dilation[cz, i, j] == pytest.approx(sp.dilation[cz, i, j], abs=0.003)


def test_core_accuracy(pristine):
    sp, lat = pristine
    # the synthetic columns are evaluated at each slice's mid-depth: no atomic layers cross slice
    # boundaries, so there is no {200} flicker for slice_mixing to suppress (it would only blur the
    # core's top and bottom); the simulator-truth test below keeps the default
    core = core_from_volume(sp.volume, sp.sampling_A, lat.g200_inv_A, lat.g220_inv_A, slice_mixing=0.0)
    m = validate_core(core, sp.core_mask, truth_centroid_slice=sp.core_centroid[2], truth_centroid_A=sp.core_centroid[:2])
    print(f"\ncore: threshold {core.threshold:.3f} ({core.threshold_method}), IoU {m['core_iou']:.3f}, centroid "
          f"slice {core.centroid_slice:.2f} (truth {sp.core_centroid[2]:.2f}), xy error {m['centroid_xy_error_A']:.2f} A")
    assert m["core_iou"] >= 0.8
    assert abs(m["centroid_slice_error"]) <= 1.0
    paper = core_from_volume(sp.volume, sp.sampling_A, lat.g200_inv_A, lat.g220_inv_A, baseline="none",
                             threshold_method="otsu", slice_mixing=0.0)
    mp = validate_core(paper, sp.core_mask, truth_centroid_slice=sp.core_centroid[2])
    print(f"core without per-slice baseline (paper): IoU {mp['core_iou']:.3f}, centroid slice error "
          f"{mp['centroid_slice_error']:.2f}")
    assert mp["core_iou"] >= 0.8 and abs(mp["centroid_slice_error"]) <= 1.0


def test_surface_accuracy(pristine):
    sp, lat = pristine
    surf = surface_from_volume(sp.volume, sp.sampling_A, lat.g220_inv_A, slice_thickness_A=sp.slice_thickness_A,
                               slice_range=(2, 13))
    m = validate_surface(surf, sp.particle_mask)
    print(f"\nsurface: slices {surf.slice_range}, threshold {surf.threshold:.3g} ({surf.threshold_method}), "
          f"IoU {m['surface_iou']:.3f}, mesh {len(surf.vertices_A)} vertices / {len(surf.faces)} triangles")
    assert m["surface_iou"] >= 0.7
    assert len(surf.faces) > 100
    z = surf.vertices_A[:, 2]
    assert z.min() >= 2 * sp.slice_thickness_A - 1e-3 and z.max() <= 14 * sp.slice_thickness_A + 1e-3


def test_dislocation_accuracy(cracked):
    sp, lat = cracked
    res = find_dislocations(sp.volume, sp.sampling_A, lat.g220_inv_A, keep_maps=False)
    t = sp.dislocations
    m_all = validate_dislocations(res, t["slice"], t["x_A"], t["y_A"], radius_A=3.0)
    m = validate_dislocations(res, t["slice"], t["x_A"], t["y_A"], radius_A=3.0, particle_mask=sp.particle_mask,
                              min_surface_distance_A=res.parameters["resolution_A"])
    print(f"\ndislocations, all true points: {m_all['n_found']} found, {m_all['n_true']} true, precision "
          f"{m_all['precision']:.3f}, recall {m_all['recall']:.3f}, mean distance {m_all['mean_distance_A']:.2f} A; "
          f"{len(res.lines['line_id'])} lines")
    print(f"dislocations deeper than {m['min_surface_distance_A']:.2f} A below the surface ({m['n_true_near_surface']} "
          f"true points nearer left out): precision {m['precision']:.3f}, recall {m['recall']:.3f}")
    assert m_all["precision"] >= 0.9 and m_all["recall"] >= 0.9
    from msptycho.lattice import validate_against_truth
    allm = validate_against_truth(sp, dislocations=res)["dislocations"]
    assert allm["recall"] == m_all["recall"] and allm["recall_deep"] == m["recall"]
    assert m["precision"] >= 0.9 and m["recall"] >= 0.95
    # Burgers vectors of the matched points: nearest true point in the same slice
    errs = []
    for s, x, y, bx, by in zip(res.points["slice"], res.points["x_A"], res.points["y_A"], res.points["bx_A"],
                               res.points["by_A"]):
        k = np.flatnonzero(t["slice"] == s)
        if len(k) == 0:
            continue
        d = np.hypot(t["x_A"][k] - x, t["y_A"][k] - y)
        if d.min() <= 3.0:
            j = k[np.argmin(d)]
            errs.append(np.hypot(bx - t["bx_A"][j], by - t["by_A"][j]))
    errs = np.array(errs)
    print(f"Burgers vector error: median {np.median(errs):.3f} A, max {errs.max():.3f} A (|b| = 2.73 or 3.86 A)")
    assert np.median(errs) < 0.3
    # the line through all slices is found as one line
    assert res.lines["n_points"].max() >= 8
