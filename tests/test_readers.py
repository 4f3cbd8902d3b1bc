"""Readers: each format round-trips against data this project did not write, and bad input fails
with one sentence naming the file and the field, leaving no output behind.

Fixtures: ``py4dstem_0.14.18_datacube.h5`` was written by ``py4DSTEM.save`` (py4DSTEM 0.14.18)
and ``stempy_3.6.0_sparse.h5`` by ``stempy.io.SparseArray.write_to_hdf5`` (stempy 3.6.0), with
the generator scripts in ``tools/fixtures``; their ``*_expected.npz`` hold the array given to
py4DSTEM and stempy's own dense expansions. Generic HDF5 and npy inputs are written here with
h5py/numpy directly.
"""
import json
import shutil
from dataclasses import asdict

import h5py
import numpy as np
import pytest

from msptycho.io import InputError, Provenance, read_datacube, read_provenance
from msptycho.io.readers import _SparseSource, ingest_to_canonical
from msptycho.physics import wavelength_A

EMD = "py4dstem_0.14.18_datacube.h5"
SPARSE = "stempy_3.6.0_sparse.h5"
CAL = {"energy_eV": 300e3, "semiangle_mrad": 25.0, "scan_step_A": 0.8, "mrad_per_pixel": 0.5}


def cube(shape=(3, 4, 6, 8), seed=0, dtype=np.uint16):
    return np.random.default_rng(seed).poisson(5.0, size=shape).astype(dtype)


def same_cal(a, b):
    """Calibrations equal field by field (NaN equals NaN: an unknown dose stays unknown)."""
    da, db = asdict(a), asdict(b)
    return da.keys() == db.keys() and all(
        np.array_equal(np.asarray(da[k], float), np.asarray(db[k], float), equal_nan=True) for k in da)


def assert_no_output(tmp_path, out):
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def assert_sentence(err, path, *words):
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("."), msg
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg


# ------------------------------------------------------------------------------ round trips

def test_emd_written_by_py4dstem_round_trips_with_its_calibration(data_dir, tmp_path):
    exp = np.load(data_dir / "py4dstem_0.14.18_datacube_expected.npz")
    out = tmp_path / "c.h5"
    cal = ingest_to_canonical(data_dir / EMD, "emd", out, calibration={"energy_eV": 300e3})
    data, cal_read = read_datacube(out)
    np.testing.assert_array_equal(data, exp["data"])           # (8, 9, 20, 20) float32
    assert same_cal(cal_read, cal)
    assert cal.energy_eV == 300e3                              # py4DSTEM stores none: from config
    assert cal.mrad_per_pixel == float(exp["Q_pixel_size"]) == 1.25
    assert cal.scan_step_A == float(exp["R_pixel_size"]) == 0.37
    assert cal.scan_rotation_deg == float(exp["QR_rotation_degrees"]) == -12.5
    assert cal.semiangle_mrad == float(exp["convergence_semiangle_mrad"]) == 21.4
    assert cal.detector_center_px == (9.6, 10.3)


def test_emd_config_values_override_the_file(data_dir, tmp_path):
    cal = ingest_to_canonical(data_dir / EMD, "emd", tmp_path / "c.h5", dataset="datacube_root/datacube",
                              calibration={"energy_eV": 200e3, "semiangle_mrad": 30.0})
    assert (cal.semiangle_mrad, cal.scan_step_A) == (30.0, 0.37)


def test_emd_inverse_angstrom_and_nm_units_are_converted(data_dir, tmp_path):
    src = tmp_path / "inv.h5"
    shutil.copy(data_dir / EMD, src)
    with h5py.File(src, "r+") as f:
        g = f["datacube_root/metadatabundle/calibration"]
        for name, value in (("Q_pixel_units", "A^-1"), ("R_pixel_units", "nm")):
            del g[name]
            g.create_dataset(name, data=value, dtype=h5py.string_dtype())
    cal = ingest_to_canonical(src, "emd", tmp_path / "c.h5", calibration={"energy_eV": 300e3})
    assert cal.mrad_per_pixel == pytest.approx(1.25 * wavelength_A(300e3) * 1e3)   # 0.0246 mrad
    assert cal.scan_step_A == pytest.approx(3.7)


