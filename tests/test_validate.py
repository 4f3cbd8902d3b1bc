"""msptycho.validate: grids paired correctly, metrics equal their definitions on known cases."""
import numpy as np
import pytest

from msptycho import validate
from msptycho.io import InputError


def test_overlap_pairs_pixels_by_position():
    ov = validate.overlap((0.0, 0.0), (10, 12), (-0.6, 0.41), (8, 8), sampling_A=0.2)
    # B's pixel 0 sits at -0.6 A = A's pixel -3 -> B rows 3.. pair with A rows 0..
    assert ov.a == (slice(0, 5), slice(2, 10))
    assert ov.b == (slice(3, 8), slice(0, 8))
    assert ov.residual_offset_A[1] == pytest.approx(0.01)
    with pytest.raises(InputError, match="do not overlap"):
        validate.overlap((0, 0), (4, 4), (100, 100), (4, 4), 0.2)


def test_compare_potential_finds_the_core_slice_and_perfect_correlation():
    rng = np.random.default_rng(0)
    nz, n = 5, 40
    truth = rng.random((nz, n, n))
    pm = np.zeros((nz, n, n), bool)
    pm[:, 5:35, 5:35] = True
    cm = np.zeros_like(pm)
    cm[3, 15:25, 15:25] = True
    truth[3][cm[3]] += 5.0
    # reconstruction: the same volume on a grid shifted by 4 pixels, with 2 extra pixels
    recon = np.zeros((nz, n + 6, n + 6))
    recon[:, 4:4 + n, 4:4 + n] = 2.0 * truth + 1.0  # correlation is scale/offset invariant
    out = validate.compare_potential(recon, (-0.8, -0.8), 0.2, truth, (0.0, 0.0), 0.2, pm, cm)
    assert out["slice_correlation"] == pytest.approx([1.0] * nz)
    assert out["projected_correlation"] == pytest.approx(1.0)
    assert out["core_peak_slice"] == 3 and out["true_core_slice"] == 3.0


def test_position_errors_ignore_a_common_translation():
    rng = np.random.default_rng(1)
    true = rng.normal(size=(50, 2))
    initial = true + 0.3 * rng.normal(size=(50, 2)) + [5.0, -2.0]
    refined = true + [5.0, -2.0]
    out = validate.position_errors(initial, refined, true)
    assert out["refined_rms_A"] == pytest.approx(0.0, abs=1e-12)
    assert out["initial_rms_A"] == pytest.approx(0.3 * np.sqrt(2), rel=0.25)
    assert out["refined_rms_raw_A"] == pytest.approx(np.hypot(5, 2))


def test_registration_removes_a_global_translation():
    rng = np.random.default_rng(2)
    truth = rng.random((2, 60, 60))
    recon = np.zeros((2, 70, 70))
    recon[:, 8:68, 3:63] = truth  # nominally at [5:65, 1:61]: displaced by (+3, +2) px
    origin, shift = validate.registered_origin_A(recon, (-1.0, -0.2), truth, (0.0, 0.0), 0.2)
    np.testing.assert_allclose(shift, [0.6, 0.4], atol=1e-9)
    pm = np.ones(truth.shape, bool)
    out = validate.compare_potential(recon, origin, 0.2, truth, (0.0, 0.0), 0.2, pm, np.zeros_like(pm))
    assert out["projected_correlation"] == pytest.approx(1.0)
