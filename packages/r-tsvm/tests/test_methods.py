"""Each merge method against its slow, literal reference, plus the identities the papers imply."""

from __future__ import annotations

import itertools

import pytest
import torch

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm import _reference as ref
from paperpack.r_tsvm import get_method, list_methods, merge_tensors
from paperpack.r_tsvm.methods._common import generator_for, numerical_rank

SHAPES = [(7, 5), (5, 9), (6,)]
WEIGHTS = [0.7, 1.3, 1.0]


def make_models(shape, *, seed=0, num=3, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + scale * torch.randn(shape, generator=g) for _ in range(num)]


def uniforms(seed, key, shape, num):
    g = generator_for(seed, key)
    return [torch.rand(shape, generator=g) for _ in range(num)]


def close(fast, slow, atol=1e-5):
    torch.testing.assert_close(fast.double(), slow.double(), atol=atol, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_matches_reference(shape, normalize):
    _, models = make_models(shape)
    close(
        merge_tensors("linear", None, models, weights=WEIGHTS, normalize=normalize),
        ref.linear(models, WEIGHTS, normalize),
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_task_arithmetic_matches_reference(shape, normalize):
    base, models = make_models(shape)
    fast = merge_tensors("task_arithmetic", base, models, weights=WEIGHTS, scaling=0.7, normalize=normalize)
    close(fast, ref.task_arithmetic(base, models, WEIGHTS, 0.7, normalize))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("density", "normalize", "sign"), [(0.2, True, "sum"), (0.5, False, "count"), (1.0, True, "sum")]
)
def test_ties_matches_reference(shape, density, normalize, sign):
    base, models = make_models(shape)
    fast = merge_tensors(
        "ties",
        base,
        models,
        weights=WEIGHTS,
        density=density,
        scaling=0.9,
        normalize=normalize,
        majority_sign=sign,
    )
    close(fast, ref.ties(base, models, WEIGHTS, density=density, scaling=0.9, normalize=normalize, sign=sign))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_matches_reference(shape, method):
    base, models = make_models(shape)
    fast = merge_tensors(method, base, models, weights=WEIGHTS, density=0.4, seed=3, key="layer.weight")
    draws = uniforms(3, "layer.weight", shape, 3)
    sign = "sum" if method == "dare_ties" else None
    close(fast, ref.dare(base, models, WEIGHTS, density=0.4, uniforms=draws, sign=sign))


@pytest.mark.parametrize("shape", SHAPES)
def test_breadcrumbs_matches_reference(shape):
    base, models = make_models(shape)
    fast = merge_tensors("breadcrumbs", base, models, weights=WEIGHTS, density=0.6, gamma=0.1, scaling=0.8)
    close(fast, ref.breadcrumbs(base, models, WEIGHTS, density=0.6, gamma=0.1, scaling=0.8))


@pytest.mark.parametrize("shape", SHAPES)
def test_della_matches_reference(shape):
    base, models = make_models(shape)
    fast = merge_tensors("della", base, models, weights=WEIGHTS, density=0.5, epsilon=0.3, seed=1, key="k")
    close(
        fast, ref.della(base, models, WEIGHTS, density=0.5, epsilon=0.3, uniforms=uniforms(1, "k", shape, 3))
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_consensus_matches_reference(shape, k):
    base, models = make_models(shape)
    fast = merge_tensors(
        "consensus", base, models, weights=WEIGHTS, tall_lambda=0.4, min_agreement=k, scaling=0.6
    )
    close(fast, ref.consensus(base, models, WEIGHTS, tall_lambda=0.4, k=k, scaling=0.6))


@pytest.mark.parametrize("shape", SHAPES)
def test_tsv_m_matches_reference(shape):
    base, models = make_models(shape)
    close(
        merge_tensors("tsv_m", base, models, weights=WEIGHTS, alpha=0.8),
        ref.tsv_m(base, models, WEIGHTS, 0.8),
    )


@pytest.mark.parametrize("shape", [*SHAPES, (12, 10)])
def test_iso_matches_reference(shape):
    base, models = make_models(shape)
    close(
        merge_tensors("iso_c", base, models, weights=WEIGHTS, alpha=1.2),
        ref.iso_c(base, models, WEIGHTS, 1.2),
    )
    fast = merge_tensors("iso_cts", base, models, weights=WEIGHTS, alpha=1.1, common_space_fraction=0.5)
    close(fast, ref.iso_cts(base, models, WEIGHTS, 0.5, 1.1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_matches_reference(shape, t):
    _, models = make_models(shape, num=2, scale=2.0)
    close(merge_tensors("slerp", None, models, t=t), ref.slerp(models[0], models[1], t))


def test_slerp_falls_back_to_lerp_for_colinear_models():
    v = torch.randn(10)
    torch.testing.assert_close(merge_tensors("slerp", None, [v, 2 * v], t=0.25), 1.25 * v)


@pytest.mark.parametrize("shape", SHAPES)
def test_fisher_matches_reference(shape):
    _, models = make_models(shape)
    g = torch.Generator().manual_seed(5)
    fishers = [torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) > 0.3) for _ in models]
    fast = merge_tensors("fisher", None, models, weights=WEIGHTS, statistics=fishers)
    close(fast, ref.fisher(models, fishers, WEIGHTS))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_regmean_matches_reference(alpha):
    _, models = make_models((4, 6))
    g = torch.Generator().manual_seed(2)
    grams = []
    for _ in models:
        x = torch.randn(20, 6, generator=g)
        grams.append(x.T @ x / 20)
    fast = merge_tensors("regmean", None, models, weights=WEIGHTS, statistics=grams, alpha=alpha)
    close(fast, ref.regmean(models, grams, WEIGHTS, alpha))


def test_regmean_reproduces_each_models_outputs_in_the_least_squares_sense():
    # With identical Gram matrices RegMean is the plain average (the paper's sanity property).
    _, models = make_models((4, 6))
    x = torch.randn(30, 6)
    gram = x.T @ x / 30
    out = merge_tensors("regmean", None, models, statistics=[gram] * 3, alpha=1.0)
    close(out, torch.stack(models).mean(0), atol=1e-4)


@pytest.mark.parametrize("shape", [(9, 7), (7, 12), (30, 24), (5,)])
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"outlier_mode": "sigma", "kappa": 2.0, "outlier_action": "both", "gamma": 2.0},
        {"outlier_action": "clip", "rank_mode": "energy", "energy_tau": 0.8},
        {"outlier_mode": "none", "rank_mode": "fixed"},
    ],
)
def test_r_tsvm_matches_reference(shape, params):
    base, models = make_models(shape)
    # A heavy-tailed task and a partly frozen one, so outliers and sparsity matter.
    models[2] = models[2] + 5.0 * (torch.rand(shape, generator=torch.Generator().manual_seed(9)) > 0.95)
    models[1] = torch.where(torch.arange(models[1].numel()).reshape(shape) % 3 == 0, base, models[1])
    fast = merge_tensors(
        "r_tsvm", base, models, weights=WEIGHTS, alpha=0.9, key="layers.0.q_proj.weight", **params
    )
    close(fast, ref.r_tsvm(base, models, WEIGHTS, alpha=0.9, **params))


