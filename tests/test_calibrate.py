"""Bayesian calibration against a known probe: a thin phase object made of Gaussian "atoms" at
random (off-grid) positions, illuminated by :func:`msptycho.physics.probe_real` with a known
defocus, patterns ``|fftshift(fft2(probe * exp(i sigma V)))|^2`` with Poisson noise, written by
this file (not by the engine's forward model). The calibration starts 20 % off in defocus and
must land within 3 % of the truth.

Small on purpose (12 x 12 scan, 48 px window, one slice, 8 x 8 central positions, 3 iterations
per evaluation): each evaluation is a fraction of a second.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import numpy as np
import pytest

from msptycho import physics
from msptycho.calibrate import (CalibrationSettings, aberrations_with, calibrate, central_square,
                                parameter_bounds, read_calibration_json, scan_positions_A,
                                write_calibration_json)
from msptycho.io import Calibration, InputError, Provenance
from msptycho.ptycho import ReconstructionParameters
from msptycho.ptycho import forward as fw

E = 300e3
N_WIN = 48
MPP = 1.4                      # mrad per pixel: window pixel 0.293 A, 25 mrad aperture = 18 px
SEMI = 25.0
SAMPLING = physics.realspace_sampling_A(N_WIN, MPP, E)
STEP_PX = 4                    # scan step, window pixels (1.17 A)
SCAN = 12
TRUE_DEFOCUS_A = 150.0
START_DEFOCUS_A = 180.0        # 20 % over
COUNTS = 1e6                   # electrons per pattern
PARAMS = ReconstructionParameters(num_slices=1, slice_thickness_A=10.0, batch_size=16)
# isotropic kernel here: the anisotropic default reaches the same accuracy but its Gaussian-process
# fits cost more than these sub-second evaluations (the determinism test covers it)
SETTINGS = CalibrationSettings(num_evaluations=16, num_initial_points=4, num_posterior_points=2,
                               iterations_per_evaluation=3, central_positions=8, anisotropic_kernel=False, seed=0)


def make_dataset(seed=0):
    """(datacube, calibration) of a thin phase object (peak phase 0.5 rad) with Poisson noise."""
    rng = np.random.default_rng(seed)
    size = (SCAN - 1) * STEP_PX + N_WIN + 8
    x = np.arange(size)[:, None] * SAMPLING
    y = np.arange(size)[None, :] * SAMPLING
    V = np.zeros((size, size))
    n_atoms = int((size * SAMPLING) ** 2 / 4.0)     # one atom per 4 A^2
    for cx, cy in rng.uniform(0, size * SAMPLING, (n_atoms, 2)):
        V += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.35**2))
    V *= 300.0                                        # V*A per atom
    transmission = np.exp(1j * physics.interaction_constant(E) * V)
    probe = np.fft.fftshift(physics.probe_real((N_WIN, N_WIN), SAMPLING, E, SEMI,
                                               physics.Aberrations(defocus_A=TRUE_DEFOCUS_A)))
    dc = np.empty((SCAN, SCAN, N_WIN, N_WIN))
    for i in range(SCAN):
        for j in range(SCAN):
            x0, y0 = 4 + i * STEP_PX, 4 + j * STEP_PX
            exit_wave = probe * transmission[x0:x0 + N_WIN, y0:y0 + N_WIN]
            dc[i, j] = np.abs(np.fft.fftshift(np.fft.fft2(exit_wave))) ** 2
    dc *= COUNTS / dc[0, 0].sum()
    dc = rng.poisson(dc).astype(np.float32)
    cal = Calibration(energy_eV=E, semiangle_mrad=SEMI, scan_step_A=STEP_PX * SAMPLING, mrad_per_pixel=MPP)
    return dc, cal


@pytest.fixture(scope="module")
def data():
    return make_dataset()


@pytest.fixture(scope="module")
def result(data):
    dc, cal = data
    return calibrate(dc, cal, physics.Aberrations(defocus_A=START_DEFOCUS_A), 0.0, PARAMS, SETTINGS)


def test_calibrated_defocus_is_closer_to_the_truth_and_within_3_percent(result):
    d = result.defocus_A
    print(f"\ndefocus: start {START_DEFOCUS_A:.1f} A, true {TRUE_DEFOCUS_A:.1f} A, calibrated {d:.2f} A "
          f"({100 * (d - TRUE_DEFOCUS_A) / TRUE_DEFOCUS_A:+.2f} %); error {result.start_objective:.4g} -> "
          f"{result.best_objective:.4g}; scan rotation {result.scan_rotation_deg:+.2f} deg (true 0); "
          f"step scale {result.best['step_scale']:.3f}; {result.total_seconds:.1f} s")
    assert abs(d - TRUE_DEFOCUS_A) < abs(START_DEFOCUS_A - TRUE_DEFOCUS_A)
    assert abs(d - TRUE_DEFOCUS_A) < 0.03 * TRUE_DEFOCUS_A
    # the best evaluation is the one reported, and it beats the start
    assert result.best_objective == min(e.objective for e in result.evaluations)
    assert result.best_objective < result.start_objective
    assert result.step_size == pytest.approx(PARAMS.step_size * result.best["step_scale"])
    # the search: start, random points, guided points; all within the bounds
    kinds = [e.kind for e in result.evaluations]
    assert len(kinds) == SETTINGS.num_evaluations and kinds[0] == "start"
    assert kinds.count("guided") + kinds.count("posterior") >= SETTINGS.num_evaluations - SETTINGS.num_initial_points - 3
    assert result.evaluations[0].parameters["defocus_A"] == START_DEFOCUS_A
    for e in result.evaluations:
        for k, (lo, hi) in result.bounds.items():
            assert lo - 1e-9 <= e.parameters[k] <= hi + 1e-9
    assert result.bounds["defocus_A"] == pytest.approx((START_DEFOCUS_A * 0.6, START_DEFOCUS_A * 1.4))
    assert "defocus_A" not in result.at_bounds
    assert result.subset == {"rows": [2, 10], "cols": [2, 10], "scan_shape": [SCAN, SCAN]}
    # the other aberrations are the start's
    assert result.aberrations.C12_A == 0.0 and result.aberrations.C30_A == 0.0


def test_same_seed_same_result_and_one_log_line_per_evaluation(data, caplog, tmp_path):
    from msptycho.io import open_datacube, write_datacube

    dc, cal = data
    small = replace(SETTINGS, num_evaluations=5, num_initial_points=2, num_posterior_points=1,
                    iterations_per_evaluation=2, central_positions=4, anisotropic_kernel=True)
    start = physics.Aberrations(defocus_A=START_DEFOCUS_A)
    with caplog.at_level(logging.INFO, logger="msptycho.calibrate"):
        a = calibrate(dc, cal, start, 0.0, PARAMS, small)
    lines = [r.getMessage() for r in caplog.records if r.name == "msptycho.calibrate"]
    assert sum(m.startswith("evaluation ") for m in lines) == 5
    write_datacube(tmp_path / "datacube.h5", dc, cal)
    with open_datacube(tmp_path / "datacube.h5") as (dset, cal_file):   # the h5py dataset, read lazily
        b = calibrate(dset, cal_file, start, 0.0, PARAMS, small)
    assert [e.parameters for e in a.evaluations] == [e.parameters for e in b.evaluations]
    assert [e.objective for e in a.evaluations] == [e.objective for e in b.evaluations]
    assert a.best == b.best
    assert [e.kind for e in a.evaluations] == ["start", "random", "random", "guided", "posterior"]
    # another seed explores other points (transposed scan and a vacuum probe exercise those paths)
    probe = physics.probe_real((N_WIN, N_WIN), SAMPLING, E, SEMI, physics.Aberrations(defocus_A=TRUE_DEFOCUS_A))
    vacuum = np.abs(np.fft.fftshift(np.fft.fft2(probe))) ** 2
    c = calibrate(dc, cal, start, 0.0, PARAMS, replace(small, num_evaluations=4, num_posterior_points=0, seed=1),
                  transpose=True, vacuum_probe_intensity=vacuum)
    assert c.evaluations[1].parameters != a.evaluations[1].parameters
    assert c.transpose and all(np.isfinite(e.objective) for e in c.evaluations)


def test_json_round_trip_is_atomic_and_complete(result, tmp_path):
    path = tmp_path / "04_calibrate" / "calibration.json"
    prov = Provenance(rule="calibrate", params=SETTINGS.to_dict(), seed=SETTINGS.seed)
    write_calibration_json(path, result, prov)
    assert [p.name for p in path.parent.iterdir()] == ["calibration.json"]  # no temporary file left
    d = json.loads(path.read_text())
    assert d["layout"] == "msptycho.calibration/1"
    assert d["defocus_A"] == pytest.approx(result.defocus_A)
    assert d["aberrations"]["defocus_A"] == pytest.approx(result.defocus_A)
    assert len(d["evaluations"]) == SETTINGS.num_evaluations
    assert d["provenance"]["rule"] == "calibrate" and d["provenance"]["seed"] == 0
    back = read_calibration_json(path)
    assert back.aberrations == result.aberrations
    assert back.scan_rotation_deg == result.scan_rotation_deg and back.step_size == result.step_size
    assert back.settings == result.settings
    assert [e.objective for e in back.evaluations] == [e.objective for e in result.evaluations]
    assert back.best == result.best and back.best_index == result.best_index
    assert back.provenance["rule"] == "calibrate"
    assert d["at_bounds"] == result.at_bounds
    edge = replace(result, best={**result.best, "defocus_A": result.bounds["defocus_A"][1]})
    assert "defocus_A" in edge.at_bounds
    # a diverged evaluation (NaN) is written as null and read back as NaN
    result.evaluations[1].objective, keep = math.nan, result.evaluations[1].objective
    try:
        write_calibration_json(path, result, {})
        assert json.loads(path.read_text())["evaluations"][1]["objective"] is None
        assert math.isnan(read_calibration_json(path).evaluations[1].objective)
    finally:
        result.evaluations[1].objective = keep


def test_trace_figure(result, tmp_path):
    from msptycho.figures.trace import plot_calibration_trace

    out = plot_calibration_trace(result, tmp_path / "trace.png", title="synthetic",
                                 truth={"defocus_A": TRUE_DEFOCUS_A, "scan_rotation_deg": 0.0})
    assert out.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["trace.png"]


def test_geometry_helpers():
    # without transpose: the engine's nominal grid; with it: Rot @ swap @ (i, j) * step (parallax)
    np.testing.assert_allclose(scan_positions_A((3, 4), 1.5, 7.0), fw.scan_positions_A((3, 4), 1.5, 7.0))
    t = np.deg2rad(30.0)
    p = scan_positions_A((2, 3), 2.0, 30.0, transpose=True)
    i, j = 1, 2                                      # row-major: index i * 3 + j
    expected = 2.0 * np.array([np.cos(t) * j - np.sin(t) * i, np.sin(t) * j + np.cos(t) * i])
    np.testing.assert_allclose(p[i * 3 + j], expected)
    assert central_square((12, 9), 4) == (slice(4, 8), slice(2, 6))
    ab = aberrations_with(physics.Aberrations(defocus_A=10.0, C30_A=5.0),
                          {"defocus_A": 20.0, "C12a_A": 0.0, "C12b_A": 3.0})
    assert (ab.defocus_A, ab.C30_A) == (20.0, 5.0)
    assert ab.C12_A == pytest.approx(3.0) and ab.phi12_rad == pytest.approx(np.pi / 4)
    b = parameter_bounds(CalibrationSettings(defocus_range_fraction=0.1, defocus_range_min_A=20.0,
                                             rotation_range_deg=0.0, step_scale_range=(1.0, 1.0)),
                         {"defocus_A": 50.0, "scan_rotation_deg": 0.0, "step_scale": 1.0})
    assert b == {"defocus_A": (30.0, 70.0)}         # min half-width; rotation and step fixed


def test_bad_input_is_one_clear_sentence(data, tmp_path):
    dc, cal = data
    start = physics.Aberrations(defocus_A=START_DEFOCUS_A)

    def run(settings=SETTINGS, **kw):
        args = dict(datacube=dc, calibration=cal, start_aberrations=start, start_rotation_deg=0.0,
                    recon_params=PARAMS, settings=settings)
        args.update(kw)
        return calibrate(**args)

    with pytest.raises(InputError, match=r"step_scale_range.*low <= high"):
        run(replace(SETTINGS, step_scale_range=(2.0, 0.5)))
    with pytest.raises(InputError, match=r"12x12 scan is smaller than the central_positions = 20"):
        run(replace(SETTINGS, central_positions=20))
    with pytest.raises(InputError, match="central_positions"):
        run(replace(SETTINGS, central_positions=2))
    with pytest.raises(InputError, match=r"num_evaluations.*at least num_initial_points \+ 2"):
        run(replace(SETTINGS, num_evaluations=4, num_initial_points=3, num_posterior_points=0))
    with pytest.raises(InputError, match=r"num_evaluations.*at least 1 \+ num_initial_points \+ num_posterior_points = 8"):
        run(replace(SETTINGS, num_evaluations=7, num_initial_points=4, num_posterior_points=3))
    with pytest.raises(InputError, match="iterations_per_evaluation.*at least 2"):
        run(replace(SETTINGS, iterations_per_evaluation=1))
    with pytest.raises(InputError, match="acquisition"):
        run(replace(SETTINGS, acquisition="random"))
    with pytest.raises(InputError, match="rotation_range_deg"):
        run(replace(SETTINGS, rotation_range_deg=-1.0))
    with pytest.raises(InputError, match="every parameter range is empty"):
        run(replace(SETTINGS, defocus_range_fraction=0.0, defocus_range_min_A=0.0, rotation_range_deg=0.0,
                    step_scale_range=(1.0, 1.0)))
    with pytest.raises(InputError, match="start_rotation_deg"):
        run(start_rotation_deg=float("nan"))
    with pytest.raises(InputError, match="defocus_A"):
        run(start_aberrations=physics.Aberrations(defocus_A=float("inf")))
    with pytest.raises(InputError, match="datacube"):
        run(datacube=dc[0])
    with pytest.raises(InputError, match="Calibration"):
        run(calibration={"energy_eV": E})
    with pytest.raises(InputError, match="recon_params"):
        run(recon_params={"num_slices": 1})
    with pytest.raises(InputError, match="unknown key"):
        CalibrationSettings.from_mapping({"num_evals": 3})
    assert CalibrationSettings.from_mapping({"step_scale_range": [0.8, 1.5]}).step_scale_range == (0.8, 1.5)
    # calibration.json readers
    with pytest.raises(InputError, match="file not found"):
        read_calibration_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot be read as JSON"):
        read_calibration_json(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"layout": "something/1"}))
    with pytest.raises(InputError, match="field 'layout'"):
        read_calibration_json(tmp_path / "other.json")
    (tmp_path / "partial.json").write_text(json.dumps({"layout": "msptycho.calibration/1"}))
    with pytest.raises(InputError, match="field 'aberrations' is missing"):
        read_calibration_json(tmp_path / "partial.json")


def test_calibration_refines_the_scan_rotation(data):
    """Started 2 deg off in scan rotation (and 20 % off in defocus), with the rotation free within
    +-3 deg (truth 1 deg inside the range) on the whole 12 x 12 scan (objective there: +14 % at
    +-2.5 deg) and the anisotropic kernel of the default settings, the calibration moves the
    rotation to within 1 deg of the truth (0) instead of keeping the start's."""
    dc, cal = data
    s = replace(SETTINGS, num_evaluations=20, num_initial_points=5, central_positions=12, rotation_range_deg=3.0,
                anisotropic_kernel=True)
    r = calibrate(dc, cal, physics.Aberrations(defocus_A=START_DEFOCUS_A), 2.0, PARAMS, s)
    print(f"\nrotation: start 2.00 deg, true 0, calibrated {r.scan_rotation_deg:+.2f} deg; defocus "
          f"{r.defocus_A:.1f} A (true {TRUE_DEFOCUS_A:.1f} A); error {r.start_objective:.4g} -> {r.best_objective:.4g}")
    assert r.bounds["scan_rotation_deg"] == pytest.approx((-1.0, 5.0))
    assert abs(r.scan_rotation_deg) < 1.0
    assert abs(r.defocus_A - TRUE_DEFOCUS_A) < 0.03 * TRUE_DEFOCUS_A
