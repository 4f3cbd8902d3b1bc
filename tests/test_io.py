"""The canonical datacube (msptycho.io): round trip, row chunks, calibration checks, provenance
attributes and atomic writes."""
import hashlib
import json
import math
import re
import subprocess
from dataclasses import replace

import h5py
import numpy as np
import pytest

from msptycho.io import (Calibration, DatacubeWriter, InputError, Provenance, atomic_h5, atomic_path,
                         open_datacube, read_calibration, read_datacube, read_provenance,
                         write_datacube)
from msptycho.io.datacube import MAX_CHUNK_BYTES, row_chunks

CAL = Calibration(energy_eV=300e3, semiangle_mrad=21.4, scan_step_A=0.4, mrad_per_pixel=0.8,
                  scan_rotation_deg=-5.0, detector_center_px=(7.5, 8.0), dose_e_per_A2=2.5e4)


def cube(shape=(5, 6, 12, 16), seed=0):
    return np.random.default_rng(seed).poisson(3.0, size=shape).astype(np.float32)


def test_round_trip_keeps_data_and_calibration(tmp_path):
    data = cube()
    write_datacube(tmp_path / "c.h5", data, CAL)
    got, cal = read_datacube(tmp_path / "c.h5")
    assert got.dtype == np.float32 and got.shape == (5, 6, 12, 16)
    np.testing.assert_array_equal(got, data)
    assert cal == CAL
    assert read_calibration(tmp_path / "c.h5") == CAL
    with h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["layout"] == "msptycho.datacube/1"
        assert f["datacube"].attrs["axes"] == "Rx,Ry,Qx,Qy"


def test_unknown_detector_centre_defaults_to_the_fftshift_centre(tmp_path):
    cal = replace(CAL, detector_center_px=(math.nan, math.nan), dose_e_per_A2=math.nan)
    write_datacube(tmp_path / "c.h5", cube((2, 2, 12, 17)), cal)
    got = read_calibration(tmp_path / "c.h5")
    assert got.detector_center_px == (6.0, 8.0)
    assert math.isnan(got.dose_e_per_A2)


def test_chunk_is_one_scan_row_and_a_row_reads_alone(tmp_path):
    data = cube((7, 5, 10, 9))
    write_datacube(tmp_path / "c.h5", data, CAL)
    with open_datacube(tmp_path / "c.h5") as (dset, cal):
        assert dset.chunks == (1, 5, 10, 9)
        np.testing.assert_array_equal(dset[3], data[3])
        assert cal == CAL
    # a row larger than MAX_CHUNK_BYTES is split along Ry, never across rows
    big = (2, 600, 128, 128)                                   # one row = 600 * 64 KiB = 37.5 MiB
    ch = row_chunks(big)
    assert ch[0] == 1 and ch[2:] == (128, 128) and ch[1] * 128 * 128 * 4 <= MAX_CHUNK_BYTES
    assert row_chunks((3, 4, 8, 8)) == (1, 4, 8, 8)


def test_writer_streams_row_blocks(tmp_path):
    data = cube((6, 3, 4, 4))
    with DatacubeWriter(tmp_path / "c.h5", data.shape, CAL) as w:
        for r0 in (4, 0, 2):                                   # any order
            w.write_rows(r0, data[r0:r0 + 2])
    np.testing.assert_array_equal(read_datacube(tmp_path / "c.h5")[0], data)


@pytest.mark.parametrize("field, value, words", [
    ("energy_eV", -300e3, "energy_eV"),
    ("semiangle_mrad", 0.0, "semiangle_mrad"),
    ("scan_step_A", math.nan, "scan_step_A"),
    ("mrad_per_pixel", math.inf, "mrad_per_pixel"),
    ("scan_rotation_deg", math.nan, "scan_rotation_deg"),
    ("dose_e_per_A2", -1.0, "dose_e_per_A2"),
    ("detector_center_px", (1.0, 2.0, 3.0), "detector_center_px"),
])
def test_unphysical_calibration_is_refused(field, value, words):
    with pytest.raises(InputError) as e:
        replace(CAL, **{field: value}).validate("sample.h5")
    msg = str(e.value)
    assert msg.startswith("sample.h5: ") and words in msg and msg.endswith(".") and "\n" not in msg


