"""select_snapshots against the slow literal reference, its guarantees, and its errors."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.sewa import SeWAConfig, select_snapshots
from paperpack.sewa._reference import reference_select
from paperpack.sewa.selection import MaskTieWarning, relaxed_mask, temperature_at


def _mlp(seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _window(
    size: int, *, bad: tuple[int, ...] = (), dtype: torch.dtype = torch.float64
) -> list[dict[str, torch.Tensor]]:
    """A drifting trajectory of a small MLP; snapshots in `bad` get a large perturbation."""
    base = _mlp(0, dtype)
    generator = torch.Generator().manual_seed(1)
    window = []
    for i in range(size):
        state = {}
        for name, value in base.state_dict().items():
            drift = 0.05 * i * torch.randn(value.shape, generator=generator, dtype=dtype)
            spike = 3.0 * torch.randn(value.shape, generator=generator, dtype=dtype) if i in bad else 0.0
            state[name] = value + drift + spike
        window.append(state)
    return window


@pytest.fixture(scope="module")
def regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(32, 4, generator=generator, dtype=torch.float64)
    teacher = _mlp(0)
    with torch.no_grad():
        targets = teacher(inputs)
    return _mlp(5), inputs, targets


def _loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
    def loss_fn(params):
        return ((functional_call(model, dict(params), (inputs,)) - targets) ** 2).mean()

    return loss_fn


CASES = [
    {},
    {"averaging": "over_k"},
    {"mask_optimizer": "sgd", "mask_lr": 0.5},
    {"projection": "sum_le_k"},
    {"temperature_schedule": "linear"},
    {"temperature_schedule": "constant", "mc_samples": 1},
]


@pytest.mark.parametrize(
    "overrides", CASES, ids=lambda case: ",".join(f"{k}={v}" for k, v in case.items()) or "defaults"
)
def test_matches_literal_reference(regression, overrides) -> None:
    model, inputs, targets = regression
    window = _window(7, bad=(2, 5))
    config = SeWAConfig(k=3, iterations=12, mc_samples=overrides.pop("mc_samples", 3), seed=4, **overrides)
    loss_fn = _loss(model, inputs, targets)
    result = select_snapshots(window, loss_fn, config)
    indices, probabilities, history = reference_select(window, loss_fn, config)
    assert result.indices == indices
    torch.testing.assert_close(
        result.probabilities, torch.tensor(probabilities, dtype=torch.float64), rtol=0, atol=1e-9
    )
    torch.testing.assert_close(
        torch.tensor(result.loss_history), torch.tensor(history), rtol=1e-9, atol=1e-12
    )


def test_vmap_loss_matches_literal_reference(regression) -> None:
    model, inputs, targets = regression
    window = _window(6, bad=(1,))
    config = SeWAConfig(k=2, iterations=10, mc_samples=4, seed=9, vmap_loss=True)
    loss_fn = _loss(model, inputs, targets)
    result = select_snapshots(window, loss_fn, config)
    indices, probabilities, _ = reference_select(window, loss_fn, config)
    assert result.indices == indices
    torch.testing.assert_close(
        result.probabilities, torch.tensor(probabilities, dtype=torch.float64), rtol=0, atol=1e-9
    )


def _mixed_dtype_problem(regression):
    """A window with a key the loss never reads and a float32 key beside float64 ones, and that loss."""
    model, inputs, targets = regression
    window = _window(6, bad=(2,))
    for snapshot in window:
        snapshot["unused"] = snapshot["0.bias"].clone()
        snapshot["2.bias"] = snapshot["2.bias"].float()
    full = _loss(model, inputs, targets)

    def loss_fn(params):
        return full({key: value.double() for key, value in params.items() if key != "unused"})

    return window, loss_fn


@pytest.mark.parametrize("vmap_loss", [False, True], ids=["per-sample", "vmap"])
def test_loss_on_some_keys_of_mixed_dtypes_matches_literal_reference(regression, vmap_loss) -> None:
    """Keys the loss never reads get no gradient; a float32 key beside float64 ones is its own matrix."""
    window, loss_fn = _mixed_dtype_problem(regression)
    config = SeWAConfig(k=2, iterations=8, mc_samples=3, seed=3, vmap_loss=vmap_loss)
    result = select_snapshots(window, loss_fn, config)
    indices, probabilities, _ = reference_select(window, loss_fn, config)
    assert result.indices == indices
    torch.testing.assert_close(
        result.probabilities, torch.tensor(probabilities, dtype=torch.float64), rtol=0, atol=1e-6
    )


def test_backward_per_sample_gives_the_same_result_bit_for_bit(regression) -> None:
    """One backward call for the M losses or one per sample: the samples' gradients do not mix."""
    window, loss_fn = _mixed_dtype_problem(regression)
    results = [
        select_snapshots(
            window, loss_fn, SeWAConfig(k=2, iterations=8, mc_samples=3, backward_per_sample=flag)
        )
        for flag in (False, True)
    ]
    assert results[0].indices == results[1].indices
    assert torch.equal(results[0].probabilities, results[1].probabilities)
    assert results[0].loss_history == results[1].loss_history


