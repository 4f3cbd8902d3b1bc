"""Readers that turn 4D-STEM files of other programs into the canonical datacube.

One entry point, :func:`ingest_to_canonical`, for the formats

``"hdf5"``
    Any HDF5 file holding a 4-D ``(Rx, Ry, Qx, Qy)`` dataset of counts; the user names the dataset
    path (or the file holds exactly one 4-D dataset) and gives every calibration in ``calibration``.
``"emd"``
    py4DSTEM EMD 1.0 files as written by ``py4DSTEM.save`` of a ``DataCube`` (emdfile layout: a
    root group ``<name>_root`` with ``emd_group_type = "root"``, the array group with
    ``emd_group_type = "array"`` holding ``data`` and ``dim0..dim3``, and the py4DSTEM
    calibration as scalar datasets in ``<root>/metadatabundle/calibration``). Read with h5py alone.
    From the file: ``R_pixel_size``/``R_pixel_units`` (scan step), ``Q_pixel_size``/
    ``Q_pixel_units`` (detector sampling; ``A^-1`` is converted to mrad with the beam energy),
    ``QR_rotation_degrees`` (scan rotation), ``convergence_semiangle_mrad`` and
    ``qx0_mean``/``qy0_mean`` (detector centre). py4DSTEM stores no beam energy: it, and anything
    the file lacks, must come from ``calibration``. Values in ``calibration`` override the file's.
``"4dcamera"``
    Electron-counted sparse HDF5 of the 4D Camera as written by stempy
    (``stempy.io.SparseArray.write_to_hdf5``, file attribute ``version`` 3, and the older
    ``save_electron_counts`` layout, versions 1-2): ``/electron_events/frames`` holds, per frame,
    a variable-length array of flat detector-pixel indices (one per electron; attributes ``Nx``,
    ``Ny`` give the frame shape, and index ``p`` is pixel ``(p // Ny, p % Ny)``);
    ``/electron_events/scan_positions`` holds flat scan-position indices with attributes ``Nx``
    (scan columns, the fast axis) and ``Ny`` (scan rows). Version 3 stores ``frames_per_scan``
    consecutive frames per scan position in scan order; versions 1-2 map frame ``i`` to scan
    position ``scan_positions[i]``. Scan rows become ``Rx`` and scan columns ``Ry``. The data are
    densified a block of scan rows at a time, so the dense cube is never in memory at once.
``"npy"``
    A ``.npy`` array (memory-mapped, read a block of rows at a time), or one array of a ``.npz``
    (``dataset`` names the key; loaded whole, as zip members cannot be memory-mapped).
``"canonical"``
    An existing canonical datacube, re-written with a new provenance (and, optionally, new
    calibration values, fly-back drop or binning).

Every format can drop the last scan column (the 4D Camera's fly-back column,
``drop_flyback_column``) and bin the detector by an integer factor (``bin_factor``: sums of
``bin_factor x bin_factor`` pixels; ``mrad_per_pixel`` is multiplied by ``bin_factor`` and the
detector centre mapped to ``(c + 0.5) / bin_factor - 0.5``).

Bad input raises :class:`~msptycho.io.InputError` with one sentence naming the file, the field and
what was expected, and leaves no output file.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from ..physics import wavelength_A
from .datacube import DATASET, Calibration, DatacubeWriter, InputError, open_datacube
from .provenance import Provenance

FORMATS = ("hdf5", "emd", "4dcamera", "npy", "canonical")

#: target size of one block of raw rows read at a time, bytes (as float32)
BLOCK_BYTES = 64 * 1024**2

REQUIRED_CALIBRATION = ("energy_eV", "semiangle_mrad", "scan_step_A", "mrad_per_pixel")

# EMD (py4DSTEM) calibration keys that could hold the beam energy in eV (py4DSTEM itself stores
# none; a user may have added one).
_EMD_ENERGY_KEYS = ("energy_eV", "beam_energy_eV")


# ---------------------------------------------------------------------------------------------
# Sources: one class per format, each exposing the raw (Rx, Ry, Qx, Qy) cube block by block
# ---------------------------------------------------------------------------------------------

class RawSource:
    """A raw 4D-STEM dataset opened for reading a block of scan rows at a time.

    Attributes
    ----------
    path : str
        The file.
    field : str
        The name of the data inside the file (used in error messages).
    shape : tuple of int
        ``(Rx, Ry, Qx, Qy)`` of the raw data (before fly-back drop and binning).
    file_calibration : dict
        Calibration fields found in the file (names of :class:`Calibration`).
    """

    path: str
    field: str
    shape: tuple[int, int, int, int]
    file_calibration: dict

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        """Raw counts of scan rows ``r0 .. r1`` (exclusive), shape ``(r1 - r0, Ry, Qx, Qy)``."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open_h5(path: str, what: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: the file cannot be opened as HDF5 ({_short(e)}); expected a "
                         f"complete, uncorrupted {what} file.") from None