# ----------------------------------------------------------------------------------------------------------
# Identities


def test_linear_of_one_model_is_that_model():
    _, models = make_models((5, 4), num=1)
    torch.testing.assert_close(merge_tensors("linear", None, models), models[0])


@pytest.mark.parametrize("normalize", [True, False])
def test_ties_with_full_density_and_no_sign_conflict_is_task_arithmetic(normalize):
    base = torch.randn(6, 5)
    magnitudes = [torch.rand(6, 5) + 0.1 for _ in range(3)]
    signs = torch.sign(torch.randn(6, 5))
    models = [base + signs * m for m in magnitudes]
    ties = merge_tensors("ties", base, models, weights=WEIGHTS, density=1.0, normalize=normalize)
    ta = merge_tensors("task_arithmetic", base, models, weights=WEIGHTS, normalize=normalize)
    torch.testing.assert_close(ties, ta)


def test_tsv_m_with_one_task_and_full_rank_returns_the_task_vector():
    base, models = make_models((8, 6), num=1)
    torch.testing.assert_close(merge_tensors("tsv_m", base, models), models[0], atol=1e-5, rtol=1e-5)


def _low_rank_models(with_full: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """float64 models whose task matrices are exactly of rank 2 (LoRA-like), plus two full-rank ones if asked."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(24, 18, generator=g, dtype=torch.float64)
    low = [base + 0.1 * torch.randn(24, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 18, generator=g,
           dtype=torch.float64) for _ in range(2)]  # fmt: skip
    full = [base + 0.1 * torch.randn(24, 18, generator=g, dtype=torch.float64) for _ in range(2)]
    return base, (full if with_full else []) + low


def test_numerical_rank_counts_only_numerically_nonzero_singular_values():
    base, models = _low_rank_models(with_full=True)
    deltas = torch.stack([m - base for m in models])
    for dtype in (torch.float32, torch.float64):
        singular = torch.linalg.svdvals(deltas.to(dtype))
        assert numerical_rank(singular, deltas.shape) == [18, 18, 2, 2]
    assert numerical_rank(torch.zeros(5), (5, 7)) == [0]


@pytest.mark.parametrize("svd", ["fast", "exact"])
@pytest.mark.parametrize("method", ["tsv_m", "r_tsvm", "iso_c", "iso_cts"])
@pytest.mark.parametrize("with_full", [True, False], ids=["full-and-lora", "lora-only"])
def test_svd_methods_do_not_depend_on_arbitrary_null_vectors(method, with_full, svd):
    """Rank-deficient task matrices merge to the same result in float32 and float64 (a stand-in for CPU and GPU).

    Before numerically zero triplets were dropped, the arbitrary singular vectors of zero singular values went
    through the polar factors and the two results differed by up to 0.8 (and by 0.16 on an H200 against the CPU).
    """
    base, models = _low_rank_models(with_full)
    in_float32 = merge_tensors(method, base.float(), [m.float() for m in models], key="w", svd=svd)
    in_float64 = merge_tensors(method, base, models, key="w", svd=svd)
    torch.testing.assert_close(in_float32.double(), in_float64, atol=1e-5, rtol=0)


def test_tsv_m_keeps_at_most_each_tasks_numerical_rank():
    base, models = _low_rank_models(with_full=True)
    k = 18 // 4
    deltas = [ref._np(m) - ref._np(base) for m in models]
    expected = ref._np(base) + ref.tsv_padded(deltas, [k, k, 2, 2])
    close(merge_tensors("tsv_m", base, models), torch.from_numpy(expected))


@pytest.mark.parametrize("shape", [(10, 8), (6, 13)])
def test_r_tsvm_with_both_components_off_is_tsv_m(shape):
    base, models = make_models(shape)
    r = merge_tensors("r_tsvm", base, models, outlier_mode="none", rank_mode="fixed", key="w")
    torch.testing.assert_close(r, merge_tensors("tsv_m", base, models, key="w"), atol=1e-6, rtol=1e-6)


def test_r_tsvm_ranks_never_exceed_the_tsv_budget():
    spec = get_method("r_tsvm")
    base, models = make_models((12, 9))
    for rank_mode in ("sparsity", "energy", "fixed"):
        config = spec.make_config(rank_mode=rank_mode, energy_tau=0.999)
        _, report = spec.merge_with_report(base, models, config=config, key="w")
        assert report["k_cap"] == 3
        assert all(1 <= k <= 3 for k in report["ranks"])


def test_r_tsvm_sparsity_lowers_the_rank_of_a_sparse_layer():
    spec = get_method("r_tsvm")
    base, models = make_models((30, 30))
    frozen = [base.clone(), base.clone(), models[2]]  # two of three tasks did not touch this layer
    _, dense = spec.merge_with_report(base, models, key="w")
    _, sparse = spec.merge_with_report(base, frozen, key="w")
    assert dense["ranks"] == [10, 10, 10]
    assert sparse["ranks"] == [3, 3, 3]  # round(10 * (1 - 2/3))


def test_r_tsvm_downweights_the_task_with_planted_outliers():
    spec = get_method("r_tsvm")
    base, models = make_models((40, 40), scale=0.1)
    spikes = torch.zeros(40, 40)
    spikes.view(-1)[torch.randperm(1600, generator=torch.Generator().manual_seed(0))[:16]] = 20.0
    models[2] = models[2] + spikes
    _, report = spec.merge_with_report(base, models, key="w")
    assert report["weights"][2] < min(report["weights"][:2])
    assert sum(report["weights"]) == pytest.approx(3.0)


def test_r_tsvm_clip_removes_planted_spikes():
    base, models = make_models((40, 40), scale=0.1)
    clean = merge_tensors("r_tsvm", base, models, outlier_action="clip", key="w")
    spiked = [m.clone() for m in models]
    spiked[2].view(-1)[::97] += 20.0
    out = merge_tensors("r_tsvm", base, spiked, outlier_action="clip", key="w")
    off = merge_tensors("r_tsvm", base, spiked, outlier_mode="none", key="w")
    assert (out - clean).norm() < 0.25 * (off - clean).norm()


@pytest.mark.parametrize("method", ["tsv_m", "iso_c", "iso_cts", "r_tsvm"])
def test_excluded_keys_are_averaged(method):
    base, models = make_models((6, 5))
    out = merge_tensors(method, base, models, exclude_keys=["embed"], key="model.embed_tokens.weight")
    torch.testing.assert_close(out, base + torch.stack([m - base for m in models]).mean(0))


def test_r_tsvm_decomposes_every_matrix_by_default_like_tsv_m():
    base, models = make_models((6, 5))
    mean = base + torch.stack([m - base for m in models]).mean(0)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        merged = merge_tensors("r_tsvm", base, models, key=key, outlier_mode="none", rank_mode="fixed")
        torch.testing.assert_close(merged, merge_tensors("tsv_m", base, models, key=key))
        assert not torch.allclose(merged, mean)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_matches_reference(shape, filter_wise):
    base, models = make_models(shape)
    close(
        merge_tensors("model_stock", base, models, filter_wise=filter_wise),
        ref.model_stock(base, models, filter_wise),
    )


def test_model_stock_ratio_follows_the_angle():
    # Identical fine-tunes (cos θ = 1): t = 1, the average itself; orthogonal ones (cos θ = 0): the base.
    base = torch.zeros(2, 2)
    same = [torch.ones(2, 2), torch.ones(2, 2)]
    torch.testing.assert_close(merge_tensors("model_stock", base, same), torch.ones(2, 2))
    orthogonal = [torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 0.0]])]
    torch.testing.assert_close(merge_tensors("model_stock", base, orthogonal), base)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("flatten", "row_wise"), [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [True, False])
def test_nuslerp_matches_reference(shape, flatten, row_wise, with_base):
    base, models = make_models(shape, num=2, scale=2.0)
    fast = merge_tensors(
        "nuslerp", base if with_base else None, models, weights=[1.0, 3.0], flatten=flatten, row_wise=row_wise
    )
    close(fast, ref.nuslerp(base if with_base else None, models, [1.0, 3.0], flatten, row_wise))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.0])
def test_sce_matches_reference(shape, select_topk):
    base, models = make_models(shape)
    close(merge_tensors("sce", base, models, select_topk=select_topk), ref.sce(base, models, select_topk))


@pytest.mark.parametrize("shape", SHAPES)
def test_breadcrumbs_ties_matches_reference(shape):
    base, models = make_models(shape)
    params = [{"density": 0.6, "gamma": 0.1}, {"density": 0.8, "gamma": 0.0}, {"density": 0.5, "gamma": 0.2}]
    fast = merge_tensors(
        "breadcrumbs_ties", base, models, weights=WEIGHTS, scaling=0.8, normalize=True, model_params=params
    )
    slow = ref.breadcrumbs(
        base,
        models,
        WEIGHTS,
        density=[p["density"] for p in params],
        gamma=[p["gamma"] for p in params],
        scaling=0.8,
        sign="sum",
        normalize=True,
    )
    close(fast, slow)


@pytest.mark.parametrize("shape", SHAPES)
def test_della_linear_matches_reference(shape):
    base, models = make_models(shape)
    params = [{"density": 0.5, "epsilon": 0.3}, {"density": 0.7}, {"epsilon": 0.0}]
    fast = merge_tensors(
        "della_linear",
        base,
        models,
        weights=WEIGHTS,
        density=0.6,
        epsilon=0.2,
        seed=2,
        key="k",
        model_params=params,
    )
    slow = ref.della(
        base,
        models,
        WEIGHTS,
        density=[0.5, 0.7, 0.6],
        epsilon=[0.3, 0.2, 0.0],
        uniforms=uniforms(2, "k", shape, 3),
        normalize=False,
        sign=None,
    )
    close(fast, slow)


@pytest.mark.parametrize("shape", SHAPES)
def test_per_model_density_matches_reference(shape):
    base, models = make_models(shape)
    params = [{"density": 0.2}, {"density": 0.6}, {"density": 1.0}]
    fast = merge_tensors("ties", base, models, weights=WEIGHTS, model_params=params)
    close(fast, ref.ties(base, models, WEIGHTS, density=[0.2, 0.6, 1.0]))
    fast = merge_tensors("dare_ties", base, models, weights=WEIGHTS, seed=4, key="k", model_params=params)
    draws = uniforms(4, "k", shape, 3)
    close(fast, ref.dare(base, models, WEIGHTS, density=[0.2, 0.6, 1.0], uniforms=draws, sign="sum"))


def test_per_model_parameters_are_checked():
    base, models = make_models((4, 3))
    with pytest.raises(
        ConfigError, match="parameter 'scaling' of model 0 is not per model for merge method 'ties'"
    ):
        merge_tensors("ties", base, models, model_params=[{"scaling": 2.0}, {}, {}])
    with pytest.raises(ConfigError, match=r"`density` must be in \[0, 1\], got 2"):
        merge_tensors("ties", base, models, model_params=[{"density": 2}, {}, {}])
    with pytest.raises(ConfigError, match=r"`model_params` must hold one mapping per model \(3\), got 1"):
        merge_tensors("ties", base, models, model_params=[{}])


def test_passthrough_copies_and_scales_one_model():
    tensor = torch.randn(3, 4)
    torch.testing.assert_close(merge_tensors("passthrough", None, [tensor]), tensor)
    scaled = merge_tensors("passthrough", None, [tensor], model_params=[{"scale": 0.5}])
    torch.testing.assert_close(scaled, 0.5 * tensor)


@pytest.mark.parametrize(
    ("method", "count", "match"),
    [
        ("model_stock", 3, "'model_stock' takes no per-model `weights`"),
        ("sce", 3, "'sce' takes no per-model `weights`"),
        ("slerp", 2, "'slerp' takes no per-model `weights`"),
        ("passthrough", 1, "'passthrough' takes no per-model `weights`"),
    ],
)
def test_methods_without_weights_refuse_them(method, count, match):
    base, models = make_models((4, 3), num=count)
    with pytest.raises(ConfigError, match=match):
        merge_tensors(method, base, models, weights=[1.0] * count)


# ----------------------------------------------------------------------------------------------------------
# R-TSVM: the energy rule at τ = 1 and a sparsity scale that one outlier cannot move


def test_r_tsvm_energy_tau_one_keeps_every_direction():
    """τ = 1 keeps all the energy: every task keeps TSV-M's whole budget (before: rank 1 in about half of seeds,
    as the float running sum never quite reached a separately summed total and argmax of all-False is 0)."""
    spec = get_method("r_tsvm")
    config = spec.make_config(rank_mode="energy", energy_tau=1.0, outlier_mode="none")
    for seed in range(20):
        base, models = make_models((12, 12), seed=seed)
        _, report = spec.merge_with_report(base, models, config=config, key="w")
        assert report["ranks"] == [4, 4, 4], f"seed {seed}"


def test_r_tsvm_sparsity_is_not_moved_by_one_outlier():
    """One entry at 1000 x the noise moved the sparsity from 0.004 to 0.228 and cut every rank from 32 to 25
    when zeros were counted relative to max|Δ|; with the median scale it changes neither."""
    spec = get_method("r_tsvm")
    base, models = make_models((64, 64), num=2, scale=0.01)
    config = spec.make_config(outlier_mode="none")
    _, clean = spec.merge_with_report(base, models, config=config, key="w")
    spiked = [models[0].clone(), models[1]]
    spiked[0][3, 5] += 1000 * 0.01
    _, outlier = spec.merge_with_report(base, spiked, config=config, key="w")
    assert clean["ranks"] == outlier["ranks"] == [32, 32]
    assert abs(outlier["sparsity"] - clean["sparsity"]) < 1e-3


def test_r_tsvm_sparsity_counts_exact_zeros_and_tiny_entries():
    from paperpack.r_tsvm.methods.r_tsvm import zero_fraction

    delta = torch.tensor([0.0, 0.0, 1e-6, 1.0, -2.0, 3.0, 1000.0])
    # median of the nonzero |Δ| is 2.0; 1e-6 <= 1e-3 * 2 counts as zero, as the two exact zeros do
    assert zero_fraction(delta, 1e-3) == pytest.approx(3 / 7)
    assert zero_fraction(torch.zeros(5), 1e-3) == 1.0


# ----------------------------------------------------------------------------------------------------------
# Parallel task matrices: merged into their mean before the decomposition


def _near_copies(spread, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(48, 40, generator=g, dtype=dtype)
    delta = 0.1 * torch.randn(48, 40, generator=g, dtype=dtype)
    return base, [
        base + delta + spread * 0.1 * torch.randn(48, 40, generator=g, dtype=dtype) for _ in range(3)
    ]


@pytest.mark.parametrize("svd", ["fast", "exact"])
@pytest.mark.parametrize("method", ["tsv_m", "r_tsvm", "iso_cts"])
@pytest.mark.parametrize("spread", [0.0, 1e-8, 1e-4])
def test_nearly_identical_experts_merge_stably(method, spread, svd):
    """Three (nearly) identical experts: float32 and float64 agree to rounding, and a nudge far below the
    tolerance changes nothing. Before the rule the polar factor of the rank-deficient stacked bases had no unique
    answer: float32 and float64 were 0.99 apart (relative) at a spread of 1e-8, and a 1e-9 nudge moved the
    result by 0.86."""
    base, models = _near_copies(spread)
    in64 = merge_tensors(method, base, models, key="w", svd=svd)
    in32 = merge_tensors(method, base.float(), [m.float() for m in models], key="w", svd=svd).double()
    g = torch.Generator().manual_seed(1)
    nudged = [m + 1e-10 * torch.randn(m.shape, generator=g, dtype=m.dtype) for m in models]
    moved = merge_tensors(method, base, nudged, key="w", svd=svd)
    scale = float((in64 - base).norm())
    assert float((in32 - in64).norm()) / scale < 1e-5
    assert float((moved - in64).norm()) / scale < 1e-7


def test_identical_experts_merge_to_that_expert():
    base, models = _near_copies(0.0)
    torch.testing.assert_close(merge_tensors("tsv_m", base, models, key="w"), models[0])
    torch.testing.assert_close(merge_tensors("r_tsvm", base, models, key="w", outlier_mode="none"), models[0])


def test_parallel_groups_join_scaled_and_negated_copies():
    from paperpack.r_tsvm.methods.spectral import parallel_groups

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    deltas = torch.stack([a, 2 * a, b, -a, torch.zeros(6, 5), b + 1e-5 * torch.randn(6, 5, generator=g)])
    assert parallel_groups(deltas, 1e-3) == [[0, 1, 3], [2, 5], [4]]
    assert parallel_groups(deltas, 0.0) == [[0, 1, 3], [2], [4], [5]]
    assert parallel_groups(deltas.float(), 1e-3) == parallel_groups(deltas.double(), 1e-3)


@pytest.mark.parametrize("method", ["tsv_m", "iso_cts"])
def test_sensitivity_above_the_tolerance_is_as_documented(method):
    """Above the tolerance the stacked bases are only as well conditioned as the tasks differ: measured in the
    docs, float32 and float64 agree to about 1e-6 / d for task directions at distance d."""
    base, models = _near_copies(1e-2)
    in64 = merge_tensors(method, base, models, key="w")
    in32 = merge_tensors(method, base.float(), [m.float() for m in models], key="w").double()
    assert float((in32 - in64).norm() / (in64 - base).norm()) < 1e-3


# ----------------------------------------------------------------------------------------------------------
# The fast spectral path against the exact one


def _spectrum_models(kind, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    rows, cols = shape
    models = []
    for _ in range(3):
        if kind == "gaussian":
            delta = 0.1 * torch.randn(shape, generator=g)
        elif kind == "decaying":
            u = torch.linalg.qr(torch.randn(rows, rows, generator=g))[0]
            v = torch.linalg.qr(torch.randn(cols, cols, generator=g))[0]
            r = min(rows, cols)
            delta = (u[:, :r] * torch.logspace(0, -3, r)) @ v[:, :r].T
        else:  # low rank plus small noise: the fast path falls back to the SVD for these tasks
            delta = 0.1 * torch.randn(rows, 3, generator=g) @ torch.randn(3, cols, generator=g)
            delta += 1e-4 * torch.randn(shape, generator=g)
        models.append(base + delta)
    return base, models


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["gaussian", "decaying", "low-rank"])
@pytest.mark.parametrize("shape", [(40, 96), (96, 40), (48, 48), (288, 264), (264, 288)])
def test_fast_truncation_error_is_within_one_percent_of_the_exact(kind, shape, dtype):
    """Both paths' truncation error ‖Δ_t − U diag(σ) Vᵀ‖_F at TSV-M's k = ⌊r/3⌋ against the literal optimum
    (numpy's float64 SVD: the root of the sum of the squared singular values beyond k). The larger shapes take
    the Gram matrix by blocks (:func:`~paperpack.r_tsvm.methods.spectral.gram`)."""
    import numpy as np

    from paperpack.r_tsvm.methods.spectral import top_triplets

    base, models = _spectrum_models(kind, shape)
    deltas = torch.stack([m - base for m in models]).to(dtype)
    k = min(shape) // 3
    optimum = [
        float(np.sqrt(np.sum(np.linalg.svd(d.double().numpy(), compute_uv=False)[k:] ** 2))) for d in deltas
    ]
    for mode in ("exact", "fast"):
        for d, (u, s, vh), best in zip(deltas, top_triplets(deltas, [k] * 3, mode), optimum, strict=True):
            assert u.dtype == s.dtype == vh.dtype == dtype
            assert float((d - (u * s) @ vh).double().norm()) <= 1.01 * best


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(100, 30), (300, 500), (2, 257, 64), (3, 520, 40)])
def test_gram_by_blocks_is_the_product(shape, dtype):
    """The Gram matrix by symmetric blocks (uneven last block included) against the plain product: the same
    sums, so equal to rounding. A small one (100 rows) is the plain product."""
    from paperpack.r_tsvm.methods.spectral import gram

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    blocked, plain = gram(x), x @ x.mT
    assert blocked.shape == plain.shape and blocked.dtype == dtype
    if shape[-2] < 256:
        assert torch.equal(blocked, plain)
    scale = float(plain.abs().max())
    assert float((blocked - plain).abs().max()) <= 10 * torch.finfo(dtype).eps * scale * shape[-1] ** 0.5


def test_shared_gram_decomposition_gives_the_same_spectrum_and_triplets():
    """R-TSVM's energy ranks and its triplets share one Gram eigendecomposition on the fast path: the same
    energies σ² (to rounding of the largest: the eigenvalues alone are computed otherwise, and the energy rule
    sums σ²) and the same triplets."""
    from paperpack.r_tsvm.methods.spectral import gram_eigh, singular_values, top_triplets

    base, models = _spectrum_models("decaying", (264, 288))
    deltas = torch.stack([m - base for m in models])
    shared = gram_eigh(deltas)
    alone = singular_values(deltas, "fast").square()
    tolerance = {"atol": 1e-5 * float(alone.max()), "rtol": 0}
    with_shared = singular_values(deltas, "fast", decomposition=shared).square()
    torch.testing.assert_close(with_shared, alone, **tolerance)
    torch.testing.assert_close(singular_values(deltas, "exact").square(), alone, **tolerance)
    for one, other in zip(
        top_triplets(deltas, [50, 60, 70], "fast", decomposition=shared),
        top_triplets(deltas, [50, 60, 70], "fast"),
        strict=True,
    ):  # the same triplets (up to the sign of each pair of singular vectors) as the partial eigensolver's
        _assert_same_triplets(one, other, 1e-4)


def _assert_same_triplets(one, other, tolerance):
    """Two sets of singular triplets agree to ``tolerance`` (relative to σ_1): the singular values, and the
    singular vectors up to the sign that each pair (u_i, v_i) may take."""
    (u, s, vh), (u2, s2, vh2) = one, other
    assert u.shape == u2.shape and vh.shape == vh2.shape
    torch.testing.assert_close(s2, s, atol=tolerance * float(s[0]), rtol=0)
    signs = torch.sign((u * u2).sum(dim=0))
    torch.testing.assert_close(u2 * signs, u, atol=tolerance, rtol=0)
    torch.testing.assert_close(vh2 * signs[:, None], vh, atol=tolerance, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 37, 119, 120])
def test_partial_eigensolver_gives_the_top_of_the_full_eigendecomposition(k, dtype):
    """The partial eigensolver's k largest eigenpairs (LAPACK's syevr through SciPy) against the literal
    reference, numpy's full float64 eigendecomposition, to rounding; k = m takes the full one."""
    import numpy as np

    from paperpack.r_tsvm.methods.spectral import top_eigh

    x = torch.randn(120, 200, generator=torch.Generator().manual_seed(k), dtype=dtype)
    matrix = x @ x.T
    values, vectors = top_eigh(matrix, k)
    assert values.shape == (k,) and vectors.shape == (120, k) and values.dtype == vectors.dtype == dtype
    ref_values, ref_vectors = np.linalg.eigh(matrix.double().numpy())
    ref_values, ref_vectors = ref_values[::-1][:k].copy(), ref_vectors[:, ::-1][:, :k].copy()
    eps = torch.finfo(dtype).eps
    scale = float(ref_values[0])
    assert float((values.double() - torch.from_numpy(ref_values)).abs().max()) < 100 * eps * scale
    # eigenvectors up to sign; the gap between neighbouring eigenvalues bounds their accuracy
    spectrum = np.linalg.eigvalsh(matrix.double().numpy())[::-1]
    steps = np.abs(np.diff(spectrum))
    gaps = np.minimum(np.append(steps, np.inf), np.insert(steps, 0, np.inf))[:k]  # to the nearest neighbour
    signs = torch.sign((vectors.double() * torch.from_numpy(ref_vectors)).sum(dim=0))
    errors = (vectors.double() * signs - torch.from_numpy(ref_vectors)).abs().amax(dim=0)
    assert bool((errors < 100 * eps * scale / torch.from_numpy(np.minimum(gaps, scale))).all())
    torch.testing.assert_close(vectors.mT @ vectors, torch.eye(k, dtype=dtype), atol=100 * eps, rtol=0)