def test_loss_that_misses_the_averaged_parameters_names_the_sample() -> None:
    other = torch.ones(2, dtype=torch.float64, requires_grad=True)
    calls = []

    def loss_fn(params):
        calls.append(None)
        return (params["w"] ** 2).sum() if len(calls) != 2 else (other**2).sum()

    for per_sample in (False, True):
        calls.clear()
        with pytest.raises(
            ConfigError, match=r"any of the averaged parameters \(iteration 0, Monte Carlo sample 1\)"
        ):
            select_snapshots(_simple_window(), loss_fn, SeWAConfig(k=1, backward_per_sample=per_sample))


def test_state_dict_is_exact_mean_of_selected(regression) -> None:
    model, inputs, targets = regression
    window = _window(8, bad=(3,), dtype=torch.float32)
    result = select_snapshots(
        window, _loss(model.float(), inputs.float(), targets.float()), SeWAConfig(k=3, iterations=5)
    )
    assert len(result.indices) == 3
    assert result.indices == sorted(result.indices)
    for key, value in result.state_dict.items():
        expected = torch.stack([window[i][key] for i in result.indices]).mean(dim=0)
        assert torch.equal(value, expected), key
        assert value.dtype == window[0][key].dtype
    assert torch.equal(result.weights.nonzero().flatten(), torch.tensor(result.indices))
    assert math.isclose(float(result.weights.sum()), 1.0)
    model.double()


def test_one_selected_snapshot_is_returned_bit_for_bit(regression) -> None:
    model, inputs, targets = regression
    window = _window(5, bad=(0, 1, 2, 4))
    result = select_snapshots(window, _loss(model, inputs, targets), SeWAConfig(k=1, iterations=30))
    (index,) = result.indices
    assert index == 3
    for key, value in result.state_dict.items():
        assert torch.equal(value, window[index][key])


def test_planted_bad_snapshots_are_excluded(regression) -> None:
    model, inputs, targets = regression
    bad = (1, 4, 6, 9)
    window = _window(12, bad=bad)
    result = select_snapshots(window, _loss(model, inputs, targets), SeWAConfig(k=5, iterations=80, seed=0))
    assert not set(result.indices) & set(bad)
    assert all(result.probabilities[i] < 0.05 for i in bad)


def test_k_equal_to_window_keeps_everything(regression) -> None:
    model, inputs, targets = regression
    window = _window(4)
    result = select_snapshots(window, _loss(model, inputs, targets), SeWAConfig(k=4, iterations=3))
    assert result.indices == [0, 1, 2, 3]
    torch.testing.assert_close(result.probabilities, torch.ones(4, dtype=torch.float64))


def test_inputs_are_not_modified_and_integer_buffers_pass_through(regression) -> None:
    model, inputs, targets = regression
    window = _window(5, bad=(2,))
    for i, snapshot in enumerate(window):
        snapshot["counter"] = torch.tensor(i)
    before = copy.deepcopy(window)
    seen = []

    def loss_fn(params):
        seen.append(int(params["counter"]))
        return _loss(model, inputs, targets)({k: v for k, v in params.items() if k != "counter"})

    result = select_snapshots(window, loss_fn, SeWAConfig(k=2, iterations=4))
    for original, now in zip(before, window, strict=True):
        for key in original:
            assert torch.equal(original[key], now[key])
    assert set(seen) == {4}
    assert int(result.state_dict["counter"]) == max(result.indices)


