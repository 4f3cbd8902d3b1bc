"""Paper figures, movies and the 3-D render (msptycho.figures.paper / movies / render3d).

Small synthetic inputs built here (a few slices of a square-lattice particle, analytic strain maps,
a sphere mesh from marching cubes, analytic probes). For every figure: the file exists, has the
expected pixel width (page or column width times the dpi) and a sensible height, and is not blank
(pixel variance); the GIF has one frame per slice. Low dpi keeps the file fast.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from msptycho import physics
from msptycho.figures import movies, paper, render3d
from msptycho.figures.paper import FigureSettings
from msptycho.figures.style import COLUMN_WIDTH_IN, PAGE_WIDTH_IN

DPI = 60
NZ, N = 5, 72
DX = 0.25  # A per pixel
DZ = 10.0  # A per slice
SET = FigureSettings(dpi=DPI, unreliable_top_slices=1, montage_columns=5, movie_frame_px=256,
                     render_window_px=200)


# ------------------------------------------------------------------------------------------------
# synthetic inputs


@pytest.fixture(scope="module")
def volume():
    """Particle of square-lattice columns (period 2.73 A) in a disk whose radius changes with depth."""
    x = (np.arange(N) - N / 2) * DX
    X, Y = np.meshgrid(x, x, indexing="ij")
    lat = (np.cos(2 * np.pi * X / 2.73) * np.cos(2 * np.pi * Y / 2.73)) ** 2
    rng = np.random.default_rng(0)
    vol = np.empty((NZ, N, N), np.float32)
    for k in range(NZ):
        r = 6.0 + 2.0 * np.sin(np.pi * (k + 0.5) / NZ)
        vol[k] = 5 * lat * (np.hypot(X, Y) < r) + 0.3 * rng.standard_normal((N, N))
    return vol


@pytest.fixture(scope="module")
def strain():
    x = (np.arange(N) - N / 2) * DX
    X, Y = np.meshgrid(x, x, indexing="ij")
    inside = np.hypot(X, Y) < 7.0
    out = {}
    for name, amp in (("exx", 0.02), ("eyy", -0.01), ("exy", 0.005)):
        m = np.stack([amp * np.exp(-(X ** 2 + Y ** 2) / 20.0) * (1 + 0.1 * k) for k in range(NZ)])
        out[name] = np.where(inside, m, np.nan).astype(np.float32)
    out["dilation"] = out["exx"] + out["eyy"]
    out["rotation_deg"] = np.where(inside, np.stack([np.arctan2(Y, X) * 0.5 * (k - 2) for k in range(NZ)]),
                                   np.nan).astype(np.float32)
    out["dilation"][0] = np.nan  # a slice without lattice signal
    out["rotation_deg"][0] = np.nan
    return out


def _png(path, width_in=PAGE_WIDTH_IN, min_aspect=0.2, max_aspect=3.0, min_std=0.02):
    """Read a PNG back: exact width, height within an aspect range, not blank."""
    path = Path(path)
    assert path.is_file(), path
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert w == round(width_in * DPI), (path.name, w)
    assert min_aspect * w <= h <= max_aspect * w, (path.name, w, h)
    rgb = img[..., :3]
    assert float(rgb.std()) > min_std, (path.name, float(rgb.std()))
    # no temporary file left beside it
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]
    return img


# ------------------------------------------------------------------------------------------------
# settings and helpers


def test_settings_fields_and_validation():
    s = FigureSettings()
    assert s.validate() is s
    d = s.as_dict()
    for k in ("strain_limit_percent", "rotation_limit_deg", "movie_fps", "render_window_px", "unreliable_top_slices"):
        assert k in d
    s2 = FigureSettings.from_mapping({"movie_fps": 2, "render_view_1_deg": [10, 20]})
    assert s2.render_view_1_deg == (10.0, 20.0) and s2.movie_fps == 2
    with pytest.raises(ValueError, match="unknown key"):
        FigureSettings.from_mapping({"strain_limit": 3})
    with pytest.raises(ValueError, match="dpi"):
        FigureSettings(dpi=0).validate()
    with pytest.raises(ValueError, match="potential_percentiles"):
        FigureSettings(potential_percentiles=(90.0, 10.0)).validate()


def test_complex_to_rgb_and_slice_choice():
    rgb = paper.complex_to_rgb(np.array([1.0, 1j, 0.0]))
    np.testing.assert_allclose(rgb[0], [1, 0, 0], atol=1e-12)  # phase 0: red, full amplitude
    np.testing.assert_allclose(rgb[2], [0, 0, 0], atol=1e-12)  # zero amplitude: black
    assert paper.top_middle_bottom(10, np.arange(2, 9), skip_top=3) == [3, 5, 8]
    assert paper.top_middle_bottom(4, [1], skip_top=0) == [1, 1, 1]
    np.testing.assert_allclose(paper.slice_depth_nm([0, 2], 12.0), [0.6, 3.0])
    m = np.full((2, 20, 30), np.nan)
    m[1, 5:8, 10:12] = 1.0
    assert paper.particle_crop(m, 2) == (slice(3, 10), slice(8, 14))
    assert paper.particle_crop(np.zeros((4, 5), bool)) == (slice(0, 4), slice(0, 5))


def test_probe_fourier_removes_initial_aberrations():
    n, s, e = 64, 0.2, 300e3
    ab = physics.Aberrations(defocus_A=120.0, C12_A=30.0, phi12_rad=0.3)
    probe = np.fft.fftshift(physics.probe_real((n, n), s, e, 25.0, ab))
    pk, corr, ang = paper.probe_fourier(probe, s, e, ab)
    inside = np.abs(pk) > 0.5 * np.abs(pk).max()
    ph = np.angle(corr[inside] * np.conj(corr[inside][0]))
    assert np.abs(ph).max() < 1e-6  # only a constant phase is left
    assert np.abs(np.angle(pk[inside] * np.conj(pk[inside][0]))).max() > 1.0
    assert ang[n // 2] == 0.0


def test_propagate_probe_focuses_at_the_defocus():
    """With the project's convention a probe of defocus d > 0 comes to a crossover d below the entrance."""
    n, s, e, d = 96, 0.2, 300e3, 150.0
    probe = np.fft.fftshift(physics.probe_real((n, n), s, e, 25.0, physics.Aberrations(defocus_A=d)))
    zs = np.linspace(0, 300, 31)
    peak = np.abs(paper.propagate_probe(probe, s, e, zs)).max(axis=(1, 2))
    assert abs(zs[int(np.argmax(peak))] - d) <= 10.0