def test_emd_without_calibration_metadata_falls_back_on_dim_vectors(data_dir, tmp_path):
    src = tmp_path / "nocal.h5"
    shutil.copy(data_dir / EMD, src)
    with h5py.File(src, "r+") as f:
        del f["datacube_root/metadatabundle/calibration"]
    cal = ingest_to_canonical(src, "emd", tmp_path / "c.h5", dataset="datacube_root/datacube/data",
                              calibration={"energy_eV": 300e3, "semiangle_mrad": 20.0})
    assert cal.scan_step_A == pytest.approx(0.37) and cal.mrad_per_pixel == pytest.approx(1.25)
    assert cal.scan_rotation_deg == 0.0 and cal.detector_center_px == (10.0, 10.0)


def test_emd_without_energy_names_the_field(data_dir, tmp_path):
    out = tmp_path / "c.h5"
    with pytest.raises(InputError) as e:
        ingest_to_canonical(data_dir / EMD, "emd", out)
    assert_sentence(e, data_dir / EMD, "energy_eV")
    assert_no_output(tmp_path, out)


def test_emd_with_flipped_axes_is_refused(data_dir, tmp_path):
    src = tmp_path / "flip.h5"
    shutil.copy(data_dir / EMD, src)
    with h5py.File(src, "r+") as f:
        g = f["datacube_root/metadatabundle/calibration"]
        del g["QR_flip"]
        g.create_dataset("QR_flip", data=True)
    with pytest.raises(InputError) as e:
        ingest_to_canonical(src, "emd", tmp_path / "c.h5", calibration={"energy_eV": 3e5})
    assert_sentence(e, src, "QR_flip")


@pytest.mark.parametrize("flyback, bin_factor, key, shape", [
    (False, 1, "dense", (6, 9, 16, 16)),
    (True, 1, "dense_noflyback", (6, 8, 16, 16)),
    (True, 2, "dense_noflyback_bin2", (6, 8, 8, 8)),
])
def test_4dcamera_written_by_stempy_matches_stempys_own_expansion(data_dir, tmp_path, flyback,
                                                                  bin_factor, key, shape):
    exp = np.load(data_dir / "stempy_3.6.0_sparse_expected.npz")[key]
    out = tmp_path / "c.h5"
    cal = ingest_to_canonical(data_dir / SPARSE, "4dcamera", out, calibration=CAL,
                              drop_flyback_column=flyback, bin_factor=bin_factor, rows_per_block=4)
    data, _ = read_datacube(out)
    assert data.shape == exp.shape == shape
    np.testing.assert_array_equal(data, exp)
    assert data.sum() > 1000                                  # ~60 electrons per position
    assert cal.mrad_per_pixel == 0.5 * bin_factor
    # default centre (8, 8) of the 16 x 16 detector maps to (8.5 / b - 0.5)
    assert cal.detector_center_px == (8.5 / bin_factor - 0.5,) * 2


def test_4dcamera_is_densified_one_block_of_rows_at_a_time(data_dir, tmp_path, monkeypatch):
    seen = []
    orig = _SparseSource.read_rows

    def spy(self, r0, r1):
        block = orig(self, r0, r1)
        seen.append(block.shape)
        return block

    monkeypatch.setattr(_SparseSource, "read_rows", spy)
    ingest_to_canonical(data_dir / SPARSE, "4dcamera", tmp_path / "c.h5", calibration=CAL,
                        rows_per_block=1)
    assert seen == [(1, 9, 16, 16)] * 6                       # never more than one scan row


def _write_old_stempy(path, events, positions, scan_nx, scan_ny, frame_shape, version=None):
    """The stempy layout before version 3 (``save_electron_counts`` of stempy 1.x/2.x): frame
    ``i`` belongs to scan position ``scan_positions[i]``; no ``version`` attribute."""
    with h5py.File(path, "w") as f:
        if version is not None:
            f.attrs["version"] = version
        g = f.create_group("electron_events")
        sp = g.create_dataset("scan_positions", data=np.asarray(positions, dtype=np.int32))
        sp.attrs["Nx"], sp.attrs["Ny"] = scan_nx, scan_ny
        fr = g.create_dataset("frames", (len(events),), dtype=h5py.vlen_dtype(np.uint32))
        fr.attrs["Nx"], fr.attrs["Ny"] = frame_shape
        for i, e in enumerate(events):
            fr[i] = np.asarray(e, dtype=np.uint32)