def test_a_collapsed_mask_never_falls_back_to_the_last_k_silently() -> None:
    # With averaging="over_k" the soft average shrinks with Σ m, so a loss that prefers small weights drives
    # every s to 0, which projection="sum_le_k" allows; the top-k then rests on the tie rule alone.
    window = [{"w": torch.full((3,), 1.0 + 0.1 * i, dtype=torch.float64)} for i in range(6)]
    config = SeWAConfig(k=2, iterations=50, averaging="over_k", projection="sum_le_k")
    with pytest.warns(
        MaskTieWarning, match=r"collapsed to zero mass.*2 of the 2 kept snapshots.*LAWA's choice"
    ):
        result = select_snapshots(window, lambda params: (params["w"] ** 2).sum(), config)
    assert float(result.probabilities.sum()) == 0.0
    assert result.indices == [4, 5] and result.tie_broken == 2
    # The same loss with Σ s = k kept singles out k snapshots: no warning, nothing broken by the tie rule.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = select_snapshots(
            window,
            lambda params: (params["w"] ** 2).sum(),
            dataclasses.replace(config, projection="sum_eq_k"),
        )
    assert kept.tie_broken == 0 and kept.indices == [0, 1]


def test_a_partial_tie_counts_only_the_tied_picks() -> None:
    # One snapshot is best alone; with Σ s <= k the others drop to s = 0, so the second pick is the tie rule's.
    window = [{"w": torch.tensor([3.0 + 0.1 * i], dtype=torch.float64)} for i in range(4)]
    window[1] = {"w": torch.tensor([0.0], dtype=torch.float64)}
    config = SeWAConfig(k=2, iterations=60, projection="sum_le_k")
    with pytest.warns(MaskTieWarning, match=r"ties at the k-th place.*1 of the 2 kept.*latest of the tied"):
        result = select_snapshots(window, lambda params: (params["w"] ** 2).sum(), config)
    assert result.probabilities.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert result.indices == [1, 3] and result.tie_broken == 1


def test_reduce_gradient_is_applied(regression) -> None:
    model, inputs, targets = regression
    window = _window(5, bad=(2,))
    calls = []

    def flip(gradient: torch.Tensor) -> torch.Tensor:
        calls.append(gradient.clone())
        return -gradient

    config = SeWAConfig(k=2, iterations=40)
    normal = select_snapshots(window, _loss(model, inputs, targets), config)
    flipped = select_snapshots(window, _loss(model, inputs, targets), config, reduce_gradient=flip)
    assert len(calls) == 40 and all(call.shape == (5,) for call in calls)
    assert 2 in flipped.indices and 2 not in normal.indices


def test_same_seed_same_result_other_seed_other_noise(regression) -> None:
    model, inputs, targets = regression
    window = _window(6)
    loss_fn = _loss(model, inputs, targets)
    a = select_snapshots(window, loss_fn, SeWAConfig(k=2, iterations=5, seed=1))
    b = select_snapshots(window, loss_fn, SeWAConfig(k=2, iterations=5, seed=1))
    c = select_snapshots(window, loss_fn, SeWAConfig(k=2, iterations=5, seed=2))
    assert torch.equal(a.probabilities, b.probabilities)
    assert not torch.equal(a.probabilities, c.probabilities)


def test_temperature_schedules() -> None:
    exp = SeWAConfig(iterations=5, temperature_start=2.0, temperature_end=0.125)
    assert [temperature_at(exp, t) for t in range(5)] == pytest.approx([2.0, 1.0, 0.5, 0.25, 0.125])
    lin = SeWAConfig(iterations=3, temperature_start=1.0, temperature_end=0.5, temperature_schedule="linear")
    assert [temperature_at(lin, t) for t in range(3)] == pytest.approx([1.0, 0.75, 0.5])
    assert temperature_at(SeWAConfig(iterations=1), 0) == 1.0


