"""Ground truth, atomic model, HAADF pair and file layouts of the simulator."""

import dataclasses

import h5py
import numpy as np
import pytest

from msptycho.io import InputError, read_datacube
from msptycho.io.provenance import Provenance
from msptycho.io.simio import (read_scan_pair, read_simulation_parameters, read_truth, read_vacuum_probe,
                               write_simulation)
from msptycho.simulate import Deformation, build_model, preset, simulate_sample
from msptycho.simulate.model import REGION_CORE, REGION_SHELL, Z_CA, Z_F
from msptycho.simulate.potentials import integrated_projected_potential
from msptycho.simulate.truth import ground_truth


def _plain(name="pristine", **kw):
    """The preset without twist, tilt, crack, dislocations or thermal displacements."""
    return dataclasses.replace(preset(name), twist_top_deg=0.0, tilt_mrad=0.0, crack_direction_deg=None,
                               dislocations=(), thermal_rms_A=0.0, **kw)


def test_core_lattice_parameter_from_the_atoms():
    """The atoms of the core sit on a 5.70 A fluorite lattice and those of the outer shell on
    5.46 A: the 12 cation-cation neighbour distances average a / sqrt(2) (measured from the atoms;
    the shell's radial misfit field is traceless, so it changes the mean distance only to second
    order)."""
    p = _plain(carbon_thickness_A=0.0)
    m = build_model(p)
    d = Deformation(p)
    from scipy.spatial import cKDTree

    cat = np.isin(m.Z, (20, 38, 70))
    pos = m.positions_A[cat]
    tree = cKDTree(pos)
    dist, _ = tree.query(pos, k=13)
    nn = dist[:, 1:].mean(axis=1)
    full = dist[:, 12] < 4.5  # all 12 neighbours present (not at the surface)
    rho = np.linalg.norm(pos - d.core_center, axis=1)
    core = (rho < 0.6 * d.R0) & full
    far = (rho > 2.0 * d.R0) & full
    assert np.median(nn[core]) * np.sqrt(2) == pytest.approx(5.70, abs=0.01)
    assert np.median(nn[far]) * np.sqrt(2) == pytest.approx(5.46, abs=0.02)
    # composition: core cations are Sr/Yb, shell cations Ca, anions F, two per cation
    assert set(np.unique(m.Z[m.region == REGION_CORE])) == {9, 38, 70}
    assert set(np.unique(m.Z[m.region == REGION_SHELL])) == {Z_CA, Z_F}
    assert (m.Z == Z_F).sum() == pytest.approx(2 * cat.sum(), rel=0.05)


def test_truth_dilation_core_vs_shell_matches_the_misfit():
    """Ground truth of the core-shell model: in the core exx = eyy = (5.70 - 5.46) / 5.46 = 4.40 %
    and the dilation exx + eyy = 8.79 %; in the shell far from the core the strain decays to ~0."""
    p = _plain()
    m = build_model(p)
    t = ground_truth(p, m, 12.0)
    misfit = (5.70 - 5.46) / 5.46
    assert t.misfit == pytest.approx(misfit, rel=1e-12)
    # slices that lie entirely within the core's depth range
    d = Deformation(p)
    cz = d.core_center[2]
    full = [k for k in range(t.n_slices)
            if t.slice_edges_A[k] > cz - 0.6 * d.R0 and t.slice_edges_A[k + 1] < cz + 0.6 * d.R0]
    assert full, "no slice inside the core"
    for k in full:
        x = np.arange(t.exx.shape[1])[:, None] * t.sampling_A + t.origin_A[0]
        y = np.arange(t.exx.shape[2])[None, :] * t.sampling_A + t.origin_A[1]
        inner = np.hypot(x - d.core_center[0], y - d.core_center[1]) < 0.5 * d.R0
        assert np.nanmedian(t.exx[k][inner]) == pytest.approx(misfit, abs=2e-3)
        assert np.nanmedian(t.eyy[k][inner]) == pytest.approx(misfit, abs=2e-3)
        assert np.nanmedian(t.dilation[k][inner]) == pytest.approx(2 * misfit, abs=4e-3)
        assert np.nanmax(np.abs(t.rotation_rad[k][inner])) < 1e-6
        outer = t.particle_mask[k] & (np.hypot(x - d.core_center[0], y - d.core_center[1]) > 2.2 * d.R0)
        assert np.nanmedian(np.abs(t.dilation[k][outer])) < 0.01
    # gradient at the core centre is exactly the misfit
    G = d.gradient(d.core_center[None])[0]
    assert np.allclose(G, misfit * np.eye(2), atol=1e-7)


