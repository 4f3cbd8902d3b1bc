"""Bayesian optimisation of the reconstruction's calibration (probe defocus, scan rotation, step size).

As in the paper's Methods, the starting estimates of the parallax fit (:mod:`msptycho.parallax`)
are refined by Gaussian-process Bayesian optimisation (the maintained ``bayesian-optimization``
package, ``bayes_opt``): each evaluation runs the multislice engine
(:func:`msptycho.ptycho.reconstruct`) for a few iterations on a central square of scan positions,
with the probe built from the trial aberrations and the positions from the trial scan rotation,
and scores the trial by the engine's normalised data error of its last iteration,
``sum (|Psi| - a)^2 / sum a^2``. The best trial (smallest error) is the calibration.

Conventions:

* ``defocus_A`` follows :mod:`msptycho.physics` (``defocus_A = -C10``, positive = over-focus).
* The scan geometry follows :mod:`msptycho.parallax`: scan position ``(i, j)`` sits at
  ``Rot(scan_rotation_deg) @ T @ (i, j) * scan_step_A`` in the detector (object) frame, with ``T``
  swapping the two scan axes when ``transpose`` is true.
* ``step_scale`` multiplies the object step size ``step_size`` of the reconstruction parameters
  (and the probe step, when the probe is updated during the evaluations).
* Optionally two-fold astigmatism is optimised through its Cartesian components
  ``C12a_A = C12 cos(2 phi12)`` and ``C12b_A = C12 sin(2 phi12)``.

The optimiser works on coordinates scaled to ``[-1, 1]`` (each parameter's bounds map onto that
interval), so the Gaussian process's isotropic Matern kernel sees comparable length scales. It
maximises ``-ln(error)``. Evaluation 0 is the starting point; then ``num_initial_points`` random
points; then points suggested by the acquisition function; the last ``num_posterior_points`` go
to the maximum of the Gaussian process's posterior mean. Everything is seeded: the same data,
parameters and settings give the same result.

Reference plane: the calibrated defocus is the one that best explains the data for the engine's
model with the given slices. The engine applies each slab's potential at one plane, the first at
the plane where its probe is defined; a slab's potential acts, to first order, at its mid-plane, so
for a stack that starts at the sample's entrance surface the calibrated defocus refers to the
first slab's mid-plane, ``slice_thickness_A / 2`` below the entrance surface (on simulated data:
``defocus_first_slab_A`` of :func:`msptycho.simulate.truth.defocus_reference_planes`). The parallax
estimate it starts from refers to a deeper, contrast-weighted plane of a thick sample (the same
function's ``defocus_parallax_A``), so the calibration has to move the defocus up by a fraction of
the sample's thickness. With a few iterations per evaluation the engine has not yet placed the
object at its depths, and the objective's minimum lies somewhat below the first-slab plane
(measured on the default synthetic samples: ~286 A against 294 A, 3 or 8 iterations alike).

Scan rotation: a rotation error ``delta`` moves a position at distance ``r`` from the square's
centre by ``r delta``; on the default samples (2 A steps) the objective rises by ~4 % for 1.5 deg
on a 20 x 20 square and by ~10 % for 3 deg on a 12 x 12 one, with its minimum at the true
rotation, so the rotation is refined here (``rotation_range_deg``) rather than kept from the
parallax fit, whose rotation a crystal with a depth-dependent lattice orientation can bias.

The layout of ``calibration.json`` is documented in ``workflow/schemas/calibration.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import physics
from .io.datacube import Calibration, InputError
from .io.provenance import Provenance, atomic_path, utc_now
from .settings import settings_from_mapping

LOG = logging.getLogger("msptycho.calibrate")
#: the engine's own per-iteration lines during the evaluations go here (WARNING and above only)
ENGINE_LOG = logging.getLogger("msptycho.calibrate.engine")
ENGINE_LOG.setLevel(logging.WARNING)

LAYOUT_VERSION = "msptycho.calibration/1"
#: every parameter the optimisation can vary, in the order used everywhere
PARAMETER_NAMES = ("defocus_A", "scan_rotation_deg", "step_scale", "C12a_A", "C12b_A")


@dataclass(frozen=True)
class CalibrationSettings:
    """Settings of :func:`calibrate`.

    Attributes
    ----------
    num_evaluations : int
        Total number of engine runs, the starting point and the random points included.
    num_initial_points : int
        Random points (uniform within the bounds, seeded) evaluated after the starting point and
        before the Gaussian process steers the search.
    iterations_per_evaluation : int
        Engine iterations (passes over the subset) per evaluation, at least 2; the objective is the
        error of the last one (the first iteration's error, of the empty object, does not depend
        on the calibration).
    central_positions : int
        Side of the central square of scan positions used by each evaluation (positions); the scan
        must have at least this many positions along Rx and Ry.
    defocus_range_fraction : float
        Defocus bounds are ``start -+ max(defocus_range_fraction * |start|, defocus_range_min_A)``.
    defocus_range_min_A : float
        Smallest half-width of the defocus bounds, Angstrom (for a starting defocus near 0).
    rotation_range_deg : float
        Scan-rotation bounds are ``start -+ rotation_range_deg``, degrees (0: rotation fixed).
    step_scale_range : (float, float)
        Bounds of the step-size scale (dimensionless; equal values fix it).
    optimize_astigmatism : bool
        Also optimise two-fold astigmatism (components C12a, C12b).
    astigmatism_range_A : float
        Half-width of the bounds of each astigmatism component around the start, Angstrom.
    update_probe : bool
        Let the engine update the probe during the evaluations (default False: the probe stays
        the trial probe, so the objective measures the trial aberrations themselves).
    position_correction : bool
        Let the engine refine positions during the evaluations (default False).
    acquisition : {"ei", "ucb"}
        Acquisition function: expected improvement or upper confidence bound.
    exploration : float
        ``xi`` of the expected improvement, or ``kappa`` of the upper confidence bound
        (dimensionless, in units of the GP's normalised ``-ln(error)``).
    num_posterior_points : int
        The last this many evaluations probe the maximum of the Gaussian process's posterior mean
        of ``-ln(error)`` (pure exploitation: the model's best guess) instead of the acquisition
        function's.
    anisotropic_kernel : bool
        Give the Gaussian process's Matern kernel (nu = 2.5) one length scale per parameter
        (automatic relevance determination) instead of the library's single one: better when
        the parameters matter unequally (the step scale usually dominates the error), at the cost
        of a slower fit of the process (seconds per evaluation, small beside a real engine run).
    acquisition_restarts : int
        L-BFGS-B starts (after 10 000 random samples) when maximising the acquisition function.
    seed : int
        Seed of the random points, the Gaussian process and the acquisition's optimiser.
    """

    num_evaluations: int = 24
    num_initial_points: int = 6
    iterations_per_evaluation: int = 4
    central_positions: int = 16
    defocus_range_fraction: float = 0.4
    defocus_range_min_A: float = 20.0
    rotation_range_deg: float = 3.0
    step_scale_range: tuple[float, float] = (0.5, 2.0)
    optimize_astigmatism: bool = False
    astigmatism_range_A: float = 20.0
    update_probe: bool = False
    position_correction: bool = False
    acquisition: str = "ei"
    exploration: float = 0.01
    num_posterior_points: int = 2
    anisotropic_kernel: bool = True
    acquisition_restarts: int = 3
    seed: int = 0

    def validate(self, source: str = "calibration settings") -> "CalibrationSettings":
        """Raise :class:`~msptycho.io.InputError` naming the first bad field."""
        def bad(name, expected):
            raise InputError(f"{source}: field '{name}' is {getattr(self, name)!r}; expected {expected}.")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
                and math.isfinite(v)

        for name in ("num_evaluations", "num_initial_points", "acquisition_restarts"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "a positive integer")
        if not is_int(self.iterations_per_evaluation) or self.iterations_per_evaluation < 2:
            bad("iterations_per_evaluation", "an integer of at least 2 (the first iteration's error is that of the "
                                             "empty object, the same for every trial)")
        if self.num_evaluations < self.num_initial_points + 2:
            bad("num_evaluations", f"at least num_initial_points + 2 = {self.num_initial_points + 2} "
                                   "(the starting point, the random points and one guided point)")
        if not is_int(self.num_posterior_points) or self.num_posterior_points < 0:
            bad("num_posterior_points", "a non-negative integer")
        if self.num_evaluations < 1 + self.num_initial_points + self.num_posterior_points:
            bad("num_evaluations", f"at least 1 + num_initial_points + num_posterior_points = "
                                   f"{1 + self.num_initial_points + self.num_posterior_points}")
        if not is_int(self.central_positions) or self.central_positions < 3:
            bad("central_positions", "an integer of at least 3 (a 3 x 3 square of scan positions)")
        if not is_num(self.defocus_range_fraction) or self.defocus_range_fraction < 0:
            bad("defocus_range_fraction", "a non-negative number")
        if not is_num(self.defocus_range_min_A) or self.defocus_range_min_A < 0:
            bad("defocus_range_min_A", "a non-negative number of Angstrom")
        if not is_num(self.rotation_range_deg) or not 0 <= self.rotation_range_deg <= 90:
            bad("rotation_range_deg", "a number of degrees in [0, 90]")
        r = self.step_scale_range
        if (not isinstance(r, (tuple, list)) or len(r) != 2 or not all(is_num(v) for v in r)
                or not 0 < r[0] <= r[1]):
            bad("step_scale_range", "two positive numbers (low, high) with low <= high")
        if not isinstance(self.optimize_astigmatism, (bool, np.bool_)):
            bad("optimize_astigmatism", "true or false")
        if not is_num(self.astigmatism_range_A) or self.astigmatism_range_A < 0:
            bad("astigmatism_range_A", "a non-negative number of Angstrom")
        for name in ("update_probe", "position_correction", "anisotropic_kernel"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                bad(name, "true or false")
        if self.acquisition not in ("ucb", "ei"):
            bad("acquisition", "'ei' (expected improvement) or 'ucb' (upper confidence bound)")
        if not is_num(self.exploration) or self.exploration < 0:
            bad("exploration", "a non-negative number")
        if not is_int(self.seed) or self.seed < 0:
            bad("seed", "a non-negative integer")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["step_scale_range"] = [float(v) for v in self.step_scale_range]
        return d

    @classmethod
    def from_mapping(cls, mapping: dict, source: str = "calibration settings") -> "CalibrationSettings":
        """Build from a mapping (e.g. the config's ``calibrate`` section); unknown keys are errors."""
        return settings_from_mapping(cls, mapping, source).validate(source)


@dataclass
class Evaluation:
    """One engine run of the optimisation.

    Attributes
    ----------
    index : int
        0-based evaluation number.
    kind : str
        ``"start"`` (the starting estimates), ``"random"``, ``"guided"`` (acquisition function) or
        ``"posterior"`` (maximum of the Gaussian process's posterior mean).
    parameters : dict
        Values of the optimised parameters (names of :data:`PARAMETER_NAMES`, units in the names).
    objective : float
        Normalised amplitude error of the last iteration (dimensionless; NaN if the run diverged).
    seconds : float
        Wall time of the engine run, seconds.
    """

    index: int
    kind: str
    parameters: dict
    objective: float
    seconds: float


@dataclass
class CalibrationResult:
    """Result of :func:`calibrate`.

    Attributes
    ----------
    best : dict
        Best value of every optimised parameter (:data:`PARAMETER_NAMES`), Angstrom / degrees /
        dimensionless.
    best_index : int
        Index of the best evaluation.
    best_objective : float
        Its objective.
    start : dict
        Starting value of every optimised parameter.
    bounds : dict
        ``{name: (low, high)}`` of every optimised parameter.
    aberrations : physics.Aberrations
        The calibrated probe aberrations: the starting ones with the best defocus (and astigmatism,
        if optimised).
    scan_rotation_deg : float
        Calibrated scan rotation, degrees.
    transpose : bool
        Scan transpose used (passed through from the parallax fit).
    step_size : float
        Calibrated object step size (``recon_params.step_size * step_scale``).
    evaluations : list of Evaluation
    settings : CalibrationSettings
    subset : dict
        ``rows`` and ``cols`` (``[first, stop)``) of the central square, ``scan_shape`` of the data.
    evaluation_parameters : dict
        The :class:`~msptycho.ptycho.ReconstructionParameters` of every evaluation (step size at
        scale 1).
    total_seconds : float
        Wall time of the whole optimisation, seconds.
    provenance : dict
        Filled by :func:`read_calibration_json` (empty otherwise).
    """

    best: dict
    best_index: int
    best_objective: float
    start: dict
    bounds: dict
    aberrations: physics.Aberrations
    scan_rotation_deg: float
    transpose: bool
    step_size: float
    evaluations: list
    settings: CalibrationSettings
    subset: dict
    evaluation_parameters: dict
    total_seconds: float
    provenance: dict = field(default_factory=dict)

    @property
    def defocus_A(self) -> float:
        """Calibrated defocus, Angstrom (``-C10``)."""
        return float(self.aberrations.defocus_A)

    @property
    def at_bounds(self) -> list:
        """Parameters whose best value lies within 2 % of the range from a bound (the optimum may
        lie outside: widen that range)."""
        out = []
        for k, (lo, hi) in self.bounds.items():
            tol = 0.02 * (hi - lo)
            if k in self.best and (self.best[k] <= lo + tol or self.best[k] >= hi - tol):
                out.append(k)
        return out

    @property
    def start_objective(self) -> float:
        """Objective of the starting point (evaluation 0)."""
        return float(self.evaluations[0].objective)

    def to_dict(self) -> dict:
        """The ``calibration.json`` content (without provenance); see ``workflow/schemas/calibration.md``."""
        return {
            "layout": LAYOUT_VERSION,
            "defocus_A": _f(self.aberrations.defocus_A),
            "scan_rotation_deg": _f(self.scan_rotation_deg),
            "transpose": bool(self.transpose),
            "step_size": _f(self.step_size),
            "aberrations": self.aberrations.as_dict(),
            "best": {k: _f(v) for k, v in self.best.items()},
            "best_index": int(self.best_index),
            "best_objective": _f(self.best_objective),
            "start": {k: _f(v) for k, v in self.start.items()},
            "start_objective": _f(self.start_objective),
            "bounds": {k: [_f(v[0]), _f(v[1])] for k, v in self.bounds.items()},
            "at_bounds": self.at_bounds,
            "objective": ("normalised amplitude error sum(|Psi|-a)^2/sum(a^2) of the last of "
                          f"{self.settings.iterations_per_evaluation} engine iterations on the central "
                          f"{self.settings.central_positions}x{self.settings.central_positions} scan positions"),
            "subset": self.subset,
            "settings": self.settings.to_dict(),
            "evaluation_parameters": self.evaluation_parameters,
            "total_seconds": _f(self.total_seconds),
            "evaluations": [{"index": e.index, "kind": e.kind,
                             "parameters": {k: _f(v) for k, v in e.parameters.items()},
                             "objective": _f(e.objective), "seconds": _f(e.seconds)}
                            for e in self.evaluations],
        }


def _f(v):
    """float for JSON; non-finite values become None (JSON has no NaN)."""
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------
# geometry helpers


def scan_positions_A(shape_r: tuple[int, int], scan_step_A: float, scan_rotation_deg: float,
                     transpose: bool = False) -> np.ndarray:
    """Probe positions ``(Rx * Ry, 2)`` in the detector frame, Angstrom, row-major (Rx outer).

    Position ``(i, j)`` is ``Rot(scan_rotation_deg) @ T @ (i, j) * scan_step_A`` with ``T`` the
    axis swap when ``transpose`` (the geometry of :mod:`msptycho.parallax`; without transpose it
    equals :func:`msptycho.ptycho.forward.scan_positions_A`).
    """
    i, j = np.meshgrid(np.arange(shape_r[0]), np.arange(shape_r[1]), indexing="ij")
    p = np.stack([i.ravel(), j.ravel()], axis=1).astype(np.float64) * float(scan_step_A)
    if transpose:
        p = p[:, ::-1].copy()
    t = np.deg2rad(float(scan_rotation_deg))
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return p @ rot.T


def central_square(scan_shape: tuple[int, int], side: int) -> tuple[slice, slice]:
    """Row and column slices of the central ``side x side`` square of a scan."""
    rx, ry = scan_shape
    r0 = (rx - side) // 2
    c0 = (ry - side) // 2
    return slice(r0, r0 + side), slice(c0, c0 + side)


def parameter_bounds(settings: CalibrationSettings, start: dict) -> dict:
    """Bounds ``{name: (low, high)}`` of the optimised parameters around the ``start`` values.

    A parameter whose range is empty (zero width) is fixed at its start and left out.
    """
    b = {}
    d0 = float(start["defocus_A"])
    hw = max(settings.defocus_range_fraction * abs(d0), settings.defocus_range_min_A)
    if hw > 0:
        b["defocus_A"] = (d0 - hw, d0 + hw)
    if settings.rotation_range_deg > 0:
        r0 = float(start["scan_rotation_deg"])
        b["scan_rotation_deg"] = (r0 - settings.rotation_range_deg, r0 + settings.rotation_range_deg)
    lo, hi = (float(v) for v in settings.step_scale_range)
    if hi > lo:
        b["step_scale"] = (lo, hi)
    if settings.optimize_astigmatism and settings.astigmatism_range_A > 0:
        for k in ("C12a_A", "C12b_A"):
            b[k] = (start[k] - settings.astigmatism_range_A, start[k] + settings.astigmatism_range_A)
    return b


def aberrations_with(start: physics.Aberrations, values: dict) -> physics.Aberrations:
    """``start`` with the defocus and (if present) the astigmatism components of ``values``."""
    kw = {"defocus_A": float(values["defocus_A"])}
    if "C12a_A" in values:
        a, b = float(values["C12a_A"]), float(values["C12b_A"])
        kw["C12_A"] = math.hypot(a, b)
        kw["phi12_rad"] = 0.5 * math.atan2(b, a) if kw["C12_A"] > 0 else 0.0
    return replace(start, **kw)


# --------------------------------------------------------------------------------------------
# the optimisation


def _check_inputs(datacube, calibration, start_aberrations, start_rotation_deg, settings):
    if not isinstance(calibration, Calibration):
        raise InputError(f"calibrate: 'calibration' is a {type(calibration).__name__}; expected a msptycho.io.Calibration.")
    if not isinstance(start_aberrations, physics.Aberrations):
        raise InputError(f"calibrate: 'start_aberrations' is a {type(start_aberrations).__name__}; "
                         "expected a msptycho.physics.Aberrations.")
    for k, v in start_aberrations.as_dict().items():
        if not math.isfinite(v):
            raise InputError(f"calibrate: starting aberration '{k}' is {v!r}; expected a finite number.")
    if not (isinstance(start_rotation_deg, (int, float, np.integer, np.floating)) and math.isfinite(start_rotation_deg)):
        raise InputError(f"calibrate: 'start_rotation_deg' is {start_rotation_deg!r}; expected a finite number of degrees.")
    shape = tuple(getattr(datacube, "shape", np.shape(datacube)))
    if len(shape) != 4 or min(shape) < 1:
        raise InputError(f"calibrate: field 'datacube' has shape {shape}; expected a non-empty (Rx, Ry, Qx, Qy) array.")
    m = settings.central_positions
    if shape[0] < m or shape[1] < m:
        raise InputError(f"calibrate: the datacube's {shape[0]}x{shape[1]} scan is smaller than the "
                         f"central_positions = {m} square; expected at least {m} positions along Rx and Ry "
                         "(lower central_positions).")
    return shape


def _posterior_maximum(opt, names, seen, seed, index, n_candidates=2000):
    """Maximum of the Gaussian process's posterior mean (pure exploitation), in scaled
    coordinates: the best of the evaluated points and ``n_candidates`` seeded random points,
    polished by L-BFGS-B on the posterior mean."""
    from scipy.optimize import minimize

    rng = np.random.default_rng([seed, index])
    cand = np.vstack([rng.uniform(-1.0, 1.0, (n_candidates, len(names))), np.array(seen)])
    mu = np.asarray(opt.predict([dict(zip(names, c)) for c in cand], fit_gp=True))
    x0 = cand[int(np.argmax(mu))]
    res = minimize(lambda x: -float(opt.predict(dict(zip(names, x)), fit_gp=False)), x0,
                   method="L-BFGS-B", bounds=[(-1.0, 1.0)] * len(names))
    x = res.x if (res.success and -res.fun >= mu.max()) else x0
    return {k: float(v) for k, v in zip(names, x)}


def _acquisition(settings: CalibrationSettings):
    """The ``bayes_opt`` acquisition function of ``settings``, with ``acquisition_restarts``
    L-BFGS-B starts instead of the library's 10 (the acquisition is cheap to maximise in a few
    dimensions, and its cost matters when an evaluation takes under a second)."""
    from bayes_opt import acquisition

    if settings.acquisition == "ucb":
        base, kw = acquisition.UpperConfidenceBound, {"kappa": float(settings.exploration)}
    else:
        base, kw = acquisition.ExpectedImprovement, {"xi": float(settings.exploration)}
    restarts = int(settings.acquisition_restarts)

    class _Acquisition(base):
        def suggest(self, gp, target_space, n_random=10_000, n_smart=10, fit_gp=True, random_state=None):
            return super().suggest(gp, target_space, n_random=n_random, n_smart=restarts, fit_gp=fit_gp,
                                   random_state=random_state)

    return _Acquisition(**kw)


def calibrate(datacube, calibration: Calibration, start_aberrations: physics.Aberrations,
              start_rotation_deg: float, recon_params=None, settings: CalibrationSettings | None = None,
              logger: logging.Logger | None = None, *, transpose: bool = False,
              vacuum_probe_intensity=None) -> CalibrationResult:
    """Refine defocus, scan rotation and step size (optionally astigmatism) by Bayesian optimisation.

    Parameters
    ----------
    datacube : ndarray or h5py.Dataset (Rx, Ry, Qx, Qy)
        Diffraction intensities (counts) in the canonical layout; only the central
        ``settings.central_positions`` square of scan positions is read.
    calibration : Calibration
        Energy (eV), semi-angle (mrad), scan step (A), detector sampling (mrad/pixel), detector
        centre; its ``scan_rotation_deg`` is not used (``start_rotation_deg`` is).
    start_aberrations : physics.Aberrations
        Starting probe aberrations (e.g. ``ParallaxResult.aberrations``), Angstrom / radians.
    start_rotation_deg : float
        Starting scan rotation (e.g. ``ParallaxResult.scan_rotation_deg``), degrees.
    recon_params : ReconstructionParameters, optional
        The reconstruction's parameters; each evaluation uses them with
        ``num_iterations = settings.iterations_per_evaluation``, the trial step scale, no
        checkpoints, and (by default) no probe or position updates.
    settings : CalibrationSettings, optional
    logger : logging.Logger, optional
        Receives one line per evaluation (default ``msptycho.calibrate``).
    transpose : bool
        Scan axes swapped (``ParallaxResult.transpose``); kept fixed.
    vacuum_probe_intensity : ndarray (Qx, Qy), optional
        Vacuum probe pattern, the Fourier amplitude of every trial probe.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    InputError
        Bad settings, a scan smaller than the central square, non-finite starting values or a
        datacube of the wrong shape.
    """
    from bayes_opt import BayesianOptimization

    from .ptycho import ReconstructionParameters, reconstruct

    log = logger or LOG
    if recon_params is not None and not isinstance(recon_params, ReconstructionParameters):
        raise InputError(f"calibrate: 'recon_params' is a {type(recon_params).__name__}; expected a "
                         "msptycho.ptycho.ReconstructionParameters (build it with ReconstructionParameters.from_mapping).")
    if settings is not None and not isinstance(settings, CalibrationSettings):
        raise InputError(f"calibrate: 'settings' is a {type(settings).__name__}; expected a "
                         "msptycho.calibrate.CalibrationSettings (build it with CalibrationSettings.from_mapping).")
    recon_params = (recon_params or ReconstructionParameters()).validate()
    settings = (settings or CalibrationSettings()).validate()
    shape = _check_inputs(datacube, calibration, start_aberrations, start_rotation_deg, settings)

    # the central subset, read once (an h5py dataset reads only these rows and columns)
    rows, cols = central_square(shape[:2], settings.central_positions)
    sub = np.asarray(datacube[rows, cols], dtype=np.float32)
    m = settings.central_positions
    n_eval_iter = settings.iterations_per_evaluation
    eval_params = replace(
        recon_params, num_iterations=n_eval_iter, checkpoint_every=0,
        probe_update_start_iteration=(0 if settings.update_probe else n_eval_iter),
        position_correction=bool(settings.position_correction and recon_params.position_correction),
    ).validate("calibrate: evaluation parameters")

    a0 = start_aberrations
    start = {"defocus_A": float(a0.defocus_A), "scan_rotation_deg": float(start_rotation_deg), "step_scale": 1.0,
             "C12a_A": float(a0.C12_A * math.cos(2 * a0.phi12_rad)),
             "C12b_A": float(a0.C12_A * math.sin(2 * a0.phi12_rad))}
    lo, hi = settings.step_scale_range
    start["step_scale"] = float(min(max(1.0, lo), hi))
    bounds = parameter_bounds(settings, start)
    if not bounds:
        raise InputError("calibrate: every parameter range is empty; expected at least one of "
                         "defocus_range_fraction/defocus_range_min_A, rotation_range_deg or step_scale_range to be wider than zero.")
    names = list(bounds)
    if not settings.optimize_astigmatism:
        start_opt = {k: v for k, v in start.items() if k not in ("C12a_A", "C12b_A")}
    else:
        start_opt = dict(start)
    centre = np.array([(bounds[k][0] + bounds[k][1]) / 2 for k in names])
    half = np.array([(bounds[k][1] - bounds[k][0]) / 2 for k in names])

    def to_values(u: dict) -> dict:
        v = dict(start_opt)
        for i, k in enumerate(names):
            v[k] = float(centre[i] + half[i] * u[k])
        return v

    def to_unit(v: dict) -> dict:
        return {k: float((v[k] - centre[i]) / half[i]) for i, k in enumerate(names)}

    def evaluate(values: dict) -> tuple[float, float]:
        ab = aberrations_with(a0, values)
        p = replace(eval_params, step_size=eval_params.step_size * values["step_scale"],
                    probe_step_size=eval_params.probe_step_size * values["step_scale"])
        pos = scan_positions_A((m, m), calibration.scan_step_A, values["scan_rotation_deg"], transpose)
        t0 = time.perf_counter()
        with np.errstate(all="ignore"):
            res = reconstruct(sub, calibration, p, initial_aberrations=ab, initial_positions_A=pos,
                              vacuum_probe_intensity=vacuum_probe_intensity, logger=ENGINE_LOG)
        dt = time.perf_counter() - t0
        err = float(res.error_history[-1])
        return (err if math.isfinite(err) else math.nan), dt

    acq = _acquisition(settings)
    opt = BayesianOptimization(f=None, pbounds={k: (-1.0, 1.0) for k in names}, acquisition_function=acq,
                               random_state=settings.seed, verbose=0, allow_duplicate_points=False)
    if settings.anisotropic_kernel:
        from sklearn.gaussian_process.kernels import Matern

        opt.set_gp_params(kernel=Matern(length_scale=np.ones(len(names)), length_scale_bounds=(1e-2, 1e2), nu=2.5))

    log.info("calibrate: %d evaluations (%d random) of %d engine iterations on the central %dx%d positions "
             "(rows %d-%d, cols %d-%d of %dx%d); parameters %s",
             settings.num_evaluations, settings.num_initial_points, n_eval_iter, m, m, rows.start, rows.stop - 1,
             cols.start, cols.stop - 1, shape[0], shape[1],
             ", ".join(f"{k} in [{bounds[k][0]:.4g}, {bounds[k][1]:.4g}]" for k in names))

    evaluations: list[Evaluation] = []
    seen: list[np.ndarray] = []
    t_all = time.perf_counter()
    best_i = None
    for i in range(settings.num_evaluations):
        if i == 0:
            kind, u = "start", to_unit(start_opt)
        elif i <= settings.num_initial_points:
            kind, u = "random", opt.random_sample(1)[0]
        elif i >= settings.num_evaluations - settings.num_posterior_points:
            kind, u = "posterior", _posterior_maximum(opt, names, seen, settings.seed, i)
        else:
            kind, u = "guided", opt.suggest()
        u = {k: float(np.clip(u[k], -1.0, 1.0)) for k in names}
        x = np.array([u[k] for k in names])
        if any(np.allclose(x, s, rtol=0, atol=1e-6) for s in seen) and kind == "posterior":
            kind, u = "guided", opt.suggest()  # the posterior's maximum is known already: explore
            u = {k: float(np.clip(u[k], -1.0, 1.0)) for k in names}
            x = np.array([u[k] for k in names])
        if any(np.allclose(x, s, rtol=0, atol=1e-9) for s in seen):
            kind, u = "random", opt.random_sample(1)[0]  # a repeated point would teach the GP nothing
            x = np.array([u[k] for k in names])
        values = to_values(u)
        err, dt = evaluate(values)
        finite = [e.objective for e in evaluations if math.isfinite(e.objective)]
        if math.isfinite(err) and err > 0:
            target = -math.log(err)
        else:  # diverged: worse than anything seen, so the GP learns to avoid it
            target = -math.log(max(finite)) - 1.0 if finite else -10.0
        opt.register(params=u, target=target)
        seen.append(x)
        evaluations.append(Evaluation(index=i, kind=kind, parameters={k: values[k] for k in start_opt},
                                      objective=err, seconds=dt))
        if math.isfinite(err) and (best_i is None or err < evaluations[best_i].objective):
            best_i = i
        b = evaluations[best_i].objective if best_i is not None else math.nan
        log.info("evaluation %d/%d (%s): %s -> error %.6g (best %.6g at %s) %.2f s", i + 1,
                 settings.num_evaluations, kind,
                 " ".join(f"{k} {values[k]:.5g}" for k in start_opt), err, b,
                 "-" if best_i is None else best_i + 1, dt)
    total = time.perf_counter() - t_all
    if best_i is None:
        raise InputError("calibrate: every evaluation diverged (non-finite error); expected at least one finite "
                         "error: check the data, the starting estimates and the step_scale_range.")
    best = dict(evaluations[best_i].parameters)
    ab = aberrations_with(a0, best)
    log.info("calibrate: best evaluation %d: defocus_A %.5g (start %.5g), scan_rotation_deg %.4g (start %.4g), "
             "step_scale %.4g, error %.6g (start %.6g), %.1f s", best_i + 1, best["defocus_A"], start["defocus_A"],
             best["scan_rotation_deg"], start["scan_rotation_deg"], best["step_scale"],
             evaluations[best_i].objective, evaluations[0].objective, total)
    result = CalibrationResult(
        best=best, best_index=best_i, best_objective=evaluations[best_i].objective, start=start_opt,
        bounds={k: tuple(float(v) for v in bounds[k]) for k in names}, aberrations=ab,
        scan_rotation_deg=float(best["scan_rotation_deg"]), transpose=bool(transpose),
        step_size=float(recon_params.step_size * best["step_scale"]), evaluations=evaluations,
        settings=settings,
        subset={"rows": [rows.start, rows.stop], "cols": [cols.start, cols.stop], "scan_shape": list(shape[:2])},
        evaluation_parameters=eval_params.to_dict(), total_seconds=total)
    for k in result.at_bounds:
        log.warning("calibrate: the best %s (%.5g) lies at the edge of its range [%.5g, %.5g]; the optimum may "
                    "lie outside it: widen the range", k, best[k], *bounds[k])
    return result


# --------------------------------------------------------------------------------------------
# calibration.json


def write_calibration_json(path, result: CalibrationResult, provenance: Provenance | dict | None = None) -> Path:
    """Write ``calibration.json`` (layout ``workflow/schemas/calibration.md``) atomically.

    Parameters
    ----------
    path : str or PathLike
        Output file; it appears only when complete.
    result : CalibrationResult
    provenance : Provenance or dict, optional
        Stored under ``"provenance"`` (a :class:`~msptycho.io.Provenance` is converted with
        ``asdict``).

    Returns
    -------
    Path
    """
    d = result.to_dict()
    if isinstance(provenance, Provenance):
        provenance = asdict(provenance)
    d["provenance"] = dict(provenance or {})
    d["created_utc"] = utc_now()
    text = json.dumps(d, indent=1, sort_keys=True, allow_nan=False, default=_json_default) + "\n"
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return path


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def read_calibration_json(path) -> CalibrationResult:
    """Read ``calibration.json`` back into a :class:`CalibrationResult` (provenance included).

    Raises
    ------
    InputError
        If the file is missing, not JSON, of another layout or lacks a field (named).
    """
    path = os.fspath(path)
    try:
        with open(path) as fh:
            d = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; expected a calibration.json written by msptycho calibrate.") from None
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot be read as JSON ({e}); expected a calibration.json written by msptycho calibrate.") from None
    if not isinstance(d, dict) or d.get("layout") != LAYOUT_VERSION:
        got = d.get("layout") if isinstance(d, dict) else type(d).__name__
        raise InputError(f"{path}: field 'layout' is {got!r}; expected {LAYOUT_VERSION!r}.")

    def need(key, where=d, prefix=""):
        if key not in where:
            raise InputError(f"{path}: field '{prefix}{key}' is missing; expected it in a calibration.json of layout {LAYOUT_VERSION}.")
        return where[key]

    def num(v):
        return math.nan if v is None else float(v)

    ab = need("aberrations")
    try:
        aberrations = physics.Aberrations(**{k: float(ab[k]) for k in physics.Aberrations().as_dict()})
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: field 'aberrations' is {ab!r}; expected every coefficient of msptycho.physics.Aberrations as a number.") from None
    try:
        settings = CalibrationSettings.from_mapping(need("settings"), f"{path}: settings")
    except TypeError as e:
        raise InputError(f"{path}: field 'settings' is invalid ({e}).") from None
    evals = []
    for e in need("evaluations"):
        evals.append(Evaluation(index=int(need("index", e, "evaluations[].")), kind=str(need("kind", e, "evaluations[].")),
                                parameters={k: num(v) for k, v in need("parameters", e, "evaluations[].").items()},
                                objective=num(need("objective", e, "evaluations[].")),
                                seconds=num(need("seconds", e, "evaluations[]."))))
    if not evals:
        raise InputError(f"{path}: field 'evaluations' is empty; expected at least the starting evaluation.")
    return CalibrationResult(
        best={k: num(v) for k, v in need("best").items()}, best_index=int(need("best_index")),
        best_objective=num(need("best_objective")), start={k: num(v) for k, v in need("start").items()},
        bounds={k: (num(v[0]), num(v[1])) for k, v in need("bounds").items()}, aberrations=aberrations,
        scan_rotation_deg=num(need("scan_rotation_deg")), transpose=bool(need("transpose")),
        step_size=num(need("step_size")), evaluations=evals, settings=settings, subset=need("subset"),
        evaluation_parameters=need("evaluation_parameters"), total_seconds=num(need("total_seconds")),
        provenance=d.get("provenance", {}))


__all__ = ["CalibrationSettings", "CalibrationResult", "Evaluation", "calibrate", "write_calibration_json",
           "read_calibration_json", "scan_positions_A", "central_square", "parameter_bounds",
           "aberrations_with", "PARAMETER_NAMES", "LAYOUT_VERSION"]