def test_4dcamera_old_layout_with_unordered_and_repeated_positions(tmp_path):
    rng = np.random.default_rng(3)
    scan_nx, scan_ny, fshape = 5, 4, (6, 10)                  # 4 rows x 5 columns; 6 x 10 frames
    positions = np.concatenate([rng.permutation(20), rng.integers(0, 20, 7)])
    events = [rng.integers(0, 60, rng.integers(0, 9)) for _ in positions]   # duplicates allowed
    expected = np.zeros((4, 5, 6, 10), np.float32)
    for p, e in zip(positions, events):
        for pix in e:
            expected[p // 5, p % 5, pix // 10, pix % 10] += 1  # index p -> (p // Ny, p % Ny)
    src = tmp_path / "old.h5"
    _write_old_stempy(src, events, positions, scan_nx, scan_ny, fshape)
    ingest_to_canonical(src, "4dcamera", tmp_path / "c.h5", calibration=CAL, rows_per_block=3)
    np.testing.assert_array_equal(read_datacube(tmp_path / "c.h5")[0], expected)


def test_generic_hdf5_with_named_dataset_and_config_calibration(tmp_path):
    data = cube()
    src = tmp_path / "raw.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("entry/data/counts", data=data, chunks=(1, 4, 6, 8))
        f.create_dataset("entry/data/other", data=np.zeros(3))
    out = tmp_path / "c.h5"
    cal = ingest_to_canonical(src, "hdf5", out, dataset="entry/data/counts",
                              calibration={**CAL, "scan_rotation_deg": 3.0,
                                           "detector_center_px": [2.5, 3.5], "dose_e_per_A2": 1e4},
                              rows_per_block=2)
    got, cal2 = read_datacube(out)
    np.testing.assert_array_equal(got, data.astype(np.float32))
    assert same_cal(cal2, cal) and cal.detector_center_px == (2.5, 3.5) and cal.dose_e_per_A2 == 1e4
    # the only 4-D dataset is found without naming it
    ingest_to_canonical(src, "hdf5", tmp_path / "d.h5", calibration=CAL)
    np.testing.assert_array_equal(read_datacube(tmp_path / "d.h5")[0], data)


def test_generic_hdf5_binning_sums_pixels(tmp_path):
    data = cube((2, 3, 6, 8), dtype=np.float32)
    src = tmp_path / "raw.h5"
    with h5py.File(src, "w") as f:
        f["d"] = data
    cal = ingest_to_canonical(src, "hdf5", tmp_path / "c.h5", calibration={**CAL, "detector_center_px": (2.5, 3.5)},
                              bin_factor=2, drop_flyback_column=True)
    got = read_datacube(tmp_path / "c.h5")[0]
    np.testing.assert_allclose(got, data[:, :2].reshape(2, 2, 3, 2, 4, 2).sum(axis=(3, 5)))
    assert cal.detector_center_px == (1.0, 1.5) and cal.mrad_per_pixel == 1.0


def test_npy_and_npz(tmp_path):
    data = cube(dtype=np.int32)
    np.save(tmp_path / "a.npy", data)
    np.savez(tmp_path / "b.npz", counts=data, other=np.zeros(2))
    ingest_to_canonical(tmp_path / "a.npy", "npy", tmp_path / "a.h5", calibration=CAL, rows_per_block=1)
    ingest_to_canonical(tmp_path / "b.npz", "npy", tmp_path / "b.h5", calibration=CAL, dataset="counts")
    for name in ("a.h5", "b.h5"):
        np.testing.assert_array_equal(read_datacube(tmp_path / name)[0], data)


def test_canonical_is_rewritten_with_new_provenance(data_dir, tmp_path):
    first = tmp_path / "first.h5"
    ingest_to_canonical(data_dir / EMD, "emd", first, calibration={"energy_eV": 300e3})
    prov = Provenance.collect("reingest", params={"why": "test"}, inputs=[first], seed=7)
    cal = ingest_to_canonical(first, "canonical", tmp_path / "second.h5", provenance=prov)
    a, cal_a = read_datacube(first)
    b, cal_b = read_datacube(tmp_path / "second.h5")
    np.testing.assert_array_equal(a, b)
    assert same_cal(cal_a, cal_b) and same_cal(cal_b, cal)
    p = read_provenance(tmp_path / "second.h5")
    assert p.rule == "reingest" and p.seed == 7 and str(first) in p.inputs_sha256


def test_default_provenance_records_the_call(tmp_path):
    np.save(tmp_path / "a.npy", cube())
    ingest_to_canonical(tmp_path / "a.npy", "npy", tmp_path / "a.h5", calibration=CAL, bin_factor=2)
    with h5py.File(tmp_path / "a.h5") as f:
        assert f.attrs["provenance_rule"] == "ingest"
        params = json.loads(f.attrs["provenance_params"])
    assert params["format"] == "npy" and params["bin_factor"] == 2


# ------------------------------------------------------------------------------- bad input

def _h5(path, data, name="d"):
    with h5py.File(path, "w") as f:
        f[name] = data
    return path


def _truncate(path, fraction=0.5):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * fraction))
    return path