# ------------------------------------------------------------------------------------------------
# the figures


def test_haadf(tmp_path, volume):
    img = volume.sum(axis=0).astype(np.float64)
    cov = np.zeros_like(img)
    cov[4:-4, 6:-6] = 2.0
    crack = np.zeros(img.shape, bool)
    crack[50:56, 30:40] = True
    out = paper.plot_haadf(img, DX, tmp_path / "haadf.png", coverage=cov, crack_mask=crack, settings=SET)
    _png(out, COLUMN_WIDTH_IN)
    # a crack given as a scan-frame position (A), as the workflow has it from the truth
    _png(paper.plot_haadf(img, DX, tmp_path / "haadf_xy.png", crack_xy_A=(3.0, 14.0), image_origin_A=(-5.0, -5.0),
                          settings=SET), COLUMN_WIDTH_IN)
    with pytest.raises(ValueError, match="crack_mask"):
        paper.plot_haadf(img, DX, tmp_path / "bad.png", crack_mask=crack[:10], settings=SET)
    assert not (tmp_path / "bad.png").exists()


def test_slices_strain(tmp_path, volume, strain):
    out = paper.plot_slices_strain(volume, strain["dilation"], strain["rotation_deg"], DX, DZ,
                                   tmp_path / "fig2.png", title="pristine", settings=SET)
    img = _png(out, min_aspect=0.8, max_aspect=1.3)
    # the diverging maps show colour (red/blue), not only grey
    rgb = img[..., :3]
    assert float(np.abs(rgb[..., 0] - rgb[..., 2]).max()) > 0.3
    with pytest.raises(ValueError, match="same shape"):
        paper.plot_slices_strain(volume, strain["dilation"][:, :10], strain["rotation_deg"], DX, DZ,
                                 tmp_path / "x.png", settings=SET)
    with pytest.raises(ValueError, match="outside"):
        paper.plot_slices_strain(volume, strain["dilation"], strain["rotation_deg"], DX, DZ, tmp_path / "x.png",
                                 slices=[0, 1, 9], settings=SET)
    assert not (tmp_path / "x.png").exists()


