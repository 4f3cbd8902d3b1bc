"""Convergence figure of a ptychographic reconstruction (``convergence.png``)."""

from __future__ import annotations

import numpy as np

from .style import PAGE_WIDTH_IN, add_scale_bar, plt, save_figure, use_style


def plot_convergence(result, path) -> None:
    """Four panels: error per iteration, time and step per iteration, position corrections,
    projected potential with the reconstructed probe's intensity.

    Parameters
    ----------
    result : ReconstructionResult
        As returned by :func:`msptycho.ptycho.reconstruct` or read by
        :func:`msptycho.io.reconstruction.read_reconstruction`.
    path : str or Path
        Output PNG.
    """
    use_style()
    fig, axs = plt.subplots(2, 2, figsize=(PAGE_WIDTH_IN, PAGE_WIDTH_IN * 0.8))
    it = np.arange(1, len(result.error_history) + 1)

    ax = axs[0, 0]
    ax.semilogy(it, result.error_history, "o-", ms=3, color="C0")
    ax.set_xlabel("iteration")
    ax.set_ylabel(r"error $\sum(|\Psi|-a)^2/\sum a^2$")
    ax.set_title("(a) normalised amplitude error")
    ax.grid(alpha=0.3, which="both")

    ax = axs[0, 1]
    ax.bar(it, result.seconds_history, color="C1", alpha=0.7)
    ax.set_xlabel("iteration")
    ax.set_ylabel("seconds", color="C1")
    ax2 = ax.twinx()
    ax2.plot(it, result.step_history, "k.-", ms=3)
    ax2.set_ylabel("object step size")
    ax.set_title(f"(b) time per iteration (total {np.sum(result.seconds_history):.1f} s)")

    ax = axs[1, 0]
    p0 = np.asarray(result.positions_initial_A)
    d = np.asarray(result.positions_A) - p0
    mag = np.sqrt(np.sum(d**2, axis=1))
    rx, ry = result.scan_shape
    rms = float(np.sqrt(np.mean(mag**2)))
    if rx * ry == len(mag) and min(rx, ry) > 1:
        # shift magnitude on the scan grid, with arrows on a subsampled grid (at most ~20 x 20)
        im = ax.imshow(mag.reshape(rx, ry), cmap="viridis", interpolation="nearest")
        k = max(1, int(np.ceil(max(rx, ry) / 20)))
        ii, jj = np.meshgrid(np.arange(0, rx, k), np.arange(0, ry, k), indexing="ij")
        sel = (ii * ry + jj).ravel()
        gain = 0.9 * k / max(float(mag[sel].max()), 1e-9)
        ax.quiver(jj.ravel(), ii.ravel(), d[sel, 1], -d[sel, 0], color="white", angles="xy",
                  scale_units="xy", scale=1.0 / gain, width=0.005, headwidth=3, headlength=4)
        ax.set_xlabel("scan index y")
        ax.set_ylabel("scan index x")
        ax.set_title(f"(c) position shifts (RMS {rms:.3f} A, max {mag.max():.3f} A; arrows x{gain:.3g} px/A)")
        fig.colorbar(im, ax=ax, label="|shift| (A)", shrink=0.8)
    else:
        gain = 0.9 * _spacing(p0) / max(float(mag.max()), 1e-9)
        q = ax.quiver(p0[:, 1], p0[:, 0], d[:, 1], -d[:, 0], mag, cmap="viridis", angles="xy",
                      scale_units="xy", scale=1.0 / gain, width=0.006, headwidth=3, headlength=4)
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_xlabel("y (A)")
        ax.set_ylabel("x (A)")
        ax.set_title(f"(c) position shifts x{gain:.3g} (RMS {rms:.3f} A, max {mag.max():.3f} A)")
        fig.colorbar(q, ax=ax, label="shift (A)", shrink=0.8)

    ax = axs[1, 1]
    proj = np.asarray(result.potential_VA).sum(axis=0)
    im = ax.imshow(proj, cmap="gray")
    ax.set_title(f"(d) projected potential, {result.potential_VA.shape[0]} slices")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, label="V A", shrink=0.8)
    add_scale_bar(ax, result.sampling_A)
    ins = ax.inset_axes([0.68, 0.68, 0.3, 0.3])
    ins.imshow(np.abs(result.probe) ** 2, cmap="magma")
    ins.set_xticks([])
    ins.set_yticks([])
    ins.text(0.5, 0.04, "probe $|P|^2$", transform=ins.transAxes, ha="center", va="bottom",
             fontsize=6, color="white")

    fig.tight_layout()
    save_figure(fig, path)


def _spacing(p: np.ndarray) -> float:
    """Typical nearest-neighbour spacing of scan positions (A)."""
    if len(p) < 2:
        return 1.0
    d = np.sqrt(np.sum(np.diff(p[: min(len(p), 200)], axis=0) ** 2, axis=1))
    d = d[d > 0]
    return float(np.median(d)) if d.size else 1.0