def _corrupt_chunk(path):
    """gzip-compressed rows with the bytes of the last row's chunk overwritten: the file opens,
    the first rows read, the last fails in the filter."""
    with h5py.File(path, "w") as f:
        d = f.create_dataset("d", data=cube((4, 4, 16, 16)), chunks=(1, 4, 16, 16), compression="gzip")
        info = d.id.get_chunk_info(3)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    return path


def _bad_cases(tmp, data_dir):
    nan = cube(dtype=np.float32)
    nan[2, 1, 3, 3] = np.nan                                   # in the last block of rows
    neg = cube(dtype=np.int16)
    neg[1, 0, 0, 0] = -4
    cases = {
        "missing file": (tmp / "nope.h5", "hdf5", {}, "does not exist"),
        "missing dataset": (_h5(tmp / "m.h5", cube()), "hdf5", {"dataset": "entry/x"}, "entry/x"),
        "missing npz key": (tmp / "k.npz", "npy", {"dataset": "counts"}, "counts"),
        "wrong rank": (_h5(tmp / "r.h5", np.zeros((4, 6, 8))), "hdf5", {"dataset": "d"}, "3 dimensions"),
        "wrong rank npy": (tmp / "r.npy", "npy", {}, "3 dimensions"),
        "NaN counts": (_h5(tmp / "n.h5", nan), "hdf5", {"rows_per_block": 1}, "NaN"),
        "negative counts": (tmp / "neg.npy", "npy", {}, "negative"),
        "complex counts": (_h5(tmp / "c.h5", cube().astype(np.complex64)), "hdf5", {}, "complex"),
        "missing calibration": (_h5(tmp / "mc.h5", cube()), "hdf5",
                                {"calibration": {k: v for k, v in CAL.items() if k != "scan_step_A"}},
                                "scan_step_A"),
        "bad calibration": (_h5(tmp / "bc.h5", cube()), "hdf5",
                            {"calibration": {**CAL, "energy_eV": -1.0}}, "energy_eV"),
        "unknown calibration key": (_h5(tmp / "uk.h5", cube()), "hdf5",
                                    {"calibration": {**CAL, "energy_keV": 300}}, "energy_keV"),
        "empty scan": (_h5(tmp / "e.h5", np.zeros((0, 4, 6, 8))), "hdf5", {}, "empty scan"),
        "truncated hdf5": (_truncate(_h5(tmp / "t.h5", cube((6, 6, 16, 16)))), "hdf5", {}, "HDF5"),
        "corrupt hdf5": (tmp / "junk.h5", "hdf5", {}, "HDF5"),
        "corrupt chunk": (_corrupt_chunk(tmp / "cc.h5"), "hdf5", {"rows_per_block": 1}, "scan rows 3..3"),
        "truncated npy": (tmp / "t.npy", "npy", {}, "npy"),
        "truncated emd": (_truncate(shutil.copy(data_dir / EMD, tmp / "t_emd.h5")), "emd",
                          {"calibration": {"energy_eV": 3e5}}, "EMD"),
        "not emd": (_h5(tmp / "ne.h5", cube()), "emd", {"calibration": {"energy_eV": 3e5}}, "emd_group_type"),
        "truncated 4dcamera": (_truncate(shutil.copy(data_dir / SPARSE, tmp / "t_sp.h5"), 0.7),
                               "4dcamera", {}, "HDF5"),
        "4dcamera scan position out of range": (tmp / "oor.h5", "4dcamera", {}, "scan_positions"),
        "4dcamera pixel out of range": (tmp / "pix.h5", "4dcamera", {}, "pixel index 999"),
        "4dcamera missing attribute": (tmp / "na.h5", "4dcamera", {}, "'Nx'"),
        "4dcamera empty scan": (tmp / "es.h5", "4dcamera", {}, "empty scan"),
        "4dcamera missing frames": (_h5(tmp / "mf.h5", np.zeros(3), "electron_events/scan_positions"),
                                    "4dcamera", {}, "electron_events/frames"),
        "bin factor": (_h5(tmp / "bf.h5", cube()), "hdf5", {"bin_factor": 4}, "bin_factor"),
        "fly-back of a single column": (_h5(tmp / "fb.h5", cube((3, 1, 6, 8))), "hdf5",
                                        {"drop_flyback_column": True}, "fly-back"),
        "unknown format": (_h5(tmp / "uf.h5", cube()), "mrc", {}, "format"),
    }
    np.savez(tmp / "k.npz", other=cube())
    np.save(tmp / "r.npy", np.zeros((4, 6, 8)))
    np.save(tmp / "neg.npy", neg)
    np.save(tmp / "t.npy", cube((6, 6, 16, 16)))
    _truncate(tmp / "t.npy")
    (tmp / "junk.h5").write_bytes(np.random.default_rng(1).bytes(4000))
    _write_old_stempy(tmp / "oor.h5", [[1, 2], [3]], [0, 999], 2, 1, (4, 4))
    _write_old_stempy(tmp / "pix.h5", [[1, 2], [999]], [0, 1], 2, 1, (4, 4))
    _write_old_stempy(tmp / "na.h5", [[1, 2], [3]], [0, 1], 2, 1, (4, 4))
    with h5py.File(tmp / "na.h5", "r+") as f:
        del f["electron_events/frames"].attrs["Nx"]
    _write_old_stempy(tmp / "es.h5", [], [], 0, 0, (4, 4), version=3)
    return cases


