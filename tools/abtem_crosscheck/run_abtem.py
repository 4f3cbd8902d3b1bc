"""Run abTEM 1.0.11 on a crystal given as an .npz file and save its diffraction patterns.

Used by tests/test_simulate_abtem.py through a separate interpreter (see README.md here).

Input npz: positions_A (N, 3), Z (N,), cell_A (3,), energy_eV, semiangle_mrad, defocus_A
(msptycho/abTEM convention: -C10), sampling_A, slice_thickness_A, probe_positions_A (P, 2).
Output npz: patterns (P, nx, ny) intensities with the incident probe normalised to 1, fftshifted
(zero frequency at index n // 2), k_sampling_inv_A (2,), abtem_version.

usage: python run_abtem.py input.npz output.npz
"""

import sys

import numpy as np


def main(inp: str, out: str) -> None:
    import abtem
    import ase

    abtem.config.set({"device": "cpu", "fft": "numpy", "precision": "float64"})
    d = np.load(inp)
    atoms = ase.Atoms(numbers=d["Z"], positions=d["positions_A"], cell=d["cell_A"], pbc=True)
    potential = abtem.Potential(atoms, sampling=float(d["sampling_A"]), slice_thickness=float(d["slice_thickness_A"]),
                                parametrization="kirkland", projection="infinite")
    probe = abtem.Probe(energy=float(d["energy_eV"]), semiangle_cutoff=float(d["semiangle_mrad"]),
                        defocus=float(d["defocus_A"]))
    probe.grid.match(potential)
    scan = abtem.CustomScan(np.asarray(d["probe_positions_A"], dtype=float))
    exit_waves = probe.multislice(potential, scan=scan)
    dp = exit_waves.diffraction_patterns(max_angle="full", fftshift=True, parity="same").compute()
    arr = np.asarray(dp.array, dtype=np.float64).reshape(-1, *dp.array.shape[-2:])
    np.savez(out, patterns=arr, k_sampling_inv_A=np.asarray(dp.sampling, dtype=float),
             abtem_version=abtem.__version__)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