def test_lapack_routes_hold_the_torch_thread_count(monkeypatch):
    """SciPy's BLAS runs on ``torch.get_num_threads()`` threads inside the fast path (process CPU time would
    otherwise hide a second thread), and is restored afterwards."""
    from threadpoolctl import threadpool_info

    from paperpack.r_tsvm.methods import spectral

    linalg, _ = spectral._lapack()
    seen = []
    for name in ("eigh", "svd"):
        original = getattr(linalg, name)

        def spy(*args, _original=original, **kwargs):
            seen.append({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})
            return _original(*args, **kwargs)

        monkeypatch.setattr(linalg, name, spy)
    before = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        x = torch.randn(60, 80, generator=torch.Generator().manual_seed(0))
        spectral.top_eigh(x @ x.T, 5)
        spectral.polar_factor(x[:, :59], "fast")
    finally:
        torch.set_num_threads(threads)
    assert seen == [{1}, {1}]
    assert {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"} == before


@pytest.mark.parametrize("method", ["tsv_m", "r_tsvm", "iso_cts"])
def test_fast_path_without_lapack_gives_the_same_merge(method, monkeypatch):
    """Where SciPy's LAPACK cannot take the tensors (another device, a half-precision dtype) or reports a
    failure, the fast path uses torch's eigendecomposition and SVD: the same merge to rounding."""
    from paperpack.r_tsvm.methods import spectral

    base, models = _spectrum_models("gaussian", (96, 80))
    with_lapack = merge_tensors(method, base, models, key="w", svd="fast")
    monkeypatch.setattr(spectral, "_lapack_ready", lambda tensor: False)
    without = merge_tensors(method, base, models, key="w", svd="fast")
    # within the bound the fast path keeps to the exact one
    assert float((with_lapack - without).norm() / (without - base).norm()) < 1e-4
    monkeypatch.undo()

    linalg, _ = spectral._lapack()

    def failing(*args, **kwargs):
        raise linalg.LinAlgError("did not converge")

    monkeypatch.setattr(linalg, "eigh", failing)
    monkeypatch.setattr(linalg, "svd", failing)
    assert torch.equal(merge_tensors(method, base, models, key="w", svd="fast"), without)


def _polar_input(kind, dtype):
    """A test matrix for the polar factor: (matrix, its condition number)."""
    g = torch.Generator().manual_seed(0)
    shape = {"tall": (60, 20), "wide": (20, 60), "near-square": (40, 39)}.get(kind, (60, 20))
    rows, cols = shape
    left = torch.linalg.qr(torch.randn(rows, min(shape), generator=g, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(cols, min(shape), generator=g, dtype=torch.float64))[0]
    if kind == "ill-conditioned":
        values = torch.logspace(0, -4, min(shape), dtype=torch.float64)
    elif kind == "rank-deficient":
        values = torch.cat([torch.linspace(1, 0.5, 5, dtype=torch.float64), torch.zeros(min(shape) - 5)])
    else:
        values = torch.linspace(1, 0.3, min(shape), dtype=torch.float64)
    return ((left * values) @ right.T).to(dtype), float(values[0] / values[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["tall", "wide", "near-square", "ill-conditioned", "rank-deficient"])
def test_polar_factor_matches_the_literal_reference(kind, dtype, monkeypatch):
    """Both paths' polar factor against the reference's (numpy SVD in float64) where it is unique: the SVD's to
    rounding times the condition number κ, the fast path's Gram eigendecomposition to rounding times κ² (the
    accuracy its thresholds allow). A rank-deficient matrix has no unique answer: orthonormal columns with
    P (XᵀX)^(1/2) = X. A nearly square, rank-deficient or (in float32) ill-conditioned matrix takes the SVD on the
    fast path too (LAPACK's SVD through SciPy, where the exact path takes torch's)."""
    from paperpack.r_tsvm.methods import spectral
    from paperpack.r_tsvm.methods.spectral import _lapack_polar as lapack_polar
    from paperpack.r_tsvm.methods.spectral import polar_factor

    matrix, condition = _polar_input(kind, dtype)
    routes = []
    monkeypatch.setattr(spectral, "_lapack_polar", lambda m: routes.append("svd") or lapack_polar(m))
    fast, exact = polar_factor(matrix, "fast"), polar_factor(matrix, "exact")
    svd = kind in ("near-square", "rank-deficient") or (kind == "ill-conditioned" and dtype == torch.float32)
    assert routes == (["svd"] if svd else [])
    gram = not svd  # the fast path took the Gram eigendecomposition: error ε κ²
    eps = torch.finfo(dtype).eps
    for polar, power in ((fast, 2 if gram else 1), (exact, 1)):
        assert polar.dtype == dtype and polar.shape == matrix.shape
        tall = polar if polar.shape[0] >= polar.shape[1] else polar.T
        product = tall.double().T @ tall.double()
        error = float((product - torch.eye(product.shape[0], dtype=torch.float64)).abs().max())
        assert error < 100 * eps * condition ** (2 * power - 2)
        if kind == "rank-deficient":
            x = matrix.double() if matrix.shape[0] >= matrix.shape[1] else matrix.double().T
            values, vectors = torch.linalg.eigh(x.T @ x)
            values = torch.where(values > 100 * eps * float(values[-1]), values, 0.0)  # rounding of zero ones
            root = (vectors * values.sqrt()) @ vectors.T
            assert float((tall.double() @ root - x).abs().max()) < 100 * eps
        else:
            expected = torch.from_numpy(ref._polar(matrix.double().numpy()))
            assert float((polar.double() - expected).abs().max()) < 100 * eps * condition**power


@pytest.mark.parametrize("kind", ["gaussian", "decaying", "low-rank"])
@pytest.mark.parametrize("shape", [(40, 96), (96, 40), (48, 48)])
@pytest.mark.parametrize("method", ["tsv_m", "r_tsvm", "r_tsvm energy", "iso_c", "iso_cts"])
def test_fast_path_gives_the_exact_merge(method, shape, kind):
    method, *energy = method.split()
    params = {"rank_mode": "energy", "energy_tau": 0.9} if energy else {}
    base, models = _spectrum_models(kind, shape)
    exact = merge_tensors(method, base, models, key="w", svd="exact", **params)
    fast = merge_tensors(method, base, models, key="w", svd="fast", **params)
    assert float((fast - exact).norm() / (exact - base).norm()) < 1e-4


# ----------------------------------------------------------------------------------------------------------
# Properties over every method


def _count(name):
    spec = get_method(name)
    return spec.max_models if spec.max_models is not None else 3


def _inputs(name, shape=(6, 5), dtype=torch.float32, *, zero=False, seed=0):
    spec = get_method(name)
    num = _count(name)
    base, models = make_models(shape, num=num, seed=seed)
    if zero:
        models = [base.clone() for _ in models]
    base, models = base.to(dtype), [m.to(dtype) for m in models]
    stats = None
    if spec.statistic == "fisher":
        stats = [torch.rand(shape) for _ in models]
    elif spec.statistic == "gram":
        stats = [torch.eye(shape[1]) + 0.1 * torch.ones(shape[1], shape[1]) for _ in models]
    return spec, base, models, stats


@pytest.mark.parametrize("name", list_methods())
def test_zero_task_vectors_give_no_nan(name):
    spec, base, models, stats = _inputs(name, zero=True)
    out = merge_tensors(name, base, models, statistics=stats, key="w")
    assert torch.isfinite(out).all()
    if spec.uses_base or name in ("linear", "slerp", "nuslerp", "passthrough", "fisher", "regmean"):
        torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list_methods())
def test_dtype_is_preserved_and_inputs_untouched(name):
    _, base, models, stats = _inputs(name, dtype=torch.bfloat16)
    copies = [m.clone() for m in models]
    base_copy = base.clone()
    out = merge_tensors(name, base, models, statistics=stats, key="w")
    assert out.dtype == torch.bfloat16
    assert out.shape == base.shape
    for before, after in zip(copies, models, strict=True):
        assert torch.equal(before, after)
    assert torch.equal(base, base_copy)


@pytest.mark.parametrize("name", [n for n in list_methods() if _count(n) == 3])
def test_task_order_does_not_matter(name):
    spec, base, models, stats = _inputs(name, shape=(8, 6))
    if spec.randomized:
        pytest.skip("random masks are drawn task by task, so the order changes which entries are dropped")
    weights = WEIGHTS if spec.takes_weights else None
    expected = merge_tensors(name, base, models, weights=weights, statistics=stats, key="w")
    for order in itertools.permutations(range(3)):
        permuted = merge_tensors(
            name,
            base,
            [models[i] for i in order],
            weights=None if weights is None else [WEIGHTS[i] for i in order],
            statistics=None if stats is None else [stats[i] for i in order],
            key="w",
        )
        torch.testing.assert_close(permuted, expected, atol=1e-5, rtol=1e-5)


def test_slerp_is_symmetric_under_swapping_models_and_t():
    _, models = make_models((5, 5), num=2)
    a = merge_tensors("slerp", None, models, t=0.3)
    b = merge_tensors("slerp", None, models[::-1], t=0.7)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).randomized])
