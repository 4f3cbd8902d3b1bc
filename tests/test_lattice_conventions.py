"""Sign conventions, indexing, bad input and file round trips of msptycho.lattice (small, fast)."""

import json

import h5py
import numpy as np
import pytest

from msptycho.io import InputError, Provenance
from msptycho.io import analysis as aio
from msptycho.lattice import (HK_200, HK_220, burgers_vectors, check_peaks_present, core_from_volume,
                              find_dislocations, find_fluorite_lattice, fit_square_lattice, gpa_strain, ideal_g,
                              link_lines, match_points, plaquette_winding, strain_from_F, strain_from_volume,
                              surface_from_volume)
from msptycho.lattice._common import local_frequency

A = 5.46
DX = 0.197
N = 192


def lattice_image(F=np.eye(2), a=A, angle_deg=0.0, n=N, dx=DX, w200=0.3):
    """Cosine fluorite-[001]-like lattice deformed uniformly by F (x = F X): the local reciprocal
    vectors are F^-T g."""
    x = dx * np.arange(n)[:, None]
    y = dx * np.arange(n)[None, :]
    Finv_T = np.linalg.inv(F).T
    img = np.zeros((n, n))
    for hk, w in ((HK_220, 1.0), (HK_200, w200)):
        for g in ideal_g(a, angle_deg, hk):
            gl = Finv_T @ g
            img += w * np.cos(2 * np.pi * (gl[0] * x + gl[1] * y))
    return img


def centre(a, frac=0.35):
    n = a.shape[-1]
    k = int(n * frac)
    return a[..., k:n - k, k:n - k]


def test_uniform_exx_is_positive_one_percent():
    img = lattice_image(F=np.diag([1.01, 1.0]))
    g_ref = ideal_g(A, 0.0, HK_220)
    r = gpa_strain(img, DX, g_ref, hk=HK_220, reference_angle_deg=0.0, reference_a_A=A)
    exx, eyy = np.nanmean(centre(r.exx)), np.nanmean(centre(r.eyy))
    rot = np.nanmean(centre(r.rotation_deg))
    print(f"\nexx = {exx:.6f} (expected +0.010000), eyy = {eyy:.2e}, rotation = {rot:.2e} deg")
    assert exx == pytest.approx(0.01, abs=2e-4)
    assert abs(eyy) < 2e-4 and abs(rot) < 0.01


def test_counter_clockwise_rotation_is_positive():
    t = np.deg2rad(1.5)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])  # +x turns towards +y
    img = lattice_image(F=R)
    r = gpa_strain(img, DX, ideal_g(A, 0.0, HK_220), hk=HK_220, reference_angle_deg=0.0)
    rot = np.nanmean(centre(r.rotation_deg))
    dil = np.nanmean(centre(r.dilation))
    print(f"\nrotation = {rot:.4f} deg (expected +1.5), dilation = {dil:.2e}")
    assert rot == pytest.approx(1.5, abs=0.01)
    assert abs(dil) < 2e-4


def test_shear_and_explicit_reference():
    F = np.array([[1.0, 0.01], [0.01, 1.0]])  # pure shear exy = 0.01
    img = lattice_image(F=F)
    r = gpa_strain(img, DX, ideal_g(A, 0.0, HK_220), reference_g_inv_A=ideal_g(A, 0.0, HK_220))
    assert np.nanmean(centre(r.exy)) == pytest.approx(0.01, abs=2e-4)
    assert "explicit" in r.reference


def test_strain_from_F_polar():
    t = np.deg2rad(2.0)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    e = strain_from_F(1.044 * R)
    assert e["exx"] == pytest.approx(0.044) and e["eyy"] == pytest.approx(0.044)
    assert e["exy"] == pytest.approx(0.0, abs=1e-12) and e["rotation_deg"] == pytest.approx(2.0)


def test_local_frequency_needs_no_unwrapping():
    x = DX * np.arange(64)[:, None] + 0 * np.arange(64)[None, :]
    b = np.exp(2j * np.pi * 0.9 * x)  # phase wraps many times
    kx, ky = local_frequency(b, DX)
    assert np.allclose(kx, 0.9, atol=1e-9) or np.allclose(kx[1:-1], 0.9)
    assert np.allclose(ky, 0.0)