def _short(e: BaseException) -> str:
    s = str(e).strip().rstrip(".")
    return s.split("\n")[0][:160]


def _check_numeric(dtype, path: str, field: str) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)) \
            or np.issubdtype(dtype, np.bool_):
        raise InputError(f"{path}: field '{field}' has data type {dtype}; expected real-valued "
                         f"integer or floating-point counts.")


def _check_rank(shape, path: str, field: str) -> None:
    if len(shape) != 4:
        raise InputError(f"{path}: field '{field}' has {len(shape)} dimensions {tuple(shape)}; "
                         f"expected 4 (Rx, Ry, Qx, Qy).")
    if min(shape) < 1:
        raise InputError(f"{path}: field '{field}' has shape {tuple(shape)}, an empty scan; "
                         f"expected at least one scan position and detector pixel on every axis.")


class _ArraySource(RawSource):
    """Rows sliced from an array-like (h5py dataset, numpy memmap or array)."""

    def __init__(self, path, field, array, file_calibration=None, closer=None):
        self.path, self.field, self._a = path, field, array
        _check_rank(array.shape, path, field)
        _check_numeric(array.dtype, path, field)
        self.shape = tuple(int(s) for s in array.shape)
        self.file_calibration = dict(file_calibration or {})
        self._closer = closer

    def read_rows(self, r0, r1):
        return np.asarray(self._a[r0:r1])

    def close(self):
        if self._closer is not None:
            self._closer()
            self._closer = None


def _open_hdf5(path, dataset):
    f = _open_h5(path, "HDF5")
    try:
        if dataset is None:
            found = []
            f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset)
                         and o.ndim == 4 else None)
            if len(found) != 1:
                raise InputError(f"{path}: field 'dataset' is not given and the file holds "
                                 f"{len(found)} 4-D datasets {found[:5]}; expected the path of "
                                 f"the (Rx, Ry, Qx, Qy) dataset.")
            dataset = found[0]
        obj = f.get(dataset)
        if not isinstance(obj, h5py.Dataset):
            raise InputError(f"{path}: dataset '{dataset}' is missing; expected an HDF5 dataset "
                             f"of shape (Rx, Ry, Qx, Qy) at that path.")
        return _ArraySource(path, dataset, obj, closer=f.close)
    except BaseException:
        f.close()
        raise


def _open_npy(path, dataset):
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if dataset is None:
                    if len(keys) != 1:
                        raise InputError(f"{path}: field 'dataset' (the .npz key) is not given "
                                         f"and the file holds {len(keys)} arrays {keys[:5]}; "
                                         f"expected the key of the (Rx, Ry, Qx, Qy) array.")
                    dataset = keys[0]
                if dataset not in keys:
                    raise InputError(f"{path}: array '{dataset}' is missing; expected one of "
                                     f"the keys {keys[:10]}.")
                arr = z[dataset]
            return _ArraySource(path, dataset, arr)
        arr = np.load(path, mmap_mode="r", allow_pickle=False)   # the map closes with `arr`
        return _ArraySource(path, "array", arr)
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise InputError(f"{path}: the array cannot be read ({_short(e)}); expected a complete "
                         f".npy file or .npz archive.") from None