def test_calibration_mapping_missing_unknown_and_non_numeric():
    good = {"energy_eV": 300e3, "semiangle_mrad": 20, "scan_step_A": 1, "mrad_per_pixel": 0.5}
    cal = Calibration.from_mapping({**good, "detector_center_px": [3, 4]}, "cfg")
    assert cal.detector_center_px == (3.0, 4.0) and cal.scan_rotation_deg == 0.0
    for bad, word in (({k: v for k, v in good.items() if k != "mrad_per_pixel"}, "mrad_per_pixel"),
                      ({**good, "energy_kV": 300}, "energy_kV"),
                      ({**good, "scan_step_A": "one"}, "scan_step_A")):
        with pytest.raises(InputError, match=word):
            Calibration.from_mapping(bad, "cfg")


def test_not_a_canonical_file_is_an_input_error(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.zeros((2, 2, 2, 2))
    with pytest.raises(InputError, match="'/datacube' is missing"):
        read_datacube(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["datacube"] = np.zeros((2, 2, 2, 2), np.float32)     # no calibration attributes
    with pytest.raises(InputError, match="energy_eV"):
        read_datacube(tmp_path / "y.h5")
    with pytest.raises(InputError, match="cannot be opened"):
        read_datacube(tmp_path / "absent.h5")


def test_provenance_attributes_are_all_there(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"4D-STEM" * 100)
    prov = Provenance.collect("ingest", params={"bin_factor": 2, "energy_eV": np.float64(3e5),
                                                "center": (1, 2)},
                              inputs=[raw], seed=42, project_dir=tmp_path)
    write_datacube(tmp_path / "c.h5", cube((2, 2, 4, 4)), CAL, prov)
    with h5py.File(tmp_path / "c.h5") as f:
        a = dict(f.attrs)
    for key in ("rule", "params", "inputs_sha256", "versions", "git_revision", "seed", "created_utc"):
        assert "provenance_" + key in a, key
    assert a["provenance_rule"] == "ingest"
    assert json.loads(a["provenance_params"]) == {"bin_factor": 2, "center": [1, 2], "energy_eV": 3e5}
    assert json.loads(a["provenance_inputs_sha256"]) == {
        str(raw): hashlib.sha256(b"4D-STEM" * 100).hexdigest()}
    versions = json.loads(a["provenance_versions"])
    assert versions["numpy"] == np.__version__ and versions["h5py"] == h5py.__version__
    assert a["provenance_git_revision"] == "unknown"           # tmp_path is outside any checkout
    assert a["provenance_seed"] == 42
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", a["provenance_created_utc"])
    assert read_provenance(tmp_path / "c.h5") == prov


def test_git_revision_of_a_checkout(tmp_path):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(git + ["-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(git + ["-C", str(tmp_path), "commit", "-q", "-m", "m"], check=True)
    rev = Provenance.collect("r", project_dir=tmp_path).git_revision
    assert re.fullmatch(r"[0-9a-f]{40}", rev)
    (tmp_path / "f").write_text("y")
    assert Provenance.collect("r", project_dir=tmp_path).git_revision == rev + "+dirty"


def _only(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_exception_inside_the_writer_leaves_nothing(tmp_path):
    out = tmp_path / "c.h5"
    with pytest.raises(RuntimeError):
        with DatacubeWriter(out, (4, 2, 3, 3), CAL) as w:
            w.write_rows(0, cube((2, 2, 3, 3)))
            raise RuntimeError("killed half way")
    assert _only(tmp_path) == []


def test_nan_block_and_missing_rows_leave_nothing(tmp_path):
    data = cube((4, 2, 3, 3))
    data[3, 1, 2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_datacube(tmp_path / "c.h5", data, CAL, source="raw.npy")
    with pytest.raises(InputError, match="never written"):
        with DatacubeWriter(tmp_path / "d.h5", (4, 2, 3, 3), CAL) as w:
            w.write_rows(0, cube((3, 2, 3, 3)))
    assert _only(tmp_path) == []


def test_atomic_path_and_h5_replace_only_on_success(tmp_path):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new, half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and _only(tmp_path) == ["fig.png"]
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _only(tmp_path) == ["fig.png"]
    with pytest.raises(ValueError):
        with atomic_h5(tmp_path / "x.h5") as f:
            f["a"] = 1
            raise ValueError
    assert _only(tmp_path) == ["fig.png"]