def test_random_methods_are_deterministic_per_seed_and_key(name):
    _, base, models, _ = _inputs(name, shape=(20, 20))
    a = merge_tensors(name, base, models, seed=7, key="layer.0")
    torch.testing.assert_close(a, merge_tensors(name, base, models, seed=7, key="layer.0"))
    assert not torch.equal(a, merge_tensors(name, base, models, seed=8, key="layer.0"))
    assert not torch.equal(a, merge_tensors(name, base, models, seed=7, key="layer.1"))


def test_dare_is_unbiased():
    base, models = make_models((50, 50))
    mean = torch.stack(
        [merge_tensors("dare_linear", base, models, seed=s, density=0.3) for s in range(200)]
    ).mean(0)
    expected = merge_tensors("task_arithmetic", base, models)
    assert (mean - expected).abs().mean() < 0.1 * (expected - base).abs().mean()


# ----------------------------------------------------------------------------------------------------------
# Errors


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown merge method 'tie'; available: breadcrumbs"):
        merge_tensors("tie", torch.zeros(2), [torch.ones(2)])


def test_unknown_parameter_lists_the_allowed_ones():
    with pytest.raises(
        ConfigError, match="unknown parameter 'densty' for merge method 'ties'; allowed: density"
    ):
        merge_tensors("ties", torch.zeros(2), [torch.ones(2)], densty=0.3)


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("ties", {"density": 1.5}, r"`density` must be in \[0, 1\], got 1.5"),
        ("ties", {"majority_sign": "vote"}, "`majority_sign` must be one of 'sum', 'count', got 'vote'"),
        ("task_arithmetic", {"scaling": float("nan")}, "`scaling` must be a finite number"),
        ("della", {"density": 0.95, "epsilon": 0.2}, r"`density` ± `epsilon`/2 must lie in \(0, 1\]"),
        ("r_tsvm", {"rank_mode": "adaptive"}, "`rank_mode` must be one of 'fixed', 'sparsity', 'energy'"),
        ("r_tsvm", {"k_min": 0}, "`k_min` must be >= 1, got 0"),
        ("r_tsvm", {"exclude_keys": "lm_head"}, "`exclude_keys` must be a list"),
        ("tsv_m", {"exclude_keys": ["("]}, "invalid regular expression"),
        ("dare_linear", {"seed": 1.5}, "`seed` must be an integer"),
    ],
)
def test_bad_parameter_values_are_refused(method, params, match):
    with pytest.raises(ConfigError, match=match):
        merge_tensors(method, torch.zeros(2), [torch.ones(2)], **params)