def test_twist_and_crack_rotations():
    """Pristine: the lattice rotation at the top minus the bottom equals twist_top_deg (1.5 deg).
    Cracked: the two faces of the crack are rotated apart by the configured opening."""
    p = dataclasses.replace(preset("pristine"), tilt_mrad=0.0)
    d = Deformation(p)
    c = d.center
    X = np.array([[c[0] + 25, c[1], d.z_top + 0.1], [c[0] + 25, c[1], d.z_bottom - 0.1]])
    G = d.gradient(X)
    rot = 0.5 * (G[:, 1, 0] - G[:, 0, 1])
    assert np.degrees(rot[0] - rot[1]) == pytest.approx(1.5, abs=0.05)
    q = preset("cracked")
    dq = Deformation(dataclasses.replace(q, dislocations=()))
    z = dq.z_top + 0.5
    tip = dq.crack_tip
    pts = np.array([[*(tip + 8 * dq.crack_d + 0.5 * dq.crack_n), z], [*(tip + 8 * dq.crack_d - 0.5 * dq.crack_n), z]])
    G = dq.gradient(pts)
    rot = 0.5 * (G[:, 1, 0] - G[:, 0, 1])
    # the faces at polar angle +-psi from the crack plane turn by +-alpha/2 (1 - psi/pi)^2
    psi = np.arctan2(0.5, 8.0)
    expect = dq.crack_opening_rad(z) * (1 - psi / np.pi) ** 2
    assert rot[0] - rot[1] == pytest.approx(expect, rel=0.03)
    assert dq.crack_opening_rad(dq.z_top) > dq.crack_opening_rad(dq.z_bottom)


def test_dislocation_burgers_vector_closes_the_circuit():
    """The displacement jumps by the Burgers vector across each dislocation's cut (the closure
    failure of a Burgers circuit), and a circuit integral of the truth gradient gives b."""
    p = preset("cracked")
    d = Deformation(p)
    for dis in d.dislocations:
        z = 0.5 * (max(dis["z0"], d.z_top) + min(dis["z1"], d.z_bottom))
        th = np.linspace(0, 2 * np.pi, 2001)[:-1] + dis["phi_cut"] + 1e-4
        r = 3.0
        pts = np.stack([dis["pos"][0] + r * np.cos(th), dis["pos"][1] + r * np.sin(th), np.full(th.size, z)], axis=1)
        G = d.gradient(pts)
        dl = np.stack([-np.sin(th), np.cos(th)], axis=1) * r * (2 * np.pi / th.size)
        circ = np.einsum("nij,nj->i", G, dl)
        assert np.allclose(circ, dis["b"], atol=0.03 * np.linalg.norm(dis["b"]))
        u = d.displacement(pts[[0, -1]])
        assert np.allclose(u[0, :2] - u[1, :2], -dis["b"], atol=0.05) or np.allclose(u[0, :2] - u[1, :2], dis["b"], atol=0.05)


