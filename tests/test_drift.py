"""Drift correction of an orthogonal scan pair (msptycho.drift), on a synthetic pair made here.

The pair: a fluorite-like square lattice of Gaussian columns (2.73 A spacing, rotated 8 degrees,
with weaker columns at the cell centres), scanned twice at 0.25 A per pixel with fast axes 0 and 90
degrees while the sample drifts linearly plus a smooth non-linear wander that runs on through both
frames (per-pixel time, fly-back included), with Poisson shot noise. The sample is evaluated
analytically at every drifted probe position, so the test shares no discretisation with the method.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

from msptycho.drift import correct_drift, splat
from msptycho.io import InputError

A_LATTICE = 2.73       # A
PIXEL_A = 0.25         # A
ANGLE_RAD = np.deg2rad(8.0)
N = 144                # pixels per side


def lattice_intensity(x_A, y_A):
    """Noise-free HAADF-like intensity at positions (A): columns at the corners (1.0) and centres
    (0.45) of a rotated square cell of side A_LATTICE, Gaussian sigma 0.35 A, background 0.1."""
    c, s = np.cos(ANGLE_RAD), np.sin(ANGLE_RAD)
    u = (c * x_A + s * y_A) / A_LATTICE
    v = (-s * x_A + c * y_A) / A_LATTICE
    out = np.full(np.shape(x_A), 0.1)
    for amp, off in ((1.0, 0.0), (0.45, 0.5)):
        du = (u - off) - np.round(u - off)
        dv = (v - off) - np.round(v - off)
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                r2 = ((du + i) ** 2 + (dv + j) ** 2) * A_LATTICE**2
                out += amp * np.exp(-r2 / (2 * 0.35**2))
    return out


def drift_px(t_frames):
    """Sample drift (x, y) in pixels at time t (in frames): linear plus smooth non-linear."""
    t = np.asarray(t_frames)
    dx = 7.0 * t + 1.3 * np.sin(2 * np.pi * t / 0.45 + 0.3) + 0.5 * np.sin(2 * np.pi * t / 0.17)
    dy = -4.5 * t + 1.0 * np.sin(2 * np.pi * t / 0.6 + 1.1) + 0.4 * np.cos(2 * np.pi * t / 0.23)
    return np.stack([dx, dy], axis=-1)


def scan(frame, n=N, flyback=0.15, gap_frames=0.1):
    """True positions (n, n, 2) in pixels of every pixel of a recorded frame (0 or 1)."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    t = (i * n * (1 + flyback) + j) / (n * n * (1 + flyback))  # frames
    if frame == 0:
        ideal = np.stack([i, j], axis=-1).astype(float)
    else:
        t = t + 1 + gap_frames
        ideal = np.stack([j, i], axis=-1).astype(float)  # recorded transposed
    return ideal + drift_px(t)


def make_pair(seed=0, counts=60.0):
    rng = np.random.default_rng(seed)
    images, truth = [], []
    for frame in (0, 1):
        pos = scan(frame)
        clean = lattice_intensity(pos[..., 0] * PIXEL_A, pos[..., 1] * PIXEL_A)
        images.append(rng.poisson(counts * clean).astype(np.float64))
        truth.append(pos)
    return images, truth


def true_origins(pos, u):
    """Rigid-line origin that best matches the true positions of each line, (n_lines, 2) px."""
    j = np.arange(pos.shape[1], dtype=float)
    return (pos - j[None, :, None] * np.asarray(u)[None, None, :]).mean(axis=1)


def lattice_spacings_A(image, pixel_A, a_guess=A_LATTICE, angle_rad=ANGLE_RAD):
    """Spacings (A) along the two lattice directions, from the two first-order reciprocal peaks
    refined off-grid by maximising the windowed Fourier amplitude (Nelder-Mead)."""
    im = image - image.mean()
    win = np.outer(np.hanning(im.shape[0]), np.hanning(im.shape[1]))
    x = np.arange(im.shape[0])[:, None] * pixel_A
    y = np.arange(im.shape[1])[None, :] * pixel_A
    w = im * win

    def amp(g):
        return -abs(np.sum(w * np.exp(-2j * np.pi * (g[0] * x + g[1] * y))))

    out = []
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    for g0 in (np.array([c, s]) / a_guess, np.array([-s, c]) / a_guess):
        # coarse search on a grid first (distortion may move the peak by several percent)
        best = min(((amp(g0 * f + np.array([dx, dy]) / a_guess), g0 * f + np.array([dx, dy]) / a_guess)
                    for f in np.linspace(0.9, 1.1, 21) for dx in np.linspace(-0.1, 0.1, 11)
                    for dy in np.linspace(-0.1, 0.1, 11) if abs(dx) + abs(dy) < 0.11), key=lambda t: t[0])
        r = optimize.minimize(amp, best[1], method="Nelder-Mead",
                              options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 400})
        out.append(1.0 / np.hypot(*r.x))
    return np.array(out)


