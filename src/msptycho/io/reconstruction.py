"""``reconstruction.h5`` and engine checkpoints (layout in ``workflow/schemas/reconstruction.md``)."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from .datacube import InputError
from .provenance import Provenance, atomic_h5

LAYOUT_VERSION = "msptycho.reconstruction/1"
CHECKPOINT_LAYOUT = "msptycho.checkpoint/1"


def write_reconstruction(path, result, provenance: Provenance | None = None) -> None:
    """Write a :class:`~msptycho.ptycho.ReconstructionResult` atomically (with provenance)."""
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = LAYOUT_VERSION
        d = f.create_dataset("potential_VA", data=np.asarray(result.potential_VA, dtype=np.float32),
                             chunks=(1,) + tuple(result.potential_VA.shape[1:]), compression="gzip",
                             compression_opts=1, shuffle=True)
        d.attrs["axes"] = "slice,x,y"
        d.attrs["units"] = "V*A"
        d.attrs["sampling_A"] = float(result.sampling_A)
        d.attrs["slice_thickness_A"] = float(result.slice_thickness_A)
        d.attrs["origin_A"] = np.asarray(result.origin_A, dtype=np.float64)
        p = f.create_dataset("probe", data=np.asarray(result.probe, dtype=np.complex64))
        p.attrs["axes"] = "x,y"
        p.attrs["sampling_A"] = float(result.sampling_A)
        p.attrs["units"] = "sqrt(counts); sum |probe|^2 = mean counts per pattern; centred on (n//2, n//2)"
        f.create_dataset("positions_initial_A", data=np.asarray(result.positions_initial_A, dtype=np.float64))
        f.create_dataset("positions_A", data=np.asarray(result.positions_A, dtype=np.float64))
        f["positions_A"].attrs["scan_shape"] = np.asarray(result.scan_shape, dtype=np.int64)
        g = f.create_group("history")
        for k in ("error", "loss", "step", "seconds"):
            g.create_dataset(k, data=np.asarray(getattr(result, f"{k}_history"), dtype=np.float64))
        f.attrs["parameters"] = result.parameters.to_json()
        f.attrs["energy_eV"] = float(result.energy_eV)
        f.attrs["semiangle_mrad"] = float(result.semiangle_mrad)
        f.attrs["iterations_done"] = int(result.iterations_done)
        f.attrs["aberrations_fit"] = json.dumps(result.aberrations_fit, sort_keys=True)
        f.attrs["fft_library"] = str(result.fft_library)
        f.attrs["engine_GiB"] = float(result.engine_GiB)


def read_reconstruction(path):
    """Read ``reconstruction.h5`` back into a :class:`~msptycho.ptycho.ReconstructionResult`.

    Raises
    ------
    InputError
        If the file is missing, not HDF5 or lacks a field of the layout.
    """
    from ..ptycho.parameters import ReconstructionParameters, ReconstructionResult

    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: cannot be opened as HDF5 ({e}); expected a reconstruction.h5 file.") from None
    with f:
        for name in ("potential_VA", "probe", "positions_initial_A", "positions_A", "history"):
            if name not in f:
                raise InputError(f"{path}: field '/{name}' is missing; expected a reconstruction.h5 written by msptycho.")
        d = f["potential_VA"]
        params = ReconstructionParameters(**json.loads(f.attrs["parameters"]))
        return ReconstructionResult(
            potential_VA=d[...], sampling_A=float(d.attrs["sampling_A"]),
            slice_thickness_A=float(d.attrs["slice_thickness_A"]), origin_A=d.attrs["origin_A"][...],
            probe=f["probe"][...], positions_initial_A=f["positions_initial_A"][...],
            positions_A=f["positions_A"][...],
            error_history=f["history/error"][...], loss_history=f["history/loss"][...],
            step_history=f["history/step"][...], seconds_history=f["history/seconds"][...],
            parameters=params, energy_eV=float(f.attrs["energy_eV"]),
            semiangle_mrad=float(f.attrs["semiangle_mrad"]),
            scan_shape=tuple(int(v) for v in f["positions_A"].attrs["scan_shape"]),
            iterations_done=int(f.attrs["iterations_done"]),
            aberrations_fit=json.loads(f.attrs["aberrations_fit"]),
            fft_library=str(f.attrs.get("fft_library", "")), engine_GiB=float(f.attrs.get("engine_GiB", 0.0)))


def write_checkpoint(path, state: dict, fingerprint: str) -> None:
    """Write the engine state (arrays and scalars of ``MultisliceEngine.state()``) atomically."""
    with atomic_h5(path) as f:
        f.attrs["layout"] = CHECKPOINT_LAYOUT
        f.attrs["fingerprint"] = fingerprint
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                f.create_dataset(k, data=v)
            else:
                f.attrs[k] = v


def read_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`write_checkpoint` (``fingerprint`` included)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("layout") != CHECKPOINT_LAYOUT:
            raise InputError(f"{path}: attribute 'layout' is {f.attrs.get('layout')!r}; expected {CHECKPOINT_LAYOUT!r}.")
        out = {k: f[k][...] for k in f.keys()}
        for k, v in f.attrs.items():
            out[k] = v.decode() if isinstance(v, bytes) else v
    out["iteration"] = int(out["iteration"])
    out["step_scale"] = float(out["step_scale"])
    return out