def test_find_fluorite_lattice_indexes_rotated_dilated_lattice():
    img = lattice_image(F=1.02 * np.eye(2), angle_deg=12.0, n=256)
    lat = find_fluorite_lattice(np.stack([img, img]), DX)
    print(f"\na = {lat.a_A:.4f} A (expected {A * 1.02:.4f}), angle = {lat.angle_deg:.3f} deg (expected 12)")
    assert lat.a_A == pytest.approx(A * 1.02, rel=3e-3)
    assert lat.angle_deg == pytest.approx(12.0, abs=0.3)
    assert np.all(lat.snr220 > 50) and np.all(lat.snr200 > 50)
    a, ang = fit_square_lattice(lat.g220_inv_A, HK_220)
    assert a == pytest.approx(lat.a_A) and (ang + 45) % 90 - 45 == pytest.approx(lat.angle_deg)


def test_no_lattice_raises_one_sentence():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(2, 128, 128))
    with pytest.raises(InputError, match="no lattice"):
        find_fluorite_lattice(noise, DX)
    with pytest.raises(InputError, match="constant"):
        find_fluorite_lattice(np.ones((2, 64, 64)), DX)
    with pytest.raises(InputError, match="NaN"):
        find_fluorite_lattice(np.full((2, 64, 64), np.nan), DX)
    with pytest.raises(InputError, match="shape"):
        find_fluorite_lattice(np.ones((2, 2, 64, 64)), DX)
    with pytest.raises(InputError, match="sampling_A"):
        find_fluorite_lattice(lattice_image(), -1.0)


def test_absent_peak_raises():
    img = lattice_image(w200=0.0)  # pure {220}: the {200} family is absent
    with pytest.raises(InputError, match="absent"):
        check_peaks_present(img, DX, ideal_g(A, 0.0, HK_200))
    with pytest.raises(InputError, match="absent"):
        strain_from_volume(img, DX, peak_family="200")
    with pytest.raises(InputError, match="absent"):
        strain_from_volume(img, DX, g_vectors_inv_A=[[0.3, 0.05], [-0.05, 0.3]])
    with pytest.raises(InputError, match="non-collinear"):
        gpa_strain(img, DX, [[0.1, 0.1], [0.2, 0.2]])


def test_winding_and_burgers_sign():
    # a vortex exp(+i theta) winds +1 counter-clockwise; b from g . b = -n
    x = np.arange(32)[:, None] - 15.5
    y = np.arange(32)[None, :] - 15.5
    w = plaquette_winding(np.exp(1j * np.arctan2(y, x)))
    assert w.sum() == 1 and w[15, 15] == 1
    g = ideal_g(A, 0.0, HK_220)
    b = burgers_vectors([[-1, 1]], g)[0]  # n = -g.b  ->  b = a/2 [1, 0]
    assert np.allclose(b, [A / 2, 0.0])


def test_edge_dislocation_sign_on_image():
    """A lattice image with an edge dislocation u = b/(2 pi) theta ... gives windings -g.b."""
    from msptycho.lattice.synthetic import _edge_u
    n = 256
    x = DX * np.arange(n)[:, None] - DX * n / 2 + 0.05 + 0 * np.arange(n)[None, :]
    y = DX * np.arange(n)[None, :] - DX * n / 2 + 0.07 + 0 * np.arange(n)[:, None]
    b = np.array([A / 2, 0.0])
    # image I(r) = sum cos(2 pi g . (r - u(r))): u evaluated at r (small-strain image of the field)
    ux, uy = _edge_u(x, y, b, 0.3)
    img = sum(np.cos(2 * np.pi * (g[0] * (x - ux) + g[1] * (y - uy))) for g in ideal_g(A, 0.0, HK_220))
    r = find_dislocations(img, DX, ideal_g(A, 0.0, HK_220), keep_maps=False)
    p = r.points
    print(f"\nfound {r.n_points}: windings {list(zip(p['winding_1'], p['winding_2']))}, b = {p['bx_A']}, {p['by_A']}")
    assert r.n_points == 1
    assert (p["winding_1"][0], p["winding_2"][0]) == (-1, 1)
    assert np.allclose([p["bx_A"][0], p["by_A"][0]], b, atol=1e-6)
    assert np.hypot(p["x_A"][0] - DX * n / 2 - 0.05, p["y_A"][0] - DX * n / 2 - 0.07) < 1.5


