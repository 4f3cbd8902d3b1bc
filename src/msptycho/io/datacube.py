"""The canonical 4D-STEM datacube (HDF5), documented in ``workflow/schemas/datacube.md``.

Layout: dataset ``/datacube`` of shape ``(Rx, Ry, Qx, Qy)``, float32, chunked one scan row (or
part of one) per chunk, with the calibration of :class:`Calibration` as attributes of the dataset
and the writer's :class:`~msptycho.io.provenance.Provenance` as root attributes.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from .provenance import Provenance, atomic_h5

DATASET = "datacube"
LAYOUT_VERSION = "msptycho.datacube/1"
#: largest chunk written, bytes (a scan row is split along Ry beyond this)
MAX_CHUNK_BYTES = 32 * 1024**2


class InputError(ValueError):
    """Bad input: the message is one sentence naming the file, the field and what was expected."""


@dataclass(frozen=True)
class Calibration:
    """Calibration of a 4D-STEM datacube.

    Attributes
    ----------
    energy_eV : float
        Beam energy, eV (300e3 for 300 kV).
    semiangle_mrad : float
        Probe convergence semi-angle, mrad.
    scan_step_A : float
        Scan step (pixel size of the Rx, Ry grid), Angstrom.
    mrad_per_pixel : float
        Reciprocal sampling of the detector (Qx, Qy), mrad per pixel.
    scan_rotation_deg : float
        Rotation of the scan axes relative to the detector axes, degrees.
    detector_center_px : (float, float)
        Position of the undiffracted beam on the detector (Qx, Qy), in pixel indices (pixel ``i``
        has its centre at ``i``); ``(Qx // 2, Qy // 2)`` for an fftshift-centred pattern.
    dose_e_per_A2 : float
        Electron dose, e/A^2 (NaN if unknown).
    """

    energy_eV: float
    semiangle_mrad: float
    scan_step_A: float
    mrad_per_pixel: float
    scan_rotation_deg: float = 0.0
    detector_center_px: tuple[float, float] = (math.nan, math.nan)
    dose_e_per_A2: float = math.nan

    def validate(self, source: str) -> "Calibration":
        """Raise :class:`InputError` naming ``source`` and the field if a value is unphysical."""
        for name in ("energy_eV", "semiangle_mrad", "scan_step_A", "mrad_per_pixel"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v) and v > 0):
                raise InputError(f"{source}: calibration field '{name}' must be a positive finite number, got {v!r}.")
        if not np.isfinite(self.scan_rotation_deg):
            raise InputError(f"{source}: calibration field 'scan_rotation_deg' must be finite, got {self.scan_rotation_deg!r}.")
        c = tuple(self.detector_center_px)
        if len(c) != 2:
            raise InputError(f"{source}: calibration field 'detector_center_px' must be two numbers (Qx, Qy), got {c!r}.")
        if not (np.isnan(self.dose_e_per_A2) or self.dose_e_per_A2 > 0):
            raise InputError(f"{source}: calibration field 'dose_e_per_A2' must be positive or unknown, got {self.dose_e_per_A2!r}.")
        return self

    def with_center(self, shape_q: tuple[int, int]) -> "Calibration":
        """Fill an unknown detector centre with ``(Qx // 2, Qy // 2)``, where ``numpy.fft.fftshift``
        puts zero frequency."""
        if np.all(np.isfinite(self.detector_center_px)):
            return self
        d = asdict(self)
        d["detector_center_px"] = (float(shape_q[0] // 2), float(shape_q[1] // 2))
        return Calibration(**d)

    @classmethod
    def from_mapping(cls, mapping: dict, source: str) -> "Calibration":
        """Build from a config mapping; unknown keys and missing required keys are errors."""
        names = {f.name for f in fields(cls)}
        unknown = set(mapping) - names
        if unknown:
            raise InputError(f"{source}: unknown calibration field(s) {sorted(unknown)}; expected some of {sorted(names)}.")
        for req in ("energy_eV", "semiangle_mrad", "scan_step_A", "mrad_per_pixel"):
            if mapping.get(req) is None:
                raise InputError(f"{source}: calibration field '{req}' is missing; it is required for this format.")
        kw = {k: v for k, v in mapping.items() if v is not None}
        if "detector_center_px" in kw:
            kw["detector_center_px"] = tuple(float(x) for x in kw["detector_center_px"])
        for k in ("energy_eV", "semiangle_mrad", "scan_step_A", "mrad_per_pixel", "scan_rotation_deg", "dose_e_per_A2"):
            if k in kw:
                try:
                    kw[k] = float(kw[k])
                except (TypeError, ValueError):
                    raise InputError(f"{source}: calibration field '{k}' must be a number, got {kw[k]!r}.") from None
        return cls(**kw).validate(source)

    def to_attrs(self) -> dict:
        d = asdict(self)
        d["detector_center_px"] = np.asarray(d["detector_center_px"], dtype=np.float64)
        return d

    @classmethod
    def from_attrs(cls, attrs, source: str = "datacube") -> "Calibration":
        kw = {}
        for f in fields(cls):
            if f.name not in attrs:
                if f.name in ("energy_eV", "semiangle_mrad", "scan_step_A", "mrad_per_pixel"):
                    raise InputError(f"{source}: calibration attribute '{f.name}' is missing from /{DATASET}.")
                continue
            v = attrs[f.name]
            kw[f.name] = tuple(float(x) for x in v) if f.name == "detector_center_px" else float(v)
        return cls(**kw).validate(source)


def row_chunks(shape: tuple[int, int, int, int], itemsize: int = 4) -> tuple[int, int, int, int]:
    """Chunk shape: one scan row ``(1, Ry, Qx, Qy)``, split along Ry if over MAX_CHUNK_BYTES."""
    rx, ry, qx, qy = shape
    per_pattern = qx * qy * itemsize
    n = max(1, min(ry, MAX_CHUNK_BYTES // max(per_pattern, 1)))
    return (1, n, qx, qy)


def check_counts(array: np.ndarray, source: str, field: str = DATASET) -> None:
    """Raise :class:`InputError` if ``array`` holds NaN/inf or negative values."""
    if not np.all(np.isfinite(array)):
        raise InputError(f"{source}: field '{field}' contains NaN or infinite values; expected finite counts.")
    if array.size and float(array.min()) < 0:
        raise InputError(f"{source}: field '{field}' contains negative values (min {float(array.min()):.3g}); expected non-negative counts.")


def check_shape(shape, source: str, field: str = DATASET) -> None:
    """Raise :class:`InputError` unless ``shape`` is a non-empty 4-D (Rx, Ry, Qx, Qy) shape."""
    if len(shape) != 4:
        raise InputError(f"{source}: field '{field}' has {len(shape)} dimensions {tuple(shape)}; expected 4 (Rx, Ry, Qx, Qy).")
    if min(shape) < 1:
        raise InputError(f"{source}: field '{field}' has shape {tuple(shape)}, an empty scan; expected at least one position and pixel on every axis.")


class DatacubeWriter:
    """Write a canonical datacube row block by row block, atomically.

    Use as a context manager; the file appears under ``path`` only when the block exits without
    an exception. Each block is checked for NaN and negative counts before it is written.

    Examples
    --------
    >>> with DatacubeWriter(path, shape, calibration, provenance) as w:   # doctest: +SKIP
    ...     for rx0, block in blocks:
    ...         w.write_rows(rx0, block)
    """

    def __init__(self, path, shape, calibration: Calibration, provenance: Provenance | None = None,
                 source: str = "input"):
        check_shape(shape, source)
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.calibration = calibration.with_center(self.shape[2:]).validate(source)
        self.provenance = provenance
        self.source = source
        self._ctx = None
        self._rows_written = np.zeros(self.shape[0], dtype=bool)

    def __enter__(self):
        self._ctx = atomic_h5(self.path, self.provenance)
        f = self._ctx.__enter__()
        f.attrs["layout"] = LAYOUT_VERSION
        self._dset = f.create_dataset(DATASET, shape=self.shape, dtype="float32",
                                      chunks=row_chunks(self.shape))
        self._dset.attrs.update(self.calibration.to_attrs())
        self._dset.attrs["axes"] = "Rx,Ry,Qx,Qy"
        return self

    def write_rows(self, rx0: int, block: np.ndarray) -> None:
        """Write ``block`` of shape ``(n, Ry, Qx, Qy)`` at scan rows ``rx0 .. rx0 + n``."""
        block = np.asarray(block)
        if block.shape[1:] != self.shape[1:]:
            raise InputError(f"{self.source}: a block of shape {block.shape} does not fit the datacube {self.shape}.")
        check_counts(block, self.source)
        self._dset[rx0:rx0 + block.shape[0]] = block.astype(np.float32, copy=False)
        self._rows_written[rx0:rx0 + block.shape[0]] = True

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self._rows_written.all():
            missing = int((~self._rows_written).sum())
            exc = InputError(f"{self.source}: {missing} scan row(s) were never written; expected all {self.shape[0]}.")
            self._ctx.__exit__(type(exc), exc, None)
            raise exc
        return self._ctx.__exit__(exc_type, exc, tb)


def write_datacube(path, array: np.ndarray, calibration: Calibration,
                   provenance: Provenance | None = None, source: str = "input") -> None:
    """Write an in-memory ``(Rx, Ry, Qx, Qy)`` array as a canonical datacube (atomically)."""
    check_shape(np.shape(array), source)
    with DatacubeWriter(path, np.shape(array), calibration, provenance, source) as w:
        step = max(1, MAX_CHUNK_BYTES // int(np.prod(np.shape(array)[1:]) * 4))
        for rx0 in range(0, array.shape[0], step):
            w.write_rows(rx0, array[rx0:rx0 + step])


def read_calibration(path) -> Calibration:
    """Calibration of a canonical datacube file."""
    with open_datacube(path) as (dset, cal):
        return cal


class open_datacube:
    """Open a canonical datacube lazily: ``with open_datacube(p) as (dset, cal): dset[3]``.

    Raises :class:`InputError` (naming the file and field) if the file is not canonical.
    """

    def __init__(self, path):
        self.path = os.fspath(path)

    def __enter__(self):
        try:
            self._f = h5py.File(self.path, "r")
        except (OSError, FileNotFoundError) as e:
            raise InputError(f"{self.path}: cannot be opened as HDF5 ({e}); expected a canonical datacube file.") from None
        if DATASET not in self._f:
            self._f.close()
            raise InputError(f"{self.path}: dataset '/{DATASET}' is missing; expected a canonical datacube written by msptycho ingest.")
        dset = self._f[DATASET]
        check_shape(dset.shape, self.path)
        return dset, Calibration.from_attrs(dset.attrs, self.path)

    def __exit__(self, *exc):
        self._f.close()


def read_datacube(path) -> tuple[np.ndarray, Calibration]:
    """Load a whole canonical datacube into memory (float32) with its calibration."""
    with open_datacube(path) as (dset, cal):
        return dset[...], cal
