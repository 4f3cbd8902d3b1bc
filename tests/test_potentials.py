"""Kirkland projected potentials against the parametrisation's analytic values."""

import numpy as np
import pytest
from scipy.integrate import quad

from msptycho.simulate import potentials as P


@pytest.mark.parametrize("Z", [6, 9, 20, 38, 70])
@pytest.mark.parametrize("sampling_A", [0.05, 0.125])
def test_single_atom_integrates_to_analytic_value(Z, sampling_A):
    """The sampled projected potential of one atom, summed over the grid, equals
    2 pi a0 e f_e(0) (Kirkland 2010 eq. C.19 integrated over the plane) within 0.6 %:
    < 0.1 % is cut off beyond the cutoff radius, the rest is the sampling of the logarithmic
    singularity at the nucleus."""
    n = int(2 * 5.5 / sampling_A) + 1
    pos = np.array([[5.5 + 0.31 * sampling_A, 5.5 + 0.17 * sampling_A]])
    v = P.project_atoms(pos, np.array([Z]), np.array([0]), 1, (n, n), sampling_A)[0]
    total = v.sum(dtype=np.float64) * sampling_A**2
    assert total == pytest.approx(P.integrated_projected_potential(Z), rel=6e-3)


def test_integrated_value_is_the_radial_integral_of_the_closed_form():
    """2 pi a0 e f_e(0) equals the numerical radial integral of the closed-form v_z(r)."""
    for Z in (9, 20, 70):
        num = quad(lambda r: 2 * np.pi * r * P.projected_potential(Z, r), 1e-9, 30, limit=400, points=[0.01, 0.1, 1])[0]
        assert num == pytest.approx(P.integrated_projected_potential(Z), rel=1e-5)


def test_scattering_factor_at_zero_matches_table_and_citation_ships():
    a, b, c, d = P.coefficients(20)
    assert P.scattering_factor(20, 0.0) == pytest.approx(np.sum(a / b + c))
    assert "Kirkland" in P.kirkland_table()["_citation"]
    # heavier atoms scatter more
    f = [float(P.scattering_factor(Z, 0.5)) for Z in (6, 9, 20, 38, 70)]
    assert f == sorted(f)


def test_atoms_in_other_slices_and_outside_are_separate():
    v = P.project_atoms(np.array([[2.0, 2.0], [2.0, 2.0]]), np.array([9, 20]), np.array([0, 1]), 2, (40, 40), 0.1)
    assert v[0].sum() * 0.01 == pytest.approx(P.integrated_projected_potential(9), rel=2e-2)
    assert v[1].sum() > v[0].sum()
    with pytest.raises(ValueError):
        P.coefficients(0)
    with pytest.raises(ValueError):
        P.project_atoms(np.zeros((2, 3)), np.array([6, 6]), np.array([0, 0]), 1, (4, 4), 0.1)
