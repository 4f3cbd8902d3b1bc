"""Provenance records and atomic writes.

Every HDF5 file the workflow writes carries a :class:`Provenance` as root attributes named
``provenance_*`` (see ``workflow/schemas/provenance.md``). Writes go to a temporary file in the
same folder and are renamed into place only when complete, so a failed step leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import h5py

PROVENANCE_PREFIX = "provenance_"

#: distributions whose versions go into every provenance record
TRACKED_PACKAGES = ("msptycho", "numpy", "scipy", "h5py", "numba", "matplotlib", "scikit-image",
                    "snakemake", "bayesian-optimization", "pyvista", "cupy-cuda12x")


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk_bytes)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (those not installed are left out)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision(directory: str | os.PathLike = ".") -> str:
    """The git commit of ``directory`` (``+dirty`` appended when tracked files changed),
    or ``"unknown"`` outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=directory, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Provenance:
    """Who made a file, from what, with which settings.

    Attributes
    ----------
    rule : str
        Workflow rule (or library entry point) that wrote the file.
    params : dict
        Parameters it used (JSON-serialisable).
    inputs_sha256 : dict
        ``{input path: sha256}`` of every input file.
    versions : dict
        Package versions.
    git_revision : str
        Project revision, ``"unknown"`` outside git.
    seed : int or None
        Random seed, where the step is random.
    created_utc : str
        ISO-8601 UTC time.
    """

    rule: str
    params: dict = field(default_factory=dict)
    inputs_sha256: dict = field(default_factory=dict)
    versions: dict = field(default_factory=package_versions)
    git_revision: str = "unknown"
    seed: int | None = None
    created_utc: str = field(default_factory=utc_now)

    @classmethod
    def collect(cls, rule: str, params: dict | None = None, inputs=(), seed=None,
                project_dir: str | os.PathLike = ".") -> "Provenance":
        """Build a record: hashes ``inputs`` (paths) and reads the git revision of ``project_dir``."""
        hashes = {str(p): sha256_file(p) for p in inputs if Path(p).is_file()}
        return cls(rule=rule, params=_jsonable(params or {}), inputs_sha256=hashes,
                   git_revision=git_revision(project_dir), seed=seed)

    def to_attrs(self) -> dict[str, str | int]:
        """Flat HDF5 attributes (dicts as JSON strings)."""
        d = asdict(self)
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                v = json.dumps(v, sort_keys=True)
            elif v is None:
                v = "none"
            out[PROVENANCE_PREFIX + k] = v
        return out

    @classmethod
    def from_attrs(cls, attrs) -> "Provenance":
        kw = {}
        for name in ("rule", "params", "inputs_sha256", "versions", "git_revision", "seed", "created_utc"):
            v = attrs[PROVENANCE_PREFIX + name]
            if isinstance(v, bytes):
                v = v.decode()
            if name in ("params", "inputs_sha256", "versions"):
                v = json.loads(v)
            if name == "seed":
                v = None if v == "none" else int(v)
            kw[name] = v
        return cls(**kw)


def _jsonable(obj):
    """Convert numpy scalars/arrays and tuples so that json.dumps accepts them."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def read_provenance(path: str | os.PathLike) -> Provenance:
    """Provenance of an HDF5 file written by this project."""
    with h5py.File(path, "r") as f:
        return Provenance.from_attrs(f.attrs)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success, delete it on error.

    The temporary name keeps the suffix, so writers that infer the format from it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, provenance: Provenance | None = None):
    """Open a new HDF5 file for writing under a temporary name; rename into place when the block
    ends without error. ``provenance`` (if given) is written as root attributes."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            if provenance is not None:
                f.attrs.update(provenance.to_attrs())
            yield f


def manifest(rules_by_output: dict[str, str], project_dir: str | os.PathLike = ".") -> dict:
    """The workflow's audit trail: every output with its sha256, the rule that made it and, for
    HDF5 files, the provenance recorded inside (parameters, input hashes, seed, time).

    Parameters
    ----------
    rules_by_output : dict
        ``{output path: rule name}``.
    project_dir : path
        Checkout whose git revision is recorded.
    """
    entries = []
    for path in sorted(rules_by_output):
        entry = {"path": str(path), "rule": rules_by_output[path], "sha256": sha256_file(path),
                 "bytes": os.path.getsize(path)}
        if str(path).endswith(".h5"):
            with h5py.File(path, "r") as f:
                if PROVENANCE_PREFIX + "rule" in f.attrs:
                    p = Provenance.from_attrs(f.attrs)
                    entry["provenance"] = {"params": p.params, "inputs_sha256": p.inputs_sha256,
                                           "seed": p.seed, "created_utc": p.created_utc,
                                           "git_revision": p.git_revision}
        entries.append(entry)
    return {"created_utc": utc_now(), "git_revision": git_revision(project_dir),
            "versions": package_versions(), "outputs": entries}


def write_manifest(path: str | os.PathLike, rules_by_output: dict[str, str],
                   project_dir: str | os.PathLike = ".") -> dict:
    """Write :func:`manifest` as JSON, atomically; returns it."""
    m = manifest(rules_by_output, project_dir)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    return m


def open_layout(path: str | os.PathLike, layout: str, what: str) -> h5py.File:
    """Open an HDF5 file of this project for reading and check its root ``layout`` attribute.

    Raises :class:`~msptycho.io.InputError` (one sentence naming the file and what was expected)
    if the file cannot be opened or carries another layout.
    """
    from .datacube import InputError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found; expected a {what} file.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: cannot be opened as HDF5 ({e}); expected a {what} file.") from None
    got = f.attrs.get("layout")
    if isinstance(got, bytes):
        got = got.decode()
    if got != layout:
        f.close()
        raise InputError(f"{path}: root attribute 'layout' is {got!r}; expected {layout!r} ({what}).")
    return f