def _open_canonical(path, dataset):
    ctx = open_datacube(path)
    dset, cal = ctx.__enter__()
    try:
        fc = asdict(cal)
        return _ArraySource(path, DATASET, dset, fc, closer=lambda: ctx.__exit__(None, None, None))
    except BaseException:
        ctx.__exit__(None, None, None)
        raise


# ----------------------------------------------------------------------------- EMD (py4DSTEM)

def _emd_value(ds):
    v = ds[()]
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def _emd_find_datacube(f, path, dataset):
    if dataset is not None:
        g = f.get(dataset)
        if isinstance(g, h5py.Dataset) and dataset.rstrip("/").endswith("/data"):
            g = g.parent
        if not isinstance(g, h5py.Group) or "data" not in g:
            raise InputError(f"{path}: EMD array group '{dataset}' is missing or has no 'data' "
                             f"dataset; expected the path of a py4DSTEM DataCube group.")
        return g
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and _attr(obj, "emd_group_type") == "array" \
                and isinstance(obj.get("data"), h5py.Dataset) and obj["data"].ndim == 4:
            found.append(name)

    f.visititems(visit)
    if len(found) != 1:
        raise InputError(f"{path}: field 'dataset' is not given and the file holds {len(found)} "
                         f"4-D EMD arrays {found[:5]}; expected exactly one, or the path of the "
                         f"DataCube group.")
    return f[found[0]]


def _attr(obj, name, default=None):
    v = obj.attrs.get(name, default)
    return v.decode() if isinstance(v, bytes) else v


def _emd_calibration(f, group, path, energy_eV):
    """Calibration fields of a py4DSTEM DataCube group (see module docstring)."""
    root_name = group.name.strip("/").split("/")[0]
    cal_group = f.get(f"{root_name}/metadatabundle/calibration")
    params = {}
    if isinstance(cal_group, h5py.Group):
        for k, ds in cal_group.items():
            if isinstance(ds, h5py.Dataset):
                try:
                    params[k] = _emd_value(ds)
                except (OSError, TypeError):
                    continue
    else:  # no calibration metadata: fall back on the dim vectors
        for i, (size_key, unit_key) in enumerate((("R_pixel_size", "R_pixel_units"),) * 2
                                                 + (("Q_pixel_size", "Q_pixel_units"),) * 2):
            d = group.get(f"dim{i}")
            if isinstance(d, h5py.Dataset) and d.shape[0] >= 2 and i in (0, 2):
                vec = d[:2]
                params[size_key] = float(vec[1] - vec[0])
                params[unit_key] = _attr(d, "units", "pixels")
    out = {}
    for k in _EMD_ENERGY_KEYS:
        if isinstance(params.get(k), (int, float)) and params[k] > 0:
            out["energy_eV"] = float(params[k])
            break
    energy = out.get("energy_eV", energy_eV)
    r, ru = params.get("R_pixel_size"), params.get("R_pixel_units")
    if isinstance(r, (int, float)) and ru in ("A", "nm"):
        out["scan_step_A"] = float(r) * (10.0 if ru == "nm" else 1.0)
    q, qu = params.get("Q_pixel_size"), params.get("Q_pixel_units")
    if isinstance(q, (int, float)):
        if qu == "mrad":
            out["mrad_per_pixel"] = float(q)
        elif qu == "A^-1":
            if energy is None:
                raise InputError(f"{path}: calibration field 'energy_eV' is missing from the file "
                                 f"and the config; expected it to convert Q_pixel_size (A^-1) "
                                 f"to mrad_per_pixel.")
            out["mrad_per_pixel"] = float(q) * wavelength_A(float(energy)) * 1e3
    rot = params.get("QR_rotation_degrees")
    if isinstance(rot, (int, float)):
        out["scan_rotation_deg"] = float(rot)
    if params.get("QR_flip") is True:
        raise InputError(f"{path}: calibration field 'QR_flip' is True; expected False (the "
                         f"canonical datacube has no axis flip: transpose Qx/Qy before ingest).")
    sa = params.get("convergence_semiangle_mrad")
    if isinstance(sa, (int, float)) and sa > 0:
        out["semiangle_mrad"] = float(sa)
    qx0, qy0 = params.get("qx0_mean"), params.get("qy0_mean")
    if isinstance(qx0, (int, float)) and isinstance(qy0, (int, float)):
        out["detector_center_px"] = (float(qx0), float(qy0))
    return out


