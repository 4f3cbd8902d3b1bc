"""Calibration trace figure (``04_calibrate/trace.png``): the objective of every evaluation of the
Bayesian optimisation and the parameters it explored, with the best evaluation marked."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .style import PAGE_WIDTH_IN, plt, save_figure, use_style

#: axis labels of the calibration parameters
LABELS = {
    "defocus_A": "defocus (A)",
    "scan_rotation_deg": "scan rotation (deg)",
    "step_scale": "step-size scale",
    "C12a_A": r"C12 cos 2$\phi$ (A)",
    "C12b_A": r"C12 sin 2$\phi$ (A)",
}
KIND_STYLE = {"start": ("s", "tab:green"), "random": ("o", "0.55"), "guided": ("o", "tab:blue"),
              "posterior": ("D", "tab:purple")}


def plot_calibration_trace(result, out_path: str | os.PathLike, title: str | None = None,
                           truth: dict | None = None) -> Path:
    """Draw the calibration trace and write it atomically.

    Top: the objective (normalised data error, log scale) of each evaluation in order, coloured by
    kind (start, random, guided by the acquisition function), with the running best as a line and
    the best evaluation starred ("posterior": the Gaussian process's own best guess). Bottom: one panel per optimised parameter, the objective against
    the parameter's value for every evaluation (colour = evaluation number), the bounds as the
    x range, the start dotted and the best starred.

    Parameters
    ----------
    result : msptycho.calibrate.CalibrationResult
    out_path : str or PathLike
        Image file (format from the suffix, e.g. ``.png``); appears only when complete.
    title : str, optional
        Figure title (e.g. the sample name).
    truth : dict, optional
        Known true parameter values (synthetic data), drawn as red dashed lines.

    Returns
    -------
    Path
        ``out_path``.
    """
    use_style()
    out_path = Path(out_path)
    names = list(result.bounds)
    ev = result.evaluations
    idx = np.array([e.index for e in ev]) + 1
    obj = np.array([e.objective for e in ev], dtype=np.float64)
    ok = np.isfinite(obj) & (obj > 0)
    running = np.minimum.accumulate(np.where(ok, obj, np.inf))
    b = result.best_index

    ncol = max(len(names), 1)
    fig = plt.figure(figsize=(PAGE_WIDTH_IN, PAGE_WIDTH_IN * 0.62), constrained_layout=True)
    gs = fig.add_gridspec(2, ncol, height_ratios=[1, 1.1])
    try:
        ax = fig.add_subplot(gs[0, :])
        for kind, (marker, color) in KIND_STYLE.items():
            sel = ok & np.array([e.kind == kind for e in ev])
            if sel.any():
                ax.plot(idx[sel], obj[sel], marker, color=color, ms=4, ls="none", label=kind)
        if (~ok).any():
            top = np.nanmax(obj[ok]) if ok.any() else 1.0
            ax.plot(idx[~ok], np.full((~ok).sum(), top), "x", color="tab:red", ms=5, ls="none",
                    label="diverged")
        fin = np.isfinite(running)
        ax.step(idx[fin], running[fin], where="post", color="k", lw=0.8, label="best so far")
        ax.plot(idx[b], obj[b], "*", color="gold", mec="k", mew=0.6, ms=11, label="best", zorder=5)
        ax.set_yscale("log")
        ax.set_xlabel("evaluation")
        ax.set_ylabel("objective (data error)")
        ax.set_xlim(0.3, len(ev) + 0.7)
        start_obj = obj[0]
        ax.set_title(f"Bayesian optimisation: {len(ev)} evaluations, best #{b + 1}: error "
                     f"{obj[b]:.3g} (start {start_obj:.3g})")
        ax.legend(loc="upper right", ncol=3, frameon=False)

        first = None
        for c, k in enumerate(names):
            ax = fig.add_subplot(gs[1, c], sharey=first)
            first = first or ax
            x = np.array([e.parameters.get(k, math.nan) for e in ev], dtype=np.float64)
            sc = ax.scatter(x[ok], obj[ok], c=idx[ok], cmap="viridis", s=12, vmin=1, vmax=len(ev),
                            edgecolors="none")
            lo, hi = result.bounds[k]
            pad = 0.03 * (hi - lo)
            ax.set_xlim(lo - pad, hi + pad)
            ax.axvline(result.start[k], color="tab:green", ls=":", lw=1, label="start")
            if truth and k in truth:
                ax.axvline(truth[k], color="tab:red", ls="--", lw=0.8, label="truth")
            ax.plot(x[b], obj[b], "*", color="gold", mec="k", mew=0.6, ms=11, zorder=5)
            ax.set_yscale("log")
            ax.set_xlabel(LABELS.get(k, k))
            ax.set_title(f"best {x[b]:.4g}", fontsize=7)
            if c == 0:
                ax.set_ylabel("objective")
                ax.legend(loc="upper left", frameon=False, fontsize=6)
            else:
                ax.tick_params(labelleft=False)
        fig.colorbar(sc, ax=fig.axes[1:], shrink=0.85, label="evaluation")
        if title:
            fig.suptitle(title)
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, out_path)


__all__ = ["plot_calibration_trace"]
