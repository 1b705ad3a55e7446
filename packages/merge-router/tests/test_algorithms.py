"""The conflict measures, the threshold rules, the sparse experts and the routing rule against the literal
references in ``paperpack.merge_router._reference``."""

from __future__ import annotations

import pytest
import torch

from paperpack.core.checkpoints import load_state_dict
from paperpack.merge_router import MediatorConfig, extract_sparse, layer_conflicts, select_routed, unit_of
from paperpack.merge_router._reference import (
    reference_conflicts,
    reference_decide,
    reference_select_routed,
    reference_sparse,
    reference_unit,
)
from paperpack.merge_router.router import decide, train_router
from paperpack.merge_router.sparse import add_sparse


def random_states(count=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed_tokens.weight": (7, 4),
        "model.layers.0.self_attn.q_proj.weight": (4, 4),
        "model.layers.0.mlp.up_proj.weight": (6, 4),
        "model.layers.1.self_attn.q_proj.weight": (4, 4),
        "model.layers.1.input_layernorm.weight": (4,),
        "model.norm.weight": (4,),
    }
    base = {key: torch.randn(shape, generator=g) for key, shape in shapes.items()}
    base["model.position_ids"] = torch.arange(4)  # an integer buffer: skipped
    experts = []
    for _ in range(count):
        expert = {key: value.clone() for key, value in base.items()}
        for key, shape in shapes.items():
            shift = 0.1 * torch.randn(shape, generator=g)
            if "layers.0" in key:  # agreeing experts in block 0
                shift = shift.abs() + 0.05
            expert[key] = base[key] + shift
        experts.append(expert)
    return base, experts


@pytest.mark.parametrize("measure", ["sign", "cosine", "l2_var"])
@pytest.mark.parametrize("unit", ["decoder_block", "module"])
@pytest.mark.parametrize("trim", [0.2, 1.0])
def test_layer_conflicts_match_the_reference(measure, unit, trim):
    base, experts = random_states()
    config = MediatorConfig(conflict=measure, unit=unit, trim_density=trim)
    fast = layer_conflicts(base, {f"t{i}": e for i, e in enumerate(experts)}, config)
    slow = reference_conflicts(base, experts, measure, trim_density=trim, unit=unit)
    assert list(fast) == list(slow)
    for name in slow:
        assert fast[name] == pytest.approx(slow[name], abs=1e-6), name


def test_agreeing_block_conflicts_less_than_the_independent_one():
    base, experts = random_states()
    for measure in ("sign", "cosine", "l2_var"):
        d = layer_conflicts(
            base, {f"t{i}": e for i, e in enumerate(experts)}, MediatorConfig(conflict=measure)
        )
        assert d["model.layers.0"] < d["model.layers.1"], measure


def test_identical_experts_and_zero_task_vectors_do_not_conflict():
    base, experts = random_states()
    same = {"a": experts[0], "b": experts[0]}
    for measure in ("sign", "cosine", "l2_var"):
        assert max(layer_conflicts(base, same, MediatorConfig(conflict=measure)).values()) < 1e-12
        zero = layer_conflicts(base, {"a": base, "b": base}, MediatorConfig(conflict=measure))
        assert set(zero.values()) == {0.0}


def test_folders_and_state_dicts_give_the_same_conflicts(llama_dirs):
    tasks = ("sort", "reverse", "count")
    from_folders = layer_conflicts(llama_dirs["base"], {t: llama_dirs[t] for t in tasks})
    states = {t: load_state_dict(llama_dirs[t]) for t in tasks}
    from_states = layer_conflicts(load_state_dict(llama_dirs["base"]), states)
    assert from_folders == pytest.approx(from_states)
    assert from_folders["model.layers.0"] < from_folders["model.layers.1"]


@pytest.mark.parametrize(
    "key",
    [
        "model.layers.3.mlp.up_proj.weight",
        "transformer.h.11.attn.c_attn.bias",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ],
)
@pytest.mark.parametrize("unit", ["decoder_block", "module"])
def test_units_match_the_reference(key, unit):
    assert unit_of(key, unit) == reference_unit(key, unit)


@pytest.mark.parametrize(
    ("mode", "threshold"),
    [("zscore", 1.0), ("zscore", 0.0), ("topk", 0.25), ("topk", 0.6), ("absolute", 0.4)],
)
def test_select_routed_matches_the_reference(mode, threshold):
    g = torch.Generator().manual_seed(3)
    conflicts = {f"model.layers.{i}": float(v) for i, v in enumerate(torch.rand(10, generator=g))}
    config = MediatorConfig(threshold_mode=mode, threshold=threshold)
    assert select_routed(conflicts, config) == reference_select_routed(conflicts, mode, threshold)


def test_select_routed_only_among_routable_units():
    conflicts = {"model.embed_tokens": 0.9, "model.layers.0": 0.1, "model.layers.1": 0.5}
    config = MediatorConfig(threshold_mode="topk", threshold=0.5)
    assert select_routed(conflicts, config, ["model.layers.0", "model.layers.1"]) == ["model.layers.1"]