def covered_box(mask):
    """Bounds (x0, x1, y0, y1) of a box inside ``mask``, shrunk from its bounding box."""
    xs, ys = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    while not mask[x0:x1, y0:y1].all():
        sub = mask[x0:x1, y0:y1]
        bad = {"x0": (~sub[0]).sum(), "x1": (~sub[-1]).sum(), "y0": (~sub[:, 0]).sum(), "y1": (~sub[:, -1]).sum()}
        side = max(bad, key=bad.get)
        x0, x1, y0, y1 = x0 + (side == "x0"), x1 - (side == "x1"), y0 + (side == "y0"), y1 - (side == "y1")
    return x0, x1, y0, y1


@pytest.fixture(scope="module")
def pair_result():
    images, truth = make_pair()
    result = correct_drift(images[0], images[1], PIXEL_A)
    return images, truth, result


def test_drift_recovers_line_positions(pair_result):
    images, truth, result = pair_result
    errs, before = [], []
    for k, (u, pos) in enumerate(zip(result.fast_directions, truth)):
        t_or = true_origins(pos, u) + result.pad_px
        errs.append(result.origins_px[k] - t_or)
        before.append(result.ideal_origins_px[k] - t_or)
    errs = np.concatenate(errs)
    before = np.concatenate(before)
    errs -= errs.mean(axis=0)       # the common translation is not defined by the data
    before -= before.mean(axis=0)
    rms = float(np.sqrt(np.mean(np.sum(errs**2, axis=1))))
    rms_before = float(np.sqrt(np.mean(np.sum(before**2, axis=1))))
    print(f"\nline-origin error RMS: uncorrected {rms_before:.3f} px, corrected {rms:.3f} px "
          f"(max {np.max(np.hypot(*errs.T)):.3f} px); linear drift found {result.linear_drift_px} px/frame; "
          f"residual initial {result.residual_initial:.3f} linear {result.residual_linear:.3f} "
          f"final {result.residual_final:.3f}")
    assert rms < 0.5
    assert rms < 0.2 * rms_before
    assert result.residual_final < result.residual_linear < result.residual_initial


def test_drift_lattice_parameter(pair_result):
    images, truth, result = pair_result
    # the largest box that both images cover (the frames are offset by the drift between them)
    x0, x1, y0, y1 = covered_box(result.coverage > 1.5)
    core = result.image[x0:x1, y0:y1]
    assert min(core.shape) > 0.8 * N
    d_corr = lattice_spacings_A(core, PIXEL_A)
    d_raw = lattice_spacings_A(images[0], PIXEL_A)
    d_raw90 = lattice_spacings_A(images[1].T, PIXEL_A)
    err_corr = np.abs(d_corr / A_LATTICE - 1)
    err_raw = np.abs(d_raw / A_LATTICE - 1)
    err_raw90 = np.abs(d_raw90 / A_LATTICE - 1)
    print(f"\nlattice spacing truth {A_LATTICE:.4f} A; corrected {d_corr.round(4)} A "
          f"(error {100 * err_corr.round(5)} %); uncorrected 0 deg {d_raw.round(4)} A "
          f"(error {100 * err_raw.round(5)} %); uncorrected 90 deg {d_raw90.round(4)} A "
          f"(error {100 * err_raw90.round(5)} %)")
    assert np.all(err_corr < 0.005)
    assert err_corr.max() < err_raw.max() and err_corr.max() < err_raw90.max()


def test_no_drift_pair_is_left_alone():
    rng = np.random.default_rng(3)
    n = 64
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    clean = lattice_intensity(i * PIXEL_A, j * PIXEL_A)
    a = rng.poisson(200 * clean).astype(float)
    b = rng.poisson(200 * clean).astype(float).T
    r = correct_drift(a, b, PIXEL_A, refine_iterations=4)
    d = np.concatenate(r.drift_px)
    d -= d.mean(axis=0)
    rms = float(np.sqrt(np.mean(np.sum(d**2, axis=1))))
    print(f"\nno-drift pair: spurious line drift RMS {rms:.3f} px")
    assert rms < 0.15


def test_rot90_orientation():
    n = 64
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    clean = lattice_intensity(i * PIXEL_A, j * PIXEL_A)
    r = correct_drift(clean, np.rot90(clean), PIXEL_A, orientation_90deg="rot90", refine_iterations=2)
    p = r.pad_px
    assert np.allclose(r.linear_drift_px, 0, atol=0.5)
    core = slice(p + 4, p + n - 4)
    err = np.abs(r.image[core, core] - clean[4:-4, 4:-4]).mean() / clean.std()
    assert err < 0.2


def test_splat_identity():
    im = np.random.default_rng(1).random((20, 30))
    i, j = np.meshgrid(np.arange(20), np.arange(30), indexing="ij")
    out, w = splat(np.stack([i, j], -1), im, (20, 30), kernel_sigma_px=0)
    assert np.allclose(out, im) and np.allclose(w, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(b=np.zeros((40, 50)) + 1), "shape"),
    (dict(px=(0.25, 0.3)), "pixel sizes differ"),
    (dict(px=-1.0), "positive"),
    (dict(a_nan=True), "NaN"),
])
def test_bad_pairs_are_rejected(kwargs, match):
    rng = np.random.default_rng(0)
    a = rng.random((40, 40))
    b = kwargs.get("b", rng.random((40, 40)))
    if kwargs.get("a_nan"):
        a[3, 3] = np.nan
    with pytest.raises(InputError, match=match):
        correct_drift(a, b, kwargs.get("px", 0.25))
