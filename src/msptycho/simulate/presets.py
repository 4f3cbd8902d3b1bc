"""Simulation parameters and the named presets (``pristine``, ``cracked``, ``paper``).

Every field carries its unit in its name (``_A`` Angstrom, ``_mrad``, ``_deg``, ``_eV``, ``_px``
pixels, ``_e_per_A2``). Coordinates: x, y in the scan frame (scan position ``(i, j)`` sits at
``(i, j) * scan_step_A`` before jitter), z along the beam from the entrance surface of the
simulated volume (z = 0 is the top of the carbon support, the beam travels towards +z).
Offsets of the core and positions of dislocations and the crack are relative to the particle
centre; the particle centre is the centre of the scan field, at depth
``carbon_thickness_A + particle_thickness_A / 2``.

Override a preset with :func:`dataclasses.replace`::

    p = dataclasses.replace(preset("pristine"), dose_e_per_A2=1e4, seed=3)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..physics import realspace_sampling_A, wavelength_A


@dataclass(frozen=True)
class SimulationParameters:
    """All inputs of :func:`msptycho.simulate.simulate_sample`.

    Attributes (unit in the name)
    -----------------------------
    name : str
        Sample name (written into the files).
    seed : int
        Seed of every random draw (atoms' thermal displacements, Sr/Yb disorder, carbon, jitter,
        noise, drift phases).
    energy_eV, semiangle_mrad : float
        Beam energy (eV) and probe convergence semi-angle (mrad).
    defocus_A : float
        Probe defocus in the :mod:`msptycho.physics` convention (``-C10``; positive: crossover
        inside/below the sample).
    C12_A, phi12_rad, C21_A, phi21_rad, C23_A, phi23_rad, C30_A : float
        Further probe aberrations (Krivanek notation, :class:`msptycho.physics.Aberrations`).
    aperture_edge_mrad : float
        Width of the condenser aperture's cosine edge (0 = hard edge), mrad.
    source_size_A : float
        Gaussian sigma of the effective source (partial spatial coherence), applied as a blur of
        the expected intensities over scan positions; 0 = fully coherent.
    scan_shape_px : (int, int)
        Probe positions along x and y.
    scan_step_A : float
        Scan step, Angstrom.
    scan_jitter_A : float
        RMS of the random scan-position error per axis, Angstrom (known: stored in the truth).
    detector_pixels : int
        Detector pixels per side after binning.
    detector_mrad_per_pixel : float
        Detector sampling after binning, mrad (128 * 100/128 mrad spans +-50 mrad = 2 x 25 mrad).
    dose_e_per_A2 : float
        Electron dose; each pattern receives ``dose * scan_step_A**2`` electrons on average.
    vacuum_probe_electrons : float
        Electrons summed into the vacuum-probe pattern (Poisson noise at that count).
    sim_sampling_A : float
        Real-space sampling of the simulation, Angstrom (must resolve the detector with the 2/3
        antialiasing limit: ``1 / (3 * sim_sampling_A) >= detector half-width in 1/A``).
    sim_slice_thickness_A : float
        Multislice slice thickness of the simulation, Angstrom.
    sim_window_A : float
        Side of the square window of the potential cut around each probe position, Angstrom.
    sim_batch_positions : int
        Probe positions propagated together (batched FFTs).
    particle_radius_A : float
        In-plane half-width of the particle (rounded cube / superellipsoid), Angstrom.
    particle_thickness_A : float
        Particle extent along z, Angstrom.
    particle_shape_exponent : float
        Superellipsoid exponent (2 sphere/ellipsoid, larger = more cube-like).
    core_radius_A : float
        Radius of the spherical SrYbF5 core in its own (relaxed) lattice, Angstrom.
    core_offset_A : (float, float, float)
        Core centre minus particle centre (x, y, z), Angstrom; +z is towards the exit (bottom).
    core_lattice_A, shell_lattice_A : float
        Cubic lattice parameters of the core (SrYbF5 as disordered fluorite) and shell (CaF2).
    thermal_rms_A : float
        RMS thermal displacement per axis (one frozen configuration), Angstrom.
    carbon_thickness_A : float
        Thickness of the amorphous-carbon support on the entrance side, Angstrom (0 = none).
    carbon_density_g_cm3 : float
        Density of the amorphous carbon.
    twist_top_deg : float
        In-plane rotation of the lattice at the particle top relative to its bottom (linear in z),
        degrees (pristine: the shell twists with depth).
    tilt_mrad : float
        Amplitude of the local off-zone lattice tilt (two Gaussian patches, one in the upper half
        of the particle, one in the lower half, in opposite corners), mrad.
    tilt_patch_radius_A : float
        Gaussian radius of a tilt patch, Angstrom.
    crack_direction_deg : float or None
        In-plane direction (from +x towards +y) of the crack, from its tip outwards; None = no
        crack.
    crack_tip_A : float
        Distance of the crack tip from the particle centre along ``crack_direction_deg``, A.
    crack_opening_top_deg, crack_opening_bottom_deg : float
        Angle by which the two sides of the crack are rotated apart at the particle's top and
        bottom (linear in between), degrees.
    crack_gap_A : float
        Width of the slab removed along the crack plane at the particle's top (a quarter of it at
        the bottom), Angstrom.
    dislocations : tuple of (x_A, y_A, burgers_x_A, burgers_y_A, z_start_A, z_end_A)
        Straight edge dislocations along z with in-plane Burgers vectors; (x, y) relative to the
        particle centre in the reference lattice; z relative to the particle top; a line that
        ends inside the particle fades out over ~3 A (as if it turned out of the beam direction).
    poisson_ratio : float
        Poisson ratio of the isotropic elastic fields of the dislocations.
    haadf_shape_px : (int, int)
        Pixels of each HAADF image (x, y).
    haadf_pixel_A : float
        HAADF pixel size, Angstrom.
    haadf_probe_fwhm_A : float
        FWHM of the incoherent HAADF point-spread function, Angstrom.
    haadf_z_exponent : float
        Exponent of the incoherent Z contrast (``Z**exponent``).
    haadf_peak_counts : float
        Mean counts at the brightest column (sets the shot noise).
    haadf_drift_A_per_frame : (float, float)
        Linear drift (x, y) accumulated over one frame, Angstrom.
    haadf_drift_nonlinear_A : float
        Amplitude of the smooth non-linear drift (sum of two sinusoids per axis), Angstrom.
    haadf_dwell_s : float
        Dwell time per HAADF pixel, seconds (frame time = pixels * dwell).
    truth_depth_A : float
        Depth covered by the ground truth's reconstruction slices, Angstrom; 0 = the simulated
        volume's thickness. Slices below the sample are empty (vacuum), as in a reconstruction
        whose volume extends beyond the particle.
    """

    name: str = "pristine"
    seed: int = 0
    # optics
    energy_eV: float = 300e3
    semiangle_mrad: float = 25.0
    defocus_A: float = 120.0
    C12_A: float = 0.0
    phi12_rad: float = 0.0
    C21_A: float = 0.0
    phi21_rad: float = 0.0
    C23_A: float = 0.0
    phi23_rad: float = 0.0
    C30_A: float = 0.0
    aperture_edge_mrad: float = 0.0
    source_size_A: float = 0.0
    # scan and detector
    scan_shape_px: tuple[int, int] = (40, 40)
    scan_step_A: float = 2.0
    scan_jitter_A: float = 0.1
    detector_pixels: int = 128
    detector_mrad_per_pixel: float = 100.0 / 128
    dose_e_per_A2: float = 5e3
    vacuum_probe_electrons: float = 1e7
    # discretisation of the simulation (not the reconstruction's: DESIGN.md section 5)
    sim_sampling_A: float = 0.125
    sim_slice_thickness_A: float = 2.0
    sim_window_A: float = 27.0
    sim_batch_positions: int = 16
    # particle
    particle_radius_A: float = 32.0
    particle_thickness_A: float = 56.0
    particle_shape_exponent: float = 3.0
    core_radius_A: float = 17.5
    core_offset_A: tuple[float, float, float] = (4.0, -3.0, 7.0)
    core_lattice_A: float = 5.70
    shell_lattice_A: float = 5.46
    thermal_rms_A: float = 0.08
    carbon_thickness_A: float = 15.0
    carbon_density_g_cm3: float = 2.0
    # deformation
    twist_top_deg: float = 0.0
    tilt_mrad: float = 0.0
    tilt_patch_radius_A: float = 12.0
    crack_direction_deg: float | None = None
    crack_tip_A: float = 16.0
    crack_opening_top_deg: float = 6.0
    crack_opening_bottom_deg: float = 1.0
    crack_gap_A: float = 3.0
    dislocations: tuple = ()
    poisson_ratio: float = 0.28
    # HAADF scan pair
    haadf_shape_px: tuple[int, int] = (240, 240)
    haadf_pixel_A: float = 0.4
    haadf_probe_fwhm_A: float = 0.9
    haadf_z_exponent: float = 1.7
    haadf_peak_counts: float = 60.0
    haadf_drift_A_per_frame: tuple[float, float] = (4.0, -2.5)
    haadf_drift_nonlinear_A: float = 1.0
    haadf_dwell_s: float = 4e-6
    truth_depth_A: float = 0.0

    # -- derived quantities ---------------------------------------------------------------
    @property
    def scan_extent_A(self) -> tuple[float, float]:
        """Span of the nominal scan positions, (x, y), Angstrom."""
        return ((self.scan_shape_px[0] - 1) * self.scan_step_A, (self.scan_shape_px[1] - 1) * self.scan_step_A)

    @property
    def particle_center_A(self) -> tuple[float, float, float]:
        """Particle centre (x, y, z), Angstrom: the scan-field centre, mid-depth of the particle."""
        ex, ey = self.scan_extent_A
        return (ex / 2, ey / 2, self.carbon_thickness_A + self.particle_thickness_A / 2)

    @property
    def sample_thickness_A(self) -> float:
        """Total thickness of the simulated volume (carbon + particle), Angstrom."""
        return self.carbon_thickness_A + self.particle_thickness_A

    @property
    def window_px(self) -> int:
        """Side of the simulation window in pixels (even)."""
        n = int(round(self.sim_window_A / self.sim_sampling_A))
        return n + (n % 2)

    def validate(self) -> "SimulationParameters":
        """Raise ValueError with one sentence if a value is out of range; return self."""
        pos = ["energy_eV", "semiangle_mrad", "scan_step_A", "detector_mrad_per_pixel", "dose_e_per_A2",
               "sim_sampling_A", "sim_slice_thickness_A", "sim_window_A", "particle_radius_A",
               "particle_thickness_A", "core_radius_A", "core_lattice_A", "shell_lattice_A",
               "haadf_pixel_A", "haadf_probe_fwhm_A", "haadf_peak_counts", "vacuum_probe_electrons",
               "particle_shape_exponent"]
        for k in pos:
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"simulation parameter '{k}' must be a positive finite number, got {v!r}.")
        for k in ("scan_jitter_A", "thermal_rms_A", "carbon_thickness_A", "source_size_A",
                  "aperture_edge_mrad", "tilt_mrad", "haadf_drift_nonlinear_A", "truth_depth_A"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"simulation parameter '{k}' must be a non-negative finite number, got {v!r}.")
        for k in ("scan_shape_px", "haadf_shape_px"):
            v = getattr(self, k)
            if len(v) != 2 or any(int(n) != n or n < 2 for n in v):
                raise ValueError(f"simulation parameter '{k}' must be two integers >= 2, got {v!r}.")
        if int(self.detector_pixels) != self.detector_pixels or self.detector_pixels < 8:
            raise ValueError(f"simulation parameter 'detector_pixels' must be an integer >= 8, got {self.detector_pixels!r}.")
        half_det_inv_A = (self.detector_pixels / 2 + 0.5) * self.detector_mrad_per_pixel * 1e-3 / wavelength_A(self.energy_eV)
        if 1.0 / (3.0 * self.sim_sampling_A) < half_det_inv_A * 0.999:
            raise ValueError(
                f"simulation parameter 'sim_sampling_A'={self.sim_sampling_A} is too coarse for the detector: the "
                f"2/3 antialiasing limit {1e3 * wavelength_A(self.energy_eV) / (3 * self.sim_sampling_A):.1f} mrad must "
                f"reach the detector edge {half_det_inv_A * wavelength_A(self.energy_eV) * 1e3:.1f} mrad.")
        if self.core_radius_A >= min(self.particle_radius_A, self.particle_thickness_A / 2):
            raise ValueError("simulation parameter 'core_radius_A' must be smaller than the particle's half-size.")
        if len(self.core_offset_A) != 3:
            raise ValueError(f"simulation parameter 'core_offset_A' must be three numbers (x, y, z), got {self.core_offset_A!r}.")
        for d in self.dislocations:
            if len(d) != 6:
                raise ValueError("each entry of 'dislocations' must be (x_A, y_A, burgers_x_A, burgers_y_A, z_start_A, z_end_A).")
        if not 0 <= self.poisson_ratio < 0.5:
            raise ValueError(f"simulation parameter 'poisson_ratio' must be in [0, 0.5), got {self.poisson_ratio!r}.")
        return self

    def as_dict(self) -> dict:
        """Plain dict (tuples as lists) for provenance and HDF5 attributes."""
        d = dataclasses.asdict(self)
        return {k: (list(map(list, v)) if k == "dislocations" else (list(v) if isinstance(v, tuple) else v))
                for k, v in d.items()}


def _b110(a: float, sx: int, sy: int) -> tuple[float, float]:
    """In-plane Burgers vector a/2 <110> with signs (sx, sy)."""
    return (sx * a / 2, sy * a / 2)


def preset(name: str) -> SimulationParameters:
    """A named parameter set.

    ``pristine``: twisted shell (1.5 deg over the particle's depth) with local off-zone tilts.
    ``cracked``: a wedge crack through the shell widening towards the top, the two sides rotated
    apart, and four edge dislocations b = a/2<110> near the core-shell interface (two through the
    full depth, two ending inside).
    ``paper``: the experiment's size (17 nm particle, 300 A defocus, 100 x 100 positions, truth in
    36 slices of 1.2 nm with ``recon_slice_thickness_A=12``) with the cracked particle's defects
    scaled up and the pristine one's twist; for clusters (see :func:`estimate_cost`).
    """
    base = SimulationParameters()
    a = base.shell_lattice_A
    if name == "pristine":
        return dataclasses.replace(base, name="pristine", seed=1, twist_top_deg=1.5, tilt_mrad=20.0)
    if name == "cracked":
        # misfit-type edge dislocations 20-21 A from the core centre (core radius 17.5 A), Burgers
        # vectors a/2<110> about tangential to the interface, alternating in sense so that their
        # far fields largely cancel at the core
        dis = (
            (17.1, 12.1, *_b110(a, -1, 1), 0.0, 56.0),
            (-11.8, -16.8, *_b110(a, -1, 1), 0.0, 56.0),
            (17.5, -16.5, *_b110(a, 1, 1), 0.0, 30.0),
            (24.0, -2.0, *_b110(a, 1, -1), 24.0, 56.0),
        )
        return dataclasses.replace(base, name="cracked", seed=2, core_offset_A=(3.0, -2.0, 6.0),
                                   crack_direction_deg=135.0, crack_tip_A=14.0,
                                   crack_opening_top_deg=8.0, crack_opening_bottom_deg=1.0,
                                   dislocations=dis)
    if name == "paper":
        dis = (
            (50.3, 32.3, *_b110(a, -1, 1), 0.0, 170.0),
            (-30.3, -48.3, *_b110(a, -1, 1), 0.0, 170.0),
            (50.3, -48.3, *_b110(a, 1, 1), 0.0, 90.0),
            (67.0, -8.0, *_b110(a, 1, -1), 70.0, 170.0),
        )
        return dataclasses.replace(base, name="paper", seed=3, defocus_A=300.0, scan_shape_px=(100, 100),
                                   particle_radius_A=85.0, particle_thickness_A=170.0, core_radius_A=50.0,
                                   core_offset_A=(10.0, -8.0, 25.0), carbon_thickness_A=30.0,
                                   sim_window_A=48.0, crack_direction_deg=135.0, crack_tip_A=40.0,
                                   dislocations=dis, twist_top_deg=1.5, tilt_mrad=15.0,
                                   tilt_patch_radius_A=30.0, haadf_shape_px=(512, 512),
                                   truth_depth_A=36 * 12.0)
    raise ValueError(f"unknown simulation preset {name!r}; expected one of {PRESETS}.")


PRESETS = ("pristine", "cracked", "paper")


def configured(name: str, preset_name: str, overrides: dict | None, workflow_seed: int) -> SimulationParameters:
    """A config sample's parameters: the preset with the config's overrides (YAML lists become
    tuples, ``dislocations`` a tuple of tuples) and, unless overridden, the seed
    ``workflow_seed + preset seed`` (two samples never share noise)."""
    ov = {k: tuple(map(tuple, v)) if k == "dislocations" else (tuple(v) if isinstance(v, list) else v)
          for k, v in dict(overrides or {}).items()}
    base = preset(preset_name)
    ov.setdefault("seed", workflow_seed + base.seed)
    return dataclasses.replace(base, name=name, **ov)


def reconstruction_sampling_A(params: SimulationParameters) -> float:
    """Real-space pixel of a reconstruction from this detector (``physics.realspace_sampling_A``)."""
    return realspace_sampling_A(params.detector_pixels, params.detector_mrad_per_pixel, params.energy_eV)
