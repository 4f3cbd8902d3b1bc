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
from scipy import ndimage

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
    refined off-grid on a fine local grid of the windowed Fourier amplitude."""
    im = image - ndimage.gaussian_filter(image, a_guess / pixel_A)   # high-pass: the lattice only
    win = np.outer(np.hanning(im.shape[0]), np.hanning(im.shape[1]))
    x = np.arange(im.shape[0])[:, None] * pixel_A
    y = np.arange(im.shape[1])[None, :] * pixel_A
    w = im * win

    def amp(g):
        return -abs(np.sum(w * np.exp(-2j * np.pi * (g[0] * x + g[1] * y))))

    # coarse peak on a 4x zero-padded FFT, within +-10 % and +-10 degrees of the guess
    # (the distortion may move the peak by several percent)
    n4 = (4 * im.shape[0], 4 * im.shape[1])
    F = np.abs(np.fft.fft2(w, s=n4))
    gx = np.fft.fftfreq(n4[0], pixel_A)[:, None]
    gy = np.fft.fftfreq(n4[1], pixel_A)[None, :]
    out = []
    for ang in (angle_rad, angle_rad + np.pi / 2):
        dang = np.angle(np.exp(1j * (np.arctan2(gy, gx) - ang)))
        near = (np.abs(np.hypot(gx, gy) * a_guess - 1) < 0.1) & (np.abs(dang) < np.deg2rad(10))
        k = np.unravel_index(np.argmax(np.where(near, F, -1.0)), n4)
        best = (None, np.array([gx[k[0], 0], gy[0, k[1]]]))
        # refine on a fine local grid (+-1 step of the padded FFT grid) and a parabola per axis
        d = np.array([1.0 / (n4[0] * pixel_A), 1.0 / (n4[1] * pixel_A)])
        t = np.linspace(-1, 1, 21)
        vals = np.array([[-amp(best[1] + np.array([a, b]) * d) for b in t] for a in t])
        ia, ib = np.unravel_index(np.argmax(vals), vals.shape)
        assert 0 < ia < 20 and 0 < ib < 20, "the peak lies on the edge of the local grid"
        g = best[1] + np.array([t[ia], t[ib]]) * d
        for ax, (c, m, p_) in enumerate(((vals[ia, ib], vals[ia - 1, ib], vals[ia + 1, ib]),
                                          (vals[ia, ib], vals[ia, ib - 1], vals[ia, ib + 1]))):
            g[ax] += 0.5 * (m - p_) / (m - 2 * c + p_) * (t[1] - t[0]) * d[ax]
        out.append(1.0 / np.hypot(*g))
    return np.array(out)


def covered_box(mask, fraction=0.98):
    """Bounds (x0, x1, y0, y1) of the largest square centred on the centroid of ``mask`` of which
    at least ``fraction`` lies inside ``mask``."""
    xs, ys = np.nonzero(mask)
    cx, cy = int(round(xs.mean())), int(round(ys.mean()))
    h = 1
    while True:
        x0, x1, y0, y1 = cx - h - 1, cx + h + 1, cy - h - 1, cy + h + 1
        if x0 < 0 or y0 < 0 or x1 > mask.shape[0] or y1 > mask.shape[1] or mask[x0:x1, y0:y1].mean() < fraction:
            return cx - h, cx + h, cy - h, cy + h
        h += 1


@pytest.fixture(scope="module")
def pair_result():
    images, truth = make_pair()
    result = correct_drift(images[0], images[1], PIXEL_A, pair_layout="transposed")
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
    r = correct_drift(a, b, PIXEL_A, pair_layout="transposed", refine_iterations=4)
    d = np.concatenate(r.drift_px)
    d -= d.mean(axis=0)
    rms = float(np.sqrt(np.mean(np.sum(d**2, axis=1))))
    print(f"\nno-drift pair: spurious line drift RMS {rms:.3f} px")
    assert rms < 0.15


def test_rot90_orientation():
    n = 64
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    clean = lattice_intensity(i * PIXEL_A, j * PIXEL_A)
    r = correct_drift(clean, np.rot90(clean), PIXEL_A, pair_layout="rot90", refine_iterations=2)
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
        correct_drift(a, b, kwargs.get("px", 0.25), pair_layout="transposed")


def test_simulator_pair_nominal_layout():
    """The project simulator's HAADF pair (msptycho.simulate.haadf, the layout of scan_pair.h5:
    both frames on the nominal grid, frame 0 fast along x; its default drift of (4, -2.5) A per
    frame plus 1 A non-linear) of a round CaF2-like [001] particle (Ca and F columns on square
    lattices of 2.73 A aligned with the scan, the worst case for a crystal) in vacuum."""
    haadf = pytest.importorskip("msptycho.simulate.haadf")
    presets = pytest.importorskip("msptycho.simulate.presets")
    n = 144
    p = presets.SimulationParameters(haadf_shape_px=(n, n))
    half = 5.46 / 2
    g = np.arange(-40, 41) * half
    X, Y = np.meshgrid(g, g, indexing="ij")
    ca = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], 1)
    f = ca + np.array([half / 2, half / 2, 0.0])  # F columns at the cell centres
    pos = np.concatenate([ca, f])
    Z = np.concatenate([np.full(len(ca), 20.0), np.full(len(f), 9.0)])
    keep = np.hypot(pos[:, 0], pos[:, 1]) < 0.4 * n * p.haadf_pixel_A
    cx, cy, _ = p.particle_center_A
    pair = haadf.simulate_scan_pair(p, pos[keep] + [cx, cy, 0.0], Z[keep], np.random.default_rng(7))
    px = pair.pixel_size_A
    r = correct_drift(pair.images[0], pair.images[1], px)          # default layout: nominal
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    true_pos = np.stack([ii, jj], -1) + pair.drift_A / px          # (2, nx, ny, 2) px
    t0 = true_origins(np.swapaxes(true_pos[0], 0, 1), r.fast_directions[0])  # lines = columns
    t1 = true_origins(true_pos[1], r.fast_directions[1])
    errs = np.concatenate([r.origins_px[0] - t0, r.origins_px[1] - t1]) - r.pad_px
    before = np.concatenate([r.ideal_origins_px[0] - t0, r.ideal_origins_px[1] - t1]) - r.pad_px
    info = np.concatenate(r.informative)
    shift = errs[info].mean(axis=0)          # the common translation is not defined by the data
    errs -= shift
    before -= before[info].mean(axis=0)

    def rms(e):
        return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))

    x0, x1, y0, y1 = covered_box(r.coverage > 1.5)
    d_corr = lattice_spacings_A(r.image[x0:x1, y0:y1], px, half, 0.0)
    d_raw = lattice_spacings_A(pair.images[0], px, half, 0.0)
    print(f"\nsimulator pair {n}x{n} at {px} A: line-origin RMS error over the {info.sum()} of "
          f"{info.size} lines that cross the particle: uncorrected {rms(before[info]):.3f} px, corrected "
          f"{rms(errs[info]):.3f} px (all lines, vacuum included: {rms(errs):.3f} px); lattice spacing truth "
          f"{half:.4f} A, corrected {d_corr.round(4)} A (error {np.abs(100 * (d_corr / half - 1)).round(3)} %), "
          f"uncorrected {d_raw.round(4)} A (error {np.abs(100 * (d_raw / half - 1)).round(3)} %)")
    assert info.mean() > 0.6
    assert rms(errs[info]) < 0.5
    assert np.all(np.abs(d_corr / half - 1) < 0.005)
    assert np.max(np.abs(d_corr / half - 1)) < np.max(np.abs(d_raw / half - 1))


def test_haadf_h5_roundtrip_and_figure(pair_result, tmp_path):
    import h5py

    from msptycho.figures.calibration import plot_drift
    from msptycho.io import Provenance, read_provenance
    from msptycho.io.calib_io import read_haadf, write_haadf

    images, truth, result = pair_result
    p = tmp_path / "02_drift" / "haadf.h5"
    write_haadf(p, result, Provenance(rule="drift_correct", params={"pair_layout": "transposed"}))
    back = read_haadf(p)
    assert np.allclose(back.image, result.image, rtol=1e-6, atol=1e-4)
    for k in (0, 1):
        assert np.array_equal(back.origins_px[k], result.origins_px[k])
        assert np.array_equal(back.informative[k], result.informative[k])
    assert back.pair_layout == "transposed" and back.residual_final == result.residual_final
    assert read_provenance(p).rule == "drift_correct"
    assert [q.name for q in p.parent.iterdir()] == ["haadf.h5"]  # no temporary file left
    with h5py.File(p, "a") as f:
        del f["scan_lines/origins_90deg_px"]
    with pytest.raises(InputError, match="origins_90deg_px"):
        read_haadf(p)
    png = plot_drift(result, images[0], images[1], tmp_path / "drift.png", title="synthetic pair")
    assert png.stat().st_size > 10_000