def test_slice_montage(tmp_path, volume):
    _png(paper.plot_slice_montage(volume, DX, DZ, tmp_path / "s2.png", settings=SET))


def test_order_parameter(tmp_path, volume):
    order = np.where(volume > -10, 0.2, np.nan).astype(np.float32)
    order[:, 30:42, 30:42] = 0.7
    order[:, :5] = np.nan
    core = order > 0.5
    _png(paper.plot_order_parameter(order, DX, DZ, tmp_path / "s4.png", threshold=0.45, core_mask=core, settings=SET))


def test_dislocation_maps(tmp_path):
    x = np.arange(N) - N / 2
    X, Y = np.meshgrid(x, x, indexing="ij")
    amp = np.exp(-(X ** 2 + Y ** 2) / 400.0)
    ph = np.arctan2(Y - 3, X + 2)  # a phase singularity
    amplitude = np.broadcast_to(amp, (NZ, 2, N, N)).astype(np.float32)
    phase = np.stack([np.stack([ph, -ph]) for _ in range(NZ)]).astype(np.float32)
    pts = {"slice": np.array([1, 2, 3]), "x_A": np.full(3, -2 * DX), "y_A": np.full(3, 3 * DX)}
    out = paper.plot_dislocation_maps(amplitude, phase, DX, DZ, tmp_path / "s5.png", points=pts,
                                      origin_A=(-N / 2 * DX, -N / 2 * DX),
                                      g_vectors_inv_A=[[0.36, 0.36], [-0.36, 0.36]], settings=SET)
    _png(out)
    _png(paper.plot_dislocation_maps(amplitude, phase, DX, DZ, tmp_path / "s5_one.png", reflections=(0,),
                                     settings=SET))


def test_probe_figures(tmp_path):
    n, s, e = 64, 0.2, 300e3
    ab0 = physics.Aberrations(defocus_A=100.0)
    probe = np.fft.fftshift(physics.probe_real((n, n), s, e, 25.0, physics.Aberrations(defocus_A=110.0, C12_A=20.0)))
    _png(paper.plot_probe_fourier(probe, s, e, tmp_path / "s6.png", semiangle_mrad=25.0, initial_aberrations=ab0,
                                  settings=SET), max_aspect=1.0)
    _png(paper.plot_probe_fourier(probe, s, e, tmp_path / "s6_one.png", semiangle_mrad=25.0, settings=SET),
         COLUMN_WIDTH_IN + 0.6)
    init = np.fft.fftshift(physics.probe_real((n, n), s, e, 25.0, ab0))
    _png(paper.plot_probe_real(probe, s, e, DZ, 12, tmp_path / "s7.png", initial_probe=init, settings=SET))


def test_fft_peaks(tmp_path, volume):
    g = np.array([[1 / 2.73, 0.0], [0.0, 1 / 2.73]])
    g2 = np.array([[1 / 2.73, 1 / 2.73], [-1 / 2.73, 1 / 2.73]])
    out = paper.plot_fft_peaks(volume.mean(axis=0), DX, tmp_path / "s8.png", strain_g_inv_A=g2,
                               dislocation_g_inv_A=g2, order_g200_inv_A=g, order_g220_inv_A=g2, settings=SET)
    _png(out, COLUMN_WIDTH_IN + 0.5)
    _png(paper.plot_fft_peaks(volume, DX, tmp_path / "s8_plain.png", settings=SET), COLUMN_WIDTH_IN + 0.5)