def test_truth_potential_integrates_to_the_atoms():
    """Summed over slices and pixels the truth potential equals the sum of the atoms' analytic
    integrals (atoms away from the grid edge) within 1 %."""
    p = _plain(carbon_thickness_A=0.0)
    m = build_model(p)
    t = ground_truth(p, m, 12.0)
    total = t.potential_VA.sum(dtype=np.float64) * t.sampling_A**2
    expect = sum(integrated_projected_potential(z) * (m.Z == z).sum() for z in np.unique(m.Z))
    assert total == pytest.approx(expect, rel=0.01)
    assert t.particle_mask.any() and t.core_mask.any() and not t.crack_mask.any()
    assert np.all(np.isnan(t.exx[~t.particle_mask]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = dataclasses.replace(preset("cracked"), scan_shape_px=(5, 4), scan_step_A=6.0, particle_radius_A=12.0,
                            particle_thickness_A=14.0, core_radius_A=5.0, core_offset_A=(1.0, 0.0, 1.0),
                            carbon_thickness_A=5.0, haadf_shape_px=(64, 60), crack_tip_A=6.0,
                            dislocations=((7.0, 0.0, 2.73, 2.73, 0.0, 14.0),))
    r = simulate_sample(p, recon_slice_thickness_A=6.0)
    d = tmp_path_factory.mktemp("sim")
    prov = Provenance.collect("simulate", params=p.as_dict(), seed=p.seed)
    paths = [d / f for f in ("datacube.h5", "scan_pair.h5", "vacuum_probe.h5", "truth.h5")]
    write_simulation(r, *paths, provenance=prov)
    return r, paths


def test_files_round_trip(tiny):
    r, (dc, sp, vp, tr) = tiny
    cube, cal = read_datacube(dc)
    assert cube.shape == (5, 4, 128, 128) and np.array_equal(cube, r.datacube)
    assert cal.dose_e_per_A2 == 5e3 and cal.detector_center_px == (64.0, 64.0)
    pair = read_scan_pair(sp)
    assert pair["images"].shape == (2, 64, 60) and pair["fast_axis_deg"] == (0.0, 90.0)
    vac, vcal = read_vacuum_probe(vp)
    assert vac.shape == (128, 128) and vcal.mrad_per_pixel == pytest.approx(100 / 128)
    t = read_truth(tr)
    for name in ("potential_VA", "exx", "dilation", "rotation_rad", "particle_mask", "core_mask", "crack_mask"):
        assert np.array_equal(getattr(t, name), getattr(r.truth, name), equal_nan=name not in ("particle_mask", "core_mask", "crack_mask"))
    assert np.array_equal(t.dislocations, r.truth.dislocations) and len(t.dislocations) > 0
    assert t.scan_positions_A.shape == (5, 4, 2) and t.haadf_drift_A.shape == (2, 64, 60, 2)
    assert t.probe["defocus_A"] == 120.0
    assert read_simulation_parameters(tr) == r.params
    with h5py.File(tr) as f:
        assert f.attrs["provenance_rule"] == "simulate"


def test_readers_reject_bad_files(tiny, tmp_path):
    _, (dc, sp, vp, tr) = tiny
    with pytest.raises(InputError, match="layout"):
        read_truth(sp)
    with pytest.raises(InputError, match="file not found"):
        read_scan_pair(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["layout"] = "msptycho.vacuum_probe/1"
        f["vacuum_probe"] = -np.ones((4, 4))
    with pytest.raises(InputError, match="negative"):
        read_vacuum_probe(bad)


def test_haadf_pair_drift_matches_the_images():
    """The offset between the two HAADF frames found by phase correlation equals the difference
    of their mean true drifts within half a pixel; the frames carry Poisson counts."""
    from skimage.registration import phase_cross_correlation

    from msptycho.simulate.haadf import simulate_scan_pair

    p = dataclasses.replace(preset("pristine"), haadf_drift_nonlinear_A=0.3, haadf_drift_A_per_frame=(3.0, -2.0),
                            haadf_peak_counts=500.0)
    m = build_model(p)
    pair = simulate_scan_pair(p, m.positions_A, m.Z, np.random.default_rng(0))
    shift, _, _ = phase_cross_correlation(pair.images[0], pair.images[1], upsample_factor=10)
    expect = (pair.drift_A[1].reshape(-1, 2).mean(0) - pair.drift_A[0].reshape(-1, 2).mean(0)) / pair.pixel_size_A
    assert np.allclose(shift, expect, atol=0.5)
    assert np.all(pair.images == np.round(pair.images)) and pair.images.min() >= 0
    assert pair.time_s[1].min() > pair.time_s[0].max()
