"""Lattice analysis of a potential volume ``[z, x, y]``: reciprocal-lattice peaks and fluorite [001]
indexing (:mod:`.peaks`), geometric phase analysis and strain (:mod:`.gpa`), the sublattice order
parameter and the core (:mod:`.order`), dislocations (:mod:`.dislocations`), the particle surface
(:mod:`.surface`), accuracy metrics against ground truth (:mod:`.validate`) and analytic test
volumes (:mod:`.synthetic`).

Each workflow rule has a settings dataclass and a runner (:mod:`.settings`): ``StrainSettings`` /
``run_strain``, ``CoreSettings`` / ``run_core``, ``DislocationSettings`` / ``run_dislocations``,
``SurfaceSettings`` / ``run_surface``; files are written by :mod:`msptycho.io.analysis`.

Units: lengths and positions in A, spatial frequencies in 1/A, strain as a fraction, rotation in
degrees (counter-clockwise, from +x towards +y, positive).
"""

from .dislocations import DislocationResult, burgers_vectors, find_dislocations, link_lines, plaquette_winding
from .gpa import StrainResult, gpa_strain, index_g, strain_from_F, strain_from_volume
from .order import CoreResult, core_from_volume, order_parameter
from .peaks import (A_CAF2_A, HK_200, HK_220, FluoriteLattice, check_peaks_present, find_fluorite_lattice,
                    fit_square_lattice, ideal_g, mean_spectrum)
from .settings import (CoreSettings, DislocationSettings, StrainSettings, SurfaceSettings, run_core,
                       run_dislocations, run_strain, run_surface, settings_from_mapping)
from .surface import SurfaceResult, lattice_amplitude, surface_from_volume
from .validate import (iou, match_points, validate_against_truth, validate_core, validate_dislocations, validate_strain,
                       validate_surface)

__all__ = ["StrainSettings", "CoreSettings", "DislocationSettings", "SurfaceSettings", "run_strain", "run_core",
           "run_dislocations", "run_surface", "settings_from_mapping", "A_CAF2_A", "HK_200", "HK_220", "FluoriteLattice", "check_peaks_present", "find_fluorite_lattice",
           "fit_square_lattice", "ideal_g", "mean_spectrum", "StrainResult", "gpa_strain", "index_g",
           "strain_from_F", "strain_from_volume", "CoreResult", "core_from_volume", "order_parameter",
           "DislocationResult", "burgers_vectors", "find_dislocations", "link_lines", "plaquette_winding",
           "SurfaceResult", "lattice_amplitude", "surface_from_volume", "iou", "match_points", "validate_core",
           "validate_dislocations", "validate_strain", "validate_surface", "validate_against_truth"]
