"""Writers and readers of the lattice-analysis outputs: ``strain.h5``, ``core.h5``,
``dislocations.h5``, ``surface.h5`` and the surface mesh ``.vtp`` (layouts in
``workflow/schemas/analysis.md``).

All writes are atomic (temporary name, renamed when complete) and carry the provenance attributes
(:class:`~msptycho.io.provenance.Provenance`). Readers check the ``layout`` attribute and raise
:class:`~msptycho.io.datacube.InputError` naming the file and what was expected.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np

from .datacube import InputError
from .provenance import Provenance, atomic_h5, atomic_path, open_layout

STRAIN_LAYOUT = "msptycho.strain/1"
CORE_LAYOUT = "msptycho.core/1"
DISLOCATIONS_LAYOUT = "msptycho.dislocations/1"
SURFACE_LAYOUT = "msptycho.surface/1"

_MAP_KW = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
STRAIN_MAPS = ("exx", "eyy", "exy", "dilation", "rotation_deg", "amplitude")
_UNITS = {"exx": "fraction", "eyy": "fraction", "exy": "fraction", "dilation": "fraction",
          "rotation_deg": "degree (counter-clockwise from +x towards +y positive)",
          "amplitude": "fraction of the lattice level", "mask": "bool", "order": "dimensionless",
          "core_mask": "bool", "particle_mask": "bool"}


def _map(f, name, data, chunk_slices=True):
    data = np.asarray(data)
    kw = dict(_MAP_KW)
    if data.ndim >= 3 and chunk_slices:
        kw["chunks"] = (1,) + data.shape[1:]
    ds = f.create_dataset(name, data=data, **kw)
    ds.attrs["axes"] = "z,x,y" if data.ndim == 3 else "z,reflection,x,y"
    if name.split("/")[-1] in _UNITS:
        ds.attrs["units"] = _UNITS[name.split("/")[-1]]
    return ds


def _grid_attrs(f, sampling_A, origin_A):
    f.attrs["sampling_A"] = np.asarray(sampling_A, dtype=np.float64)
    f.attrs["origin_A"] = np.asarray(origin_A, dtype=np.float64)


def _open(path, layout):
    return open_layout(path, layout, f"HDF5 file with layout {layout}")


def _need(f, path, name):
    if name not in f:
        raise InputError(f"{path}: dataset '/{name}' is missing.")
    return f[name][()]


def _s(v):
    return v.decode() if isinstance(v, bytes) else str(v)


# ------------------------------------------------------------------ strain
def write_strain(path, result, provenance: Provenance | None = None) -> None:
    """Write a :class:`~msptycho.lattice.gpa.StrainResult` to ``strain.h5``."""
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = STRAIN_LAYOUT
        _grid_attrs(f, result.sampling_A, result.origin_A)
        f.attrs["g_vectors_inv_A"] = np.asarray(result.g_vectors_inv_A, dtype=np.float64)
        f.attrs["reference_g_inv_A"] = np.asarray(result.reference_g_inv_A, dtype=np.float64)
        f.attrs["hk"] = np.asarray(result.hk if result.hk is not None else np.full((2, 2), np.nan), dtype=np.float64)
        f.attrs["reference"] = result.reference
        f.attrs["mask_sigma_inv_A"] = float(result.mask_sigma_inv_A)
        f.attrs["resolution_A"] = float(result.resolution_A)
        f.attrs["amplitude_threshold"] = float(result.amplitude_threshold)
        f.attrs["extra_json"] = json.dumps(result.extra, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        for name in STRAIN_MAPS:
            _map(f, name, np.asarray(getattr(result, name), dtype=np.float32))
        _map(f, "mask", np.asarray(result.mask, dtype=bool))


def read_strain(path):
    """Read ``strain.h5`` into a :class:`~msptycho.lattice.gpa.StrainResult`."""
    from ..lattice.gpa import StrainResult
    with _open(path, STRAIN_LAYOUT) as f:
        maps = {n: _need(f, path, n) for n in STRAIN_MAPS + ("mask",)}
        hk = f.attrs["hk"]
        return StrainResult(**maps, g_vectors_inv_A=f.attrs["g_vectors_inv_A"],
                            reference_g_inv_A=f.attrs["reference_g_inv_A"],
                            hk=None if np.all(np.isnan(hk)) else hk, reference=_s(f.attrs["reference"]),
                            mask_sigma_inv_A=float(f.attrs["mask_sigma_inv_A"]),
                            resolution_A=float(f.attrs["resolution_A"]),
                            amplitude_threshold=float(f.attrs["amplitude_threshold"]),
                            sampling_A=tuple(float(x) for x in f.attrs["sampling_A"]),
                            origin_A=tuple(float(x) for x in f.attrs["origin_A"]),
                            extra=json.loads(_s(f.attrs["extra_json"])))


# ------------------------------------------------------------------ core
def write_core(path, result, provenance: Provenance | None = None, slice_thickness_A: float | None = None) -> None:
    """Write a :class:`~msptycho.lattice.order.CoreResult` to ``core.h5``; with
    ``slice_thickness_A`` the centroid depth ``centroid_z_A = (centroid_slice + 1/2) * thickness``
    is added."""
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = CORE_LAYOUT
        _grid_attrs(f, result.sampling_A, result.origin_A)
        for k in ("threshold", "centroid_slice", "mask_sigma_inv_A", "resolution_A"):
            f.attrs[k] = float(getattr(result, k))
        f.attrs["threshold_method"] = result.threshold_method
        f.attrs["centroid_A"] = np.asarray(result.centroid_A, dtype=np.float64)
        f.attrs["n_voxels"] = int(result.n_voxels)
        f.attrs["g200_inv_A"] = np.asarray(result.g200_inv_A, dtype=np.float64)
        f.attrs["g220_inv_A"] = np.asarray(result.g220_inv_A, dtype=np.float64)
        f.attrs["centroid_z_A"] = (float("nan") if slice_thickness_A is None
                                   else (result.centroid_slice + 0.5) * float(slice_thickness_A))
        f.create_dataset("baseline", data=np.asarray(result.baseline, dtype=np.float64))
        _map(f, "order", np.asarray(result.order, dtype=np.float32))
        _map(f, "core_mask", np.asarray(result.core_mask, dtype=bool))
        _map(f, "particle_mask", np.asarray(result.particle_mask, dtype=bool))


def read_core(path):
    """Read ``core.h5`` into a :class:`~msptycho.lattice.order.CoreResult`."""
    from ..lattice.order import CoreResult
    with _open(path, CORE_LAYOUT) as f:
        a = f.attrs
        return CoreResult(order=_need(f, path, "order"), particle_mask=_need(f, path, "particle_mask"),
                          core_mask=_need(f, path, "core_mask"), threshold=float(a["threshold"]),
                          threshold_method=_s(a["threshold_method"]), baseline=_need(f, path, "baseline"),
                          centroid_A=tuple(float(x) for x in a["centroid_A"]),
                          centroid_slice=float(a["centroid_slice"]), n_voxels=int(a["n_voxels"]),
                          g200_inv_A=a["g200_inv_A"], g220_inv_A=a["g220_inv_A"],
                          mask_sigma_inv_A=float(a["mask_sigma_inv_A"]), resolution_A=float(a["resolution_A"]),
                          sampling_A=tuple(float(x) for x in a["sampling_A"]),
                          origin_A=tuple(float(x) for x in a["origin_A"]))


# ------------------------------------------------------------------ dislocations
def write_dislocations(path, result, provenance: Provenance | None = None, store_maps: bool = True) -> None:
    """Write a :class:`~msptycho.lattice.dislocations.DislocationResult` to ``dislocations.h5``
    (the amplitude/phase maps only when ``store_maps`` and the result kept them)."""
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = DISLOCATIONS_LAYOUT
        _grid_attrs(f, result.sampling_A, result.origin_A)
        f.attrs["g_vectors_inv_A"] = np.asarray(result.g_vectors_inv_A, dtype=np.float64)
        f.attrs["parameters_json"] = json.dumps(result.parameters)
        f.attrs["burgers_convention"] = ("g_i . b = -winding_i; winding counter-clockwise in (x, y); "
                                         "oint du = b on a counter-clockwise circuit")
        for grp, table in (("points", result.points), ("lines", result.lines)):
            g = f.create_group(grp)
            for k, v in table.items():
                g.create_dataset(k, data=np.asarray(v))
        _map(f, "significant", np.asarray(result.significant, dtype=bool))
        if store_maps and result.amplitude is not None:
            _map(f, "amplitude", np.asarray(result.amplitude, dtype=np.float32)).attrs["units"] = "V*A"
            if result.phase is not None:
                _map(f, "phase", np.asarray(result.phase, dtype=np.float32)).attrs["units"] = "rad"


def read_dislocations(path):
    """Read ``dislocations.h5`` into a :class:`~msptycho.lattice.dislocations.DislocationResult`."""
    from ..lattice.dislocations import LINE_FIELDS, POINT_FIELDS, DislocationResult
    with _open(path, DISLOCATIONS_LAYOUT) as f:
        tables = {}
        for grp, fields in (("points", POINT_FIELDS), ("lines", LINE_FIELDS)):
            if grp not in f:
                raise InputError(f"{path}: group '/{grp}' is missing.")
            tables[grp] = {k: _need(f, path, f"{grp}/{k}") for k in fields}
        return DislocationResult(points=tables["points"], lines=tables["lines"],
                                 g_vectors_inv_A=f.attrs["g_vectors_inv_A"],
                                 amplitude=f["amplitude"][()] if "amplitude" in f else None,
                                 phase=f["phase"][()] if "phase" in f else None,
                                 significant=_need(f, path, "significant"),
                                 sampling_A=tuple(float(x) for x in f.attrs["sampling_A"]),
                                 origin_A=tuple(float(x) for x in f.attrs["origin_A"]),
                                 parameters=json.loads(_s(f.attrs["parameters_json"])))


# ------------------------------------------------------------------ surface
def write_surface(path, result, provenance: Provenance | None = None, vtp_path=None) -> None:
    """Write a :class:`~msptycho.lattice.surface.SurfaceResult` to ``surface.h5`` and, with
    ``vtp_path``, its mesh as VTK XML PolyData (:func:`write_vtp`)."""
    with atomic_h5(path, provenance) as f:
        f.attrs["layout"] = SURFACE_LAYOUT
        _grid_attrs(f, result.sampling_A, result.origin_A)
        f.attrs["threshold"] = float(result.threshold)
        f.attrs["threshold_method"] = result.threshold_method
        f.attrs["slice_range"] = np.asarray(result.slice_range, dtype=np.int64)
        f.attrs["slice_thickness_A"] = float(result.slice_thickness_A)
        f.attrs["g_vectors_inv_A"] = np.asarray(result.g_vectors_inv_A, dtype=np.float64)
        f.attrs["parameters_json"] = json.dumps(result.parameters)
        _map(f, "amplitude", np.asarray(result.amplitude, dtype=np.float32)).attrs["units"] = "V*A"
        _map(f, "mask", np.asarray(result.mask, dtype=bool))
        m = f.create_group("mesh")
        m.attrs["coordinates"] = "x_A,y_A,z_A; z = (slice + 1/2) * slice_thickness_A"
        m.create_dataset("vertices_A", data=np.asarray(result.vertices_A, dtype=np.float32), **_MAP_KW)
        m.create_dataset("faces", data=np.asarray(result.faces, dtype=np.int32), **_MAP_KW)
        m.create_dataset("normals", data=np.asarray(result.normals, dtype=np.float32), **_MAP_KW)
    if vtp_path is not None:
        write_vtp(vtp_path, result.vertices_A, result.faces, result.normals)


def read_surface(path):
    """Read ``surface.h5`` into a :class:`~msptycho.lattice.surface.SurfaceResult`."""
    from ..lattice.surface import SurfaceResult
    with _open(path, SURFACE_LAYOUT) as f:
        a = f.attrs
        return SurfaceResult(amplitude=_need(f, path, "amplitude"), mask=_need(f, path, "mask"),
                             threshold=float(a["threshold"]), threshold_method=_s(a["threshold_method"]),
                             slice_range=tuple(int(x) for x in a["slice_range"]),
                             vertices_A=_need(f, path, "mesh/vertices_A"), faces=_need(f, path, "mesh/faces"),
                             normals=_need(f, path, "mesh/normals"), g_vectors_inv_A=a["g_vectors_inv_A"],
                             sampling_A=tuple(float(x) for x in a["sampling_A"]),
                             origin_A=tuple(float(x) for x in a["origin_A"]),
                             slice_thickness_A=float(a["slice_thickness_A"]),
                             parameters=json.loads(_s(a["parameters_json"])))


# ------------------------------------------------------------------ VTK XML PolyData
def _ascii(a, fmt):
    return "\n".join(" ".join(fmt % x for x in row) for row in np.atleast_2d(a))


def write_vtp(path, vertices_A, faces, normals=None) -> None:
    """Write a triangle mesh as an ASCII VTK XML PolyData file (``.vtp``, readable by ParaView and
    pyvista), atomically. ``vertices_A`` ``(n, 3)`` (x, y, z in A), ``faces`` ``(m, 3)`` indices,
    ``normals`` ``(n, 3)`` optional point normals."""
    v = np.asarray(vertices_A, dtype=np.float32).reshape(-1, 3)
    tri = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if tri.size and (tri.min() < 0 or tri.max() >= len(v)):
        raise InputError(f"{path}: mesh faces index vertices outside 0..{len(v) - 1}.")
    parts = ['<?xml version="1.0"?>',
             '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian">',
             "<PolyData>",
             f'<Piece NumberOfPoints="{len(v)}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" '
             f'NumberOfPolys="{len(tri)}">']
    if normals is not None:
        n = np.asarray(normals, dtype=np.float32).reshape(-1, 3)
        parts += ['<PointData Normals="Normals">',
                  '<DataArray type="Float32" Name="Normals" NumberOfComponents="3" format="ascii">',
                  _ascii(n, "%.5g") if len(n) else "", "</DataArray>", "</PointData>"]
    parts += ["<Points>", '<DataArray type="Float32" Name="Points" NumberOfComponents="3" format="ascii">',
              _ascii(v, "%.6g") if len(v) else "", "</DataArray>", "</Points>",
              "<Polys>", '<DataArray type="Int64" Name="connectivity" format="ascii">',
              _ascii(tri, "%d") if len(tri) else "", "</DataArray>",
              '<DataArray type="Int64" Name="offsets" format="ascii">',
              " ".join(str(3 * (i + 1)) for i in range(len(tri))), "</DataArray>", "</Polys>",
              "</Piece>", "</PolyData>", "</VTKFile>", ""]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(parts))


def read_vtp(path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read a triangle mesh written by :func:`write_vtp`: ``(vertices (n, 3), faces (m, 3), normals or None)``."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found; expected a VTK XML PolyData mesh.")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InputError(f"{path}: not a VTK XML file ({e}).") from None
    piece = root.find("PolyData/Piece")
    if root.get("type") != "PolyData" or piece is None:
        raise InputError(f"{path}: expected a VTKFile of type PolyData with one Piece.")

    def arr(elem, dtype):
        return np.array((elem.text or "").split(), dtype=dtype)

    v = arr(piece.find("Points/DataArray"), np.float32).reshape(-1, 3)
    conn = arr(piece.find("Polys/DataArray[@Name='connectivity']"), np.int64)
    off = arr(piece.find("Polys/DataArray[@Name='offsets']"), np.int64)
    if len(off) and not np.all(np.diff(np.concatenate([[0], off])) == 3):
        raise InputError(f"{path}: only triangle meshes are supported.")
    ne = piece.find("PointData/DataArray[@Name='Normals']")
    return v, conn.reshape(-1, 3), (arr(ne, np.float32).reshape(-1, 3) if ne is not None else None)