def test_task_vector_methods_need_a_base():
    with pytest.raises(ConfigError, match="'ties' works on task vectors and needs a base model"):
        merge_tensors("ties", None, [torch.ones(2)])


def test_slerp_needs_exactly_two_models():
    with pytest.raises(ConfigError, match="'slerp' merges exactly 2 model"):
        merge_tensors("slerp", None, [torch.ones(2)] * 3)


def test_mismatched_shapes_and_weights_are_refused():
    with pytest.raises(ConfigError, match=r"`tensors\[1\]` has shape \[3\], but `tensors\[0\]` has \[2\]"):
        merge_tensors("linear", None, [torch.ones(2), torch.ones(3)])
    with pytest.raises(ConfigError, match=r"`base` has shape \[3\]"):
        merge_tensors("ties", torch.zeros(3), [torch.ones(2)])
    with pytest.raises(ConfigError, match=r"`weights` must hold one number per model \(2\), got 1"):
        merge_tensors("linear", None, [torch.ones(2)] * 2, weights=[1.0])
    with pytest.raises(TypeError, match=r"`tensors\[0\]` must be a floating-point tensor"):
        merge_tensors("linear", None, [torch.ones(2, dtype=torch.int64)])


def test_statistics_are_checked():
    with pytest.raises(ConfigError, match="needs `statistics`: one diagonal Fisher per model"):
        merge_tensors("fisher", None, [torch.ones(2)] * 2)
    with pytest.raises(ConfigError, match=r"`statistics\[1\]` \(diagonal Fisher\) has shape \[3\]"):
        merge_tensors("fisher", None, [torch.ones(2)] * 2, statistics=[torch.ones(2), torch.ones(3)])
    with pytest.raises(ConfigError, match="'ties' takes no `statistics`"):
        merge_tensors("ties", torch.zeros(2), [torch.ones(2)], statistics=[torch.ones(2)])


