"""Overview figure of a simulated sample: model, ground truth, HAADF frame and diffraction."""

from __future__ import annotations

import numpy as np

from .style import PAGE_WIDTH_IN, add_scale_bar, plt, save_figure, use_style


def _extent(truth, n_x, n_y):
    """imshow extent in A for a [x, y] array shown with x down, y across (origin upper)."""
    s = truth.sampling_A
    x0, y0 = truth.origin_A
    return (y0 - s / 2, y0 + (n_y - 0.5) * s, x0 + (n_x - 0.5) * s, x0 - s / 2)


def simulation_overview(truth, scan_pair_images=None, mean_pattern=None, vacuum_probe=None, model=None,
                        name: str = "", mrad_per_pixel: float | None = None, haadf_pixel_A: float | None = None,
                        path=None):
    """Draw the overview of one simulated sample.

    Parameters
    ----------
    truth : msptycho.simulate.GroundTruth
    scan_pair_images : ndarray (2, hx, hy), optional
        HAADF frames; the first is shown.
    mean_pattern : ndarray (Qx, Qy), optional
        Mean diffraction pattern of the datacube (log scale).
    vacuum_probe : ndarray (Qx, Qy), optional
    model : msptycho.simulate.AtomicModel, optional
        Atoms; a side view (x-z) of a 6 A slab through the core is drawn when given, otherwise the
        particle/core masks of the slices along the same cut.
    name : str
        Title.
    mrad_per_pixel : float, optional
        Detector sampling, for the pattern's axis labels.
    haadf_pixel_A : float, optional
        For the HAADF scale bar.
    path : path-like, optional
        Save the figure there (PNG) and close it.

    Returns
    -------
    matplotlib Figure (None when saved)
    """
    use_style()
    t = truth
    n = t.n_slices
    part_slices = [k for k in range(n) if t.particle_mask[k].any()]
    if not part_slices:
        raise ValueError("the truth has no slice with particle: nothing to show.")
    top, bottom = part_slices[0], part_slices[-1]
    mid = part_slices[len(part_slices) // 2]
    fig, axes = plt.subplots(3, 4, figsize=(PAGE_WIDTH_IN, PAGE_WIDTH_IN * 0.8), constrained_layout=True)
    ext = _extent(t, *t.potential_VA.shape[1:])
    cx, cy, _ = t.core_center_A

    # row 0: side view and three potential slices
    ax = axes[0, 0]
    if model is not None:
        sel = np.abs(model.positions_A[:, 1] - cy) < 3.0
        colors = np.array(["0.6", "tab:cyan", "tab:red"])[model.region[sel]]
        ax.scatter(model.positions_A[sel, 0], model.positions_A[sel, 2], s=0.4, c=colors, lw=0)
        ax.set_ylim(t.slice_edges_A[-1], 0)
        for z in t.slice_edges_A:
            ax.axhline(z, color="k", lw=0.3, ls=":")
        ax.set_xlabel("x (A)")
        ax.set_ylabel("z (A), beam down")
        ax.set_title("side view, |y - y_core| < 3 A\ngrey C, cyan CaF2, red SrYbF5", fontsize=6)
    else:
        jy = int(round((cy - t.origin_A[1]) / t.sampling_A))
        cut = t.particle_mask[:, :, jy].astype(float) + t.core_mask[:, :, jy]
        ax.imshow(cut, aspect="auto", cmap="viridis", extent=(ext[3], ext[2], t.slice_edges_A[-1], 0))
        ax.set_xlabel("x (A)")
        ax.set_ylabel("z (A)")
        ax.set_title("masks along y = y_core", fontsize=6)
    vmax = np.percentile(t.potential_VA[mid], 99.8)
    for ax, k, lab in zip(axes[0, 1:], (top, mid, bottom), ("top", "middle", "bottom")):
        ax.imshow(t.potential_VA[k], cmap="gray", vmin=0, vmax=vmax, extent=ext)
        ax.contour(t.core_mask[k].astype(float), levels=[0.5], colors="tab:red", linewidths=0.5, extent=ext, origin="upper")
        ax.set_title(f"potential, slice {k} ({lab})\nz {t.slice_edges_A[k]:.0f}-{t.slice_edges_A[k + 1]:.0f} A", fontsize=6)
        ax.set_axis_off()
        add_scale_bar(ax, 1.0, 2.0)
    # row 1: dilation and rotation in top / middle, crack + dislocations
    for ax, k in zip(axes[1, :2], (top, mid)):
        im = ax.imshow(100 * t.dilation[k], cmap="RdBu_r", vmin=-10, vmax=10, extent=ext)
        ax.set_title(f"dilation (%), slice {k}", fontsize=6)
        ax.set_axis_off()
    fig.colorbar(im, ax=axes[1, 1], shrink=0.7)
    for ax, k in zip(axes[1, 2:], (top, bottom)):
        im = ax.imshow(np.degrees(t.rotation_rad[k]), cmap="PuOr", vmin=-3, vmax=3, extent=ext)
        ax.set_title(f"rotation (deg), slice {k}", fontsize=6)
        ax.set_axis_off()
        if len(t.dislocations):
            d = t.dislocations[t.dislocations["slice"] == k]
            ax.quiver(d["y_A"], d["x_A"], d["burgers_y_A"], -d["burgers_x_A"], color="k", scale=40, width=0.012)
        if t.crack_mask[k].any():
            ax.contour(t.crack_mask[k].astype(float), levels=[0.5], colors="k", linewidths=0.5, extent=ext, origin="upper")
    fig.colorbar(im, ax=axes[1, 3], shrink=0.7)
    # row 2: HAADF, patterns, exx profile
    ax = axes[2, 0]
    if scan_pair_images is not None:
        ax.imshow(scan_pair_images[0], cmap="gray")
        ax.set_title("HAADF frame 0 (fast x)", fontsize=6)
        if haadf_pixel_A:
            add_scale_bar(ax, haadf_pixel_A, 2.0)
    ax.set_axis_off()
    for ax, pat, lab in ((axes[2, 1], mean_pattern, "mean pattern (log)"), (axes[2, 2], vacuum_probe, "vacuum probe")):
        if pat is not None:
            q = pat.shape[0] / 2 * (mrad_per_pixel or 1)
            floor = pat.max() * (1e-3 if lab == "vacuum probe" else 1e-4)
            ax.imshow(np.log10(np.maximum(pat, floor)), cmap="magma", extent=(-q, q, q, -q))
            ax.set_title(lab, fontsize=6)
            ax.set_xlabel("q_y (mrad)" if mrad_per_pixel else "q_y (px)")
        else:
            ax.set_axis_off()
    ax = axes[2, 3]
    ix = int(round((cx - t.origin_A[0]) / t.sampling_A))
    ys = t.origin_A[1] + np.arange(t.exx.shape[2]) * t.sampling_A
    for k in (top, mid, bottom):
        ax.plot(ys, 100 * t.exx[k, ix], lw=0.8, label=f"slice {k}")
    ax.axhline(100 * t.misfit, color="k", lw=0.5, ls="--")
    ax.set_xlabel("y (A) through the core")
    ax.set_ylabel("exx (%)")
    ax.legend(fontsize=5, frameon=False)
    ax.set_title(f"misfit {100 * t.misfit:.2f} % (dashed)", fontsize=6)
    if name:
        fig.suptitle(name)
    if path is not None:
        save_figure(fig, path)
        return None
    return fig