def test_validation(tmp_path, strain):
    out = paper.plot_validation(
        tmp_path / "validation.png", slice_thickness_A=DZ, slice_correlation=np.linspace(0.5, 0.9, NZ),
        strain_error_maps={"dilation": 0.1 * strain["dilation"][2], "rotation_deg": 0.2 * strain["rotation_deg"][2]},
        pixel_size_A=DX, strain_error_slice=2, core_profile=[0, 1, 3, 1, 0], core_profile_truth=[0, 1, 2.5, 1, 0],
        dislocation_metrics={"precision": 0.8, "recall": 0.6, "true_positives": 3, "n_found": 4, "n_true": 5,
                             "radius_A": 3.0},
        metrics_text={"dilation_rms": 0.002}, settings=SET)
    _png(out)
    # every input optional
    _png(paper.plot_validation(tmp_path / "validation_empty.png", slice_thickness_A=DZ, settings=SET), min_std=0.01)


# ------------------------------------------------------------------------------------------------
# movies


def test_gif_one_frame_per_slice(tmp_path, volume, strain):
    import imageio.v3 as iio

    paths = {"potential": tmp_path / "potential.gif", "dilation": tmp_path / "dilation.gif",
             "rotation_deg": tmp_path / "rotation.gif"}
    out = movies.write_strain_movies(volume, strain, paths, DX, DZ, title="pristine", settings=SET)
    assert set(out) == set(paths)
    for name, p in out.items():
        frames = iio.imread(p, index=None)
        assert frames.shape[0] == NZ, (name, frames.shape)
        assert frames.shape[2] == 256 and frames.shape[1] % 16 == 0
        assert float(frames[NZ // 2].std()) > 5
    # the first slice is flagged (red banner): frame 0 holds strongly red pixels, the middle one not
    f = iio.imread(out["potential"], index=None).astype(int)
    red = lambda fr: int(np.sum((fr[..., 0] > 150) & (fr[..., 1] < 90) & (fr[..., 2] < 90)))  # noqa: E731
    assert red(f[0]) > 50 and red(f[NZ // 2]) == 0
    with pytest.raises(ValueError, match="unknown movie"):
        movies.write_strain_movies(volume, strain, {"strain": tmp_path / "s.gif"}, DX, DZ, settings=SET)
    with pytest.raises(ValueError, match="suffix"):
        movies.write_slice_movie(volume, tmp_path / "m.avi", DX, DZ, settings=SET)


@pytest.mark.skipif(not movies.mp4_available(), reason="imageio-ffmpeg is not installed")
def test_mp4(tmp_path, volume):
    import imageio.v3 as iio

    p = movies.write_slice_movie(volume, tmp_path / "potential.mp4", DX, DZ, settings=SET)
    assert iio.imread(p, index=None).shape[0] == NZ


# ------------------------------------------------------------------------------------------------
# 3-D render


@pytest.fixture(scope="module")
def scene():
    from skimage.measure import marching_cubes

    g = np.linspace(-1, 1, 24)
    Z, X, Y = np.meshgrid(g, g, g, indexing="ij")
    v, f, _, _ = marching_cubes(np.sqrt(X ** 2 + Y ** 2 + (Z / 1.3) ** 2), level=0.9)
    surf_v = np.column_stack([v[:, 1] * 2.0, v[:, 2] * 2.0, v[:, 0] * 4.0])
    core = np.zeros((6, 24, 24), bool)
    core[2:4, 8:14, 9:15] = True
    cv, cf = render3d.core_mesh(core, 2.0, (0.0, 0.0), 8.0)
    pts = {"slice": np.array([2, 3, 4, 3, 4]), "x_A": np.array([10.0, 10.5, 11.0, 30.0, 30.0]),
           "y_A": np.array([12.0, 12.0, 12.5, 20.0, 21.0]), "line_id": np.array([0, 0, 0, 1, 1]),
           "bx_A": np.array([2.73, 2.73, 2.73, 0.0, 0.0]), "by_A": np.array([0.0, 0.0, 0.0, -2.73, -2.73])}
    lines, burgers = render3d.dislocation_polylines(pts, 8.0)
    return surf_v, f[:, ::-1], cv, cf, lines, burgers


def test_scene_helpers(scene):
    _, _, cv, cf, lines, burgers = scene
    assert len(cf) > 0 and cv[:, 2].min() > 8.0 and cv[:, 2].max() < 40.0  # slices 2-3 lie at z 16-32 A
    assert [len(p) for p in lines] == [3, 2]
    np.testing.assert_allclose(lines[0][:, 2], [20.0, 28.0, 36.0])
    np.testing.assert_allclose(burgers, [[2.73, 0.0], [0.0, -2.73]])
    labels, uniq = render3d.burgers_classes([[2.73, 0], [2.7301, 0], [0, 1]])
    assert labels[0] == labels[1] != labels[2] and len(uniq) == 2
    v, f = render3d.core_mesh(np.zeros((3, 5, 5), bool), 1.0, (0, 0), 1.0)
    assert v.shape == (0, 3) and f.shape == (0, 3)


def test_render_matplotlib(tmp_path, scene):
    sv, sf, cv, cf, lines, burgers = scene
    out = render3d.render_particle(tmp_path / "fig4_mpl.png", sv, sf, slice_thickness_A=8.0, core_vertices_A=cv,
                                   core_faces=cf, dislocation_lines=lines, burgers_A=burgers, settings=SET,
                                   backend="matplotlib")
    _png(out, min_aspect=0.4, max_aspect=0.8)
    with pytest.raises(ValueError, match="Burgers"):
        render3d.render_particle(tmp_path / "bad.png", sv, sf, slice_thickness_A=8.0, dislocation_lines=lines,
                                 burgers_A=burgers[:1], settings=SET, backend="matplotlib")
    with pytest.raises(ValueError, match="empty"):
        render3d.render_particle(tmp_path / "bad.png", np.zeros((0, 3)), np.zeros((0, 3)), slice_thickness_A=8.0,
                                 settings=SET)


@pytest.mark.skipif(not render3d.pyvista_available(), reason="pyvista is not installed")
def test_render_pyvista(tmp_path, scene):
    sv, sf, cv, cf, lines, burgers = scene
    out = render3d.render_particle(tmp_path / "fig4.png", sv, sf, slice_thickness_A=8.0, core_vertices_A=cv,
                                   core_faces=cf, dislocation_lines=lines, burgers_A=burgers, settings=SET,
                                   backend="pyvista")
    img = _png(out, min_aspect=0.4, max_aspect=0.8)
    # both viewpoints show something: each half of the figure varies
    w = img.shape[1]
    assert img[:, : w // 2, :3].std() > 0.02 and img[:, w // 2:, :3].std() > 0.02


# ------------------------------------------------------------------------------------------------
# report captions


def test_captions_render_with_the_settings():
    """Every figure caption (workflow/report/fig_*.rst) renders with the sample wildcard and the
    figure settings as ``snakemake.params.figures``, and names only existing settings."""
    jinja2 = pytest.importorskip("jinja2")
    from types import SimpleNamespace

    report = Path(__file__).resolve().parents[1] / "workflow" / "report"
    captions = sorted(report.glob("fig_*.rst"))
    assert len(captions) >= 11
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    sm = SimpleNamespace(wildcards=SimpleNamespace(sample="pristine"),
                         params=SimpleNamespace(figures=FigureSettings().as_dict()))
    for c in captions:
        text = env.from_string(c.read_text()).render(snakemake=sm)
        assert "pristine" in text and "{{" not in text, c.name


# ------------------------------------------------------------------------------------------------
# adapters from the library's result dataclasses (guards against renamed fields)


#: attributes of the library's result dataclasses that the adapters read
ADAPTER_FIELDS = {
    ("msptycho.ptycho.parameters", "ReconstructionResult"): ("potential_VA", "sampling_A", "slice_thickness_A",
                                                            "probe", "energy_eV", "semiangle_mrad"),
    ("msptycho.lattice", "StrainResult"): ("dilation", "rotation_deg", "exx", "eyy", "exy", "g_vectors_inv_A"),
    ("msptycho.lattice", "CoreResult"): ("core_mask", "sampling_A", "origin_A", "g200_inv_A", "g220_inv_A"),
    ("msptycho.lattice", "DislocationResult"): ("points", "g_vectors_inv_A"),
    ("msptycho.lattice", "SurfaceResult"): ("vertices_A", "faces", "slice_thickness_A"),
}


def test_result_dataclasses_have_the_fields_the_adapters_read():
    import dataclasses
    import importlib

    for (mod, name), wanted in ADAPTER_FIELDS.items():
        have = {f.name for f in dataclasses.fields(getattr(importlib.import_module(mod), name))}
        assert set(wanted) <= have, (name, set(wanted) - have)
    from msptycho.lattice.dislocations import POINT_FIELDS

    assert {"slice", "x_A", "y_A", "line_id", "bx_A", "by_A"} <= set(POINT_FIELDS)


def test_adapters(tmp_path, volume, strain, scene):
    """The adapters on objects carrying exactly the fields listed in ADAPTER_FIELDS."""
    from types import SimpleNamespace as NS

    n, e = 48, 300e3
    probe = np.fft.fftshift(physics.probe_real((n, n), DX, e, 25.0, physics.Aberrations(defocus_A=80.0)))
    rec = NS(potential_VA=volume, sampling_A=DX, slice_thickness_A=DZ, probe=probe.astype(np.complex64),
             energy_eV=e, semiangle_mrad=25.0)
    g2 = np.array([[1 / 2.73, 1 / 2.73], [-1 / 2.73, 1 / 2.73]])
    g1 = np.array([[1 / 2.73, 0.0], [0.0, 1 / 2.73]])
    st = NS(g_vectors_inv_A=g2, **strain)
    sv, sf, _, _, _, _ = scene
    core_mask = np.zeros((6, 24, 24), bool)
    core_mask[2:4, 8:14, 9:15] = True
    core = NS(core_mask=core_mask, sampling_A=(2.0, 2.0), origin_A=(0.0, 0.0), g200_inv_A=g1, g220_inv_A=g2)
    pts = {"slice": np.array([2, 3]), "x_A": np.array([10.0, 10.5]), "y_A": np.array([12.0, 12.0]),
           "bx_A": np.array([2.73, 2.73]), "by_A": np.array([0.0, 0.0]), "line_id": np.array([0, 0])}
    dis = NS(points=pts, g_vectors_inv_A=g2)
    surf = NS(vertices_A=sv.astype(np.float32), faces=sf.astype(np.int32), slice_thickness_A=8.0)
    _png(paper.fig2_from_results(rec, st, tmp_path / "fig2.png", settings=SET), min_aspect=0.8, max_aspect=1.3)
    a, b = paper.probe_figures_from_result(rec, tmp_path / "s6.png", tmp_path / "s7.png",
                                           initial_aberrations={"defocus_A": 70.0}, settings=SET)
    _png(a, max_aspect=1.0)
    _png(b)
    _png(paper.fft_from_results(rec, tmp_path / "s8.png", strain=st, core=core, dislocations=dis, settings=SET),
         COLUMN_WIDTH_IN + 0.5)
    _png(render3d.render_from_results(surf, tmp_path / "fig4.png", core=core, dislocations=dis, settings=SET,
                                      backend="matplotlib"), min_aspect=0.4, max_aspect=0.8)


def test_render_auto_falls_back_to_matplotlib(tmp_path, scene, monkeypatch, caplog):
    """When the pyvista child fails (no OpenGL, a crash), backend "auto" still writes the figure."""
    sv, sf, cv, cf, lines, burgers = scene

    def broken(*a, **k):
        raise RuntimeError("pyvista render process exited with -11")

    monkeypatch.setattr(render3d, "pyvista_available", lambda: True)
    monkeypatch.setattr(render3d, "_render_child", broken)
    with caplog.at_level("WARNING"):
        out = render3d.render_particle(tmp_path / "fig4.png", sv, sf, slice_thickness_A=8.0, dislocation_lines=lines,
                                       burgers_A=burgers, settings=SET)
    _png(out, min_aspect=0.4, max_aspect=0.8)
    assert "drawing with matplotlib" in caplog.text
    with pytest.raises(RuntimeError, match="exited"):
        render3d.render_particle(tmp_path / "fig4b.png", sv, sf, slice_thickness_A=8.0, settings=SET,
                                 backend="pyvista")