@pytest.mark.parametrize("density", [0.01, 0.1, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_expert_keeps_exactly_the_requested_density(density, dtype):
    g = torch.Generator().manual_seed(1)
    expert, dense = torch.randn(37, 11, generator=g).to(dtype), torch.randn(37, 11, generator=g).to(dtype)
    indices, values = extract_sparse(expert, dense, density)
    expected = reference_sparse(expert.float(), dense.float(), density)
    assert len(indices) == len(expected) == max(1, -(-round(density * 407, 6) // 1))
    assert indices.dtype == torch.int32 and values.dtype == dtype
    assert indices.tolist() == sorted(expected)
    torch.testing.assert_close(
        values.float(), torch.tensor([expected[i] for i in sorted(expected)]).to(dtype).float()
    )


def test_add_sparse_applies_the_weighted_sum():
    g = torch.Generator().manual_seed(2)
    dense = torch.randn(5, 6, generator=g)
    experts = [torch.randn(5, 6, generator=g) for _ in range(2)]
    parts = [(*extract_sparse(e, dense, 1.0), w) for e, w in zip(experts, (0.7, 0.3), strict=True)]
    weight = add_sparse(dense.clone(), parts)
    torch.testing.assert_close(weight, dense + 0.7 * (experts[0] - dense) + 0.3 * (experts[1] - dense))


@pytest.mark.parametrize(
    ("temperature", "confidence", "top_k"),
    [(1.0, 0.9, 2), (2.0, 0.5, 3), (0.5, 1.0, 2), (1.0, 0.0, 2), (1.0, 0.9, 1)],
)
def test_decide_matches_the_reference(temperature, confidence, top_k):
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(20, 4, generator=g)
    tasks = ["a", "b", "c", "d"]
    config = MediatorConfig(temperature=temperature, confidence_threshold=confidence, top_k=top_k)
    for row, routing in zip(logits, decide(logits, tasks, config), strict=True):
        experts, weights, conf = reference_decide(row.tolist(), tasks, temperature, confidence, top_k)
        assert routing.experts == experts
        assert routing.weights == pytest.approx(weights)
        assert routing.confidence == pytest.approx(conf)
        assert sum(routing.weights) == pytest.approx(1.0)


def test_router_learns_separable_tasks_and_is_deterministic():
    g = torch.Generator().manual_seed(5)
    centres = 3 * torch.randn(3, 8, generator=g)
    labels = torch.arange(3).repeat_interleave(20)
    features = centres[labels] + 0.5 * torch.randn(60, 8, generator=g)
    config = MediatorConfig(router_steps=100)
    state = torch.random.get_rng_state()
    router, accuracy = train_router(features, labels, 3, config)
    assert torch.equal(state, torch.random.get_rng_state())
    assert accuracy == 1.0
    again, _ = train_router(features, labels, 3, config)
    for (name, a), b in zip(router.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    _, none = train_router(features, labels, 3, MediatorConfig(router_steps=5, router_holdout=0.0))
    assert none is None


def tied_states(count=3, seed=0, numel=300):
    """Task vectors of a few distinct magnitudes (many exact ties at every trim threshold)."""
    g = torch.Generator().manual_seed(seed)
    base = {"model.layers.0.mlp.up_proj.weight": torch.zeros(numel), "model.norm.weight": torch.zeros(7)}
    experts = [
        {key: torch.randint(-3, 4, value.shape, generator=g).float() / 4 for key, value in base.items()}
        for _ in range(count)
    ]
    return base, experts


@pytest.mark.parametrize("chunk_size", [5, 64, 2**18])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_terms_equal_the_reference_with_ties(chunk_size, dtype):
    """In chunks of any size, the trim keeps exactly ⌈δN⌉ entries with ties to the lower index."""
    from paperpack.merge_router.conflicts import gram_terms, l2_var_terms, sign_terms

    base, experts = tied_states()
    base = {key: value.to(dtype) for key, value in base.items()}
    experts = [{key: value.to(dtype) for key, value in expert.items()} for expert in experts]
    key = "model.layers.0.mlp.up_proj.weight"
    tensors = [expert[key] for expert in experts]
    for trim in (0.1, 0.35, 1.0):
        conflicted, voted = sign_terms(base[key], tensors, trim, chunk_size=chunk_size)
        slow = reference_conflicts({key: base[key]}, [{key: t} for t in tensors], "sign", trim_density=trim)
        assert conflicted / voted == slow["model.layers.0"]  # exact: counts of the same coordinates
    whole = l2_var_terms(base[key], tensors, chunk_size=2**18)
    assert l2_var_terms(base[key], tensors, chunk_size=chunk_size) == pytest.approx(whole, rel=1e-12)
    torch.testing.assert_close(
        gram_terms(base[key], tensors, chunk_size=chunk_size),
        gram_terms(base[key], tensors),
        rtol=1e-12,
        atol=0,
    )
    for density in (0.05, 0.5):
        indices, values = extract_sparse(tensors[0], base[key], density, chunk_size=chunk_size)
        expected = reference_sparse(tensors[0], base[key], density)
        assert indices.tolist() == sorted(expected)
        assert values.tolist() == [expected[i] for i in sorted(expected)]