def test_relaxed_mask_limits() -> None:
    s = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    noise = torch.zeros(1, 3, dtype=torch.float64)
    cold = relaxed_mask(s, noise, 1e-3)
    torch.testing.assert_close(cold, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    warm = relaxed_mask(s, noise, 1.0)
    torch.testing.assert_close(warm[0, 1], torch.tensor(0.3, dtype=torch.float64))


# ---- bad input -------------------------------------------------------------------------------------------


def _quadratic(params):
    return (params["w"] ** 2).sum()


def _simple_window(size: int = 4) -> list[dict[str, torch.Tensor]]:
    return [{"w": torch.full((3,), float(i))} for i in range(size)]


def test_k_larger_than_window() -> None:
    with pytest.raises(ConfigError, match=r"`k` must be <= the number of snapshots K=4, got 5"):
        select_snapshots(_simple_window(4), _quadratic, SeWAConfig(k=5))


def test_k_below_one() -> None:
    with pytest.raises(ConfigError, match=r"`k` must be >= 1, got 0"):
        SeWAConfig(k=0)


def test_empty_window() -> None:
    with pytest.raises(ConfigError, match=r"`snapshots` is empty"):
        select_snapshots([], _quadratic, SeWAConfig(k=1))


def test_window_not_a_sequence() -> None:
    with pytest.raises(TypeError, match=r"`snapshots` must be a sequence"):
        select_snapshots({"w": torch.zeros(1)}, _quadratic)
    with pytest.raises(TypeError, match=r"`snapshots\[1\]\['w'\]` must be a torch.Tensor"):
        select_snapshots([{"w": torch.zeros(1)}, {"w": [0.0]}], _quadratic)


def test_different_keys() -> None:
    window = _simple_window(3)
    window[2] = {"v": torch.zeros(3)}
    with pytest.raises(
        CheckpointError, match=r"`snapshots\[2\]` has different keys.*missing \['w'\].*extra \['v'\]"
    ):
        select_snapshots(window, _quadratic, SeWAConfig(k=1))


def test_different_shapes_and_dtypes() -> None:
    window = _simple_window(3)
    window[1] = {"w": torch.zeros(4)}
    with pytest.raises(CheckpointError, match=r"`snapshots\[1\]\['w'\]` has shape \(4,\), but .* \(3,\)"):
        select_snapshots(window, _quadratic, SeWAConfig(k=1))
    window[1] = {"w": torch.zeros(3, dtype=torch.float64)}
    with pytest.raises(CheckpointError, match=r"has dtype torch.float64, but"):
        select_snapshots(window, _quadratic, SeWAConfig(k=1))


def test_loss_not_scalar() -> None:
    with pytest.raises(ConfigError, match=r"`loss_fn` must return a scalar \(shape \(\)\), got shape \(3,\)"):
        select_snapshots(_simple_window(), lambda params: params["w"] ** 2, SeWAConfig(k=1))


def test_loss_nan() -> None:
    with pytest.raises(ConfigError, match=r"`loss_fn` returned nan at iteration 0, Monte Carlo sample 0"):
        select_snapshots(_simple_window(), lambda params: params["w"].sum() * math.nan, SeWAConfig(k=1))


def test_loss_nan_in_a_later_sample_names_that_sample() -> None:
    calls = []

    def loss_fn(params):
        calls.append(None)
        return params["w"].sum() * (math.nan if len(calls) == 3 else 1.0)

    with pytest.raises(ConfigError, match=r"returned nan at iteration 0, Monte Carlo sample 2"):
        select_snapshots(_simple_window(), loss_fn, SeWAConfig(k=1, mc_samples=4))


def test_loss_not_a_tensor_or_detached() -> None:
    with pytest.raises(TypeError, match=r"`loss_fn` must return a torch.Tensor, got float"):
        select_snapshots(_simple_window(), lambda params: 1.0, SeWAConfig(k=1))
    with pytest.raises(ConfigError, match=r"does not depend on the averaged parameters"):
        select_snapshots(_simple_window(), lambda params: params["w"].detach().sum(), SeWAConfig(k=1))


def test_bad_config_and_loss_fn_types() -> None:
    with pytest.raises(TypeError, match=r"`config` must be a SeWAConfig, got dict"):
        select_snapshots(_simple_window(), _quadratic, {"k": 1})
    with pytest.raises(TypeError, match=r"`loss_fn` must be callable"):
        select_snapshots(_simple_window(), None, SeWAConfig(k=1))


def test_vmap_loss_must_return_one_value_per_sample() -> None:
    with pytest.raises(ConfigError, match=r"one scalar per sample under vmap \(shape \(4,\)\)"):
        select_snapshots(
            _simple_window(), lambda params: params["w"] ** 2, SeWAConfig(k=1, mc_samples=4, vmap_loss=True)
        )


def test_bad_device() -> None:
    with pytest.raises(ConfigError, match=r"`device` must be 'auto', 'cpu'"):
        select_snapshots(_simple_window(), _quadratic, SeWAConfig(k=1), device="tpu-9")
