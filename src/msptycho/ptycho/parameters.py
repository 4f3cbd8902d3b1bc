"""Parameters and result of a multislice reconstruction."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from ..io.datacube import InputError
from ..settings import settings_from_mapping


@dataclass(frozen=True)
class ReconstructionParameters:
    """Settings of :func:`msptycho.ptycho.reconstruct` (defaults follow the paper where it says).

    Attributes
    ----------
    num_slices : int
        Number of object slices (paper: 36).
    slice_thickness_A : float
        Thickness of each slice and Fresnel propagation distance between slices, Angstrom
        (paper: 12).
    num_iterations : int
        Passes over all positions.
    batch_size : int
        Positions per gradient step (paper: 110); positions are shuffled every iteration.
    step_size : float
        Object step (dimensionless): 1 is a Gauss-Newton step normalised by the local
        illumination and shared evenly between the slices.
    illumination_regularization_fraction : float
        Fraction of the batch's peak illumination added to the local illumination in the object
        step's denominator (keeps weakly lit pixels from large steps).
    step_size_reduction_factor : float
        Object and probe steps are multiplied by this when an iteration's error rises (1: never).
    loss : str
        ``"amplitude"`` (Gaussian noise on amplitudes) or ``"poisson"``.
    positivity : bool
        Clip the potential at 0 after every iteration.
    tv_z_weight_VA : float
        Total-variation step along z per iteration (largest change about ``2 x`` this), V*A.
    tv_xy_weight_VA : float
        Total-variation step in x-y per iteration (largest change about ``4 x`` this), V*A.
    tv_epsilon_VA : float
        Smoothing of the TV norm, V*A.
    probe_update_start_iteration : int
        First iteration (0-based) that updates the probe; ``num_iterations`` or more: never.
    probe_step_size : float
        Probe step (dimensionless, 1 = Gauss-Newton for a weak object).
    probe_fourier_amplitude_constraint : bool
        After each iteration, set the probe's Fourier amplitude to the vacuum probe's (or, without
        a vacuum probe, to the initial probe's).
    probe_aberration_fit_order : int
        After each iteration, replace the probe's Fourier phase by a fit of aberration terms up to
        ``alpha^order`` (2: defocus and astigmatism, 3: + coma and three-fold, 4: + C30 ...);
        0 switches the fit off.
    position_correction : bool
        Refine the scan positions by gradient descent.
    position_correction_start_iteration : int
        First iteration (0-based) that moves positions.
    position_step_size : float
        Position step (dimensionless, scaled by the probe's Fourier-space curvature).
    position_max_update_A : float
        Largest move of one position per iteration (damping), Angstrom.
    position_affine_fit : bool
        Constrain the refined positions to a global affine transform of the initial ones.
    object_margin_px : int
        Pixels of object beyond the outermost windows.
    fft_workers : int
        FFT and Numba kernel threads (0: all cores). Does not change the result.
    chunk_size : int
        Positions of a batch carried through all slices together (0: the backend's choice: on the
        CPU with FFTW the whole batch in one call, a run of positions per thread, 16 at a time;
        otherwise 16 per thread on the CPU, where their waves stay in cache, and the whole batch
        on a GPU). The object is still updated once per batch; changes the result only by float
        rounding.
    fft_library : str
        ``"auto"`` (FFTW through pyfftw when installed, else scipy's pocketfft), ``"fftw"``,
        ``"pocketfft"`` or ``"numpy"``. Libraries differ in the last bits of the result.
    fft_planning : str
        FFTW plans: ``"measure"`` (timed once per machine and transform, kept in a wisdom file so
        that every later run on the machine uses the same plans: about 1.5x faster FFTs) or
        ``"estimate"`` (no timing, no file). Plans differ in the last bits of the result.
    seed : int
        Seed of the per-iteration shuffles (iteration ``i`` uses ``default_rng([seed, i])``).
    checkpoint_every : int
        Write a checkpoint every this many iterations (0: never).
    """

    num_slices: int = 6
    slice_thickness_A: float = 12.0
    num_iterations: int = 16
    batch_size: int = 110
    step_size: float = 0.5
    illumination_regularization_fraction: float = 0.1
    step_size_reduction_factor: float = 0.5
    loss: str = "amplitude"
    positivity: bool = True
    tv_z_weight_VA: float = 0.0
    tv_xy_weight_VA: float = 0.0
    tv_epsilon_VA: float = 0.1
    probe_update_start_iteration: int = 2
    probe_step_size: float = 0.5
    probe_fourier_amplitude_constraint: bool = True
    probe_aberration_fit_order: int = 4
    position_correction: bool = True
    position_correction_start_iteration: int = 4
    position_step_size: float = 0.5
    position_max_update_A: float = 0.1
    position_affine_fit: bool = False
    object_margin_px: int = 4
    fft_workers: int = 0
    chunk_size: int = 0
    fft_library: str = "auto"
    fft_planning: str = "measure"
    seed: int = 0
    checkpoint_every: int = 5

    def validate(self, source: str = "reconstruction parameters") -> "ReconstructionParameters":
        """Raise :class:`~msptycho.io.InputError` naming the first bad field."""
        def bad(name, expected):
            raise InputError(f"{source}: field '{name}' is {getattr(self, name)!r}; expected {expected}.")
        for name in ("num_slices", "num_iterations", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                bad(name, "a positive integer")
        for name in ("probe_update_start_iteration", "position_correction_start_iteration", "object_margin_px",
                     "fft_workers", "chunk_size", "checkpoint_every", "probe_aberration_fit_order", "seed"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                bad(name, "a non-negative integer")
        if self.probe_aberration_fit_order == 1:
            bad("probe_aberration_fit_order", "0 (off) or at least 2")
        for name in ("slice_thickness_A", "step_size"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                bad(name, "a positive number")
        for name in ("illumination_regularization_fraction", "tv_z_weight_VA", "tv_xy_weight_VA",
                     "probe_step_size", "position_step_size", "position_max_update_A"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                bad(name, "a non-negative number")
        if not (self.tv_epsilon_VA > 0):
            bad("tv_epsilon_VA", "a positive number")
        if not (0 < self.step_size_reduction_factor <= 1):
            bad("step_size_reduction_factor", "a number in (0, 1]")
        if self.fft_library not in ("auto", "fftw", "pocketfft", "numpy"):
            bad("fft_library", "'auto', 'fftw', 'pocketfft' or 'numpy'")
        if self.fft_planning not in ("measure", "estimate"):
            bad("fft_planning", "'measure' or 'estimate'")
        if self.loss not in ("amplitude", "poisson"):
            bad("loss", "'amplitude' or 'poisson'")
        for name in ("positivity", "probe_fourier_amplitude_constraint", "position_correction", "position_affine_fit"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                bad(name, "true or false")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_mapping(cls, mapping: dict, source: str = "reconstruction parameters") -> "ReconstructionParameters":
        """Build from a mapping (e.g. the config's ``reconstruct`` section); unknown keys are errors."""
        return settings_from_mapping(cls, mapping, source).validate(source)


@dataclass
class ReconstructionResult:
    """Output of :func:`msptycho.ptycho.reconstruct`.

    Attributes
    ----------
    potential_VA : ndarray float32 (nz, Nx, Ny)
        Projected potential of each slice, V*A, indexed ``[slice, x, y]``.
    sampling_A : float
        Object pixel size, Angstrom.
    slice_thickness_A : float
        Slice thickness, Angstrom.
    origin_A : ndarray (2,)
        Scan-frame coordinate (x, y) of object pixel ``[:, 0, 0]``, Angstrom.
    probe : ndarray complex64 (n, n)
        Real-space probe at the entrance surface, centred on window pixel ``(n//2, n//2)``,
        ``sum |probe|^2`` = mean counts per pattern.
    positions_initial_A, positions_A : ndarray float64 (Rx * Ry, 2)
        Initial and refined probe positions (x, y) in the scan frame, Angstrom, row-major over
        the scan (Rx outer).
    error_history : ndarray float64 (iterations,)
        Normalised amplitude error ``sum (|Psi| - a)^2 / sum a^2`` of each iteration.
    loss_history : ndarray float64 (iterations,)
        Value of the chosen loss of each iteration.
    step_history : ndarray float64 (iterations,)
        Object step size used in each iteration.
    seconds_history : ndarray float64 (iterations,)
        Wall time of each iteration, seconds.
    aberrations_fit : dict
        Coefficients of the probe-phase fit (``"p,m,cos|sin"`` -> rad), empty if off.
    parameters : ReconstructionParameters
    energy_eV, semiangle_mrad : float
        Calibration used.
    scan_shape : (int, int)
        ``(Rx, Ry)``.
    iterations_done : int
    fft_library : str
        FFT library actually used.
    engine_GiB : float
        Memory of the engine's arrays (state, stored waves, work arrays; not the data), GiB.
    """

    potential_VA: np.ndarray
    sampling_A: float
    slice_thickness_A: float
    origin_A: np.ndarray
    probe: np.ndarray
    positions_initial_A: np.ndarray
    positions_A: np.ndarray
    error_history: np.ndarray
    loss_history: np.ndarray
    step_history: np.ndarray
    seconds_history: np.ndarray
    parameters: ReconstructionParameters
    energy_eV: float
    semiangle_mrad: float
    scan_shape: tuple[int, int]
    iterations_done: int
    aberrations_fit: dict = field(default_factory=dict)
    fft_library: str = ""
    engine_GiB: float = 0.0