def test_only_lattice_burgers_vectors_with_translation_check():
    """With the {200} pair as translation_g_inv_A, b = a/2 [100] (a translation of the projected
    fluorite lattice) is kept and b = a/4 [110] (cation onto anion columns: no closed circuit in the
    crystal gives it) is dropped; without it both are reported."""
    from msptycho.lattice.synthetic import _edge_u
    n = 256
    x = DX * np.arange(n)[:, None] - DX * n / 2 + 0.05 + 0 * np.arange(n)[None, :]
    y = DX * np.arange(n)[None, :] - DX * n / 2 + 0.07 + 0 * np.arange(n)[:, None]
    g220, g200 = ideal_g(A, 0.0, HK_220), ideal_g(A, 0.0, HK_200)
    for b, kept in ((np.array([A / 2, 0.0]), True), (np.array([A / 4, A / 4]), False)):
        ux, uy = _edge_u(x, y, b, 0.3)
        img = sum(np.cos(2 * np.pi * (g[0] * (x - ux) + g[1] * (y - uy))) for g in g220)
        every = find_dislocations(img, DX, g220, keep_maps=False)
        checked = find_dislocations(img, DX, g220, keep_maps=False, translation_g_inv_A=g200)

        def central(r):  # the image's periodic edges cut the branch cut: only the core counts
            p = r.points
            return np.flatnonzero(np.hypot(p["x_A"] - DX * n / 2, p["y_A"] - DX * n / 2) < 5.0)

        k = central(every)
        assert len(k) == 1
        assert np.allclose([every.points["bx_A"][k[0]], every.points["by_A"][k[0]]], b, atol=1e-6)
        assert len(central(checked)) == (1 if kept else 0)


def test_link_lines_and_matching():
    s = np.array([0, 1, 2, 4, 0, 1])
    xy = np.array([[0, 0], [0.5, 0], [1.0, 0.2], [1.2, 0.0], [10, 10], [10, 12]], float)
    w = np.array([[1, 0]] * 4 + [[0, 1], [0, 1]])
    ids = link_lines(s, xy, w, link_radius_A=3.0, max_gap_slices=1)
    assert ids[0] == ids[1] == ids[2] == ids[3] and ids[4] == ids[5] and ids[0] != ids[4]
    ids = link_lines(s, xy, w, link_radius_A=1.0, max_gap_slices=0)
    assert ids[2] != ids[3] and ids[4] != ids[5]
    m = match_points([0, 0, 1], [[0, 0], [5, 5], [0, 0]], [0, 1, 1], [[1, 0], [0, 2], [9, 9]], radius_A=3.0)
    assert m["true_positives"] == 2 and m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def small_particle():
    from msptycho.lattice.synthetic import Dislocation, synthetic_fluorite_particle
    return synthetic_fluorite_particle(n_px=200, nz=4, slice_thickness_A=15.0, radii_A=(15, 15, 30),
                                       core_radius_A=9.0, core_center_A=(0, 0, 5), twist_deg=(0, 0),
                                       dislocations=[Dislocation(-8, 4, (A / 2, 0), 0, 3)])