def _open_emd(path, dataset, user_cal):
    f = _open_h5(path, "EMD 1.0")
    try:
        if _attr(f, "emd_group_type") != "file" or int(f.attrs.get("version_major", -1)) != 1:
            raise InputError(f"{path}: root attributes 'emd_group_type'/'version_major' are "
                             f"{_attr(f, 'emd_group_type')!r}/{f.attrs.get('version_major')!r}; "
                             f"expected 'file'/1 (an EMD 1.0 file written by py4DSTEM).")
        g = _emd_find_datacube(f, path, dataset)
        fc = _emd_calibration(f, g, path, (user_cal or {}).get("energy_eV"))
        return _ArraySource(path, g["data"].name, g["data"], fc, closer=f.close)
    except BaseException:
        f.close()
        raise


# ------------------------------------------------------------------------ 4D Camera (stempy)

class _SparseSource(RawSource):
    """stempy electron-event HDF5, densified a block of scan rows at a time."""

    def __init__(self, path):
        self.path = path
        self.file_calibration = {}
        self._f = f = _open_h5(path, "4D Camera (stempy) sparse HDF5")
        try:
            self._setup(f)
        except BaseException:
            f.close()
            raise

    def _setup(self, f):
        path = self.path
        frames, sp = f.get("electron_events/frames"), f.get("electron_events/scan_positions")
        for name, obj in (("electron_events/frames", frames),
                          ("electron_events/scan_positions", sp)):
            if not isinstance(obj, h5py.Dataset):
                raise InputError(f"{path}: dataset '/{name}' is missing; expected the stempy "
                                 f"electron-counted layout.")
        self.field = "electron_events/frames"
        base = h5py.check_vlen_dtype(frames.dtype)
        if base is None or not np.issubdtype(base, np.integer) or frames.ndim != 1:
            raise InputError(f"{path}: dataset '/electron_events/frames' has dtype {frames.dtype} "
                             f"and {frames.ndim} dimension(s); expected a 1-D array of "
                             f"variable-length integer pixel indices.")
        dims = {}
        for name, obj in (("frames", frames), ("scan_positions", sp)):
            for a in ("Nx", "Ny"):
                v = obj.attrs.get(a)
                if v is None or np.ndim(v) != 0 or not float(v).is_integer() or int(v) < 0:
                    raise InputError(f"{path}: attribute '{a}' of '/electron_events/{name}' is "
                                     f"{v!r}; expected a non-negative integer "
                                     f"({'frame' if name == 'frames' else 'scan'} shape).")
                dims[name, a] = int(v)
        self.frame_shape = (dims["frames", "Nx"], dims["frames", "Ny"])
        self.scan_rows, self.scan_cols = dims["scan_positions", "Ny"], dims["scan_positions", "Nx"]
        self.shape = (self.scan_rows, self.scan_cols) + self.frame_shape
        _check_rank(self.shape, path, "electron_events")
        n_scan = self.scan_rows * self.scan_cols
        self.version = int(f.attrs.get("version", 1))
        self._frames = frames
        n_frames = frames.shape[0]
        if n_frames == 0:
            raise InputError(f"{path}: dataset '/electron_events/frames' is empty; expected at "
                             f"least one frame per scan position ({n_scan}).")
        try:
            positions = np.asarray(sp[()])
        except OSError as e:
            raise InputError(f"{path}: dataset '/electron_events/scan_positions' cannot be read "
                             f"({_short(e)}); expected a complete, uncorrupted file.") from None
        if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
            raise InputError(f"{path}: dataset '/electron_events/scan_positions' has shape "
                             f"{positions.shape} and dtype {positions.dtype}; expected a 1-D "
                             f"integer array.")
        if positions.size and (positions.min() < 0 or positions.max() >= n_scan):
            raise InputError(f"{path}: dataset '/electron_events/scan_positions' holds values "
                             f"{int(positions.min())}..{int(positions.max())}; expected indices "
                             f"in 0..{n_scan - 1} for a {self.scan_rows} x {self.scan_cols} "
                             f"scan (attributes Ny x Nx).")
        if self.version >= 3:
            if n_frames % n_scan:
                raise InputError(f"{path}: dataset '/electron_events/frames' holds {n_frames} "
                                 f"frames; expected a multiple of the {n_scan} scan positions "
                                 f"(stempy version 3 layout).")
            self._fps = n_frames // n_scan
            self._positions = None
        else:
            if positions.size != n_frames:
                raise InputError(f"{path}: dataset '/electron_events/scan_positions' holds "
                                 f"{positions.size} entries; expected one per frame "
                                 f"({n_frames}, stempy version {self.version} layout).")
            self._positions = positions

    def read_rows(self, r0, r1):
        nx = self.scan_cols
        npix = self.frame_shape[0] * self.frame_shape[1]
        lo, hi = r0 * nx, r1 * nx
        try:
            if self._positions is None:
                fps = self._fps
                events = self._frames[lo * fps:hi * fps]
                local = np.repeat(np.arange(hi - lo), fps)
            else:
                sel = np.nonzero((self._positions >= lo) & (self._positions < hi))[0]
                if sel.size == 0:
                    events = np.empty(0, dtype=object)
                elif sel[-1] - sel[0] + 1 == sel.size:
                    events = self._frames[sel[0]:sel[-1] + 1]
                else:
                    events = self._frames[sel]
                local = self._positions[sel] - lo
        except OSError as e:
            raise InputError(f"{self.path}: dataset '/electron_events/frames' cannot be read at "
                             f"scan rows {r0}..{r1 - 1} ({_short(e)}); expected a complete, "
                             f"uncorrupted file.") from None
        lengths = np.fromiter((len(e) for e in events), dtype=np.int64, count=len(events))
        flat = np.concatenate([np.asarray(e, dtype=np.int64) for e in events]) if lengths.sum() \
            else np.empty(0, dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= npix):
            raise InputError(f"{self.path}: dataset '/electron_events/frames' holds pixel index "
                             f"{int(flat.max() if flat.max() >= npix else flat.min())} at scan "
                             f"rows {r0}..{r1 - 1}; expected indices in 0..{npix - 1} for a "
                             f"{self.frame_shape[0]} x {self.frame_shape[1]} frame (attributes "
                             f"Nx x Ny).")
        # histogram the events into a float32 block, a few scan positions at a time so that the
        # int64 histogram stays small (float32 counts are exact up to 2**24 per pixel)
        out = np.zeros((hi - lo, npix), dtype=np.float32)
        pos_of_event = np.repeat(local.astype(np.int64), lengths)
        group = max(1, (8 * 1024**2) // npix)
        order = np.argsort(pos_of_event, kind="stable") if self._positions is not None else None
        if order is not None:
            pos_of_event, flat = pos_of_event[order], flat[order]
        bounds = np.searchsorted(pos_of_event, np.arange(0, hi - lo + group, group))
        for g, p0 in enumerate(range(0, hi - lo, group)):
            p1 = min(hi - lo, p0 + group)
            a, b = bounds[g], bounds[g + 1]
            idx = (pos_of_event[a:b] - p0) * npix + flat[a:b]
            out[p0:p1] = np.bincount(idx, minlength=(p1 - p0) * npix).reshape(p1 - p0, npix)
        return out.reshape((r1 - r0, nx) + self.frame_shape)

    def close(self):
        self._f.close()


# ---------------------------------------------------------------------------------------------

def open_raw(path, format: str, *, dataset: str | None = None,
             calibration: dict | None = None) -> RawSource:
    """Open a raw 4D-STEM file for block-wise reading (use as a context manager).

    Parameters
    ----------
    path : str or PathLike
        The file.
    format : {"hdf5", "emd", "4dcamera", "npy", "canonical"}
        Its format (see the module docstring).
    dataset : str, optional
        Dataset path (``hdf5``), array group (``emd``) or key (``.npz``).
    calibration : dict, optional
        User calibration; only ``energy_eV`` is used here (EMD files with ``A^-1`` sampling).

    Returns
    -------
    RawSource
    """
    path = os.fspath(path)
    if format not in FORMATS:
        raise InputError(f"{path}: field 'format' is {format!r}; expected one of {list(FORMATS)}.")
    if not Path(path).is_file():
        raise InputError(f"{path}: the file does not exist; expected an existing {format} input "
                         f"file.")
    if format == "hdf5":
        return _open_hdf5(path, dataset)
    if format == "emd":
        return _open_emd(path, dataset, calibration)
    if format == "4dcamera":
        return _SparseSource(path)
    if format == "npy":
        return _open_npy(path, dataset)
    return _open_canonical(path, dataset)


def merge_calibration(file_calibration: dict, user_calibration: dict | None, source: str,
                      format: str) -> Calibration:
    """Calibration from the file's values overridden by the user's (config) values.

    Raises :class:`InputError` naming ``source`` and the first required field that neither gives.
    """
    user = {k: v for k, v in (user_calibration or {}).items() if v is not None}
    merged = {**file_calibration, **user}
    for name in REQUIRED_CALIBRATION:
        if merged.get(name) is None:
            where = "the config's calibration" if format in ("hdf5", "npy") else \
                "the file and from the config's calibration"
            raise InputError(f"{source}: calibration field '{name}' is missing from {where}; "
                             f"expected a positive number.")
    return Calibration.from_mapping(merged, source)


def binned_calibration(cal: Calibration, bin_factor: int) -> Calibration:
    """Calibration of the detector binned by ``bin_factor`` (sampling and centre rescaled)."""
    if bin_factor == 1:
        return cal
    d = asdict(cal)
    d["mrad_per_pixel"] = cal.mrad_per_pixel * bin_factor
    d["detector_center_px"] = tuple((c + 0.5) / bin_factor - 0.5 for c in cal.detector_center_px)
    return Calibration(**d)


def bin_detector(block: np.ndarray, bin_factor: int) -> np.ndarray:
    """Sum ``bin_factor x bin_factor`` detector pixels of a ``(n, Ry, Qx, Qy)`` block."""
    if bin_factor == 1:
        return block
    n, ry, qx, qy = block.shape
    b = bin_factor
    return block.reshape(n, ry, qx // b, b, qy // b, b).sum(axis=(3, 5))


def _check_block(block: np.ndarray, path: str, field: str, r0: int) -> None:
    if np.issubdtype(block.dtype, np.floating):
        bad = ~np.isfinite(block)
        if bad.any():
            i = np.argwhere(bad)[0]
            raise InputError(f"{path}: field '{field}' holds NaN or infinite counts (first at "
                             f"index {(r0 + int(i[0]),) + tuple(int(x) for x in i[1:])}); "
                             f"expected finite counts.")
    if np.issubdtype(block.dtype, np.signedinteger) or np.issubdtype(block.dtype, np.floating):
        if block.size and block.min() < 0:
            i = np.argwhere(block < 0)[0]
            raise InputError(f"{path}: field '{field}' holds negative counts ({block.min():.4g} "
                             f"at index {(r0 + int(i[0]),) + tuple(int(x) for x in i[1:])}); "
                             f"expected non-negative counts.")


def ingest_to_canonical(path, format: str, out_path, *, calibration: dict | None = None,
                        dataset: str | None = None, drop_flyback_column: bool = False,
                        bin_factor: int = 1, provenance: Provenance | None = None,
                        rows_per_block: int | None = None) -> Calibration:
    """Convert a 4D-STEM file into the canonical datacube, streaming blocks of scan rows.

    Parameters
    ----------
    path : str or PathLike
        Input file.
    format : {"hdf5", "emd", "4dcamera", "npy", "canonical"}
        Input format (see the module docstring).
    out_path : str or PathLike
        Canonical datacube to write (atomically: nothing appears there on error).
    calibration : dict, optional
        Calibration values (names of :class:`~msptycho.io.Calibration`: ``energy_eV``,
        ``semiangle_mrad``, ``scan_step_A``, ``mrad_per_pixel``, ``scan_rotation_deg``,
        ``detector_center_px``, ``dose_e_per_A2``). They override the file's values; required
        ones missing from both are an error. For ``hdf5``, ``npy`` and ``4dcamera`` the file holds
        none. ``detector_center_px`` refers to the raw (unbinned) detector.
    dataset : str, optional
        Dataset path (``hdf5``), DataCube group (``emd``) or key (``.npz``); may be left out when
        the file holds exactly one candidate.
    drop_flyback_column : bool
        Drop the last scan column (``Ry``), the 4D Camera's fly-back column.
    bin_factor : int
        Detector binning factor (1: none); must divide ``Qx`` and ``Qy``.
    provenance : Provenance, optional
        Written as root attributes; default: ``Provenance.collect("ingest", ...)`` of this call.
    rows_per_block : int, optional
        Scan rows read, checked and written at a time (default: about 64 MiB of float32).

    Returns
    -------
    Calibration
        The calibration written (after binning).

    Raises
    ------
    InputError
        Bad input; the message names the file, the field and what was expected.
    """
    path = os.fspath(path)
    if not (isinstance(bin_factor, (int, np.integer)) and bin_factor >= 1):
        raise InputError(f"{path}: field 'bin_factor' is {bin_factor!r}; expected an integer >= 1.")
    bin_factor = int(bin_factor)
    with open_raw(path, format, dataset=dataset, calibration=calibration) as src:
        rx, ry, qx, qy = src.shape
        if qx % bin_factor or qy % bin_factor:
            raise InputError(f"{path}: field 'bin_factor' is {bin_factor}, which does not divide "
                             f"the detector shape ({qx}, {qy}) of '{src.field}'; expected a "
                             f"common divisor.")
        ry_out = ry - 1 if drop_flyback_column else ry
        if ry_out < 1:
            raise InputError(f"{path}: field '{src.field}' has {ry} scan column(s); expected at "
                             f"least 2 to drop the fly-back column.")
        cal = merge_calibration(src.file_calibration, calibration, path, format)
        cal = binned_calibration(cal.with_center((qx, qy)), bin_factor)
        out_shape = (rx, ry_out, qx // bin_factor, qy // bin_factor)
        if provenance is None:
            provenance = Provenance.collect(
                "ingest", params={"format": format, "dataset": dataset,
                                  "drop_flyback_column": bool(drop_flyback_column),
                                  "bin_factor": bin_factor, "calibration": calibration or {}},
                inputs=[path])
        if rows_per_block is None:
            rows_per_block = max(1, BLOCK_BYTES // (ry * qx * qy * 4))
        with DatacubeWriter(out_path, out_shape, cal, provenance, source=path) as w:
            for r0 in range(0, rx, rows_per_block):
                r1 = min(rx, r0 + rows_per_block)
                try:
                    block = src.read_rows(r0, r1)
                except OSError as e:
                    raise InputError(f"{path}: field '{src.field}' cannot be read at scan rows "
                                     f"{r0}..{r1 - 1} ({_short(e)}); expected a complete, "
                                     f"uncorrupted file.") from None
                _check_block(block, path, src.field, r0)
                block = block.astype(np.float32, copy=False)
                if drop_flyback_column:
                    block = block[:, :ry_out]
                w.write_rows(r0, bin_detector(block, bin_factor))
    return cal


__all__ = ["FORMATS", "RawSource", "open_raw", "ingest_to_canonical", "merge_calibration",
           "binned_calibration", "bin_detector"]
