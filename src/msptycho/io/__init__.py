"""Input and output at the edges of the library: the canonical datacube, provenance, readers."""

from .datacube import (Calibration, DatacubeWriter, InputError, open_datacube, read_calibration,
                       read_datacube, write_datacube)
from .provenance import Provenance, atomic_h5, atomic_path, read_provenance, sha256_file

__all__ = ["Calibration", "DatacubeWriter", "InputError", "open_datacube", "read_calibration",
           "read_datacube", "write_datacube", "Provenance", "atomic_h5", "atomic_path",
           "read_provenance", "sha256_file"]