def test_consensus_needs_enough_models_to_agree():
    with pytest.raises(ConfigError, match="`min_agreement` is 2 but only 1 model"):
        merge_tensors("consensus", torch.zeros(2), [torch.ones(2)])


def test_registry_refuses_duplicates_and_offers_an_alias():
    from paperpack.r_tsvm import register_method

    with pytest.raises(ConfigError, match="'ties' is already registered"):
        register_method(get_method("ties"))
    assert get_method("resm") is get_method("r_tsvm")


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).name == n])
def test_configs_parse_with_hf_argument_parser(name):
    from transformers import HfArgumentParser

    config_class = get_method(name).config_class
    (defaults,) = HfArgumentParser(config_class).parse_args_into_dataclasses(args=[])
    assert defaults == config_class()
    field = next(iter(config_class.__dataclass_fields__.values()))
    assert field.metadata["help"]


def test_r_tsvm_config_from_command_line_flags():
    from transformers import HfArgumentParser

    from paperpack.r_tsvm import RTSVMConfig

    args = ["--kappa", "2.5", "--rank_mode", "energy", "--exclude_keys", "embed_tokens", "lm_head"]
    (config,) = HfArgumentParser(RTSVMConfig).parse_args_into_dataclasses(args=args)
    assert config == RTSVMConfig(kappa=2.5, rank_mode="energy", exclude_keys=["embed_tokens", "lm_head"])
