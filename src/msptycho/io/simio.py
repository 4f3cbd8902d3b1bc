"""HDF5 files of the simulator: ``scan_pair.h5``, ``vacuum_probe.h5``, ``truth.h5``.

Layouts are documented in ``workflow/schemas/{scan_pair,vacuum_probe,truth}.md``. Every writer is
atomic (:func:`msptycho.io.atomic_h5`) and stores the given provenance as root attributes; every
reader checks the layout tag, the datasets and their shapes and raises
:class:`msptycho.io.InputError` with one sentence naming the file and the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from .datacube import Calibration, InputError, write_datacube
from .provenance import Provenance, atomic_h5, open_layout

SCAN_PAIR_LAYOUT = "msptycho.scan_pair/1"
VACUUM_PROBE_LAYOUT = "msptycho.vacuum_probe/1"
TRUTH_LAYOUT = "msptycho.truth/1"

STRAIN_DEFINITION = ("G = d u / d X: in-plane displacement gradient relative to the reference lattice "
                     "(CaF2, reference_lattice_A, cube axes along x and y); exx = G_xx, eyy = G_yy, "
                     "exy = (G_xy + G_yx)/2, dilation = exx + eyy, rotation_rad = (G_yx - G_xy)/2 "
                     "(counter-clockwise from +x towards +y); local lattice vectors = (I + G) reference vectors")


_open = open_layout  # the shared layout check


def _need(f, name: str, ndim: int | None = None):
    if name not in f:
        raise InputError(f"{f.filename}: dataset '/{name}' is missing.")
    d = f[name]
    if ndim is not None and d.ndim != ndim:
        raise InputError(f"{f.filename}: dataset '/{name}' has {d.ndim} dimensions; expected {ndim}.")
    return d


# -- scan pair ------------------------------------------------------------------------------------
def write_scan_pair(path, pair, provenance: Provenance | None = None) -> None:
    """Write an orthogonal HAADF scan pair (:class:`msptycho.simulate.ScanPair`), without its
    drift truth (that goes to ``truth.h5``)."""
    images = np.asarray(pair.images, dtype=np.float32)
    if images.ndim != 3 or images.shape[0] != 2:
        raise InputError(f"scan pair for {path}: images must have shape (2, nx, ny), got {images.shape}.")
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = SCAN_PAIR_LAYOUT
        d = f.create_dataset("images", data=images, compression="gzip", compression_opts=4)
        d.attrs["axes"] = "frame,x,y"
        d.attrs["units"] = "counts"
        f.attrs["fast_axis_deg"] = np.asarray(pair.fast_axis_deg, dtype=np.float64)
        f.attrs["pixel_size_A"] = float(pair.pixel_size_A)
        f.attrs["origin_A"] = np.asarray(pair.origin_A, dtype=np.float64)
        f.attrs["dwell_s"] = float(pair.dwell_s)
        t = f.create_dataset("time_s", data=np.asarray(pair.time_s, dtype=np.float64), compression="gzip")
        t.attrs["description"] = "acquisition time of each pixel from the start of frame 0, seconds"


def read_scan_pair(path) -> dict:
    """Read a scan pair: dict with ``images`` (2, nx, ny), ``fast_axis_deg``, ``pixel_size_A``,
    ``origin_A``, ``dwell_s``, ``time_s``."""
    with _open(path, SCAN_PAIR_LAYOUT, "HAADF scan pair") as f:
        img = _need(f, "images", 3)[...]
        if img.shape[0] != 2:
            raise InputError(f"{path}: dataset '/images' holds {img.shape[0]} frames; expected 2.")
        if not np.all(np.isfinite(img)) or img.min() < 0:
            raise InputError(f"{path}: dataset '/images' has NaN or negative counts; expected non-negative counts.")
        for k in ("fast_axis_deg", "pixel_size_A", "origin_A", "dwell_s"):
            if k not in f.attrs:
                raise InputError(f"{path}: root attribute '{k}' is missing.")
        return dict(images=img, fast_axis_deg=tuple(float(x) for x in f.attrs["fast_axis_deg"]),
                    pixel_size_A=float(f.attrs["pixel_size_A"]), origin_A=tuple(float(x) for x in f.attrs["origin_A"]),
                    dwell_s=float(f.attrs["dwell_s"]), time_s=_need(f, "time_s", 3)[...])


# -- vacuum probe ----------------------------------------------------------------------------------
def write_vacuum_probe(path, intensity: np.ndarray, calibration: Calibration, electrons: float,
                       provenance: Provenance | None = None) -> None:
    """Write a vacuum-probe pattern (counts, (Qx, Qy)) with the detector calibration."""
    inten = np.asarray(intensity, dtype=np.float32)
    if inten.ndim != 2:
        raise InputError(f"vacuum probe for {path}: expected a 2-D pattern, got shape {inten.shape}.")
    if not np.all(np.isfinite(inten)) or inten.min() < 0:
        raise InputError(f"vacuum probe for {path}: counts must be finite and non-negative.")
    cal = calibration.with_center(inten.shape).validate(str(path))
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = VACUUM_PROBE_LAYOUT
        d = f.create_dataset("vacuum_probe", data=inten)
        d.attrs["axes"] = "Qx,Qy"
        d.attrs["units"] = "counts"
        d.attrs["electrons"] = float(electrons)
        d.attrs.update(cal.to_attrs())


def read_vacuum_probe(path) -> tuple[np.ndarray, Calibration]:
    """Read a vacuum-probe pattern and its calibration."""
    with _open(path, VACUUM_PROBE_LAYOUT, "vacuum probe") as f:
        d = _need(f, "vacuum_probe", 2)
        arr = d[...]
        if not np.all(np.isfinite(arr)) or arr.min() < 0:
            raise InputError(f"{path}: dataset '/vacuum_probe' has NaN or negative counts.")
        return arr, Calibration.from_attrs(d.attrs, os.fspath(path))


# -- truth -----------------------------------------------------------------------------------------
def write_truth(path, truth, params=None, provenance: Provenance | None = None) -> None:
    """Write the ground truth (:class:`msptycho.simulate.GroundTruth`).

    Parameters
    ----------
    path : path-like
    truth : GroundTruth
    params : SimulationParameters, optional
        Stored as JSON in the root attribute ``simulation_parameters``.
    provenance : Provenance, optional
    """
    t = truth
    gz = dict(compression="gzip", compression_opts=4, shuffle=True)
    chunks = (1, *t.potential_VA.shape[1:])
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = TRUTH_LAYOUT
        f.attrs["sampling_A"] = float(t.sampling_A)
        f.attrs["origin_A"] = np.asarray(t.origin_A, dtype=np.float64)
        f.attrs["slice_thickness_A"] = float(t.slice_thickness_A)
        f.attrs["reference_lattice_A"] = float(t.reference_lattice_A)
        f.attrs["misfit"] = float(t.misfit)
        f.attrs["particle_center_A"] = np.asarray(t.particle_center_A, dtype=np.float64)
        f.attrs["core_center_A"] = np.asarray(t.core_center_A, dtype=np.float64)
        f.attrs["core_radius_A"] = float(t.core_radius_A)
        f.attrs["axes"] = "slice,x,y"
        if params is not None:
            f.attrs["simulation_parameters"] = json.dumps(params.as_dict(), sort_keys=True)
        f.create_dataset("slice_edges_A", data=np.asarray(t.slice_edges_A, dtype=np.float64))
        d = f.create_dataset("potential_VA", data=t.potential_VA.astype(np.float32), chunks=chunks, **gz)
        d.attrs["units"] = "V*A"
        g = f.create_group("strain")
        g.attrs["definition"] = STRAIN_DEFINITION
        g.attrs["outside"] = "NaN outside the particle mask and inside the crack"
        for name in t.STRAIN_FIELDS:
            g.create_dataset(name, data=getattr(t, name).astype(np.float32), chunks=chunks, **gz)
        m = f.create_group("masks")
        for name in t.MASK_FIELDS:
            m.create_dataset(name.replace("_mask", ""), data=getattr(t, name).astype(np.uint8), chunks=chunks, **gz)
        f.create_dataset("dislocations", data=t.dislocations)
        pr = f.create_group("probe")
        for k, v in t.probe.items():
            pr.attrs[k] = v
        sc = f.create_group("scan")
        if t.scan_positions_A is not None:
            sc.create_dataset("positions_A", data=np.asarray(t.scan_positions_A, dtype=np.float64))
        if t.scan_positions_nominal_A is not None:
            sc.create_dataset("positions_nominal_A", data=np.asarray(t.scan_positions_nominal_A, dtype=np.float64))
        hd = f.create_group("haadf")
        if t.haadf_drift_A is not None:
            hd.create_dataset("drift_A", data=np.asarray(t.haadf_drift_A, dtype=np.float32), **gz)
            hd.create_dataset("time_s", data=np.asarray(t.haadf_time_s, dtype=np.float64), **gz)


def read_truth(path):
    """Read ``truth.h5`` into a :class:`msptycho.simulate.GroundTruth`."""
    from ..simulate.truth import DISLOCATION_DTYPE, GroundTruth

    with _open(path, TRUTH_LAYOUT, "ground truth") as f:
        for k in ("sampling_A", "origin_A", "slice_thickness_A", "reference_lattice_A", "misfit"):
            if k not in f.attrs:
                raise InputError(f"{path}: root attribute '{k}' is missing.")
        pot = _need(f, "potential_VA", 3)[...]
        kw = {}
        for name in GroundTruth.STRAIN_FIELDS:
            a = _need(f, f"strain/{name}", 3)[...]
            if a.shape != pot.shape:
                raise InputError(f"{path}: dataset '/strain/{name}' has shape {a.shape}; expected {pot.shape}.")
            kw[name] = a
        for name in GroundTruth.MASK_FIELDS:
            kw[name] = _need(f, f"masks/{name.replace('_mask', '')}", 3)[...].astype(bool)
        dis = f["dislocations"][...] if "dislocations" in f else np.zeros(0, DISLOCATION_DTYPE)
        probe = {k: (v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v))
                 for k, v in f["probe"].attrs.items()} if "probe" in f else {}
        get = lambda n: f[n][...] if n in f else None  # noqa: E731
        return GroundTruth(
            sampling_A=float(f.attrs["sampling_A"]), origin_A=tuple(float(x) for x in f.attrs["origin_A"]),
            slice_thickness_A=float(f.attrs["slice_thickness_A"]), slice_edges_A=f["slice_edges_A"][...],
            potential_VA=pot, **kw, dislocations=dis, reference_lattice_A=float(f.attrs["reference_lattice_A"]),
            misfit=float(f.attrs["misfit"]), particle_center_A=np.asarray(f.attrs["particle_center_A"]),
            core_center_A=np.asarray(f.attrs["core_center_A"]), core_radius_A=float(f.attrs["core_radius_A"]),
            probe=probe, scan_positions_A=get("scan/positions_A"), scan_positions_nominal_A=get("scan/positions_nominal_A"),
            haadf_drift_A=get("haadf/drift_A"), haadf_time_s=get("haadf/time_s"))


def read_simulation_parameters(path):
    """The :class:`msptycho.simulate.SimulationParameters` stored in a ``truth.h5``."""
    from ..simulate.presets import SimulationParameters

    with _open(path, TRUTH_LAYOUT, "ground truth") as f:
        if "simulation_parameters" not in f.attrs:
            raise InputError(f"{path}: root attribute 'simulation_parameters' is missing.")
        d = json.loads(f.attrs["simulation_parameters"])
    for k in ("scan_shape_px", "core_offset_A", "haadf_shape_px", "haadf_drift_A_per_frame"):
        d[k] = tuple(d[k])
    d["dislocations"] = tuple(tuple(x) for x in d["dislocations"])
    return SimulationParameters(**d)


# -- everything at once ----------------------------------------------------------------------------
def write_simulation(result, datacube_path, scan_pair_path, vacuum_probe_path, truth_path,
                     provenance: Provenance | None = None) -> None:
    """Write the four files of one simulated sample (canonical datacube, scan pair, vacuum probe,
    truth), each atomically with the same provenance."""
    source = f"simulation {result.params.name}"
    write_datacube(datacube_path, result.datacube, result.calibration, provenance, source=source)
    write_scan_pair(scan_pair_path, result.scan_pair, provenance)
    write_vacuum_probe(vacuum_probe_path, result.vacuum_probe, result.calibration,
                       result.params.vacuum_probe_electrons, provenance)
    write_truth(truth_path, result.truth, result.params, provenance)
