import numpy as np
import pytest

from paperpack.ma_osma._reference import project_brute_force
from paperpack.ma_osma.projection import project_solid_simplex


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_projection_matches_brute_force(k):
    rng = np.random.default_rng(k)
    values = rng.normal(0.2, 0.8, (200, k))
    projected = project_solid_simplex(values)
    expected = np.array([project_brute_force(row.tolist()) for row in values])
    np.testing.assert_allclose(projected, expected, atol=1e-10)
    assert np.all(projected >= 0)
    assert np.all(projected.sum(axis=1) <= 1 + 1e-12)


def test_padded_entries_are_ignored_and_zero():
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 1.0, (100, 4))
    valid = np.arange(4)[None, :] < rng.integers(1, 5, 100)[:, None]
    projected = project_solid_simplex(values, valid)
    assert np.all(projected[~valid] == 0)
    for row, mask, result in zip(values, valid, projected, strict=True):
        np.testing.assert_allclose(result[mask], project_brute_force(row[mask].tolist()), atol=1e-10)


def test_points_inside_are_fixed():
    inside = np.array([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(project_solid_simplex(inside), inside)
