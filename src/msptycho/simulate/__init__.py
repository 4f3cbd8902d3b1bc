"""Synthetic SrYbF5@CaF2 core-shell particles: atomic model, 4D-STEM, HAADF scan pair, ground truth.

Entry points::

    from msptycho.simulate import preset, simulate_sample
    result = simulate_sample(preset("pristine"), recon_slice_thickness_A=12.0)
    msptycho.io.simio.write_simulation(result, "results/pristine/00_raw", provenance)

The simulation deliberately does not share the reconstruction's discretisation (DESIGN.md
section 5): Kirkland (2010) atomic potentials sampled at ``sim_sampling_A`` (0.125 A) in slices of
``sim_slice_thickness_A`` (2 A), a window of ``sim_window_A`` (27 A) whose k-grid differs from the
detector's, and intensities integrated onto the detector pixels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from .. import physics
from ..io.datacube import Calibration
from .haadf import ScanPair, simulate_scan_pair
from .model import AtomicModel, Deformation, build_model, fluorite_crystal
from .multislice import PatternSimulator, occupied_boxes, transmission_functions
from .potentials import project_atoms_fourier
from .presets import PRESETS, SimulationParameters, configured, preset, reconstruction_sampling_A
from .truth import GroundTruth, ground_truth

__all__ = ["SimulationParameters", "SimulationResult", "preset", "configured", "PRESETS", "simulate_sample",
           "estimate_cost", "build_model", "AtomicModel", "Deformation", "GroundTruth", "ScanPair",
           "PatternSimulator", "aberrations_of", "scan_positions", "simulation_field",
           "vacuum_probe_pattern", "fluorite_crystal"]

LOG = logging.getLogger("msptycho.simulate")
#: margin between the outermost probe window and the edge of the potential field, Angstrom
FIELD_MARGIN_A = 1.0


@dataclass
class SimulationResult:
    """Everything :func:`simulate_sample` produces.

    Attributes
    ----------
    params : SimulationParameters
    datacube : ndarray (Rx, Ry, Qx, Qy), float32
        Counts (Poisson), patterns ``|fftshift(fft2(exit))|^2`` on the detector, [x, y] indexing.
    calibration : msptycho.io.Calibration
    vacuum_probe : ndarray (Qx, Qy), float32
        Counts of the probe through vacuum on the same detector (``vacuum_probe_electrons`` in total).
    scan_pair : ScanPair
    truth : GroundTruth
    model : AtomicModel
    timings_s : dict
        Wall-clock seconds per stage (``model``, ``potential``, ``multislice``, ``haadf``, ``truth``,
        ``total``) and the process's CPU seconds (``cpu_total``, all threads).
    """

    params: SimulationParameters
    datacube: np.ndarray
    calibration: Calibration
    vacuum_probe: np.ndarray
    scan_pair: ScanPair
    truth: GroundTruth
    model: AtomicModel
    timings_s: dict = field(default_factory=dict)


def aberrations_of(params: SimulationParameters) -> physics.Aberrations:
    """The probe aberrations of a parameter set."""
    p = params
    return physics.Aberrations(defocus_A=p.defocus_A, C12_A=p.C12_A, phi12_rad=p.phi12_rad, C21_A=p.C21_A,
                               phi21_rad=p.phi21_rad, C23_A=p.C23_A, phi23_rad=p.phi23_rad, C30_A=p.C30_A)


def scan_positions(params: SimulationParameters, rng: np.random.Generator):
    """Nominal and true (jittered) probe positions, each (Rx, Ry, 2), Angstrom."""
    nx, ny = (int(n) for n in params.scan_shape_px)
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    nominal = np.stack([ii, jj], axis=-1) * params.scan_step_A
    true = nominal + rng.normal(0.0, params.scan_jitter_A, size=nominal.shape) if params.scan_jitter_A else nominal.copy()
    return nominal.astype(np.float64), true.astype(np.float64)


def simulation_field(params: SimulationParameters, positions_A: np.ndarray):
    """Origin (x, y) and shape of the potential field that holds every probe window."""
    s = params.sim_sampling_A
    half = params.window_px // 2 * s + FIELD_MARGIN_A
    lo = positions_A.reshape(-1, 2).min(axis=0) - half
    hi = positions_A.reshape(-1, 2).max(axis=0) + half
    shape = tuple(int(np.ceil((h - l) / s)) + 1 for l, h in zip(lo, hi))
    return (float(lo[0]), float(lo[1])), shape


def vacuum_probe_pattern(params: SimulationParameters) -> np.ndarray:
    """Noise-free vacuum probe on the detector, as a fraction of the incident electrons."""
    sim = PatternSimulator(None, [], params.sim_sampling_A, (0.0, 0.0), params.window_px, params.energy_eV,
                           params.semiangle_mrad, aberrations_of(params), params.detector_pixels,
                           params.detector_mrad_per_pixel, params.aperture_edge_mrad)
    c = params.window_px // 2 * params.sim_sampling_A
    return sim.patterns(np.array([[c, c]]))[0]


def calibration_of(params: SimulationParameters) -> Calibration:
    """Calibration of the simulated datacube."""
    n = params.detector_pixels
    return Calibration(energy_eV=float(params.energy_eV), semiangle_mrad=float(params.semiangle_mrad),
                       scan_step_A=float(params.scan_step_A), mrad_per_pixel=float(params.detector_mrad_per_pixel),
                       scan_rotation_deg=0.0, detector_center_px=(float(n // 2), float(n // 2)),
                       dose_e_per_A2=float(params.dose_e_per_A2))


def simulate_sample(params: SimulationParameters, recon_slice_thickness_A: float = 12.0,
                    logger: logging.Logger | None = None, workers: int = -1) -> SimulationResult:
    """Simulate one sample: atoms, 4D-STEM datacube, vacuum probe, HAADF scan pair and truth.

    Parameters
    ----------
    params : SimulationParameters
        See :func:`preset`; validated here.
    recon_slice_thickness_A : float
        Slice thickness of the reconstruction the truth is prepared for, Angstrom.
    logger : logging.Logger, optional
        Receives progress lines (default ``logging.getLogger("msptycho.simulate")``).
    workers : int
        FFT threads of the multislice (scipy.fft's ``workers``: -1 means every core).

    Returns
    -------
    SimulationResult
    """
    log = logger or LOG
    params.validate()
    if not (np.isfinite(recon_slice_thickness_A) and recon_slice_thickness_A > 0):
        raise ValueError(f"recon_slice_thickness_A must be a positive number, got {recon_slice_thickness_A!r}.")
    p = params
    rng = np.random.default_rng(p.seed)
    timings = {}
    t0 = time.perf_counter()
    c0 = time.process_time()
    nominal, true_pos = scan_positions(p, rng)
    origin, shape = simulation_field(p, true_pos)
    lateral = ((origin[0], origin[0] + shape[0] * p.sim_sampling_A), (origin[1], origin[1] + shape[1] * p.sim_sampling_A))
    model = build_model(p, rng, lateral_range_A=lateral)
    timings["model"] = time.perf_counter() - t0
    log.info("%s: %d atoms (%d core, %d shell, %d carbon) in %.1f s", p.name, len(model),
             (model.region == 2).sum(), (model.region == 1).sum(), (model.region == 0).sum(), timings["model"])

    t1 = time.perf_counter()
    dz = p.sim_slice_thickness_A
    n_sl = int(np.ceil(p.sample_thickness_A / dz - 1e-9))
    sl = np.clip(np.floor(model.positions_A[:, 2] / dz).astype(np.int64), 0, n_sl - 1)
    pot = project_atoms_fourier(model.positions_A[:, :2], model.Z, sl, n_sl, shape, p.sim_sampling_A, origin)
    occ = occupied_boxes(pot)
    trans = transmission_functions(pot, p.energy_eV, p.sim_sampling_A, workers=workers)
    del pot
    timings["potential"] = time.perf_counter() - t1
    log.info("%s: %d slices of %.2f A on %d x %d pixels of %.3f A in %.1f s", p.name, n_sl, dz, shape[0], shape[1],
             p.sim_sampling_A, timings["potential"])

    t2 = time.perf_counter()
    sim = PatternSimulator(trans, np.full(n_sl, dz), p.sim_sampling_A, origin, p.window_px, p.energy_eV,
                           p.semiangle_mrad, aberrations_of(p), p.detector_pixels, p.detector_mrad_per_pixel,
                           p.aperture_edge_mrad, occupied=occ, workers=workers)
    nx, ny = true_pos.shape[:2]
    flat = true_pos.reshape(-1, 2)
    nq = p.detector_pixels
    frac = np.empty((len(flat), nq, nq), dtype=np.float32)
    B = max(1, int(p.sim_batch_positions))
    next_report = 0.1
    for b0 in range(0, len(flat), B):
        frac[b0:b0 + B] = sim.patterns(flat[b0:b0 + B])
        done = min(len(flat), b0 + B)
        if done / len(flat) >= next_report or done == len(flat):
            log.info("%s: %d / %d positions in %.1f s", p.name, done, len(flat), time.perf_counter() - t2)
            next_report += 0.1
    del trans, sim
    timings["multislice"] = time.perf_counter() - t2

    electrons = p.dose_e_per_A2 * p.scan_step_A**2
    expected = frac.reshape(nx, ny, nq, nq) * np.float32(electrons)
    if p.source_size_A > 0:
        sig = p.source_size_A / p.scan_step_A
        expected = gaussian_filter(expected, (sig, sig, 0, 0), mode="nearest")
    datacube = rng.poisson(expected).astype(np.float32)
    vac = rng.poisson(vacuum_probe_pattern(p) * p.vacuum_probe_electrons).astype(np.float32)

    t3 = time.perf_counter()
    pair = simulate_scan_pair(p, model.positions_A, model.Z, rng)
    timings["haadf"] = time.perf_counter() - t3
    t4 = time.perf_counter()
    truth = ground_truth(p, model, recon_slice_thickness_A, true_pos, nominal, pair)
    timings["truth"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0
    timings["cpu_total"] = time.process_time() - c0
    log.info("%s: done in %.1f s wall, %.1f s CPU (%s)", p.name, timings["total"], timings["cpu_total"],
             ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if k not in ("total", "cpu_total")))
    return SimulationResult(params=p, datacube=datacube, calibration=calibration_of(p), vacuum_probe=vac,
                            scan_pair=pair, truth=truth, model=model, timings_s=timings)


def estimate_cost(params: SimulationParameters, seconds_per_fft: float | None = None) -> dict:
    """Estimate the size and run time of :func:`simulate_sample` without running it.

    Parameters
    ----------
    params : SimulationParameters
    seconds_per_fft : float, optional
        Time of one complex64 2-D FFT of the window on the target machine; by default measured
        here on a batch of ``sim_batch_positions`` windows.

    Returns
    -------
    dict
        ``positions``, ``slices``, ``window_px``, ``field_px``, ``ffts`` (2 per slice and position
        plus one per position), ``transmission_bytes`` (complex64 field stack held in memory),
        ``datacube_bytes``, ``atoms_estimate``, ``seconds_per_fft`` and ``multislice_s_estimate``
        (FFTs times 1.6 for the elementwise work, measured on the default presets).
    """
    import scipy.fft as sfft

    params.validate()
    p = params
    nominal = np.zeros((*p.scan_shape_px, 2))
    ii, jj = np.meshgrid(np.arange(p.scan_shape_px[0]), np.arange(p.scan_shape_px[1]), indexing="ij")
    nominal[..., 0], nominal[..., 1] = ii * p.scan_step_A, jj * p.scan_step_A
    _, shape = simulation_field(p, nominal)
    n_sl = int(np.ceil(p.sample_thickness_A / p.sim_slice_thickness_A - 1e-9))
    npos = int(np.prod(p.scan_shape_px))
    W = p.window_px
    if seconds_per_fft is None:
        a = np.ones((max(1, p.sim_batch_positions), W, W), np.complex64)
        sfft.fft2(a, workers=-1)
        t = time.perf_counter()
        for _ in range(3):
            sfft.fft2(a, workers=-1)
        seconds_per_fft = (time.perf_counter() - t) / (3 * len(a))
    ffts = npos * (2 * n_sl + 1)
    vol_particle = 4 / 3 * np.pi * p.particle_radius_A**2 * p.particle_thickness_A / 2
    atoms = vol_particle * 12 / p.shell_lattice_A**3 + shape[0] * shape[1] * p.sim_sampling_A**2 * p.carbon_thickness_A * 0.1
    return dict(positions=npos, slices=n_sl, window_px=W, field_px=shape, ffts=int(ffts),
                transmission_bytes=int(n_sl * shape[0] * shape[1] * 8), datacube_bytes=int(npos * p.detector_pixels**2 * 4),
                atoms_estimate=int(atoms), seconds_per_fft=float(seconds_per_fft),
                multislice_s_estimate=float(1.6 * ffts * seconds_per_fft))