BAD = ["missing file", "missing dataset", "missing npz key", "wrong rank", "wrong rank npy",
       "NaN counts", "negative counts", "complex counts", "missing calibration", "bad calibration",
       "unknown calibration key", "empty scan", "truncated hdf5", "corrupt hdf5", "corrupt chunk", "truncated npy",
       "truncated emd", "not emd", "truncated 4dcamera", "4dcamera scan position out of range",
       "4dcamera pixel out of range", "4dcamera missing attribute", "4dcamera empty scan",
       "4dcamera missing frames", "bin factor", "fly-back of a single column", "unknown format"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_one_sentence_and_no_output(case, tmp_path, data_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    src, fmt, kw, word = _bad_cases(inputs, data_dir)[case]
    kw = dict(kw)
    kw["calibration"] = kw.get("calibration", CAL)
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "datacube.h5"
    with pytest.raises(InputError) as e:
        ingest_to_canonical(src, fmt, out, **kw)
    assert_sentence(e, src, word)
    assert list(outdir.iterdir()) == []                       # neither the file nor a temporary


# ------------------------------------------- ingest products: virtual detectors, overview figure

def disk_coverage(shape, center_px, radius_px, oversample=16):
    """Analytic disk: the fraction of each pixel (centre at its index) inside the circle."""
    s = (np.arange(oversample) + 0.5) / oversample - 0.5
    x = (np.arange(shape[0])[:, None] + s).ravel()
    y = (np.arange(shape[1])[:, None] + s).ravel()
    inside = (x[:, None] - center_px[0]) ** 2 + (y[None, :] - center_px[1]) ** 2 <= radius_px**2
    return inside.reshape(shape[0], oversample, shape[1], oversample).mean(axis=(1, 3))


@pytest.mark.parametrize("center, radius", [((16.4, 15.7), 5.3), ((10.0, 20.2), 8.77),
                                            ((31.2, 30.9), 12.1)])
def test_bright_field_disk_of_an_analytic_disk(center, radius):
    from msptycho.virtual import find_bright_field_disk
    pattern = 100 * disk_coverage((64, 60), center, radius) + 2.0
    d = find_bright_field_disk(pattern)
    assert np.allclose(d.center_px, center, atol=0.01) and abs(d.radius_px - radius) < 0.01
    noisy = np.random.default_rng(0).poisson(10 * pattern) / 10.0   # 1000 e/pixel in the disk
    d = find_bright_field_disk(noisy)
    assert np.allclose(d.center_px, center, atol=0.05) and abs(d.radius_px - radius) < 0.1
    assert d.semiangle_mrad(0.5) == pytest.approx(0.5 * d.radius_px)


def test_streamed_mean_pattern_and_virtual_images_equal_numpy(tmp_path):
    from msptycho.virtual import annular_mask, mean_diffraction_pattern, virtual_images
    data = cube((5, 4, 12, 10), dtype=np.float32)
    m1 = annular_mask((12, 10), (5.5, 4.2), 0.0, 3.0)
    m2 = annular_mask((12, 10), (5.5, 4.2), 3.0, np.inf)
    assert m1.sum() + m2.sum() == 120 and not (m1 & m2).any()
    for rows in (1, 2, None):
        np.testing.assert_allclose(mean_diffraction_pattern(data, rows), data.astype(np.float64).mean(axis=(0, 1)), rtol=1e-12)
        v = virtual_images(data, [m1, m2], rows)
        np.testing.assert_allclose(v[0], data[..., m1].sum(-1, dtype=np.float64), rtol=1e-12)
        np.testing.assert_allclose(v[1], data[..., m2].sum(-1, dtype=np.float64), rtol=1e-12)


def test_virtual_bright_and_dark_field_of_an_analytic_scene(tmp_path):
    """Disk of radius 4 at (11.3, 12.6) on 24 x 24; where a 'particle' sits (known scan
    positions), 40 % of the disk's 1000 electrons move to a ring at radius 8."""
    from msptycho.virtual import (find_bright_field_disk, mean_diffraction_pattern,
                                  virtual_annular_dark_field, virtual_bright_field)
    c, r = (11.3, 12.6), 4.0
    disk = disk_coverage((24, 24), c, r)
    ring = disk_coverage((24, 24), c, 9.0) - disk_coverage((24, 24), c, 7.0)
    disk, ring = 1000 * disk / disk.sum(), 1000 * ring / ring.sum()
    particle = np.zeros((6, 7), bool)
    particle[2:4, 3:6] = True
    f = 0.4 * particle[..., None, None]
    data = ((1 - f) * disk + f * ring).astype(np.float32)
    d = find_bright_field_disk(mean_diffraction_pattern(data))
    assert np.allclose(d.center_px, c, atol=0.02) and abs(d.radius_px - r) < 0.02
    bf = virtual_bright_field(data, d, radius_factor=1.25, rows_per_block=2)   # whole disk
    adf = virtual_annular_dark_field(data, d, inner_factor=1.5, rows_per_block=2)  # whole ring
    np.testing.assert_allclose(bf, np.where(particle, 600.0, 1000.0), rtol=1e-5)
    np.testing.assert_allclose(adf, np.where(particle, 400.0, 0.0), atol=1e-3)


def test_flat_pattern_has_no_disk_unless_a_fallback_is_given():
    from msptycho.io import Calibration
    from msptycho.virtual import compute_overview, disk_from_calibration
    flat = np.ones((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError):
        compute_overview(flat)
    cal = Calibration(3e5, semiangle_mrad=2.0, scan_step_A=1.0, mrad_per_pixel=0.5,
                      detector_center_px=(4.0, 3.5))
    ov = compute_overview(flat, fallback_disk=disk_from_calibration(cal))
    assert ov.disk.center_px == (4.0, 3.5) and ov.disk.radius_px == 4.0
    assert np.all(ov.bright_field == ov.bright_field[0, 0])


def test_overview_of_the_py4dstem_file_and_its_figure(data_dir, tmp_path, monkeypatch):
    import matplotlib.image
    from matplotlib.figure import Figure

    from msptycho.figures.overview import plot_ingest_overview
    from msptycho.io import open_datacube
    from msptycho.virtual import compute_overview
    ingest_to_canonical(data_dir / EMD, "emd", tmp_path / "c.h5", calibration={"energy_eV": 3e5})
    with open_datacube(tmp_path / "c.h5") as (dset, cal):
        ov = compute_overview(dset, rows_per_block=3)
    exp = np.load(data_dir / "py4dstem_0.14.18_datacube_expected.npz")
    # the generator's disk: radius 4.5 px at (9.6, 10.3); its mean pattern mixes in a ring
    assert np.allclose(ov.disk.center_px, (exp["qx0_mean"], exp["qy0_mean"]), atol=0.1)
    assert abs(ov.disk.radius_px - float(exp["disk_radius_px"])) < 0.2
    inside = ov.bright_field < np.median(ov.bright_field) * 0.7           # the particle
    assert 8 <= inside.sum() <= 20
    assert ov.annular_dark_field[inside].min() > 5 * ov.annular_dark_field[~inside].max()
    png = plot_ingest_overview(ov, cal, tmp_path / "fig" / "overview.png", title="emd")
    img = matplotlib.image.imread(png)
    assert png.stat().st_size > 10_000 and img.shape[1] > 2 * img.shape[0]
    assert sorted(p.name for p in png.parent.iterdir()) == ["overview.png"]

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(OSError):
        plot_ingest_overview(ov, cal, tmp_path / "fig2" / "overview.png")
    assert list((tmp_path / "fig2").iterdir()) == []
