"""The projection onto the capped simplex: feasibility, optimality, agreement with bisection, errors."""

from __future__ import annotations

import pytest
import torch

from paperpack.core.errors import ConfigError
from paperpack.sewa import project_capped_simplex
from paperpack.sewa._reference import reference_projection


def _random_cases(count: int) -> list[tuple[torch.Tensor, float]]:
    generator = torch.Generator().manual_seed(0)
    cases = []
    for i in range(count):
        size = 1 + i % 40
        scale = [0.1, 1.0, 5.0][i % 3]
        s = torch.randn(size, generator=generator, dtype=torch.float64) * scale + 0.5
        k = (
            float(torch.randint(0, size + 1, (1,), generator=generator))
            if i % 2
            else float(torch.rand(1, generator=generator)) * size
        )
        cases.append((s, k))
    return cases


@pytest.mark.parametrize("mode", ["sum_eq_k", "sum_le_k"])
def test_feasible_and_equal_to_bisection(mode: str) -> None:
    for s, k in _random_cases(300):
        x = project_capped_simplex(s, k, mode=mode)
        assert bool((x >= 0).all()) and bool((x <= 1).all())
        if mode == "sum_eq_k":
            assert abs(float(x.sum()) - k) <= 1e-9 * max(1.0, k)
        else:
            assert float(x.sum()) <= k + 1e-9
        expected = torch.tensor(reference_projection(s.tolist(), k, mode), dtype=torch.float64)
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-9)


def test_is_the_closest_feasible_point() -> None:
    generator = torch.Generator().manual_seed(1)
    s = torch.randn(12, generator=generator, dtype=torch.float64)
    k = 4.0
    x = project_capped_simplex(s, k)
    best = float(((x - s) ** 2).sum())
    for _ in range(2000):
        other = project_capped_simplex(x + 0.3 * torch.randn(12, generator=generator, dtype=torch.float64), k)
        assert float(((other - s) ** 2).sum()) >= best - 1e-12


def test_feasible_points_are_fixed_and_input_untouched() -> None:
    s = torch.tensor([0.25, 0.25, 0.5, 1.0, 0.0], dtype=torch.float64)
    copy = s.clone()
    torch.testing.assert_close(project_capped_simplex(s, 2.0), s)
    assert torch.equal(s, copy)


def test_edges() -> None:
    s = torch.tensor([0.3, -2.0, 7.0], dtype=torch.float64)
    torch.testing.assert_close(project_capped_simplex(s, 3.0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(project_capped_simplex(s, 0.0), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(
        project_capped_simplex(torch.tensor([0.9, 0.8, 0.1, 0.0]), 2.0),
        torch.tensor([0.95, 0.85, 0.15, 0.05]),
    )
    assert project_capped_simplex(torch.tensor([0.2, 0.1]), 1.0, mode="sum_le_k").tolist() == pytest.approx(
        [0.2, 0.1]
    )


def test_ties_are_handled() -> None:
    s = torch.full((6,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(project_capped_simplex(s, 2.0), torch.full((6,), 1 / 3, dtype=torch.float64))


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"`k` must be in \[0, 3\]"):
        project_capped_simplex(torch.zeros(3), 4.0)
    with pytest.raises(
        ConfigError, match=r"`s` must be a one-dimensional floating tensor, got a torch.int64"
    ):
        project_capped_simplex(torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ConfigError, match=r"`s` must be finite"):
        project_capped_simplex(torch.tensor([0.1, float("nan")]), 1.0)
    with pytest.raises(ConfigError, match=r"`mode` must be one of"):
        project_capped_simplex(torch.zeros(3), 1.0, mode="sum")
