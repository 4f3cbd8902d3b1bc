"""HDF5 files of the calibration chain: ``02_drift/haadf.h5`` and ``03_parallax/parallax.h5``.

Layouts are documented in ``workflow/schemas/haadf.md`` and ``workflow/schemas/parallax.md``.
Writers are atomic (:func:`msptycho.io.atomic_h5`: a temporary file renamed when complete) and
store the given :class:`~msptycho.io.Provenance` as root attributes; readers check the layout tag,
every dataset and attribute and raise :class:`~msptycho.io.InputError` with one sentence naming
the file and the field.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from .datacube import InputError
from .provenance import Provenance, atomic_h5, open_layout

HAADF_LAYOUT = "msptycho.haadf/1"
PARALLAX_LAYOUT = "msptycho.parallax/1"


_open = open_layout  # the shared layout check


def _dataset(f, name: str, ndim: int, shape_tail: tuple = ()):
    if name not in f:
        raise InputError(f"{f.filename}: dataset '/{name}' is missing.")
    d = f[name]
    if d.ndim != ndim or (shape_tail and d.shape[-len(shape_tail):] != shape_tail):
        want = f"{ndim} dimensions" + (f" ending in {shape_tail}" if shape_tail else "")
        raise InputError(f"{f.filename}: dataset '/{name}' has shape {d.shape}; expected {want}.")
    a = d[...]
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise InputError(f"{f.filename}: dataset '/{name}' contains NaN or infinite values.")
    return a


def _attr(f, name: str, obj=None):
    obj = f if obj is None else obj
    if name not in obj.attrs:
        where = "root" if obj is f else f"'{obj.name}'"
        raise InputError(f"{f.filename}: {where} attribute '{name}' is missing.")
    v = obj.attrs[name]
    return v.decode() if isinstance(v, bytes) else v


# -- 02_drift/haadf.h5 -------------------------------------------------------------------------


def write_haadf(path, result, provenance: Provenance | None = None) -> None:
    """Write a :class:`msptycho.drift.DriftResult` as ``haadf.h5`` (atomically)."""
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = HAADF_LAYOUT
        d = f.create_dataset("image", data=np.asarray(result.image, dtype=np.float32), compression="gzip")
        d.attrs["axes"] = "x,y"
        d.attrs["pixel_size_A"] = float(result.pixel_size_A)
        d.attrs["pad_px"] = int(result.pad_px)
        f.create_dataset("coverage", data=np.asarray(result.coverage, dtype=np.float32), compression="gzip")
        f.create_dataset("images_resampled", data=np.asarray(result.images_resampled, dtype=np.float32),
                         compression="gzip")
        g = f.create_group("scan_lines")
        g.attrs["fast_directions"] = np.asarray(result.fast_directions, dtype=np.float64)
        informative = result.informative or tuple(np.zeros(len(o), dtype=bool) for o in result.origins_px)
        for k, name in enumerate(("0deg", "90deg")):
            g.create_dataset(f"origins_{name}_px", data=np.asarray(result.origins_px[k], dtype=np.float64))
            g.create_dataset(f"ideal_origins_{name}_px", data=np.asarray(result.ideal_origins_px[k], dtype=np.float64))
            g.create_dataset(f"informative_{name}", data=np.asarray(informative[k], dtype=bool))
        f.attrs["pixel_size_A"] = float(result.pixel_size_A)
        f.attrs["pair_layout"] = str(result.pair_layout)
        f.attrs["linear_drift_px"] = np.asarray(result.linear_drift_px, dtype=np.float64)
        f.attrs["translation_px"] = np.asarray(result.translation_px, dtype=np.float64)
        f.attrs["residual_initial"] = float(result.residual_initial)
        f.attrs["residual_linear"] = float(result.residual_linear)
        f.attrs["residual_final"] = float(result.residual_final)
        f.attrs["residual_history"] = np.asarray(result.residual_history, dtype=np.float64)


def read_haadf(path):
    """Read ``haadf.h5`` back into a :class:`msptycho.drift.DriftResult`."""
    from ..drift import DriftResult

    with _open(path, HAADF_LAYOUT, "drift-corrected HAADF") as f:
        image = _dataset(f, "image", 2)
        d = f["image"]
        px = float(_attr(f, "pixel_size_A", d))
        pad = int(_attr(f, "pad_px", d))
        coverage = _dataset(f, "coverage", 2)
        res = _dataset(f, "images_resampled", 3)
        if coverage.shape != image.shape or res.shape != (2,) + image.shape:
            raise InputError(f"{path}: datasets '/coverage' {coverage.shape} and '/images_resampled' "
                             f"{res.shape} do not match '/image' {image.shape}; expected (H, W) and (2, H, W).")
        if "scan_lines" not in f:
            raise InputError(f"{path}: group '/scan_lines' is missing.")
        g = f["scan_lines"]
        origins, ideal, info = [], [], []
        for name in ("0deg", "90deg"):
            origins.append(_dataset(f, f"scan_lines/origins_{name}_px", 2, (2,)))
            ideal.append(_dataset(f, f"scan_lines/ideal_origins_{name}_px", 2, (2,)))
            info.append(_dataset(f, f"scan_lines/informative_{name}", 1).astype(bool))
        dirs = np.asarray(_attr(f, "fast_directions", g), dtype=np.float64)
        return DriftResult(
            image=image.astype(np.float64), coverage=coverage.astype(np.float64),
            images_resampled=res.astype(np.float64), pixel_size_A=px, pad_px=pad,
            origins_px=tuple(origins), ideal_origins_px=tuple(ideal), fast_directions=dirs,
            linear_drift_px=np.asarray(_attr(f, "linear_drift_px"), dtype=np.float64),
            translation_px=np.asarray(_attr(f, "translation_px"), dtype=np.float64),
            residual_initial=float(_attr(f, "residual_initial")),
            residual_linear=float(_attr(f, "residual_linear")),
            residual_final=float(_attr(f, "residual_final")),
            residual_history=[float(x) for x in np.atleast_1d(_attr(f, "residual_history"))],
            informative=tuple(info), pair_layout=str(_attr(f, "pair_layout")))


# -- 03_parallax/parallax.h5 -------------------------------------------------------------------

_PARALLAX_SCALARS = ("defocus_A", "C12_A", "phi12_rad", "C21_A", "phi21_rad", "scan_rotation_deg",
                     "residual_rms_A", "explained_fraction", "image_sampling_A", "scan_step_A", "energy_eV")


def write_parallax(path, result, provenance: Provenance | None = None) -> None:
    """Write a :class:`msptycho.parallax.ParallaxResult` as ``parallax.h5`` (atomically)."""
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = PARALLAX_LAYOUT
        for k in _PARALLAX_SCALARS:
            f.attrs[k] = float(getattr(result, k))
        f.attrs["transpose"] = bool(result.transpose)
        f.attrs["offset_A"] = np.asarray(result.offset_A, dtype=np.float64)
        f.attrs["detector_center_px"] = np.asarray(result.detector_center_px, dtype=np.float64)
        f.attrs["history"] = json.dumps(result.history)
        f.create_dataset("k_inv_A", data=np.asarray(result.k_inv_A, dtype=np.float64))
        f.create_dataset("shifts_A", data=np.asarray(result.shifts_A, dtype=np.float64))
        f.create_dataset("shifts_fit_A", data=np.asarray(result.shifts_fit_A, dtype=np.float64))
        f.create_dataset("weights", data=np.asarray(result.weights, dtype=np.float64))
        f.create_dataset("inliers", data=np.asarray(result.inliers, dtype=bool))
        d = f.create_dataset("image", data=np.asarray(result.image, dtype=np.float32))
        d.attrs["axes"] = "x,y"
        d.attrs["sampling_A"] = float(result.image_sampling_A)
        b = f.create_dataset("image_bf", data=np.asarray(result.image_bf, dtype=np.float32))
        b.attrs["axes"] = "x,y"
        b.attrs["sampling_A"] = float(result.scan_step_A)


def read_parallax(path):
    """Read ``parallax.h5`` back into a :class:`msptycho.parallax.ParallaxResult`."""
    from ..parallax import ParallaxResult

    with _open(path, PARALLAX_LAYOUT, "parallax") as f:
        kw = {}
        for k in _PARALLAX_SCALARS:
            kw[k] = float(_attr(f, k))
        for k in ("defocus_A", "scan_rotation_deg", "scan_step_A", "energy_eV", "image_sampling_A"):
            if not np.isfinite(kw[k]):
                raise InputError(f"{path}: root attribute '{k}' is {kw[k]}; expected a finite number.")
        kw["transpose"] = bool(_attr(f, "transpose"))
        kw["offset_A"] = np.asarray(_attr(f, "offset_A"), dtype=np.float64)
        kw["detector_center_px"] = tuple(float(x) for x in _attr(f, "detector_center_px"))
        kw["history"] = json.loads(_attr(f, "history"))
        k = _dataset(f, "k_inv_A", 2, (2,))
        n = k.shape[0]
        kw["k_inv_A"] = k
        for name in ("shifts_A", "shifts_fit_A"):
            kw[name] = _dataset(f, name, 2, (2,))
        kw["weights"] = _dataset(f, "weights", 1)
        kw["inliers"] = _dataset(f, "inliers", 1).astype(bool)
        for name in ("shifts_A", "shifts_fit_A", "weights", "inliers"):
            if kw[name].shape[0] != n:
                raise InputError(f"{path}: dataset '/{name}' has {kw[name].shape[0]} rows; expected {n} "
                                 f"(one per bright-field image, as '/k_inv_A').")
        kw["image"] = _dataset(f, "image", 2).astype(np.float64)
        kw["image_bf"] = _dataset(f, "image_bf", 2).astype(np.float64)
        return ParallaxResult(**kw)