def test_io_round_trips(tmp_path, small_particle):
    sp = small_particle
    prov = Provenance.collect("test", params={"x": 1})
    res, lat = strain_from_volume(sp.volume, sp.sampling_A)
    aio.write_strain(tmp_path / "strain.h5", res, prov)
    back = aio.read_strain(tmp_path / "strain.h5")
    assert np.array_equal(back.mask, res.mask)
    assert np.allclose(back.dilation, res.dilation, equal_nan=True)
    assert back.reference == res.reference and back.extra["lattice"]["a_A"] == pytest.approx(lat.a_A)
    with h5py.File(tmp_path / "strain.h5") as f:
        assert f.attrs["layout"] == aio.STRAIN_LAYOUT and json.loads(f.attrs["provenance_params"]) == {"x": 1}

    core = core_from_volume(sp.volume, sp.sampling_A, lat.g200_inv_A, lat.g220_inv_A)
    aio.write_core(tmp_path / "core.h5", core, prov, slice_thickness_A=sp.slice_thickness_A)
    cb = aio.read_core(tmp_path / "core.h5")
    assert np.array_equal(cb.core_mask, core.core_mask) and cb.centroid_slice == pytest.approx(core.centroid_slice)

    dis = find_dislocations(sp.volume, sp.sampling_A, lat.g220_inv_A)
    aio.write_dislocations(tmp_path / "dislocations.h5", dis, prov)
    db = aio.read_dislocations(tmp_path / "dislocations.h5")
    for k in dis.points:
        assert np.array_equal(db.points[k], dis.points[k])
    assert db.amplitude.shape == dis.amplitude.shape

    surf = surface_from_volume(sp.volume, sp.sampling_A, lat.g220_inv_A, slice_thickness_A=sp.slice_thickness_A)
    aio.write_surface(tmp_path / "surface.h5", surf, prov, vtp_path=tmp_path / "surface.vtp")
    sb = aio.read_surface(tmp_path / "surface.h5")
    assert np.array_equal(sb.faces, surf.faces) and sb.slice_range == surf.slice_range
    v, f, n = aio.read_vtp(tmp_path / "surface.vtp")
    assert v.shape == surf.vertices_A.shape and np.array_equal(f, surf.faces) and n.shape == v.shape
    # closed mesh, faces wound counter-clockwise seen from outside: positive signed volume
    vv = v.astype(np.float64)
    signed = np.einsum("ij,ij->i", vv[f[:, 0]], np.cross(vv[f[:, 1]], vv[f[:, 2]])).sum() / 6
    assert signed > 0
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core.h5", "dislocations.h5", "strain.h5",
                                                          "surface.h5", "surface.vtp"]


def test_readers_reject_wrong_layout(tmp_path, small_particle):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["layout"] = "something/1"
    with pytest.raises(InputError, match="layout"):
        aio.read_strain(tmp_path / "x.h5")
    with pytest.raises(InputError, match="not found"):
        aio.read_core(tmp_path / "missing.h5")


def test_surface_rejects_bad_slice_range(small_particle):
    sp = small_particle
    g = ideal_g(A, 0.0, HK_220)
    with pytest.raises(InputError, match="slice_range"):
        surface_from_volume(sp.volume, sp.sampling_A, g, slice_thickness_A=10.0, slice_range=(2, 9))


def test_settings_and_runners(small_particle):
    from msptycho.lattice import (CoreSettings, DislocationSettings, StrainSettings, SurfaceSettings, run_core,
                                  run_dislocations, run_strain, run_surface, settings_from_mapping)
    sp = small_particle
    st = settings_from_mapping(StrainSettings, {"reference_angle_deg": 0.0, "a_range_A": [5.3, 5.9]})
    assert st.a_range_A == (5.3, 5.9)
    with pytest.raises(InputError, match="unknown key"):
        settings_from_mapping(CoreSettings, {"treshold": 0.2}, source="config core")
    res, lat = run_strain(sp.volume, sp.sampling_A, st)
    assert "given" in res.reference and res.mask.any()
    core = run_core(sp.volume, sp.sampling_A, CoreSettings())
    assert core.core_mask.any() and core.baseline.shape == (sp.volume.shape[0],)
    dis = run_dislocations(sp.volume, sp.sampling_A, DislocationSettings(store_maps=False))
    assert dis.amplitude is None
    surf = run_surface(sp.volume, sp.sampling_A, sp.slice_thickness_A, SurfaceSettings(slice_range=(1, 2)))
    assert surf.slice_range == (1, 2) and not surf.mask[0].any() and not surf.mask[3].any()
    with pytest.raises(InputError, match="peak_family"):
        run_surface(sp.volume, sp.sampling_A, 10.0, SurfaceSettings(peak_family="111"))
